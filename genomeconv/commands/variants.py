"""`genomeconv score-variants`: zero-shot variant-effect scores (genomeconv.pipelines.variants)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from genomeconv.pipelines.options import VARIANTS


def score_variants(
    variants: Optional[Path] = typer.Argument(None, help="VCF/BCF (plain, bgzip, BCF) or a "
                                              "Parquet/TSV/CSV table with chrom, pos, ref, "
                                              "alt[, id]; or give --saturate instead."),
    saturate: Optional[list[str]] = typer.Option(None, "--saturate", metavar="REGION",
                                                 help="Instead of VARIANTS: every SNV of this "
                                                 "region (samtools style; repeatable), three "
                                                 "ALTs per position."),
    max_hours: float = typer.Option(VARIANTS.max_hours, "--max-hours", min=0, help="With "
                                    "--saturate: refuse a run estimated (from a timed forward) "
                                    "to take longer than this."),
    force: bool = typer.Option(False, "--force", help="With --saturate: run however long the "
                               "estimate."),
    shared_windows: bool = typer.Option(VARIANTS.shared_windows, "--shared-windows", help="With "
                                        "--saturate: the positions of each half-window cell "
                                        "share one window centred on the cell (variants "
                                        "off-centre, at least a quarter window from its "
                                        "edges; window_start/window_end say where)."),
    fasta: Path = typer.Option(..., "--fasta", help="Reference: FASTA (plain, gzip or bgzip), "
                               "GenBank/EMBL or GFF3 with ##FASTA (then also the --genes "
                               "annotation)."),
    model: Optional[str] = typer.Option(None, "--model", help="Checkpoint path or hub id "
                                        "(default: the bundled model), or kmer:K: an order-K "
                                        "Markov baseline fitted on --fasta (both strands)."),
    out: Path = typer.Option(Path("variant_scores"), "--out", help="Output Parquet directory "
                             "(one part per work unit; rerun to resume)."),
    window: Optional[int] = typer.Option(None, "--window", help="Window in bp (default: the "
                                         "model's maximum length, capped at 32,768 on CPU); the "
                                         "variant's first REF base sits at index window//2."),
    region: Optional[str] = typer.Option(None, "--region", help="Only variants in this region "
                                         "(samtools style, e.g. chr1:1,000-2,000)."),
    genes: Optional[str] = typer.Option(None, "--genes", help="Only variants inside these genes "
                                        "(comma-separated names, locus_tags or protein_ids; "
                                        "from --gtf or a GenBank/EMBL/GFF3 --fasta)."),
    gtf: Optional[Path] = typer.Option(None, "--gtf", help="GTF/GFF3 annotation for --genes."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address "
                                          "(default: RAY_ADDRESS, else a local instance)."),
    num_workers: int = typer.Option(VARIANTS.num_workers, "--num-workers", min=1, help="Model actors."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:0 ..."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16, float16."),
    site_probs: bool = typer.Option(False, "--site-probs", help="Also write p_ref and p_alt, the "
                                    "model's probabilities of REF and ALT at an SNV."),
    no_rc: bool = typer.Option(False, "--no-rc", help="Skip the reverse-complement strand "
                               "(llr = llr_fwd, llr_rev empty)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Windows per "
                                             "forward pass (default: ~131k tokens' worth)."),
    unit_size: Optional[int] = typer.Option(None, "--unit-size", min=1, help="ALT alleles per "
                                            "work unit (one Parquet part each; default: sized "
                                            "by window and model)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Remove OUT's earlier outputs "
                                   "and start afresh (a rerun with other settings is refused)."),
    keep_nonfinite: bool = typer.Option(False, "--keep-nonfinite", help="Write NaN/inf scores "
                                        "(rows marked nonfinite) instead of stopping."),
) -> None:
    """Score every ALT allele of VARIANTS (or every SNV of --saturate regions) with a DNA
    language model; write keyed Parquet."""
    from genomeconv.cli import command_line, warn_emulated_dtype
    from genomeconv.errors import InputError
    from genomeconv.io.saturation import Saturation
    from genomeconv.pipelines.variants import score_variants as run

    if (variants is None) == (not saturate):
        raise InputError("give exactly one of VARIANTS or --saturate REGION")
    warn_emulated_dtype(dtype, device, address)
    if saturate:
        variants = Saturation.from_regions(saturate, fasta)
    summary = run(variants, fasta, out, model=model, window=window, region=region,
                  genes=[g.strip() for g in genes.split(",") if g.strip()] if genes else None,
                  gtf=gtf, address=address, num_workers=num_workers, device=device,
                  dtype=dtype, site_probs=site_probs, rc=not no_rc, batch_size=batch_size,
                  unit_size=unit_size, overwrite=overwrite, keep_nonfinite=keep_nonfinite,
                  max_hours=None if force else max_hours, shared_windows=shared_windows,
                  command=command_line())
    for name, fasta_name in sorted(summary.renamed_contigs.items()):
        typer.echo(f"contig {name!r} matched to {fasta_name!r} in {fasta}")
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.statuses.items())) or "none"
    typer.echo(f"{summary.variants} ALT alleles ({summary.variants_skipped} already done): "
               f"wrote {summary.rows_written} rows in {summary.units} units [{statuses}] to "
               f"{summary.out} in {summary.seconds:.1f} s")


def register(app: typer.Typer) -> None:
    """Add `score-variants` to the genomeconv app."""
    app.command("score-variants")(score_variants)
