"""`genomeconv embed`: pooled and per-base embeddings (see genomeconv.pipelines.embed)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from genomeconv.pipelines.options import EMBED


def embed(
    input_path: Path = typer.Argument(..., metavar="INPUT", help="FASTA (plain, gzip or bgzip), "
                                      "GenBank/EMBL (plain or gzip), GFF3 with ##FASTA, or a "
                                      "BAM/CRAM/unaligned BAM to embed its reads."),
    region: Optional[list[str]] = typer.Option(None, "--region", help="Region to embed, "
                                               "samtools style (chr1:1,000-2,000); repeatable."),
    gtf: Optional[Path] = typer.Option(None, "--gtf", help="GTF/GFF3: embed its genes (whole "
                                       "span; minus-strand genes reverse-complemented)."),
    genes: Optional[str] = typer.Option(None, "--genes", help="Only these genes of --gtf or of "
                                        "a GenBank/EMBL/GFF3 INPUT (comma-separated gene name, "
                                        "gene_id/locus_tag or protein_id)."),
    features: Optional[str] = typer.Option(None, "--features", help="Embed each feature of "
                                           "these types (comma-separated, e.g. gene,CDS) of a "
                                           "GenBank/EMBL/GFF3 INPUT or of --gtf."),
    spliced: bool = typer.Option(False, "--spliced", help="--features in several parts "
                                 "(join(...)): embed the parts joined, not the whole span."),
    bed: Optional[Path] = typer.Option(None, "--bed", help="BED intervals (0-based, strand "
                                       "column honoured)."),
    bam: Optional[Path] = typer.Option(None, "--bam", help="Reads to embed, one item per read "
                                       "(INPUT is then the reference, needed for CRAM)."),
    min_mapq: int = typer.Option(EMBED.min_mapq, "--min-mapq", min=0, help="Reads: minimum MAPQ of aligned "
                                 "records."),
    min_length: int = typer.Option(EMBED.min_length, "--min-length", min=0, help="Reads: minimum length."),
    model: Optional[str] = typer.Option(None, "--model", help="Checkpoint path or hub id "
                                        "(default: the bundled model)."),
    out: Path = typer.Option(Path("embeddings_out"), "--out", help="Output folder: "
                             "embeddings/ (and per_base/) Parquet parts; rerun to resume."),
    pooling: str = typer.Option(EMBED.pooling, "--pooling", help="mean, max or last."),
    per_base: bool = typer.Option(False, "--per-base", help="Also write one row per nucleotide."),
    per_base_dtype: str = typer.Option(EMBED.per_base_dtype, "--per-base-dtype", help="float32 or float16."),
    batch_size: int = typer.Option(EMBED.batch_size, "--batch-size", min=1, help="Items per model call "
                                   "(sorted by length; at most 131,072 padded tokens)."),
    unit_bp: Optional[int] = typer.Option(None, "--unit-bp", min=1, help="Bases per work unit "
                                          "and Parquet part (default: sized by the model)."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", min=1, help="Positions per "
                                             "chunk in the bounded-memory path."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address "
                                          "(default: RAY_ADDRESS, else a local instance)."),
    num_workers: int = typer.Option(EMBED.num_workers, "--num-workers", min=1, help="Model actors."),
    gpus_per_worker: float = typer.Option(EMBED.gpus_per_worker, "--gpus-per-worker", min=0.0, help="GPUs per "
                                          "actor (> 0 places actors on GPUs)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:0 ..."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16, float16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Remove OUT's earlier outputs "
                                   "and start afresh (a rerun with other settings is refused)."),
    keep_nonfinite: bool = typer.Option(False, "--keep-nonfinite", help="Write NaN/inf "
                                        "embeddings (rows marked nonfinite) instead of stopping."),
) -> None:
    """Embed regions, genes, BED intervals, whole records or reads of INPUT; write Parquet."""
    from genomeconv.cli import command_line, warn_emulated_dtype
    from genomeconv.commands.progress import bases_progress
    from genomeconv.pipelines.embed import embed as run

    warn_emulated_dtype(dtype, device or ("cuda" if gpus_per_worker else None), address)
    with bases_progress("embedding") as (on_plan, on_unit):
        summary = run(input_path, out, regions=region or (), gtf=gtf,
                      genes=[g.strip() for g in genes.split(",") if g.strip()] if genes else None,
                      bed=bed, bam=bam, min_mapq=min_mapq, min_length=min_length,
                      features=[f.strip() for f in features.split(",") if f.strip()]
                      if features else None, spliced=spliced, model=model,
                      pooling=pooling, per_base=per_base, per_base_dtype=per_base_dtype,
                      batch_size=batch_size, chunk_size=chunk_size, address=address,
                      num_workers=num_workers, gpus_per_worker=gpus_per_worker, device=device,
                      dtype=dtype, overwrite=overwrite, keep_nonfinite=keep_nonfinite,
                      unit_bp=unit_bp, command=command_line(), on_plan=on_plan,
                      on_unit=on_unit)
    rate = summary.bp_done / summary.seconds if summary.seconds else 0.0
    typer.echo(f"{summary.items} items, {summary.bp:,} bp ({summary.items_skipped} already "
               f"done); embedded {summary.items_done} items in {summary.units} units, "
               f"{summary.bp_done:,} bp in {summary.seconds:.1f} s ({rate:,.0f} bp/s; "
               f"peak worker memory {summary.worker_peak_rss / 2**30:.2f} GiB)")
    typer.echo("output: " + ", ".join(summary.outputs))


def register(app: typer.Typer) -> None:
    """Add `embed` to the genomeconv app."""
    app.command("embed")(embed)
