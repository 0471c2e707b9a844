"""Typed options of every job, built from shared groups, each option (and its default) stated
once.

A command's options object is one frozen dataclass that inherits the groups it takes:
`RunOptions` (where and how the model runs: every job), `JobOptions` (the Ray jobs that write
keyed parts: embed, track, score-variants), `Selection` (which parts of a reference: regions,
genes, features, BED intervals). The command line builds it from the typer options declared in
commands/options.py under the same names, and a pipeline takes it as its one argument, so an
option added to a group reaches every command that takes the group. `check()` refuses values no
job can run with (one line naming the option) before anything is opened.

Kept free of heavy imports: the command line reads the defaults from here at start-up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from genomeconv.errors import InputError

if TYPE_CHECKING:
    from genomeconv.io.variants import Variant

DTYPES = ("float32", "bfloat16", "float16")


def require(ok: bool, message: str) -> None:
    """An InputError with `message` (naming the option) unless `ok`."""
    if not ok:
        raise InputError(message)


def at_least(option: str, value: float | None, least: int = 1) -> None:
    """`value` (None: the default) is at least `least`: a 0 once silently meant the default
    (--window 0 scored 1,024-bp windows)."""
    require(value is None or value >= least, f"{option} must be at least {least} (got {value})")


def choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    """`value` is one of `allowed`, else one line naming the option and the choices."""
    require(value in allowed, f"{option} must be one of {', '.join(allowed)} (got {value!r})")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Where and how a job runs its model (every job)."""

    out: Path
    model: str | None = None  # a checkpoint folder, a hub id or kmer:K; None: the bundled model
    device: str | None = None  # cpu, cuda, cuda:N; None: cpu (cuda with GPUs per worker)
    dtype: str | None = None  # the compute dtype; None: the model's own (float32)
    num_workers: int = 1
    address: str | None = None  # a Ray cluster; None: RAY_ADDRESS, else a private local Ray
    command: str = "genomeconv"  # the command line, recorded in outputs

    def check(self) -> None:
        """Refuse values no job runs with."""
        if self.dtype is not None:
            choice("--dtype", self.dtype, DTYPES)
        at_least("--num-workers", self.num_workers)


@dataclass(frozen=True, kw_only=True)
class JobOptions(RunOptions):
    """The Ray jobs that write keyed, resumable parts (pipelines/job.py)."""

    gpus_per_worker: float = 0.0  # > 0 places the actors on GPUs
    overwrite: bool = False  # remove OUT's earlier outputs first
    keep_nonfinite: bool = False  # write NaN/inf rows marked nonfinite instead of stopping
    unit_bp: int | None = None  # bases per work unit and part; None: sized by the model

    def check(self) -> None:
        super().check()
        g = self.gpus_per_worker
        require(g >= 0 and math.isfinite(g), f"--gpus-per-worker must be >= 0 and finite "
                f"(got {g})")
        at_least("--unit-bp", self.unit_bp)

    @property
    def gpus(self) -> float:
        """GPUs per actor: --gpus-per-worker, else one for a CUDA --device."""
        if self.gpus_per_worker > 0:
            return self.gpus_per_worker
        return 1.0 if str(self.device or "").startswith("cuda") else 0.0

    @property
    def worker_device(self) -> str | None:
        """The device the actors run on: --device, else cuda when they hold GPUs."""
        return self.device or ("cuda" if self.gpus_per_worker > 0 else None)


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Which parts of a reference a job reads (every record when none is given)."""

    regions: tuple[str, ...] = ()  # samtools style, repeatable
    genes: tuple[str, ...] = ()  # names, gene_id/locus_tag or protein_id (from --gtf or INPUT)
    gtf: Path | None = None
    bed: Path | None = None
    features: tuple[str, ...] = ()  # feature types, e.g. gene, CDS


STRANDS = ("both", "fwd", "rev")


@dataclass(frozen=True, kw_only=True)
class EmbedOptions(JobOptions, Selection):
    """`genomeconv embed`: pooled (and per-base) embeddings of a FASTA's items or of reads."""

    fasta: Path | None = None  # the reference (also of CRAM reads)
    reads: Path | None = None  # BAM/CRAM/uBAM: one item per read
    spliced: bool = False
    min_mapq: int = 0
    min_length: int = 0
    pooling: str = "mean"
    per_base: bool = False
    per_base_dtype: str = "float32"
    layer: str | None = None  # the model's layer whose hidden states are embedded; None: final
    batch_size: int = 256  # items per model call (at most embed.FORWARD_TOKENS padded tokens)
    chunk_size: int | None = None
    command: str = "genomeconv embed"

    def check(self) -> None:
        super().check()
        from genomeconv.models.base import POOLINGS

        choice("--pooling", self.pooling, POOLINGS)
        choice("--per-base-dtype", self.per_base_dtype, ("float32", "float16"))
        at_least("--batch-size", self.batch_size)
        at_least("--chunk-size", self.chunk_size)
        require(self.fasta is not None or self.reads is not None,
                "embed needs INPUT (a FASTA or reads) or --fasta")
        require(self.reads is None or not (self.gtf or self.bed or self.genes or self.features),
                "--gtf/--bed/--genes/--features select intervals of a FASTA, not reads")


@dataclass(frozen=True, kw_only=True)
class TrackOptions(JobOptions, Selection):
    """`genomeconv track`: per-base measures of the next-base distribution."""

    fasta: Path
    context: int | None = None
    piece_bp: int | None = None
    strands: str = "both"
    bigwig: str = "mean"
    chunk_size: int | None = None
    command: str = "genomeconv track"

    def check(self) -> None:
        super().check()
        choice("--strands", self.strands, STRANDS)
        choice("--bigwig", self.bigwig, ("mean", "all", "none"))
        for name, value in (("--context", self.context), ("--piece-bp", self.piece_bp),
                            ("--chunk-size", self.chunk_size)):
            at_least(name, value)


@dataclass(frozen=True, kw_only=True)
class VariantOptions(JobOptions, Selection):
    """`genomeconv score-variants`: one row of scores per ALT allele."""

    variants: str | Path | Iterable[Variant] | None = None  # a file, or e.g. a Saturation
    fasta: Path
    window: int | None = None
    strands: str = "both"
    site_probs: bool = False
    batch_size: int | None = None  # windows per forward pass
    unit_alleles: int | None = None  # the old --unit-size (ALT alleles per unit)
    max_hours: float = 1.0  # --saturate: refuse longer estimated runs (0: no limit)
    shared_windows: bool = False  # --saturate: the SNVs of a grid cell share one window
    command: str = "genomeconv score-variants"

    def check(self) -> None:
        super().check()
        choice("--strands", self.strands, STRANDS)
        at_least("--window", self.window, 2)
        require(not (self.bed or self.features),
                "score-variants selects variants with --region and --genes, not --bed/--features")
        for name, value in (("--batch-size", self.batch_size), ("--unit-size", self.unit_alleles)):
            at_least(name, value)

    @property
    def rc(self) -> bool:
        """Whether the reverse strand is scored."""
        return self.strands != "fwd"


@dataclass(frozen=True, kw_only=True)
class TrainOptions(RunOptions):
    """What pretraining and fine-tuning share."""

    batch_size: int = 8  # the global batch
    lr: float = 2e-3
    val_fraction: float = 0.02
    deepspeed_config: str = "zero0_fp32"
    resume: bool = False
    seed: int = 0

    def check(self) -> None:
        super().check()
        require(math.isfinite(self.lr) and self.lr >= 0,
                f"--lr must be a finite number >= 0 (got {self.lr})")


@dataclass(frozen=True, kw_only=True)
class PretrainOptions(TrainOptions):
    """`genomeconv pretrain` (see the command's help)."""

    fasta: Path
    out: Path = Path("pretrain_out")
    d_model: int = 128
    n_layer: int = 2
    d_inner: int | None = None  # default 4 d_model
    seq_len: int = 1024
    warmup_lengths: tuple[int, ...] = ()
    warmup_steps: int | None = None  # steps per warm-up length; default steps // (2 (n + 1))
    steps: int = 1000
    lr_warmup: int | None = None  # default steps // 20
    val_records: tuple[str, ...] = ()
    val_windows: int = 64
    eval_every: int = 100
    save_every: int = 100
    kmer_baseline: int = 0  # largest Markov order to compare with (0: no baseline)
    command: str = "genomeconv pretrain"


@dataclass(frozen=True, kw_only=True)
class FinetuneOptions(TrainOptions):
    """`genomeconv finetune` (see the command's help); `model` is the backbone it starts from."""

    variants: Path
    fasta: Path
    out: Path = Path("finetune_out")
    label: str = "label"
    positive_label: str | None = None  # binary: the class P() is written for; None: minority
    freeze: str = "none"
    layer: str | None = None  # the layer whose pooled hidden states the head reads; None: final
    window: int = 1024
    head_hidden: int = 64
    epochs: int = 10
    lr: float = 1e-3
    patience: int = 3
    val_chroms: tuple[str, ...] = ()
    val_fraction: float = 0.2
    command: str = "genomeconv finetune"

