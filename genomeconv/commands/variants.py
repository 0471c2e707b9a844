"""`genomeconv score-variants`: zero-shot variant-effect scores (genomeconv.pipelines.variants)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from genomeconv.errors import InputError
from genomeconv.commands.options import (Address, BatchSize, Device, Dtype, Fasta, Genes,
                                         GpusPerWorker, Gtf, KeepNonfinite, Model, NumWorkers,
                                         OldForce, OldNoRc, OldUnitSize, Out, Overwrite,
                                         Regions, Strands, UnitBp, build, run_job)
from genomeconv.pipelines.options import VariantOptions as V


def score_variants(
    variants: Optional[Path] = typer.Argument(None, help="VCF/BCF (plain, bgzip, BCF) or a "
                                              "Parquet/TSV/CSV table with chrom, pos, ref, "
                                              "alt[, id]; or give --saturate instead."),
    saturate: Optional[list[str]] = typer.Option(None, "--saturate", metavar="REGION",
                                                 help="Instead of VARIANTS: every SNV of this "
                                                 "region (samtools style; repeatable), three "
                                                 "ALTs per position."),
    max_hours: float = typer.Option(V.max_hours, "--max-hours", min=0, help="With --saturate: "
                                    "refuse a run estimated (from a timed forward) to take "
                                    "longer than this (0: no limit)."),
    shared_windows: bool = typer.Option(V.shared_windows, "--shared-windows", help="With "
                                        "--saturate: the positions of each half-window cell "
                                        "share one window centred on the cell (variants "
                                        "off-centre, at least a quarter window from its edges; "
                                        "window_start/window_end say where)."),
    fasta: Fasta = None,
    model: Model = None,
    out: Out = Path("variant_scores"),
    window: Optional[int] = typer.Option(None, "--window", help="Window in bp (default: the "
                                         "model's maximum length, 8,192 for Evo 2, capped at "
                                         "32,768 on CPU); the variant's first REF base sits at "
                                         "index window//2."),
    regions: Regions = None,
    genes: Genes = None,
    gtf: Gtf = None,
    address: Address = None,
    num_workers: NumWorkers = V.num_workers,
    gpus_per_worker: GpusPerWorker = V.gpus_per_worker,
    device: Device = None,
    dtype: Dtype = None,
    site_probs: bool = typer.Option(False, "--site-probs", help="Also write p_ref and p_alt, the "
                                    "model's probabilities of REF and ALT at an SNV."),
    strands: Strands = V.strands,
    batch_size: BatchSize = None,
    unit_bp: UnitBp = None,
    overwrite: Overwrite = False,
    keep_nonfinite: KeepNonfinite = False,
    old_no_rc: OldNoRc = False,
    old_unit_size: OldUnitSize = None,
    old_force: OldForce = False,
) -> None:
    """Score every ALT allele of VARIANTS (or every SNV of --saturate regions) with a DNA
    language model; write keyed Parquet."""
    from genomeconv.io.saturation import Saturation
    from genomeconv.pipelines.variants import score_variants as run

    if (variants is None) == (not saturate):
        raise InputError("give exactly one of VARIANTS or --saturate REGION")
    if fasta is None:
        raise InputError("score-variants needs --fasta (the reference)")
    values = {**locals(),
              "variants": Saturation.from_regions(saturate, fasta) if saturate else variants}
    run_job(run, build(V, values), "scoring", "alleles")


def register(app: typer.Typer) -> None:
    """Add `score-variants` to the genomeconv app."""
    app.command("score-variants")(score_variants)
