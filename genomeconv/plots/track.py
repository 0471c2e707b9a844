"""`genomeconv plot track`: per-base measures over a region, one panel per measure, with gene
models from a GTF/GFF3/GenBank file underneath.

Positions are drawn 1-based (the track's 0-based position + 1, as genome browsers show them). The
x values are every position of the region, so a position without a value (an N, the first base of
a contig on the forward strand, a row not written) is NaN in the line: a gap, never a zero.
Per-base values over more than a few kbp are a dense band: each line is a rolling mean over
`smooth` bases (centred, NaN-aware, gaps kept; by default about a 500th of the region, rounded
down to 1, 2 or 5 x 10^k, so 1 below 1 kbp), stated in the panel title. A region longer than
MAX_POINTS bases is then drawn as means of equal bins (NaN-aware; the title gives the bin size),
so a whole bacterial genome stays a readable, small figure. A column without a single value in
the region (the reverse strand of a `--strands fwd` track) is left out with one warning line;
with nothing to draw, the figure is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from genomeconv.errors import InputError
from genomeconv.io.annotations import Feature, Gene
from genomeconv.io.regions import Interval, UnknownContigError, format_region, resolve_contig
from genomeconv.pipelines import schema
from genomeconv.plots import figures, inputs

STRANDS = {"mean": ("",), "fwd": ("_fwd",), "rev": ("_rev",), "both": ("_fwd", "_rev")}
STRAND_LABELS = {"": "mean of strands", "_fwd": "forward", "_rev": "reverse"}
DEFAULT_MEASURES = ("logp_ref", "entropy")
UNITS = {"logp_ref": "log p(ref), nats", "entropy": "entropy, nats"}
EXON_TYPES = ("exon", "mRNA", "CDS")  # boxes: exons, else GenBank's joined mRNA, else CDS
CHEVRONS = 12  # strand marks along a gene
MAX_POINTS = 20_000  # positions drawn one by one; a longer region is drawn as bin means
SMOOTH_POINTS = 500  # the default rolling mean spans about region length / SMOOTH_POINTS bases


def track_figure(paths: Sequence[str | Path], region: str, *,
                 measures: Sequence[str] = DEFAULT_MEASURES, strand: str = "mean",
                 annotation: str | Path | None = None, smooth: int | None = None,
                 warn: Callable[[str], None] | None = None) -> Figure:
    """One panel per measure over `region` from the `track` view under `paths` (strand: mean,
    fwd, rev or both), lines smoothed over `smooth` bases (default `default_smooth`), and a
    gene-model panel from `annotation` (GTF, GFF3 or GenBank/EMBL); `warn` hears of the columns
    left out for having no value in the region."""
    if strand not in STRANDS:
        raise InputError(f"--strands must be one of {', '.join(STRANDS)} (got {strand!r})")
    if not measures:
        raise InputError("give at least one measure")
    unknown = [m for m in measures if m not in schema.TRACK_MEASURES]
    if unknown:
        raise InputError(f"unknown measure {unknown[0]!r} (measures: "
                         f"{', '.join(schema.TRACK_MEASURES)})")
    if smooth is not None and smooth < 1:
        raise InputError(f"--smooth must be at least 1 base (got {smooth})")
    if annotation is not None and not Path(annotation).is_file():
        raise InputError("no such annotation file", path=annotation)
    view = inputs.open_view(paths, "track")
    columns = [m + s for m in measures for s in STRANDS[strand]]
    view.require(columns)
    interval = inputs.region_of(view, region)
    table = view.read(["position", *columns],
                      inputs.region_filter(interval, "position", one_based=False))
    if table.num_rows == 0:
        raise inputs.empty_region(view, interval, "position", one_based=False)
    positions = table["position"].to_numpy()
    if len(np.unique(positions)) != len(positions):
        raise InputError(f"the track view has several rows for one position in "
                         f"{format_region(interval)}; pass one track output", path=view.source)
    start = interval.start
    end = interval.end if interval.end is not None else int(positions.max()) + 1  # whole contig
    lines = _lines(table, columns, positions - start, end - start, view, interval, warn)
    shown = [m for m in measures if any(m + s in lines for s in STRANDS[strand])]
    genes = _genes(annotation, interval, start, end) if annotation is not None else None
    rows = len(shown) + (genes is not None)
    fig, axes = figures.new_figure(rows, height_ratios=[1.0] * len(shown)
                                   + ([0.5 + 0.35 * max(1, _lanes(genes))] if genes is not None
                                      else []))
    x = np.arange(start, end) + 1  # 1-based display
    smooth = smooth or default_smooth(end - start)
    size = -(-(end - start) // MAX_POINTS)  # bases per drawn point
    for ax, measure in zip(axes, shown):
        for suffix in (s for s in STRANDS[strand] if measure + s in lines):
            ax.plot(binned(x, size), binned(rolling_mean(lines[measure + suffix], smooth), size),
                    linewidth=0.8, label=STRAND_LABELS[suffix], gid=measure + suffix)
        ax.set_ylabel(UNITS.get(measure, f"{measure}, nats"))
        ax.set_title(measure + _drawn_as(smooth, size), loc="left", fontsize="medium")
        if strand != "mean":
            ax.legend(loc="upper right", fontsize="small")
        ax.grid(alpha=0.3)
    if genes is not None:
        _draw_genes(axes[-1], genes, start, end)
    axes[-1].set_xlim(start + 0.5, end + 0.5)
    axes[-1].set_xlabel(f"{interval.chrom} position (1-based)")
    fig.suptitle(f"{interval.chrom}:{start + 1:,}-{end:,}", fontsize="medium")
    return fig


def _lines(table, columns: Sequence[str], offsets: np.ndarray, length: int, view: inputs.View,
           interval: Interval, warn: Callable[[str], None] | None) -> dict[str, np.ndarray]:
    """Each column's values at every position of the region (NaN without one), leaving out the
    columns without a single value there (one warning line); InputError when none has one."""
    lines, empty = {}, []
    for column in columns:
        y = np.full(length, np.nan)
        y[offsets] = inputs.floats(table[column])
        if np.isnan(y).all():
            empty.append(column)
        else:
            lines[column] = y
    where = format_region(interval)
    if not lines:
        raise InputError(f"no values of {', '.join(empty)} in {where}: nothing to draw (a "
                         "track written with --strands fwd has no _rev values)", path=view.source)
    if empty and warn is not None:
        warn(f"no values of {', '.join(empty)} in {where} (a track written with --strands fwd "
             "has no _rev values): left out of the figure")
    return lines


def default_smooth(length: int) -> int:
    """The rolling mean's span for a region of `length` bases: length / SMOOTH_POINTS rounded
    down to 1, 2 or 5 x 10^k (1, per-base values, below 1 kbp)."""
    target = max(1, length // SMOOTH_POINTS)
    scale = 10 ** (len(str(target)) - 1)
    return max(step * scale for step in (1, 2, 5) if step * scale <= target)


def rolling_mean(values: np.ndarray, size: int) -> np.ndarray:
    """The mean of the values in a window of `size` positions centred on each position, NaN
    ignored; NaN where the position itself has none (a gap stays a gap)."""
    if size == 1:
        return values
    ok = ~np.isnan(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(ok, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(ok)])
    lo = np.arange(len(values)) - size // 2
    lo, hi = np.clip(lo, 0, len(values)), np.clip(lo + size, 0, len(values))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums[hi] - sums[lo]) / (counts[hi] - counts[lo])
    return np.where(ok, means, np.nan)


def _drawn_as(smooth: int, size: int) -> str:
    """What a panel's line shows, for its title."""
    parts = ([f"rolling mean over {smooth:,} bp"] if smooth > 1 else []) + (
        [f"mean of {size:,}-bp bins"] if size > 1 else [])
    return f" ({', '.join(parts)})" if parts else ""


def binned(values: np.ndarray, size: int) -> np.ndarray:
    """Means of consecutive bins of `size` values (the last bin may be shorter), NaN ignored; a
    bin with no value is NaN (still a gap)."""
    if size == 1:
        return values
    padded = np.full(-(-len(values) // size) * size, np.nan)
    padded[:len(values)] = values
    bins = padded.reshape(-1, size)
    counts = np.sum(~np.isnan(bins), axis=1)
    sums = np.nansum(bins, axis=1)
    return np.divide(sums, counts, out=np.full(len(counts), np.nan), where=counts > 0)


def _genes(annotation: str | Path, interval: Interval, start: int, end: int
           ) -> list[tuple[Gene, list[tuple[int, int]]]]:
    """Genes overlapping [start, end) with their exon (else CDS) parts, on the annotation's
    spelling of the contig; none when the annotation lacks the contig."""
    from genomeconv.io.seqrecords import features_of, genes_of

    genes = genes_of(annotation)
    try:
        chrom = resolve_contig(interval.chrom, {g.interval.chrom for g in genes})
    except UnknownContigError:
        return []
    inside = [g for g in genes if g.interval.chrom == chrom and g.interval.start < end
              and g.interval.end > start]
    features = [f for f in features_of(annotation) if f.chrom == chrom]
    return [(g, _parts(g, features)) for g in inside]


def _parts(gene: Gene, features: list[Feature]) -> list[tuple[int, int]]:
    """The gene's exon boxes: exon parts inside it on its strand, else mRNA parts (GenBank's
    join(...)), else CDS parts, else the gene itself (an annotation with gene lines only);
    overlapping parts of several transcripts merged (a collapsed gene model)."""
    iv = gene.interval
    for kind in EXON_TYPES:
        parts = sorted((max(s, iv.start), min(e, iv.end)) for f in features if f.type == kind
                       for s, e, strand in f.parts
                       if strand == iv.strand and s < iv.end and e > iv.start
                       and _belongs(f, gene))
        if parts:
            merged = [list(parts[0])]
            for s, e in parts[1:]:
                if s <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], e)
                else:
                    merged.append([s, e])
            return [(s, e) for s, e in merged]
    return [(iv.start, iv.end)]


def _belongs(feature: Feature, gene: Gene) -> bool:
    """Whether a feature is the gene's: same gene id, name or locus_tag when the feature names
    one (GTF, GenBank), else by overlap (GFF3 exons name only their parent transcript)."""
    names = {n for n in (feature.locus_tag, feature.gene) if n}
    return not names or bool(names & {gene.gene_id, gene.gene_name})


def _lanes(genes: list[tuple[Gene, list]] | None) -> int:
    return max((lane for lane in _lane_of(genes or []).values()), default=-1) + 1


def _lane_of(genes: list[tuple[Gene, list]]) -> dict[str, int]:
    """Greedy lanes: each gene goes to the first lane whose last gene ends before it starts."""
    ends: list[int] = []
    lanes: dict[str, int] = {}
    for gene, _ in sorted(genes, key=lambda g: g[0].interval.start):
        lane = next((i for i, e in enumerate(ends) if e <= gene.interval.start), len(ends))
        if lane == len(ends):
            ends.append(0)
        ends[lane] = gene.interval.end
        lanes[gene.gene_id] = lane
    return lanes


def _draw_genes(ax, genes: list[tuple[Gene, list[tuple[int, int]]]], start: int,
                end: int) -> None:
    """Gene models: a line for the gene (introns), boxes for exons, chevrons for the strand and
    the name above; a 0-based [s, e) spans s + 0.5 .. e + 0.5 in 1-based display coordinates."""
    lanes = _lane_of(genes)
    for gene, parts in genes:
        iv, y = gene.interval, -lanes[gene.gene_id]
        lo, hi = max(iv.start, start) + 0.5, min(iv.end, end) + 0.5
        ax.plot([lo, hi], [y, y], color="0.3", linewidth=1, gid=f"gene:{gene.gene_id}")
        for s, e in parts:
            ax.add_patch(Rectangle((s + 0.5, y - 0.25), e - s, 0.5, facecolor="tab:blue",
                                   edgecolor="none", gid=f"exon:{gene.gene_id}"))
        marks = np.linspace(lo, hi, CHEVRONS + 2)[1:-1]
        ax.plot(marks, np.full(len(marks), y), linestyle="none", color="0.3", markersize=4,
                marker=">" if iv.strand == "+" else "<", gid=f"strand:{gene.gene_id}")
        name = gene.gene_name or gene.gene_id
        ax.text((lo + hi) / 2, y + 0.32, f"{name} ({iv.strand})", ha="center", va="bottom",
                fontsize="small", clip_on=True)
    n = _lanes(genes)
    ax.set_ylim(-n + 0.4, 0.9)
    ax.set_yticks([])
    ax.set_ylabel("genes")
    if not genes:
        ax.text(0.5, 0.5, "no genes in this region", transform=ax.transAxes, ha="center",
                va="center", color="0.4")
