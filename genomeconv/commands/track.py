"""`genomeconv track`: per-base next-base measures as Parquet and bigWig (see
genomeconv.pipelines.track)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from genomeconv.commands.options import (Address, Bed, ChunkSize, Device, Dtype, Fasta, Features,
                                         Genes, GpusPerWorker, Gtf, KeepNonfinite, Model,
                                         NumWorkers, Out, Overwrite, Reference, Regions, Strands,
                                         UnitBp, build, reference, run_job)
from genomeconv.pipelines.options import TrackOptions as T


def track(
    input_path: Reference = None,
    fasta: Fasta = None,
    regions: Regions = None,
    gtf: Gtf = None,
    genes: Genes = None,
    features: Features = None,
    bed: Bed = None,
    model: Model = None,
    out: Out = Path("track_out"),
    context: Optional[int] = typer.Option(None, "--context", help="Bases every position sees "
                                          "before it on its strand (default: the model's "
                                          "receptive field up to 65,536, else max_seq_len - 1)."),
    piece_bp: Optional[int] = typer.Option(None, "--piece-bp", help="Positions per piece "
                                           "(default 262,144, at least the context)."),
    strands: Strands = T.strands,
    bigwig: str = typer.Option(T.bigwig, "--bigwig", help="bigWig files: mean (the strand "
                               "means), all (every measure column) or none."),
    unit_bp: UnitBp = None,
    chunk_size: ChunkSize = None,
    address: Address = None,
    num_workers: NumWorkers = T.num_workers,
    gpus_per_worker: GpusPerWorker = T.gpus_per_worker,
    device: Device = None,
    dtype: Dtype = None,
    overwrite: Overwrite = False,
    keep_nonfinite: KeepNonfinite = False,
) -> None:
    """Per-base log p(ref), entropy and site log-ratios of the reference's positions: Parquet
    (OUT/track/) and bigWig (OUT/bigwig/)."""
    from genomeconv.pipelines.track import track as run

    values = {**locals(), "fasta": reference(input_path, fasta)}
    run_job(run, build(T, values), "track", "bp")


def register(app: typer.Typer) -> None:
    """Add `track` to the genomeconv app."""
    app.command("track")(track)
