"""`genomeconv embed`: pooled and per-base embeddings (see genomeconv.pipelines.embed)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from genomeconv.errors import InputError
from genomeconv.commands.options import (Address, Bed, ChunkSize, Device, Dtype, Fasta, Features,
                                         Genes, GpusPerWorker, Gtf, KeepNonfinite, Layer, Model,
                                         NumWorkers, Out, Overwrite, Regions, UnitBp, build,
                                         run_job)
from genomeconv.pipelines.options import EmbedOptions as E


def embed(
    input_path: Optional[Path] = typer.Argument(
        None, metavar="[INPUT]", show_default=False, help="FASTA (plain, gzip or bgzip), "
        "GenBank/EMBL (plain or gzip), GFF3 with ##FASTA (or give --fasta), or a BAM/CRAM/"
        "unaligned BAM to embed its reads (its reference, needed for CRAM: --fasta)."),
    fasta: Fasta = None,
    regions: Regions = None,
    gtf: Gtf = None,
    genes: Genes = None,
    features: Features = None,
    spliced: bool = typer.Option(E.spliced, "--spliced", help="--features in several parts "
                                 "(join(...)): embed the parts joined, not the whole span."),
    bed: Bed = None,
    bam: Optional[Path] = typer.Option(None, "--bam", help="Reads to embed, one item per read "
                                       "(the reference, needed for CRAM, is INPUT or --fasta)."),
    min_mapq: int = typer.Option(E.min_mapq, "--min-mapq", min=0, help="Reads: minimum MAPQ of "
                                 "aligned records."),
    min_length: int = typer.Option(E.min_length, "--min-length", min=0, help="Reads: minimum "
                                   "length."),
    model: Model = None,
    out: Out = Path("embeddings_out"),
    pooling: str = typer.Option(E.pooling, "--pooling", help="mean, max or last."),
    per_base: bool = typer.Option(E.per_base, "--per-base", help="Also write one row per "
                                  "nucleotide (OUT/per_base/)."),
    per_base_dtype: str = typer.Option(E.per_base_dtype, "--per-base-dtype",
                                       help="float32 or float16."),
    layer: Layer = None,
    batch_size: int = typer.Option(E.batch_size, "--batch-size", help="Items per model call "
                                   "(sorted by length; at most 131,072 padded tokens)."),
    unit_bp: UnitBp = None,
    chunk_size: ChunkSize = None,
    address: Address = None,
    num_workers: NumWorkers = E.num_workers,
    gpus_per_worker: GpusPerWorker = E.gpus_per_worker,
    device: Device = None,
    dtype: Dtype = None,
    overwrite: Overwrite = False,
    keep_nonfinite: KeepNonfinite = False,
) -> None:
    """Embed regions, genes, BED intervals, whole records or reads; write keyed Parquet to
    OUT/embeddings/ (and OUT/per_base/)."""
    from genomeconv.pipelines.embed import embed as run

    reads = bam
    if input_path is not None and fasta is not None:  # INPUT is then the reads
        if bam is not None:
            raise InputError("give the reference once (INPUT or --fasta) and the reads once "
                             "(INPUT or --bam)")
        reads, input_path = input_path, None
    values = {**locals(), "fasta": fasta or input_path, "reads": reads}
    run_job(run, build(E, values), "embedding", "bp")


def register(app: typer.Typer) -> None:
    """Add `embed` to the genomeconv app."""
    app.command("embed")(embed)
