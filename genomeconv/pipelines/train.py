"""Training with DeepSpeed: `genomeconv pretrain` (next-token) and `genomeconv finetune` (variants).

Processes. One process on CPU (gloo; DS_ACCELERATOR=cpu) when started plainly; N processes
under `torchrun --nproc-per-node N` or the `deepspeed` launcher (RANK/WORLD_SIZE from the
launcher); N Ray Train workers (`ray.train.torch.TorchTrainer`) when an address is given. The
global batch is fixed by `batch_size`: each optimizer step sees exactly the same examples
whatever the number of processes and the DeepSpeed config's gradient accumulation, split as
rows [(m * world + rank) * micro, ...) for micro-step m, so runs with different process counts
follow the same loss curve.

DeepSpeed config: a JSON file shipped in genomeconv/data/deepspeed/ (by name, e.g. "zero2_bf16"),
or any JSON file by path.
genomeconv sets `train_batch_size` and `train_micro_batch_size_per_gpu` from `batch_size`, the
world size and the file's `gradient_accumulation_steps`; the file chooses ZeRO stage, bf16,
clipping and offload. An `activation_checkpointing` section turns on recomputation of each
HyenaDNA block in the backward pass (torch.utils.checkpoint). The optimizer is torch AdamW
(no DeepSpeed op compilation), with a linear warm-up and cosine decay of the learning rate.

Checkpoints: `save_checkpoint` into OUT/checkpoints every `save_every` steps (pretrain) or epoch
(finetune), with the step/epoch and history as client state; `resume=True` loads the latest and
continues the same curve (batches are drawn from generators seeded by step / epoch).

Fine-tuned models: OUT/model/ holds the backbone in genomeconv's format (config.json +
model.safetensors from `model.save`) plus the head: head.safetensors (tensors `0.weight`,
`0.bias`, `2.weight`, `2.bias` of Linear(3 d, hidden) -> GELU -> Linear(hidden, n_out); or
`0.weight`, `0.bias` when hidden = 0) and head.json (see `HEAD_FORMAT`, `VariantHead`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import socket
import time
import types
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genomeconv.errors import InputError
from genomeconv.pipelines import metrics, preflight, training_data

CONFIG_DIR = Path(__file__).resolve().parents[1] / "data" / "deepspeed"  # package data
HEAD_FORMAT = "genomeconv-variant-head"
WEIGHT_DECAY = 0.01


# ------------------------------------------------------------------------------ DeepSpeed
def init_distributed() -> tuple[int, int]:
    """Join (or start, as a 1-process group) the process group; returns (rank, world_size)."""
    import torch.distributed as dist

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not dist.is_initialized():
        for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                           "MASTER_ADDR": "127.0.0.1"}.items():
            os.environ.setdefault(key, value)
        if "MASTER_PORT" not in os.environ:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def device_for_rank() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def load_deepspeed_config(name_or_path: str | Path, *, batch_size: int,
                          world_size: int) -> dict[str, Any]:
    """The config file with batch sizes filled in for a global batch of `batch_size`."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise InputError(f"--deepspeed-config {name_or_path!r} not found (a JSON path, or one "
                         f"of: {known})")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not a JSON DeepSpeed config ({exc})", path=path) from None
    gas = cfg.get("gradient_accumulation_steps", 1) if isinstance(cfg, dict) else None
    if not isinstance(gas, int) or isinstance(gas, bool) or gas < 1:
        raise InputError("a DeepSpeed config is a JSON object whose gradient_accumulation_steps "
                         "(default 1) is an integer >= 1", path=path)
    if batch_size % (gas * world_size):
        raise InputError(f"--batch-size {batch_size} is not a multiple of gradient accumulation "
                         f"{gas} x {world_size} processes")
    cfg.update(train_batch_size=batch_size, gradient_accumulation_steps=gas,
               train_micro_batch_size_per_gpu=batch_size // (gas * world_size))
    return cfg


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each HyenaDNA block in the backward pass instead of storing its activations."""
    from torch.utils.checkpoint import checkpoint

    for block in model.backbone.layers:
        bound = types.MethodType(type(block).forward, block)
        block.forward = functools.partial(checkpoint, bound, use_reentrant=False)


def lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up to 1 over warmup_steps, then cosine decay to 0.1 at total_steps."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def build_engine(module: nn.Module, ds_config: dict[str, Any], *, lr: float, total_steps: int,
                 warmup_steps: int):
    """deepspeed.initialize with torch AdamW over the trainable parameters and the LR schedule."""
    import deepspeed

    if "activation_checkpointing" in ds_config:
        enable_activation_checkpointing(module.model)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=WEIGHT_DECAY)
    schedule = functools.partial(torch.optim.lr_scheduler.LambdaLR,
                                 lr_lambda=lr_lambda(total_steps, warmup_steps))
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer,
                                           lr_scheduler=schedule, config=ds_config)
    return engine


def _gathered(engine) -> Any:
    """Context in which ZeRO-3 partitioned parameters are whole on every rank."""
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(engine.module.parameters()))
    return nullcontext()


def export_model(engine, config, directory: Path, *, card: str | None = None,
                 head_meta: dict[str, Any] | None = None) -> None:
    """Write the trained backbone (float32) with `model.save` from rank 0, and the head of a
    VariantClassifier when `head_meta` is given."""
    import torch.distributed as dist

    from genomeconv.models import HyenaDNA

    with _gathered(engine):
        if dist.get_rank() == 0:
            state = {k: v.detach().float().cpu()
                     for k, v in engine.module.model.state_dict().items()}
            fresh = HyenaDNA(config)
            fresh.load_state_dict(state)
            fresh.save(directory, card=card)
            if head_meta is not None:
                save_head(engine.module.head, head_meta, directory)
    dist.barrier()


def _mean_over_ranks(value: float) -> float:
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _rows(batch_rows: int, micro: int, m: int, rank: int, world: int) -> slice:
    start = (m * world + rank) * micro
    if start + micro > batch_rows:
        raise ValueError("batch rows do not cover the global batch")
    return slice(start, start + micro)


def _resume(engine, ckpt_dir: Path, resume: bool) -> dict[str, Any] | None:
    if not (resume and (ckpt_dir / "latest").is_file()):
        return None
    _, client = engine.load_checkpoint(str(ckpt_dir), load_module_strict=True)
    return client


# ------------------------------------------------------------------------------- pretrain
class NextTokenLoss(nn.Module):
    """Wraps a HyenaDNA so that engine(ids) returns the mean next-token NLL (nats)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return -self.model.log_likelihood(ids).mean()


@dataclass
class PretrainOptions:
    """Options of `genomeconv pretrain` (see the command's help)."""

    d_model: int = 128
    n_layer: int = 2
    d_inner: int | None = None  # default 4 d_model
    seq_len: int = 1024
    warmup_lengths: tuple[int, ...] = ()
    warmup_steps: int | None = None  # steps per warm-up length; default steps // (2 (n + 1))
    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-3
    lr_warmup: int | None = None  # default steps // 20
    val_records: tuple[str, ...] = ()
    val_fraction: float = 0.02
    val_windows: int = 64
    eval_every: int = 100
    save_every: int = 100
    kmer_baseline: int = 0  # largest Markov order to compare with (0: no baseline)
    deepspeed_config: str = "zero0_fp32"
    resume: bool = False
    seed: int = 0
    command: str = ""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def _finite_lr(value: float) -> None:
    _require(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
             f"--lr must be a finite number >= 0 (got {value})")


def _world(world: int | None) -> int:
    return world if world is not None else int(os.environ.get("WORLD_SIZE", "1"))


def check_pretrain(genome: str | Path, out: str | Path, opts: PretrainOptions, *,
                   world: int | None = None) -> None:
    """Every pretrain input error that needs no training: options, DeepSpeed config, FASTA,
    --out (InputError, one line). `world`: processes (default WORLD_SIZE, else 1)."""
    for name in ("d_model", "n_layer", "steps", "batch_size", "eval_every", "save_every"):
        _require(getattr(opts, name) >= 1, f"--{name.replace('_', '-')} must be >= 1 "
                 f"(got {getattr(opts, name)})")
    _require(opts.seq_len >= 8, f"--seq-len must be >= 8 (got {opts.seq_len})")
    _require(opts.val_windows >= 2, f"--val-windows must be >= 2 (got {opts.val_windows})")
    _require(opts.d_inner is None or opts.d_inner >= 1, f"d_inner must be >= 1 (got "
             f"{opts.d_inner})")
    _require(all(2 <= n < opts.seq_len for n in opts.warmup_lengths),
             f"--warmup-lengths must lie in [2, --seq-len {opts.seq_len}) (got "
             f"{list(opts.warmup_lengths)})")
    _require(opts.warmup_steps is None or opts.warmup_steps >= 1,
             f"--warmup-steps must be >= 1 (got {opts.warmup_steps})")
    _require(0.0 <= opts.val_fraction <= 0.9, f"--val-fraction must lie in [0, 0.9] (got "
             f"{opts.val_fraction})")
    _require(opts.kmer_baseline >= 0, f"--kmer-baseline must be >= 0 (got {opts.kmer_baseline})")
    _finite_lr(opts.lr)
    load_deepspeed_config(opts.deepspeed_config, batch_size=opts.batch_size,
                          world_size=_world(world))
    preflight.check(out, fasta=genome)


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


def pretrain(genome: str | Path, out: str | Path, opts: PretrainOptions,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Next-token pretraining of a new HyenaDNA on a FASTA; returns the summary (also written
    to OUT/summary.json). The final model is OUT/model (config.json, model.safetensors,
    MODEL_CARD.md)."""
    from genomeconv.models import HyenaConfig, HyenaDNA

    check_pretrain(genome, out, opts)
    rank, world = init_distributed()
    out = Path(out)
    split = training_data.load_genome(genome, val_records=opts.val_records,
                                      val_fraction=opts.val_fraction)
    training_data.check_window_fits(split, max((opts.seq_len, *opts.warmup_lengths)))
    val_windows = training_data.tile_windows(split.val, opts.seq_len, opts.val_windows)
    config = HyenaConfig(d_model=opts.d_model, n_layer=opts.n_layer,
                         d_inner=opts.d_inner or 4 * opts.d_model, max_seq_len=opts.seq_len)
    torch.manual_seed(opts.seed)
    ds_config = load_deepspeed_config(opts.deepspeed_config, batch_size=opts.batch_size,
                                      world_size=world)
    engine = build_engine(NextTokenLoss(HyenaDNA(config)), ds_config, lr=opts.lr,
                          total_steps=opts.steps,
                          warmup_steps=opts.lr_warmup or max(1, opts.steps // 20))
    micro = ds_config["train_micro_batch_size_per_gpu"]
    gas = ds_config["gradient_accumulation_steps"]
    ckpt_dir = out / "checkpoints"
    client = _resume(engine, ckpt_dir, opts.resume)
    start, history = (client["step"], client["history"]) if client else (0, [])
    if rank == 0:
        log(f"genome split: {split.describe()}")
        log(f"{world} process(es), micro batch {micro} x accumulation {gas}, "
            f"ZeRO {engine.zero_optimization_stage()}, bf16 {engine.bfloat16_enabled()}"
            + (f"; resumed at step {start}" if client else ""))
    train_seconds = sum(r["seconds"] for r in history)
    train_tokens = sum(r["tokens"] for r in history)
    for step in range(start, opts.steps):
        length = length_at(step, opts)
        batch = training_data.sample_windows(split.train, np.random.default_rng([opts.seed, step]),
                                             opts.batch_size, length)
        t0 = time.perf_counter()
        losses = []
        for m in range(gas):
            rows = _rows(len(batch), micro, m, rank, world)
            ids = torch.from_numpy(batch[rows]).to(engine.device)
            loss = engine(ids)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        seconds = time.perf_counter() - t0
        record = {"step": step + 1, "length": length,
                  "train_loss": _mean_over_ranks(float(np.mean(losses))),
                  "lr": engine.get_lr()[0], "tokens": opts.batch_size * length, "seconds": seconds}
        train_seconds += seconds
        train_tokens += record["tokens"]
        if (step + 1) % opts.eval_every == 0 or step + 1 == opts.steps:
            record["val_nll"] = evaluate_nll(engine, val_windows, max(1, micro))
            record["val_ppl"] = math.exp(record["val_nll"])
        history.append(record)
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
    export_model(engine, config, out / "model", card=card)
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


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
            "options": {k: v for k, v in asdict(opts).items() if k != "command"},
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


# ------------------------------------------------------------------------------- finetune
class VariantClassifier(nn.Module):
    """HyenaDNA backbone + head on [mean(ref), mean(alt), mean(alt) - mean(ref)] hidden states."""

    def __init__(self, model: nn.Module, n_out: int, hidden: int) -> None:
        super().__init__()
        self.model = model
        self.head = make_head(3 * model.config.d_model, n_out, hidden)

    def forward(self, ref_ids: torch.Tensor, alt_ids: torch.Tensor) -> torch.Tensor:
        pooled = self.model(torch.cat([ref_ids, alt_ids])).float().mean(dim=1)
        ref, alt = pooled.chunk(2)
        return self.head(torch.cat([ref, alt, alt - ref], dim=1))


def make_head(d_in: int, n_out: int, hidden: int) -> nn.Sequential:
    """Linear(d_in, hidden) -> GELU -> Linear(hidden, n_out), or one Linear when hidden = 0."""
    if hidden == 0:
        return nn.Sequential(nn.Linear(d_in, n_out))
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))


def freeze(model: nn.Module, spec: str) -> None:
    """"none": train everything; "all": train only the head; N: freeze the embedding and the
    first N blocks."""
    if spec == "none":
        return
    if spec == "all":
        model.requires_grad_(False)
        return
    n = int(spec)
    model.backbone.embeddings.requires_grad_(False)
    for block in model.backbone.layers[:n]:
        block.requires_grad_(False)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(N, 1) binary logits -> (N, 2); (N, C) -> softmax."""
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits for one output, cross-entropy for several."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
    return nn.functional.cross_entropy(logits, labels)


@dataclass
class VariantHead:
    """A fine-tuned head read back from a model directory; `predict` gives class probabilities
    from mean-pooled final hidden states of the forward ref and alt windows."""

    head: nn.Sequential
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def window(self) -> int:
        return int(self.meta["window"])

    @torch.no_grad()
    def predict(self, ref_pooled: np.ndarray, alt_pooled: np.ndarray) -> np.ndarray:
        """(N, d) ref and alt pooled hidden states -> (N, n_classes) probabilities."""
        ref = torch.as_tensor(np.asarray(ref_pooled), dtype=torch.float32)
        alt = torch.as_tensor(np.asarray(alt_pooled), dtype=torch.float32)
        return probabilities(self.head(torch.cat([ref, alt, alt - ref], dim=1))).numpy()

    def score(self, ref_pooled: np.ndarray, alt_pooled: np.ndarray) -> np.ndarray:
        """The fine-tuned score column: P(positive class) for binary heads, else P(last class)."""
        return self.predict(ref_pooled, alt_pooled)[:, -1]


def save_head(head: nn.Module, meta: dict[str, Any], directory: Path) -> None:
    """Write head.safetensors + head.json next to a saved backbone."""
    from safetensors.torch import save_file

    state = {k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(directory / "head.safetensors"))
    text = json.dumps({"format": HEAD_FORMAT, **meta}, indent=2)
    (directory / "head.json").write_text(text + "\n")


def load_head(directory: str | Path) -> VariantHead | None:
    """The fine-tuned head of a model directory, or None when it has none."""
    from safetensors.torch import load_file

    from safetensors import SafetensorError

    directory = Path(directory)
    if not (directory / "head.json").is_file():
        return None
    try:
        meta = json.loads((directory / "head.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON ({exc})", path=directory / "head.json") from None
    if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
        raise InputError(f"unknown head format "
                         f"{meta.get('format') if isinstance(meta, dict) else meta!r}",
                         path=directory / "head.json")
    try:
        head = make_head(meta["input_dim"], meta["n_out"], meta["hidden"])
        head.load_state_dict(load_file(str(directory / "head.safetensors")))
    except (KeyError, TypeError, RuntimeError, OSError, SafetensorError) as exc:
        raise InputError(f"unreadable fine-tuned head ({' '.join(str(exc).split())[:300]})",
                         path=directory) from None
    return VariantHead(head.eval(), meta)


@dataclass
class FinetuneOptions:
    """Options of `genomeconv finetune` (see the command's help)."""

    label: str = "label"
    base_model: str | None = None  # None: the bundled model
    freeze: str = "none"
    window: int = 1024
    head_hidden: int = 64
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    patience: int = 3
    val_chroms: tuple[str, ...] = ()
    val_fraction: float = 0.2
    deepspeed_config: str = "zero0_fp32"
    resume: bool = False
    seed: int = 0
    command: str = ""


@dataclass
class VariantWindows:
    """Tokenized ref/alt windows of the usable variants, their class indices and input rows."""

    ref: np.ndarray
    alt: np.ndarray
    labels: np.ndarray
    rows: np.ndarray


def check_finetune(variants: str | Path, fasta: str | Path, out: str | Path,
                   opts: FinetuneOptions, *, world: int | None = None) -> None:
    """Every finetune input error that needs no training: options, DeepSpeed config, FASTA,
    variant file, --out (InputError, one line)."""
    _require(opts.freeze in ("all", "none") or opts.freeze.isdigit(),
             f"--freeze takes all, none or a number of blocks (got {opts.freeze!r})")
    _require(opts.window >= 2, f"--window must be >= 2 (got {opts.window})")
    _require(opts.head_hidden >= 0, f"--head-hidden must be >= 0 (got {opts.head_hidden})")
    for name in ("epochs", "batch_size", "patience"):
        _require(getattr(opts, name) >= 1, f"--{name.replace('_', '-')} must be >= 1 "
                 f"(got {getattr(opts, name)})")
    _require(0.0 <= opts.val_fraction <= 0.9, f"--val-fraction must lie in [0, 0.9] (got "
             f"{opts.val_fraction})")
    _finite_lr(opts.lr)
    load_deepspeed_config(opts.deepspeed_config, batch_size=opts.batch_size,
                          world_size=_world(world))
    preflight.check(out, fasta=fasta, variants=variants)


def build_windows(data: training_data.LabelledVariants, fasta: str | Path, window: int,
                  classes: Sequence[str]) -> tuple[VariantWindows, dict[str, int]]:
    """Ref/alt windows from the scoring pipeline's `plan_variant`; returns the usable ("ok")
    variants and the count of each status."""
    from genomeconv.io.fasta import FastaFile
    from genomeconv.models import tokenize
    from genomeconv.pipelines.variants import plan_variant

    index = {c: i for i, c in enumerate(classes)}
    ref, alt, labels, rows, statuses = [], [], [], [], {}
    cache: dict[str, str | None] = {}
    with FastaFile(fasta) as fa:
        for i, (v, y) in enumerate(zip(data.variants, data.labels)):
            pv = plan_variant(v, fa, window, cache)
            statuses[pv.status] = statuses.get(pv.status, 0) + 1
            if pv.status == "ok":
                ref.append(tokenize(pv.ref_seq).numpy())
                alt.append(tokenize(pv.alt_seq).numpy())
                labels.append(index[y])
                rows.append(i)
    empty = np.empty((0, window), dtype=np.int64)
    windows = VariantWindows(np.stack(ref) if ref else empty, np.stack(alt) if alt else empty,
                             np.array(labels, dtype=np.int64), np.array(rows, dtype=np.int64))
    return windows, statuses


def _subset(w: VariantWindows, keep: np.ndarray) -> VariantWindows:
    return VariantWindows(w.ref[keep], w.alt[keep], w.labels[keep], w.rows[keep])


@torch.no_grad()
def predict_windows(engine, w: VariantWindows, batch: int) -> np.ndarray:
    """Class probabilities (N, C) of every window pair (run on every rank)."""
    engine.eval()
    out = []
    for i in range(0, len(w.labels), batch):
        ref = torch.from_numpy(w.ref[i:i + batch]).to(engine.device)
        alt = torch.from_numpy(w.alt[i:i + batch]).to(engine.device)
        out.append(probabilities(engine(ref, alt)).cpu().numpy())
    engine.train()
    return np.concatenate(out) if out else np.empty((0, 2))


def finetune(variants: str | Path, fasta: str | Path, out: str | Path, opts: FinetuneOptions,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune a variant classifier; the best epoch (validation AUROC) is saved to OUT/model
    (backbone + head.safetensors + head.json); returns the summary (also OUT/summary.json)."""
    from genomeconv.models import load

    check_finetune(variants, fasta, out, opts)
    base = load(opts.base_model)
    if opts.freeze.isdigit() and int(opts.freeze) > base.config.n_layer:
        raise InputError(f"--freeze {opts.freeze}: the base model has {base.config.n_layer} "
                         "blocks")
    rank, world = init_distributed()
    out = Path(out)
    data = training_data.read_labelled_variants(variants, opts.label)
    classes = data.classes
    if len(classes) < 2:
        raise InputError(f"label {opts.label!r} has a single value {classes}; a classifier "
                         "needs two or more", path=variants)
    windows, statuses = build_windows(data, fasta, opts.window, classes)
    chosen = [data.variants[r] for r in windows.rows]
    train_idx, val_idx = training_data.split_by_chromosome(
        chosen, val_chroms=opts.val_chroms, val_fraction=opts.val_fraction, window=opts.window)
    train = _subset(windows, np.array(train_idx, dtype=int))
    val = _subset(windows, np.array(val_idx, dtype=int))
    if len(train.labels) < opts.batch_size or len(val.labels) == 0:
        raise InputError(f"too few variants after the chromosome split: {len(train.labels)} "
                         f"training, {len(val.labels)} validation (batch size {opts.batch_size}; "
                         f"statuses {statuses})", path=variants)
    torch.manual_seed(opts.seed)
    base.train()
    freeze(base, opts.freeze)
    n_out = 1 if len(classes) == 2 else len(classes)
    module = VariantClassifier(base, n_out, opts.head_hidden)
    ds_config = load_deepspeed_config(opts.deepspeed_config, batch_size=opts.batch_size,
                                      world_size=world)
    steps_per_epoch = len(train.labels) // opts.batch_size
    engine = build_engine(module, ds_config, lr=opts.lr, total_steps=opts.epochs * steps_per_epoch,
                          warmup_steps=max(1, steps_per_epoch // 2))
    micro = ds_config["train_micro_batch_size_per_gpu"]
    gas = ds_config["gradient_accumulation_steps"]
    ckpt_dir = out / "checkpoints"
    client = _resume(engine, ckpt_dir, opts.resume)
    state = client or {"epoch": 0, "history": [], "best": -math.inf, "bad_epochs": 0}
    meta = {"classes": classes, "n_out": n_out, "hidden": opts.head_hidden,
            "input_dim": 3 * base.config.d_model, "pooling": "mean",
            "features": ["ref", "alt", "alt - ref"], "window": opts.window,
            "score": "P(" + classes[-1] + ")", "label": opts.label,
            "base_model": getattr(base, "model_id", str(opts.base_model))}
    if rank == 0:
        log(f"{len(train.labels)} training / {len(val.labels)} validation variants "
            f"(statuses {statuses}); classes {classes}; freeze {opts.freeze}")
    for epoch in range(state["epoch"], opts.epochs):
        if state["bad_epochs"] >= opts.patience:
            break
        order = np.random.default_rng([opts.seed, epoch]).permutation(len(train.labels))
        losses, t0 = [], time.perf_counter()
        for s in range(steps_per_epoch):
            batch = order[s * opts.batch_size:(s + 1) * opts.batch_size]
            for m in range(gas):
                rows = batch[_rows(len(batch), micro, m, rank, world)]
                loss = classification_loss(
                    engine(torch.from_numpy(train.ref[rows]).to(engine.device),
                           torch.from_numpy(train.alt[rows]).to(engine.device)),
                    torch.from_numpy(train.labels[rows]).to(engine.device))
                engine.backward(loss)
                engine.step()
                losses.append(loss.item())
        probs = predict_windows(engine, val, max(1, micro))
        record = {"epoch": epoch + 1, "train_loss": _mean_over_ranks(float(np.mean(losses))),
                  "seconds": time.perf_counter() - t0,
                  **metrics.classification_metrics(val.labels, probs)}
        state["history"].append(record)
        target = record["auroc"] if not math.isnan(record["auroc"]) else record["accuracy"]
        improved = target > state["best"]
        if improved:
            state["best"], state["bad_epochs"] = target, 0
            export_model(engine, base.config, out / "model", card=finetune_card(meta, record, opts),
                         head_meta=meta)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        if rank == 0:
            log(json.dumps({k: round(v, 5) if isinstance(v, float) else v
                            for k, v in record.items()}) + (" *" if improved else ""))
        engine.save_checkpoint(str(ckpt_dir), tag=f"epoch{epoch + 1}", client_state=state)
    summary = {"variants": str(variants), "fasta": str(fasta), "classes": classes,
               "statuses": statuses, "train_variants": len(train.labels),
               "val_variants": len(val.labels),
               "val_chroms": sorted({data.variants[r].chrom for r in val.rows}),
               "history": state["history"], "best": state["best"], "command": opts.command}
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def finetune_card(meta: dict[str, Any], record: dict[str, Any], opts: FinetuneOptions) -> str:
    """MODEL_CARD.md text for a fine-tuned variant classifier."""
    return "\n".join([
        "# HyenaDNA variant classifier fine-tuned with `genomeconv finetune`", "",
        f"- Command: `{opts.command}`", f"- Base model: {meta['base_model']}",
        f"- Label {meta['label']!r}, classes {meta['classes']}; score column = {meta['score']}",
        f"- Head: {meta['features']} of mean-pooled hidden states of {meta['window']}-bp windows, "
        f"hidden {meta['hidden']}; backbone frozen: {opts.freeze}",
        f"- Best epoch {record['epoch']}: validation AUROC {record['auroc']:.4f}, "
        f"AUPRC {record['auprc']:.4f}, accuracy {record['accuracy']:.4f}", ""])


# ------------------------------------------------------------------------------ Ray Train
def run_on_ray(fn: Callable[..., dict[str, Any]], args: tuple, *, out: str | Path,
               address: str | None, num_workers: int) -> dict[str, Any]:
    """Run pretrain/finetune (`fn(*args)`, writing to `out`) as `num_workers` Ray Train workers
    (TorchTrainer sets up the process group that DeepSpeed then joins); returns the summary
    that rank 0 wrote to OUT/summary.json (OUT must be on storage every worker can reach)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from genomeconv.pipelines.runtime import connect

    checks: dict[Callable[..., Any], Callable[..., None]] = {pretrain: check_pretrain,
                                                             finetune: check_finetune}
    checks[fn](*args, world=num_workers)  # here: a worker's error would be a Ray traceback
    connect(address)
    out = Path(out).resolve()

    def loop(config: dict[str, Any]) -> None:
        fn(*config["args"], log=lambda line: None)

    trainer = TorchTrainer(
        loop, train_loop_config={"args": args},
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers,
                                               use_gpu=torch.cuda.is_available()),
        torch_config=TorchConfig(backend="nccl" if torch.cuda.is_available() else "gloo"),
        run_config=ray.train.RunConfig(storage_path=str(out / "ray"), name="genomeconv-train"))
    trainer.fit()
    return json.loads((out / "summary.json").read_text())
