"""`genomeconv pretrain` and `genomeconv finetune`: DeepSpeed training (genomeconv.pipelines.train).

Run as one process (CPU: gloo), under `torchrun --nproc-per-node N -m genomeconv.cli pretrain ...`
or the `deepspeed` launcher, or on a Ray cluster with `--address` (Ray Train workers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from genomeconv.pipelines.options import FinetuneOptions, PretrainOptions

_P, _F = PretrainOptions(), FinetuneOptions()  # the option defaults, stated once there
_DS_HELP = ("DeepSpeed config: a name shipped in genomeconv/data/deepspeed/ (zero0_fp32, "
            "zero1_fp32, zero2_bf16, zero3_fp32, zero3_offload, long_seq_bf16_ckpt) or a JSON "
            "path.")


# Options shared by `pretrain` and `finetune`.
DeepSpeedConfig = Annotated[str, typer.Option("--deepspeed-config", help=_DS_HELP)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint.")]
Seed = Annotated[int, typer.Option("--seed")]
Address = Annotated[Optional[str], typer.Option("--address", help="Ray cluster: train with Ray "
                                                "Train workers.")]
NumWorkers = Annotated[int, typer.Option("--num-workers", min=1, help="Ray Train workers.")]


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def _names(text: Optional[str]) -> tuple[str, ...]:
    return tuple(x.strip() for x in (text or "").split(",") if x.strip())


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _run(fn, check, args: tuple, address: Optional[str], num_workers: int, out: Path) -> dict:
    """Run in this process (or under a launcher), or as Ray Train workers when --address."""
    if address is None:
        return fn(*args, log=lambda line: typer.echo(line, err=True))
    from genomeconv.pipelines.deepspeed_engine import run_on_ray

    return run_on_ray(fn, check, args, out=out, address=address, num_workers=num_workers)


def pretrain(
    genome: Path = typer.Argument(..., metavar="GENOME.fa", help="FASTA (plain, gzip or "
                                  "bgzip), GenBank/EMBL or GFF3 with ##FASTA."),
    out: Path = typer.Option(Path("pretrain_out"), "--out", help="Output folder: model/, "
                             "checkpoints/, summary.json."),
    d_model: int = typer.Option(_P.d_model, "--d-model", min=1),
    n_layer: int = typer.Option(_P.n_layer, "--n-layer", min=1),
    seq_len: int = typer.Option(_P.seq_len, "--seq-len", min=8, help="Final training length "
                                "(= the model's max_seq_len)."),
    warmup_lengths: str = typer.Option("", "--warmup-lengths", help="Comma-separated shorter "
                                       "lengths trained first (e.g. 256,512)."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", min=1, help="Steps per "
                                               "warm-up length (default steps / (2 (n + 1)))."),
    steps: int = typer.Option(_P.steps, "--steps", min=1),
    batch_size: int = typer.Option(_P.batch_size, "--batch-size", min=1, help="Global batch "
                                   "(windows per optimizer step, over all processes)."),
    lr: float = typer.Option(_P.lr, "--lr"),
    val_records: Optional[str] = typer.Option(None, "--val-records", help="Comma-separated "
                                              "records held out for validation (default: the "
                                              "last --val-fraction of every record)."),
    val_fraction: float = typer.Option(_P.val_fraction, "--val-fraction", min=0.0, max=0.9),
    val_windows: int = typer.Option(_P.val_windows, "--val-windows", min=2, help="Validation "
                                    "windows (half forward, half reverse complement)."),
    eval_every: int = typer.Option(_P.eval_every, "--eval-every", min=1),
    save_every: int = typer.Option(_P.save_every, "--save-every", min=1),
    kmer_baseline: int = typer.Option(_P.kmer_baseline, "--kmer-baseline", min=0, help="Compare "
                                      "with Markov models of order up to K (0: off)."),
    family: str = typer.Option("hyena", "--family", help="hyena, or kmer: count an order --k "
                               "Markov model on both strands of GENOME into OUT/model (no "
                               "training; load it with --model OUT/model)."),
    k: int = typer.Option(6, "--k", min=0, help="Markov order of --family kmer."),
    deepspeed_config: DeepSpeedConfig = _P.deepspeed_config,
    resume: Resume = _P.resume,
    seed: Seed = _P.seed,
    address: Address = None,
    num_workers: NumWorkers = 1,
) -> None:
    """Next-token pretraining of a new HyenaDNA on random windows of GENOME (both strands)."""
    if family == "kmer":
        from genomeconv.pipelines.baselines import fit_kmer

        fit_kmer(genome, k, out / "model")
        typer.echo(f"order-{k} k-mer model in {out / 'model'}")
        return
    if family != "hyena":
        raise typer.BadParameter(f"--family must be hyena or kmer (got {family!r})")
    from genomeconv.cli import command_line
    from genomeconv.pipelines.train import check_pretrain as check
    from genomeconv.pipelines.train import pretrain as run

    opts = PretrainOptions(
        d_model=d_model, n_layer=n_layer, seq_len=seq_len, warmup_lengths=_ints(warmup_lengths),
        warmup_steps=warmup_steps, steps=steps, batch_size=batch_size, lr=lr,
        val_records=_names(val_records), val_fraction=val_fraction, val_windows=val_windows,
        eval_every=eval_every, save_every=save_every, kmer_baseline=kmer_baseline,
        deepspeed_config=deepspeed_config, resume=resume, seed=seed, command=command_line())
    summary = _run(run, check, (str(genome), str(out), opts), address, num_workers, out)
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
    fasta: Path = typer.Option(..., "--fasta", help="Reference: FASTA (plain, gzip or bgzip), "
                               "GenBank/EMBL or GFF3 with ##FASTA."),
    base_model: Optional[str] = typer.Option(_F.base_model, "--base-model", help="Checkpoint "
                                             "path or hub id (default: the bundled model)."),
    label: str = typer.Option(_F.label, "--label-field", "--label-column", help="INFO field or "
                              "column holding the label (2 values: binary; more: multi-class)."),
    positive_label: Optional[str] = typer.Option(_F.positive_label, "--positive-label",
                                                 help="Binary labels: the class whose "
                                                 "probability score-variants writes as "
                                                 "p_<class> (default: the less frequent label; "
                                                 "a tie: the one sorting last)."),
    freeze: str = typer.Option(_F.freeze, "--freeze", help="all (head only), none, or N "
                               "(freeze the embedding and the first N blocks)."),
    window: int = typer.Option(_F.window, "--window", min=2, help="Window around each variant."),
    head_hidden: int = typer.Option(_F.head_hidden, "--head-hidden", min=0, help="Head hidden "
                                    "units (0: linear head)."),
    epochs: int = typer.Option(_F.epochs, "--epochs", min=1),
    batch_size: int = typer.Option(_F.batch_size, "--batch-size", min=1, help="Global batch."),
    lr: float = typer.Option(_F.lr, "--lr"),
    patience: int = typer.Option(_F.patience, "--patience", min=1, help="Stop after this many "
                                 "epochs without a better validation AUROC."),
    val_chroms: Optional[str] = typer.Option(None, "--val-chroms", help="Comma-separated "
                                             "validation chromosomes (default: chosen to hold "
                                             "--val-fraction of the variants)."),
    val_fraction: float = typer.Option(_F.val_fraction, "--val-fraction", min=0.0, max=0.9),
    out: Path = typer.Option(Path("finetune_out"), "--out", help="Output folder: model/ "
                             "(backbone + head), checkpoints/, summary.json."),
    deepspeed_config: DeepSpeedConfig = _F.deepspeed_config,
    resume: Resume = _F.resume,
    seed: Seed = _F.seed,
    address: Address = None,
    num_workers: NumWorkers = 1,
) -> None:
    """Fine-tune a variant classifier (head on pooled ref, alt, alt - ref windows)."""
    from genomeconv.cli import command_line
    from genomeconv.pipelines.train import check_finetune as check
    from genomeconv.pipelines.train import finetune as run

    opts = FinetuneOptions(
        label=label, positive_label=positive_label, base_model=base_model, freeze=freeze,
        window=window, head_hidden=head_hidden, epochs=epochs, batch_size=batch_size, lr=lr,
        patience=patience,
        val_chroms=_names(val_chroms), val_fraction=val_fraction,
        deepspeed_config=deepspeed_config, resume=resume, seed=seed, command=command_line())
    summary = _run(run, check, (str(variants), str(fasta), str(out), opts), address, num_workers,
                   out)
    best = max(summary["history"], key=lambda r: r["auroc"], default=None)
    if best and _is_rank0():
        typer.echo(f"best epoch {best['epoch']}: AUROC {best['auroc']:.4f}, AUPRC "
                   f"{best['auprc']:.4f}, accuracy {best['accuracy']:.4f}; model in "
                   f"{out / 'model'}")


def register(app: typer.Typer) -> None:
    """Add `pretrain` and `finetune`."""
    app.command("pretrain")(pretrain)
    app.command("finetune")(finetune)
