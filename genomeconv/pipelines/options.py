"""Options of the jobs (`embed`, `score-variants`, `pretrain`, `finetune`) and their defaults.

Kept free of heavy imports: the command line reads its option defaults from these dataclasses at
startup, and the pipeline functions take theirs from the same place, so each is stated once.
"""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass
class FinetuneOptions:
    """Options of `genomeconv finetune` (see the command's help)."""

    label: str = "label"
    positive_label: str | None = None  # binary: the class P() is written for; None: minority
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


@dataclass(frozen=True)
class EmbedOptions:
    """Defaults of `genomeconv embed` options that have one (see the command's help)."""

    pooling: str = "mean"
    per_base_dtype: str = "float32"
    batch_size: int = 256  # items per model call (at most embed.FORWARD_TOKENS padded tokens)
    min_mapq: int = 0
    min_length: int = 0
    num_workers: int = 1
    gpus_per_worker: float = 0.0


@dataclass(frozen=True)
class VariantOptions:
    """Defaults of `genomeconv score-variants` options that have one (see the command's help)."""

    num_workers: int = 1
    max_hours: float = 1.0  # --saturate: refuse runs estimated to take longer, unless --force
    shared_windows: bool = False  # --saturate: SNVs share the windows of a grid


EMBED, VARIANTS = EmbedOptions(), VariantOptions()
