"""`genomeconv pretrain` and `genomeconv finetune`: DeepSpeed training (genomeconv.pipelines.train).

Run as one process (CPU: gloo), under `torchrun --nproc-per-node N -m genomeconv.cli pretrain ...`
or the `deepspeed` launcher, or on a Ray cluster with `--address` (Ray Train workers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from genomeconv.commands.options import (Address, Device, Dtype, Fasta, Layer, Model, NumWorkers,
                                         OldBaseModel, Out, Reference, build, reference)
from genomeconv.errors import InputError
from genomeconv.pipelines.options import FinetuneOptions as F
from genomeconv.pipelines.options import PretrainOptions as P

# Options only `pretrain` and `finetune` take.
DeepSpeedConfig = Annotated[str, typer.Option(
    "--deepspeed-config", help="DeepSpeed config: a name shipped in genomeconv/data/deepspeed/ "
    "(zero0_fp32, zero1_fp32, zero2_bf16, zero3_fp32, zero3_offload, long_seq_bf16_ckpt) or a "
    "JSON path; --dtype overrides its bf16/fp16.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint.")]
Seed = Annotated[int, typer.Option("--seed")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Global batch (over all "
                                        "processes).")]
Lr = Annotated[float, typer.Option("--lr")]
ValFraction = Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9)]


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"expected comma-separated integers, got {text!r}") from None


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _run(fn: Callable[..., dict], check: Callable[..., None], opts: Any) -> dict:
    """Run in this process (or under a launcher), or as Ray Train workers when --address."""
    if opts.address is None:
        return fn(opts, log=lambda line: typer.echo(line, err=True))
    from genomeconv.pipelines.deepspeed_engine import run_on_ray

    return run_on_ray(fn, check, (opts,), out=opts.out, address=opts.address,
                      num_workers=opts.num_workers)


def pretrain(
    genome: Reference = None,
    fasta: Fasta = None,
    out: Out = P.out,
    model: Model = None,
    d_model: int = typer.Option(P.d_model, "--d-model", min=1),
    n_layer: int = typer.Option(P.n_layer, "--n-layer", min=1),
    seq_len: int = typer.Option(P.seq_len, "--seq-len", min=8, help="Final training length "
                                "(= the model's max_seq_len)."),
    warmup_lengths: str = typer.Option("", "--warmup-lengths", help="Comma-separated shorter "
                                       "lengths trained first (e.g. 256,512)."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", min=1, help="Steps per "
                                               "warm-up length (default steps / (2 (n + 1)))."),
    steps: int = typer.Option(P.steps, "--steps", min=1),
    batch_size: BatchSize = P.batch_size,
    lr: Lr = P.lr,
    val_records: Optional[str] = typer.Option(None, "--val-records", help="Comma-separated "
                                              "records held out for validation (default: the "
                                              "last --val-fraction of every record)."),
    val_fraction: ValFraction = P.val_fraction,
    val_windows: int = typer.Option(P.val_windows, "--val-windows", min=2, help="Validation "
                                    "windows (half forward, half reverse complement)."),
    eval_every: int = typer.Option(P.eval_every, "--eval-every", min=1),
    save_every: int = typer.Option(P.save_every, "--save-every", min=1),
    kmer_baseline: int = typer.Option(P.kmer_baseline, "--kmer-baseline", min=0, help="Compare "
                                      "with Markov models of order up to K (0: off)."),
    old_family: Optional[str] = typer.Option(None, "--family", hidden=True),
    old_k: int = typer.Option(6, "--k", hidden=True),
    deepspeed_config: DeepSpeedConfig = P.deepspeed_config,
    resume: Resume = P.resume,
    seed: Seed = P.seed,
    device: Device = None,
    dtype: Dtype = None,
    address: Address = None,
    num_workers: NumWorkers = P.num_workers,
) -> None:
    """Next-token pretraining of a new HyenaDNA on random windows of the reference (both
    strands); `--model kmer:K` counts an order-K Markov model instead (no training)."""
    from genomeconv.models.families.kmer import parse_spec
    from genomeconv.pipelines.manifest import note

    genome = reference(genome, fasta, "GENOME")
    if old_family is not None:
        note(f"--family {old_family} is now --model " + ("kmer:K" if old_family == "kmer"
                                                         else "(none: a new HyenaDNA)"))
        model = f"kmer:{old_k}" if old_family == "kmer" else model
    order = parse_spec(model)
    if order is not None:
        from genomeconv.pipelines.baselines import fit_kmer

        fit_kmer(genome, order, out / "model")
        typer.echo(f"order-{order} k-mer model in {out / 'model'}")
        return
    if model is not None:
        raise InputError(f"pretrain trains a new HyenaDNA or counts --model kmer:K (got "
                         f"--model {model}); to train further from a model use finetune")
    from genomeconv.pipelines.train import check_pretrain, pretrain as run

    opts = build(P, {**locals(), "fasta": genome, "warmup_lengths": _ints(warmup_lengths)})
    summary = _run(run, check_pretrain, opts)
    if not _is_rank0():
        return
    line = f"validation perplexity {summary['val_ppl']:.4f}"
    if "kmer_baseline" in summary:
        b = summary["kmer_baseline"]
        line += f" (order-{b['order']} Markov baseline {b['val_ppl']:.4f})"
    typer.echo(f"{line}; {summary['tokens_per_s']:.0f} tokens/s; model in {out / 'model'}")


def finetune(
    variants: Path = typer.Argument(..., metavar="VARIANTS", help="VCF/BCF with a label INFO "
                                    "field, or a table (chrom, pos, ref, alt, label)."),
    fasta: Fasta = None,
    model: Model = None,
    old_base_model: OldBaseModel = None,
    label: str = typer.Option(F.label, "--label-field", "--label-column", help="INFO field or "
                              "column holding the label (2 values: binary; more: multi-class)."),
    positive_label: Optional[str] = typer.Option(F.positive_label, "--positive-label",
                                                 help="Binary labels: the class whose "
                                                 "probability score-variants writes as "
                                                 "p_<class> (default: the less frequent label; "
                                                 "a tie: the one sorting last)."),
    freeze: str = typer.Option(F.freeze, "--freeze", help="all (head only), none, or N "
                               "(freeze the embedding and the first N blocks)."),
    layer: Layer = None,
    window: int = typer.Option(F.window, "--window", min=2, help="Window around each variant."),
    head_hidden: int = typer.Option(F.head_hidden, "--head-hidden", min=0, help="Head hidden "
                                    "units (0: linear head)."),
    epochs: int = typer.Option(F.epochs, "--epochs", min=1),
    batch_size: BatchSize = F.batch_size,
    lr: Lr = F.lr,
    patience: int = typer.Option(F.patience, "--patience", min=1, help="Stop after this many "
                                 "epochs without a better validation AUROC."),
    val_chroms: Optional[str] = typer.Option(None, "--val-chroms", help="Comma-separated "
                                             "validation chromosomes (default: chosen to hold "
                                             "--val-fraction of the variants)."),
    val_fraction: ValFraction = F.val_fraction,
    out: Out = F.out,
    deepspeed_config: DeepSpeedConfig = F.deepspeed_config,
    resume: Resume = F.resume,
    seed: Seed = F.seed,
    device: Device = None,
    dtype: Dtype = None,
    address: Address = None,
    num_workers: NumWorkers = F.num_workers,
) -> None:
    """Fine-tune a variant classifier (head on pooled ref, alt, alt - ref windows) on --model
    (default: the bundled model)."""
    from genomeconv.pipelines.train import check_finetune, finetune as run

    opts = build(F, {**locals(), "fasta": reference(None, fasta)})
    summary = _run(run, check_finetune, opts)
    best = max(summary["history"], key=lambda r: r["auroc"], default=None)
    if best and _is_rank0():
        typer.echo(f"best epoch {best['epoch']}: AUROC {best['auroc']:.4f}, AUPRC "
                   f"{best['auprc']:.4f}, accuracy {best['accuracy']:.4f}; model in "
                   f"{out / 'model'}")


def register(app: typer.Typer) -> None:
    """Add `pretrain` and `finetune`."""
    app.command("pretrain")(pretrain)
    app.command("finetune")(finetune)
