"""`genomeconv track`: per-base next-base measures as Parquet and bigWig (see
genomeconv.pipelines.track)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from genomeconv.pipelines.options import EMBED


def track(
    input_path: Path = typer.Argument(..., metavar="INPUT", help="FASTA (plain, gzip or bgzip), "
                                      "GenBank/EMBL (plain or gzip) or GFF3 with ##FASTA."),
    region: Optional[list[str]] = typer.Option(None, "--region", help="Region, samtools style "
                                               "(chr1:1,000-2,000); repeatable."),
    gtf: Optional[Path] = typer.Option(None, "--gtf", help="GTF/GFF3: the spans of its genes."),
    genes: Optional[str] = typer.Option(None, "--genes", help="Only these genes of --gtf or of a "
                                        "GenBank/EMBL/GFF3 INPUT (comma-separated)."),
    features: Optional[str] = typer.Option(None, "--features", help="The spans of the features "
                                           "of these types (comma-separated, e.g. gene,CDS)."),
    bed: Optional[Path] = typer.Option(None, "--bed", help="BED intervals (0-based)."),
    model: Optional[str] = typer.Option(None, "--model", help="Checkpoint path, hub id or kmer:K "
                                        "(default: the bundled model)."),
    out: Path = typer.Option(Path("track_out"), "--out", help="Output folder: track/ Parquet "
                             "parts and bigwig/; rerun to resume."),
    context: Optional[int] = typer.Option(None, "--context", min=1, help="Bases every position "
                                          "sees before it on its strand (default: the model's "
                                          "receptive field up to 65,536, else max_seq_len - 1)."),
    piece_bp: Optional[int] = typer.Option(None, "--piece-bp", min=1, help="Positions per piece "
                                           "(default 262,144, at least the context)."),
    strands: str = typer.Option("both", "--strands", help="both (forward, reverse and their "
                                "mean) or fwd."),
    bigwig: str = typer.Option("mean", "--bigwig", help="bigWig files: mean (the strand means), "
                               "all (every measure column) or none."),
    unit_bp: Optional[int] = typer.Option(None, "--unit-bp", min=1, help="Positions per work "
                                          "unit and Parquet part (default: sized by the model)."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", min=1, help="Positions per "
                                             "chunk in the bounded-memory path."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address "
                                          "(default: RAY_ADDRESS, else a local instance)."),
    num_workers: int = typer.Option(EMBED.num_workers, "--num-workers", min=1,
                                    help="Model actors."),
    gpus_per_worker: float = typer.Option(EMBED.gpus_per_worker, "--gpus-per-worker", min=0.0,
                                          help="GPUs per actor (> 0 places actors on GPUs)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:0 ..."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16, float16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Remove OUT's earlier outputs "
                                   "and start afresh (a rerun with other settings is refused)."),
    keep_nonfinite: bool = typer.Option(False, "--keep-nonfinite", help="Write non-finite "
                                        "values (rows marked nonfinite) instead of stopping."),
) -> None:
    """Per-base log p(ref), entropy and site log-ratios of INPUT's positions: Parquet + bigWig."""
    from genomeconv.cli import command_line, warn_emulated_dtype
    from genomeconv.commands.progress import bases_progress
    from genomeconv.pipelines.track import track as run

    warn_emulated_dtype(dtype, device or ("cuda" if gpus_per_worker else None), address)
    with bases_progress("track") as (on_plan, on_unit):
        summary = run(input_path, out, regions=region or (), gtf=gtf,
                      genes=[g.strip() for g in genes.split(",") if g.strip()] if genes else None,
                      features=[f.strip() for f in features.split(",") if f.strip()]
                      if features else None, bed=bed, model=model, context=context,
                      piece_bp=piece_bp, strands=strands, bigwig=bigwig, unit_bp=unit_bp,
                      chunk_size=chunk_size, address=address, num_workers=num_workers,
                      gpus_per_worker=gpus_per_worker, device=device, dtype=dtype,
                      overwrite=overwrite, keep_nonfinite=keep_nonfinite,
                      command=command_line(), on_plan=on_plan, on_unit=on_unit)
    rate = summary.positions_done / summary.seconds if summary.seconds else 0.0
    typer.echo(f"{summary.positions:,} positions ({summary.positions_skipped:,} already done); "
               f"scored {summary.positions_done:,} in {summary.pieces} pieces, {summary.units} "
               f"units, context {summary.context:,}, {summary.seconds:.1f} s ({rate:,.0f} bp/s; "
               f"peak worker memory {summary.worker_peak_rss / 2**30:.2f} GiB)")
    typer.echo("output: " + ", ".join(summary.outputs))


def register(app: typer.Typer) -> None:
    """Add `track` to the genomeconv app."""
    app.command("track")(track)
