"""`genomeconv plot ...`: figures of genomeconv outputs (genomeconv.plots), PNG/SVG/PDF by the
extension of -o. Each command checks the output path first, then builds and saves the figure."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from genomeconv.commands.options import Force, OldStrand, new_spellings, split

plot_app = typer.Typer(no_args_is_help=True, add_completion=False,
                       help="Figures of genomeconv outputs: PNG, SVG or PDF by the -o extension.")

OUT = typer.Option(..., "--out", "-o", help="Figure file: .png, .svg or .pdf (never inside a "
                   "genomeconv output folder).")
OUTPUTS = typer.Argument(..., metavar="OUTPUT...", help="genomeconv output files or folders.")


def register(app: typer.Typer) -> None:
    """Add the `plot` command group."""
    app.add_typer(plot_app, name="plot")


def _warn(message: str) -> None:
    typer.secho(f"warning: {message}", err=True, fg="yellow")


def _save(fig, out: Path) -> None:
    from genomeconv.plots.figures import save

    typer.echo(f"wrote {save(fig, out)}", err=True)


def _out(out: Path, force: bool) -> Path:
    from genomeconv.plots.figures import check_figure_out

    return check_figure_out(out, force=force)


@plot_app.command("track")
def track(
    outputs: list[Path] = OUTPUTS,
    region: str = typer.Option(..., "--region", help="Region, samtools style (1-based, "
                               "closed): chr1:1,000-3,000."),
    measures: str = typer.Option("logp_ref,entropy", "--measures", help="Comma-separated: "
                                 "logp_ref, entropy, llr_site_A, llr_site_C, llr_site_G, "
                                 "llr_site_T (one panel each)."),
    strands: str = typer.Option("mean", "--strands", help="mean (of both strands), fwd, rev, "
                                "or both (fwd and rev lines)."),
    old_strand: OldStrand = None,
    gtf: Optional[Path] = typer.Option(None, "--gtf", help="Gene models underneath: GTF, GFF3 "
                                       "or GenBank/EMBL."),
    smooth: Optional[int] = typer.Option(None, "--smooth", metavar="N", help="Draw the rolling "
                                         "mean over N bases (default: about a 500th of the "
                                         "region, 1 below 1 kbp; stated in the titles)."),
    out: Path = OUT,
    force: Force = False,
) -> None:
    """Per-base track measures over a region, with gene models."""
    from genomeconv.plots.track import track_figure

    strands = new_spellings(locals()).get("strands", strands)
    target = _out(out, force)
    _save(track_figure(outputs, region, measures=list(split(measures) or ()), strand=strands,
                       annotation=gtf, smooth=smooth, warn=_warn), target)


@plot_app.command("mutagenesis")
def mutagenesis(
    outputs: list[Path] = OUTPUTS,
    region: Optional[str] = typer.Option(None, "--region", help="Region, samtools style: "
                                         "chr1:1-200 (default: the region of a --saturate "
                                         "output)."),
    score: str = typer.Option("llr", "--score", help="Score column of the variants view."),
    out: Path = OUT,
    force: Force = False,
) -> None:
    """Heat map of every SNV's score, position x base, reference bases marked."""
    from genomeconv.plots.mutagenesis import mutagenesis_figure

    target = _out(out, force)
    _save(mutagenesis_figure(outputs, region, score, warn=_warn), target)


@plot_app.command("variants")
def variants(
    outputs: list[Path] = OUTPUTS,
    score: str = typer.Option("llr", "--score", help="Score column of the variants view."),
    by: str = typer.Option("status", "--by", help="Group by this column of the variants view."),
    vcf: Optional[Path] = typer.Option(None, "--vcf", help="VCF/BCF whose INFO fields --info "
                                       "and --label may name (joined on chrom, pos, ref, alt)."),
    info: Optional[str] = typer.Option(None, "--info", help="Group by this INFO field of --vcf "
                                       "instead (FIELD, or FIELD:SUB for CSQ/ANN sub-fields, "
                                       "e.g. CSQ:Consequence)."),
    label: Optional[str] = typer.Option(None, "--label", help="Binary label for a ROC curve: a "
                                        "column, else an INFO field of --vcf."),
    positive: Optional[str] = typer.Option(None, "--positive", help="The --label value of "
                                           "positives (e.g. Pathogenic)."),
    lower_is_positive: Optional[bool] = typer.Option(
        None, "--lower-is-positive/--higher-is-positive", help="Which scores predict a "
        "positive (default: lower for llr columns, higher otherwise)."),
    out: Path = OUT,
    force: Force = False,
) -> None:
    """Score distributions by group; a ROC curve with AUROC for a binary label."""
    from genomeconv.plots.variants import variants_figure

    target = _out(out, force)
    _save(variants_figure(outputs, score, by=by, vcf=vcf, info=info, label=label,
                          positive=positive, lower_is_positive=lower_is_positive, warn=_warn),
          target)


@plot_app.command("embeddings")
def embeddings(
    outputs: list[Path] = OUTPUTS,
    color_by: str = typer.Option("gene_name", "--color-by", help="Column to colour by "
                                 "(gene_name, seq_name, chrom, length, ...)."),
    pooling: Optional[str] = typer.Option(None, "--pooling", help="Only embeddings with this "
                                          "pooling (needed when the outputs hold several)."),
    out: Path = OUT,
    force: Force = False,
) -> None:
    """2-D PCA of pooled embeddings, coloured by a column."""
    from genomeconv.plots.embeddings import embeddings_figure

    target = _out(out, force)
    _save(embeddings_figure(outputs, color_by, pooling=pooling, warn=_warn), target)


@plot_app.command("training")
def training(
    run: Path = typer.Argument(..., help="A pretrain or finetune output folder (or its "
                               "summary.json)."),
    out: Path = OUT,
    force: Force = False,
) -> None:
    """Loss and validation curves of a pretrain or finetune run."""
    from genomeconv.plots.training import training_figure

    target = _out(out, force)
    _save(training_figure(run), target)
