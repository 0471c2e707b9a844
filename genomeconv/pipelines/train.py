"""Training: `genomeconv pretrain` (next-token) and `genomeconv finetune` (variant classifier).

Both run on the DeepSpeed plumbing of pipelines/deepspeed_engine.py (processes, configs, the
shared optimizer step, checkpoints, export, Ray Train) with options from
pipelines/options.py; the classification head and its files are models/heads.py.

Checkpoints: `save_checkpoint` into OUT/checkpoints every `save_every` steps (pretrain) or epoch
(finetune), with the step/epoch and history as client state; `resume=True` loads the latest and
continues the same curve (batches are drawn from generators seeded by step / epoch).

Fine-tuned models: OUT/model/ holds the backbone in genomeconv's format (config.json +
model.safetensors from `model.save`) plus the head (head.safetensors, head.json: see
models/heads.py), which records the base model (id, weights and config hashes) and the --freeze
spec so that `score-variants` knows whether the backbone still matches its language-model head.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genomeconv.errors import InputError
from genomeconv.models.base import LanguageModel
from genomeconv.models.heads import (VariantClassifier, classification_loss, order_classes,
                                     probabilities, probability_columns)
from genomeconv.pipelines import metrics, preflight, training_data
from genomeconv.pipelines.deepspeed_engine import (build_engine, export_model,
                                                   init_distributed, load_deepspeed_config,
                                                   optimizer_step, resume_state, world_size)
from genomeconv.pipelines.options import FinetuneOptions, PretrainOptions, require

# ------------------------------------------------------------------------------- pretrain
class NextTokenLoss(nn.Module):
    """Wraps the HyenaDNA that pretraining builds so that engine(ids) returns the mean
    next-token NLL (nats)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return -self.model.autograd_log_likelihoods(ids).mean()


def check_pretrain(opts: PretrainOptions, *, world: int | None = None) -> None:
    """Every pretrain input error that needs no training: options, DeepSpeed config, FASTA,
    device, --out (InputError, one line). `world`: processes (default WORLD_SIZE, else 1)."""
    opts.check()
    for name in ("d_model", "n_layer", "steps", "batch_size", "eval_every", "save_every"):
        require(getattr(opts, name) >= 1, f"--{name.replace('_', '-')} must be >= 1 "
                 f"(got {getattr(opts, name)})")
    require(opts.seq_len >= 8, f"--seq-len must be >= 8 (got {opts.seq_len})")
    require(opts.val_windows >= 2, f"--val-windows must be >= 2 (got {opts.val_windows})")
    require(opts.d_inner is None or opts.d_inner >= 1, f"d_inner must be >= 1 (got "
             f"{opts.d_inner})")
    require(all(2 <= n < opts.seq_len for n in opts.warmup_lengths),
             f"--warmup-lengths must lie in [2, --seq-len {opts.seq_len}) (got "
             f"{list(opts.warmup_lengths)})")
    require(opts.warmup_steps is None or opts.warmup_steps >= 1,
             f"--warmup-steps must be >= 1 (got {opts.warmup_steps})")
    require(0.0 <= opts.val_fraction <= 0.9, f"--val-fraction must lie in [0, 0.9] (got "
             f"{opts.val_fraction})")
    require(opts.kmer_baseline >= 0, f"--kmer-baseline must be >= 0 (got {opts.kmer_baseline})")
    load_deepspeed_config(opts.deepspeed_config, batch_size=opts.batch_size,
                          world_size=world_size(world))
    preflight.check(opts.out, fasta=opts.fasta, device=opts.device)


def length_at(step: int, opts: PretrainOptions) -> int:
    """Sequence length at a step: each warm-up length for warmup_steps steps, then seq_len."""
    if not opts.warmup_lengths:
        return opts.seq_len
    per = opts.warmup_steps if opts.warmup_steps is not None else \
        max(1, opts.steps // (2 * (len(opts.warmup_lengths) + 1)))
    stage = step // per
    return opts.warmup_lengths[stage] if stage < len(opts.warmup_lengths) else opts.seq_len


@torch.no_grad()
def evaluate_nll(engine, windows: Sequence[np.ndarray], batch: int) -> float:
    """Mean next-token NLL (nats) over equal-length windows, evaluated on every rank."""
    engine.eval()
    device = engine.device
    total = 0.0
    for i in range(0, len(windows), batch):
        ids = torch.from_numpy(np.stack(windows[i:i + batch])).to(device)
        total += float(engine(ids)) * len(ids)
    engine.train()
    return total / len(windows)


def pretrain(opts: PretrainOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Next-token pretraining of a new HyenaDNA on a FASTA; returns the summary (also written
    to OUT/summary.json). The final model is OUT/model (config.json, model.safetensors,
    MODEL_CARD.md)."""
    from genomeconv.models import HyenaConfig, HyenaDNA

    check_pretrain(opts)
    rank, world = init_distributed(opts.device)
    genome, out = opts.fasta, Path(opts.out)
    config = HyenaConfig(d_model=opts.d_model, n_layer=opts.n_layer,
                         d_inner=opts.d_inner or 4 * opts.d_model, max_seq_len=opts.seq_len)
    torch.manual_seed(opts.seed)
    model = HyenaDNA(config)
    split = training_data.load_genome(genome, model.tokenize, val_records=opts.val_records,
                                      val_fraction=opts.val_fraction)
    training_data.check_window_fits(split, max((opts.seq_len, *opts.warmup_lengths)))
    val_windows = training_data.tile_windows(split.val, opts.seq_len, opts.val_windows)
    ds_config = load_deepspeed_config(opts.deepspeed_config, batch_size=opts.batch_size,
                                      world_size=world, dtype=opts.dtype)
    engine = build_engine(NextTokenLoss(model), ds_config, lr=opts.lr,
                          total_steps=opts.steps,
                          warmup_steps=opts.lr_warmup or max(1, opts.steps // 20))
    micro = engine.train_micro_batch_size_per_gpu()
    ckpt_dir = out / "checkpoints"
    client = resume_state(engine, ckpt_dir, opts.resume)
    start, history = (client["step"], client["history"]) if client else (0, [])
    if rank == 0:
        log(f"genome split: {split.describe()}")
        log(f"{world} process(es), micro batch {micro} x accumulation "
            f"{engine.gradient_accumulation_steps()}, ZeRO {engine.zero_optimization_stage()}, "
            f"bf16 {engine.bfloat16_enabled()}" + (f"; resumed at step {start}" if client else ""))
    train_seconds = sum(r["seconds"] for r in history)
    train_tokens = sum(r["tokens"] for r in history)
    logged = history_log(out, history, rank)
    for step in range(start, opts.steps):
        length = length_at(step, opts)
        batch = training_data.sample_windows(split.train, np.random.default_rng([opts.seed, step]),
                                             opts.batch_size, length)
        t0 = time.perf_counter()
        loss = optimizer_step(engine, len(batch), lambda rows: engine(
            torch.from_numpy(batch[rows]).to(engine.device)), rank, world)
        seconds = time.perf_counter() - t0
        record = {"step": step + 1, "length": length, "train_loss": loss,
                  "lr": engine.get_lr()[0], "tokens": opts.batch_size * length, "seconds": seconds}
        train_seconds += seconds
        train_tokens += record["tokens"]
        if (step + 1) % opts.eval_every == 0 or step + 1 == opts.steps:
            record["val_nll"] = evaluate_nll(engine, val_windows, max(1, micro))
            record["val_ppl"] = math.exp(record["val_nll"])
        history.append(record)
        logged(record)
        if rank == 0:
            log(json.dumps({k: round(v, 5) if isinstance(v, float) else v
                            for k, v in record.items()}))
        if (step + 1) % opts.save_every == 0 or step + 1 == opts.steps:
            engine.save_checkpoint(str(ckpt_dir), tag=f"step{step + 1}",
                                   client_state={"step": step + 1, "history": history})
    summary = _pretrain_summary(genome, split, config, opts, history, world,
                                train_tokens / max(train_seconds, 1e-9), len(val_windows))
    if opts.kmer_baseline > 0 and rank == 0:
        summary["kmer_baseline"] = kmer_baseline(split, val_windows, opts.kmer_baseline)
    card = pretrain_card(summary)
    export_model(engine, out / "model", card=card)
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


HISTORY = "history.jsonl"  # one record per step/epoch as it happens; summary.json at the end


def history_log(out: Path, history: list[dict], rank: int) -> Callable[[dict], None]:
    """OUT/history.jsonl for a run that is still going or was stopped (`genomeconv plot
    training` reads it when summary.json is missing): rewritten on rank 0 with the records the
    run starts from (a resumed run drops those written after its checkpoint), then one line
    appended per record by the returned function (a no-op on other ranks)."""
    if rank != 0:
        return lambda record: None
    path = out / HISTORY
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in history))

    def append(record: dict) -> None:
        with path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
    return append


def kmer_baseline(split: training_data.GenomeSplit, val_windows: Sequence[np.ndarray],
                  max_order: int) -> dict[str, Any]:
    """The order-k Markov baseline fitted on the training segments (both strands), k chosen on
    the validation windows (which favours the baseline), scored on the same windows."""
    seqs = [s.ids for s in split.train]
    seqs += [training_data.reverse_complement_ids(s) for s in seqs]
    baseline = metrics.MarkovBaseline(seqs, max_order)
    order, nll = baseline.choose_order(val_windows)
    return {"order": order, "val_nll": nll[order], "val_ppl": math.exp(nll[order]),
            "val_ppl_by_order": {k: round(math.exp(v), 5) for k, v in nll.items()}}


def _pretrain_summary(genome, split, config, opts: PretrainOptions, history: list[dict],
                      world: int, tokens_per_s: float, n_val_windows: int) -> dict[str, Any]:
    last_eval = next(r for r in reversed(history) if "val_nll" in r)
    return {"genome": str(genome), "split": split.describe(), "config": config.to_dict(),
            "options": {k: str(v) if isinstance(v, Path) else v
                        for k, v in asdict(opts).items() if k != "command"},
            "command": opts.command, "processes": world, "steps": len(history),
            "train_tokens": int(sum(r["tokens"] for r in history)),
            "tokens_per_s": tokens_per_s, "final_train_loss": history[-1]["train_loss"],
            "val_nll": last_eval["val_nll"], "val_ppl": last_eval["val_ppl"],
            "val_bases": n_val_windows * (opts.seq_len - 1),
            "torch": torch.__version__, "history": history}


def pretrain_card(summary: dict[str, Any]) -> str:
    """MODEL_CARD.md text for a pretrained model (config, command, data, metrics)."""
    lines = ["# HyenaDNA pretrained with `genomeconv pretrain`", "",
             f"- Command: `{summary['command']}`",
             f"- Training data: {summary['genome']}; {summary['split']}",
             f"- Steps: {summary['steps']} ({summary['train_tokens']:,} training tokens) on "
             f"{summary['processes']} process(es), torch {summary['torch']}",
             f"- Throughput: {summary['tokens_per_s']:.0f} tokens/s (training steps only)",
             f"- Final training loss: {summary['final_train_loss']:.4f} nats/base",
             f"- Held-out perplexity: {summary['val_ppl']:.4f} ({summary['val_nll']:.4f} nats/base"
             f" over {summary['val_bases']:,} predicted bases, both strands)"]
    if "kmer_baseline" in summary:
        b = summary["kmer_baseline"]
        lines += ["", "| model | held-out perplexity |", "| --- | --- |",
                  f"| this model | {summary['val_ppl']:.4f} |",
                  f"| order-{b['order']} Markov (add-one, k chosen on the held-out windows) | "
                  f"{b['val_ppl']:.4f} |", "",
                  "Markov perplexity by order on the same windows: "
                  + ", ".join(f"k={k}: {v:.4f}" for k, v in b["val_ppl_by_order"].items()) + ".",
                  f"The model {'beats' if summary['val_ppl'] < b['val_ppl'] else 'does not beat'}"
                  " the best Markov baseline."]
    lines += ["", "Config:", "", "```json", json.dumps(summary["config"], indent=2), "```", ""]
    return "\n".join(lines)


def freeze(model: LanguageModel, spec: str) -> None:
    """"none": train everything; "all": train only the head; N: freeze the embedding and the
    first N blocks (LanguageModel.freeze)."""
    if spec == "none":
        return
    if spec == "all":
        model.requires_grad_(False)
        return
    model.freeze(int(spec))


@dataclass
class VariantWindows:
    """Token ids of the usable variants' ref and alt windows (right-padded to the longest
    window), their lengths (pooling reads each window's own positions only), class indices and
    input rows."""

    ref: np.ndarray
    alt: np.ndarray
    ref_lengths: np.ndarray
    alt_lengths: np.ndarray
    labels: np.ndarray
    rows: np.ndarray

    def subset(self, keep: np.ndarray) -> VariantWindows:
        """The windows at `keep` (indices or a mask)."""
        return VariantWindows(*(getattr(self, f.name)[keep] for f in fields(self)))

    def inputs(self, rows: Any, device: Any) -> tuple[torch.Tensor, ...]:
        """VariantClassifier's inputs for `rows` on `device`: ref ids, alt ids and lengths."""
        return tuple(torch.from_numpy(a[rows]).to(device)
                     for a in (self.ref, self.alt, self.ref_lengths, self.alt_lengths))


def check_finetune(opts: FinetuneOptions, *, world: int | None = None) -> None:
    """Every finetune input error that needs no training: options, DeepSpeed config, FASTA,
    variant file, device, --out (InputError, one line)."""
    opts.check()
    require(opts.freeze in ("all", "none") or opts.freeze.isdigit(),
             f"--freeze takes all, none or a number of blocks (got {opts.freeze!r})")
    require(opts.window >= 2, f"--window must be >= 2 (got {opts.window})")
    require(opts.head_hidden >= 0, f"--head-hidden must be >= 0 (got {opts.head_hidden})")
    for name in ("epochs", "batch_size", "patience"):
        require(getattr(opts, name) >= 1, f"--{name.replace('_', '-')} must be >= 1 "
                 f"(got {getattr(opts, name)})")
    require(0.0 <= opts.val_fraction <= 0.9, f"--val-fraction must lie in [0, 0.9] (got "
             f"{opts.val_fraction})")
    load_deepspeed_config(opts.deepspeed_config, batch_size=opts.batch_size,
                          world_size=world_size(world))
    preflight.check(opts.out, fasta=opts.fasta, variants=opts.variants, device=opts.device)


def build_windows(data: training_data.LabelledVariants, fasta: str | Path, window: int,
                  classes: Sequence[str], tokenize: Callable[[Sequence[str]], torch.Tensor]
                  ) -> tuple[VariantWindows, dict[str, int]]:
    """Ref/alt windows from the scoring pipeline's `plan_variant`, as the model's token ids
    (`tokenize`: its `LanguageModel.tokenize`, which right-pads); returns the usable ("ok")
    variants and the count of each status."""
    from genomeconv.io.fasta import FastaFile
    from genomeconv.pipelines.variants import plan_variant

    index = {c: i for i, c in enumerate(classes)}
    ref, alt, labels, rows, statuses = [], [], [], [], {}
    cache: dict[str, str | None] = {}
    with FastaFile(fasta) as fa:
        for i, (v, y) in enumerate(zip(data.variants, data.labels)):
            pv = plan_variant(v, fa, window, cache)
            statuses[pv.status] = statuses.get(pv.status, 0) + 1
            if pv.status == "ok":
                ref.append(pv.ref_seq)
                alt.append(pv.alt_seq)
                labels.append(index[y])
                rows.append(i)
    ids = tokenize(ref + alt).numpy() if ref else np.empty((0, window), dtype=np.int64)
    windows = VariantWindows(ids[:len(ref)], ids[len(ref):],
                             *(np.array([len(s) for s in seqs], dtype=np.int64)
                               for seqs in (ref, alt)),
                             np.array(labels, dtype=np.int64), np.array(rows, dtype=np.int64))
    return windows, statuses


@torch.no_grad()
def predict_windows(engine, w: VariantWindows, batch: int) -> np.ndarray:
    """Class probabilities (N, C) of every window pair (run on every rank)."""
    engine.eval()
    out = [probabilities(engine(*w.inputs(slice(i, i + batch), engine.device))).cpu().numpy()
           for i in range(0, len(w.labels), batch)]
    engine.train()
    return np.concatenate(out) if out else np.empty((0, 2))


@dataclass
class FinetuneData:
    """The classes (binary: positive last), the split windows and the planning statuses."""

    classes: list[str]
    train: VariantWindows
    val: VariantWindows
    statuses: dict[str, int]
    val_chroms: list[str]


def finetune_data(variants: str | Path, fasta: str | Path, opts: FinetuneOptions,
                  tokenize: Callable[[Sequence[str]], torch.Tensor]) -> FinetuneData:
    """Read the labelled variants, order the classes, build and split their windows (token ids
    from `tokenize`, the base model's)."""
    data = training_data.read_labelled_variants(variants, opts.label)
    if len(data.classes) < 2:
        raise InputError(f"label {opts.label!r} has a single value {data.classes}; a classifier "
                         "needs two or more", path=variants)
    classes = order_classes(data.labels, data.classes, opts.positive_label)
    windows, statuses = build_windows(data, fasta, opts.window, classes, tokenize)
    chosen = [data.variants[r] for r in windows.rows]
    train_idx, val_idx = training_data.split_by_chromosome(
        chosen, val_chroms=opts.val_chroms, val_fraction=opts.val_fraction, window=opts.window)
    train = windows.subset(np.array(train_idx, dtype=int))
    val = windows.subset(np.array(val_idx, dtype=int))
    if len(train.labels) < opts.batch_size or len(val.labels) == 0:
        raise InputError(f"too few variants after the chromosome split: {len(train.labels)} "
                         f"training, {len(val.labels)} validation (batch size {opts.batch_size}; "
                         f"statuses {statuses})", path=variants)
    return FinetuneData(classes, train, val, statuses,
                        sorted({data.variants[r].chrom for r in val.rows}))


def head_meta(classes: list[str], base: LanguageModel, opts: FinetuneOptions) -> dict[str, Any]:
    """head.json's fields (models/heads.py): the head's shape and classes, and the base model
    (id, weights and config hashes) and --freeze spec that tell `score-variants` whether the
    backbone still matches its language-model head."""
    from genomeconv.pipelines.manifest import model_fingerprint

    binary = len(classes) == 2
    return {"classes": classes, "n_out": 1 if binary else len(classes),
            "hidden": opts.head_hidden, "input_dim": 3 * base.layer_width(opts.layer),
            "pooling": "mean", "features": ["ref", "alt", "alt - ref"], "layer": opts.layer,
            "window": opts.window, "label": opts.label,
            "positive_label": classes[-1] if binary else None,
            "columns": probability_columns(classes),
            "freeze": opts.freeze,
            "base_model": {**model_fingerprint(opts.model, base.config_sha256),
                           "load": _loadable(opts.model)}}


def _loadable(model: str | None) -> str:
    """What `models.load` reads to get this base model back later: "bundled", an absolute
    path or a hub id."""
    if model is None:
        return "bundled"
    return str(Path(model).resolve()) if Path(model).exists() else model


def finetune(opts: FinetuneOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune a variant classifier; the best epoch (validation AUROC) is saved to OUT/model
    (backbone + head.safetensors + head.json); returns the summary (also OUT/summary.json)."""
    from genomeconv.models import load

    check_finetune(opts)
    variants, fasta = opts.variants, opts.fasta
    base = load(opts.model)
    base.require_embeddings("finetune")
    base.check_layer(opts.layer)
    freeze(base, opts.freeze)  # a --freeze beyond the model's blocks fails before any work
    data = finetune_data(variants, fasta, opts, base.tokenize)
    train, val = data.train, data.val
    meta = head_meta(data.classes, base, opts)
    rank, world = init_distributed(opts.device)
    out = Path(opts.out)
    torch.manual_seed(opts.seed)
    base.train()
    ds_config = load_deepspeed_config(opts.deepspeed_config, batch_size=opts.batch_size,
                                      world_size=world, dtype=opts.dtype)
    steps_per_epoch = len(train.labels) // opts.batch_size
    classifier = VariantClassifier(base, meta["n_out"], opts.head_hidden, opts.layer)
    engine = build_engine(classifier, ds_config,
                          lr=opts.lr, total_steps=opts.epochs * steps_per_epoch,
                          warmup_steps=max(1, steps_per_epoch // 2))
    ckpt_dir = out / "checkpoints"
    state = resume_state(engine, ckpt_dir, opts.resume) or {
        "epoch": 0, "history": [], "best": -math.inf, "bad_epochs": 0}
    if rank == 0:
        log(f"{len(train.labels)} training / {len(val.labels)} validation variants "
            f"(statuses {data.statuses}); classes {data.classes}; freeze {opts.freeze}")

    logged = history_log(out, state["history"], rank)

    def loss_of(rows: np.ndarray) -> torch.Tensor:
        labels = torch.from_numpy(train.labels[rows]).to(engine.device)
        return classification_loss(engine(*train.inputs(rows, engine.device)), labels)

    for epoch in range(state["epoch"], opts.epochs):
        if state["bad_epochs"] >= opts.patience:
            break
        order = np.random.default_rng([opts.seed, epoch]).permutation(len(train.labels))
        t0 = time.perf_counter()
        losses = [optimizer_step(engine, opts.batch_size,
                                 lambda rows, b=order[s * opts.batch_size:]: loss_of(b[rows]),
                                 rank, world)
                  for s in range(steps_per_epoch)]
        probs = predict_windows(engine, val, max(1, engine.train_micro_batch_size_per_gpu()))
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                  "seconds": time.perf_counter() - t0,
                  **metrics.classification_metrics(val.labels, probs)}
        state["history"].append(record)
        logged(record)
        target = record["auroc"] if not math.isnan(record["auroc"]) else record["accuracy"]
        improved = target > state["best"]
        if improved:
            state["best"], state["bad_epochs"] = target, 0
            export_model(engine, out / "model", card=finetune_card(meta, record, opts),
                         head_meta=meta)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        if rank == 0:
            log(json.dumps({k: round(v, 5) if isinstance(v, float) else v
                            for k, v in record.items()}) + (" *" if improved else ""))
        engine.save_checkpoint(str(ckpt_dir), tag=f"epoch{epoch + 1}", client_state=state)
    summary = {"variants": str(variants), "fasta": str(fasta), "classes": data.classes,
               "positive_label": meta["positive_label"], "statuses": data.statuses,
               "train_variants": len(train.labels), "val_variants": len(val.labels),
               "val_chroms": data.val_chroms, "history": state["history"],
               "best": state["best"], "command": opts.command}
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def finetune_card(meta: dict[str, Any], record: dict[str, Any], opts: FinetuneOptions) -> str:
    """MODEL_CARD.md text for a fine-tuned variant classifier."""
    return "\n".join([
        "# Variant classifier fine-tuned with `genomeconv finetune`", "",
        f"- Command: `{opts.command}`",
        f"- Base model: {meta['base_model']['model']} (weights sha256 "
        f"{meta['base_model']['model_weights_sha256'][:12]}...)",
        f"- Label {meta['label']!r}, classes {meta['classes']}"
        + (f", positive class {meta['positive_label']!r}" if meta["positive_label"] else "")
        + f"; probability columns {meta['columns']}",
        f"- Head: {meta['features']} of mean-pooled hidden states of "
        f"{meta['layer'] or 'the final norm'} over {meta['window']}-bp windows, hidden "
        f"{meta['hidden']}; backbone frozen: {opts.freeze}",
        f"- Best epoch {record['epoch']}: validation AUROC {record['auroc']:.4f}, "
        f"AUPRC {record['auprc']:.4f}, accuracy {record['accuracy']:.4f}", ""])
