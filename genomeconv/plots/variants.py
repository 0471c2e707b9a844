"""`genomeconv plot variants`: distributions of a variant score by group, and a ROC curve.

Groups come from a column of the `variants` view (status, id, a fine-tuned p_<class>...) or from
an INFO field of a VCF joined on (chrom, pos, ref, alt), one value per ALT allele
(io.variants.info_values); rows without a value form the group "missing". Each group is a box
(quartiles, whiskers at 1.5 IQR) over its points, its size in the tick label; rows without a score
(status not ok) are left out and counted in a warning.

With a binary label (`label` == `positive`), a second panel draws the ROC curve of the score and
its AUROC (pipelines.metrics.auroc: Mann-Whitney, ties counted half). For llr columns a LOWER
score means the alt allele is less likely under the model (more damaging), so by default lower
scores predict the positive class; the legend says which direction was used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from genomeconv.errors import InputError
from genomeconv.pipelines.metrics import auroc
from genomeconv.plots import figures, inputs

KEYS = ("chrom", "pos", "ref", "alt")
MAX_POINTS = 5000  # points drawn per group over its box (a seeded sample beyond that)


@dataclass(frozen=True)
class Scores:
    """The scored rows: score values, their group and (optionally) label, row-aligned."""

    values: np.ndarray
    groups: list[str]
    labels: list[str] | None
    group_name: str
    unscored: int  # rows of the view left out: no finite score (status not ok)
    total: int


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, highest score
    first, from (0, 0) to (1, 1); tied scores move both rates at once (a diagonal step), so the
    trapezoid area under the curve equals the tie-aware AUROC."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # end of each tie group
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return (np.r_[0.0, fp / max(1, (~y).sum())], np.r_[0.0, tp / max(1, y.sum())])


def read_scores(paths: Sequence[str | Path], score: str, *, by: str = "status",
                vcf: str | Path | None = None, info: str | None = None,
                label: str | None = None) -> Scores:
    """The rows with a finite `score`, grouped by the view's column `by`, or by the INFO field
    `info` of `vcf`; `label` is a view column, else an INFO field of `vcf`."""
    view = inputs.open_view(paths, "variants")
    view.require([score])
    if info is not None and vcf is None:
        raise InputError("--info needs --vcf (the VCF whose INFO fields to join)")
    if info is None:
        view.require([by])
    label_from_vcf = label is not None and label not in view.schema.names
    if label_from_vcf and vcf is None:
        raise InputError(f"no column {label!r} in the variants view and no --vcf to read it as "
                         f"an INFO field (columns: {', '.join(view.schema.names)})",
                         path=view.source)
    group_info = _info(vcf, info) if info is not None else None  # VCF errors before any work
    label_info = _info(vcf, label) if label_from_vcf else None
    columns = [*KEYS, score, *([by] if info is None else []),
               *([label] if label is not None and not label_from_vcf else [])]
    table = view.read(columns)
    if table.num_rows == 0:
        raise InputError("the variants view has no rows", path=view.source)
    values = inputs.floats(table[score])
    keep = np.isfinite(values)
    if not keep.any():
        raise InputError(f"no row has a finite {score} (all {table.num_rows} are null: status "
                         "not ok?)", path=view.source)
    keys = [tuple(r.values()) for r in table.select(list(KEYS)).to_pylist()]
    groups = (inputs.labels(table[by], figures.MISSING) if group_info is None
              else _joined(keys, group_info))
    labels = None
    if label is not None:
        labels = (_joined(keys, label_info) if label_info is not None
                  else inputs.labels(table[label], figures.MISSING))
    rows = np.flatnonzero(keep)
    return Scores(values[rows], [groups[i] for i in rows],
                  None if labels is None else [labels[i] for i in rows],
                  by if info is None else f"INFO {info}", int((~keep).sum()), table.num_rows)


def _info(vcf: str | Path | None, field: str) -> dict[tuple, str | None]:
    """The INFO `field` of each ALT allele of `vcf` (io.variants.info_values)."""
    from genomeconv.io.variants import info_values

    if vcf is None or not Path(vcf).is_file():
        raise InputError("no such VCF", path=vcf)
    return info_values(vcf, field)


def _joined(keys: list[tuple], values: dict[tuple, str | None]) -> list[str]:
    """The INFO value of each (chrom, pos, ref, alt) row, "missing" where the VCF has no such
    allele or no value; contigs matched across naming (chr1 <-> 1)."""
    from genomeconv.io.regions import UnknownContigError, resolve_contig

    chroms = {k[0] for k in values}
    names: dict[str, str | None] = {}
    for chrom in {k[0] for k in keys}:
        try:
            names[chrom] = resolve_contig(chrom, chroms)
        except UnknownContigError:
            names[chrom] = None
    found = [values.get((names[c], p, r, a)) for c, p, r, a in keys]
    return [figures.MISSING if v is None else v for v in found]


def variants_figure(paths: Sequence[str | Path], score: str = "llr", *, by: str = "status",
                    vcf: str | Path | None = None, info: str | None = None,
                    label: str | None = None, positive: str | None = None,
                    lower_is_positive: bool | None = None,
                    warn: Callable[[str], None] | None = None) -> Figure:
    """Boxes and points of `score` per group; with `label` and `positive`, a ROC panel."""
    if (label is None) != (positive is None):
        raise InputError("--label and --positive go together (the label column or INFO field, "
                         "and its value that marks a positive)")
    data = read_scores(paths, score, by=by, vcf=vcf, info=info, label=label)
    lower = score.startswith("llr") if lower_is_positive is None else lower_is_positive
    roc = None
    if data.labels is not None:
        roc = _roc_inputs(data.labels, data.values, label, str(positive), lower)
    if warn is not None and data.unscored:
        warn(f"{data.unscored} of {data.total} rows have no {score} (status not ok) or a "
             "non-finite one, and are left out")
    if warn is not None and roc is not None and roc[2]:
        warn(f"{roc[2]} scored rows have no {label} and are left out of the ROC")
    if label is None:
        fig, axes = figures.new_figure(1, height=3.6)
    else:
        fig, axes = figures.new_row([1.6, 1.0], width=12.0, height=4.4)
    _draw_groups(axes[0], data, score)
    if roc is not None:
        truth, ranked, _ = roc
        direction = "lower" if lower else "higher"
        _draw_roc(axes[1], truth, ranked, f"{direction} {score} predicts {label} = {positive}")
    return fig


def _draw_groups(ax, data: Scores, score: str) -> None:
    """One box per group (largest first, "missing" and "other" last) over its points."""
    counts: dict[str, int] = {}
    for g in data.groups:
        counts[g] = counts.get(g, 0) + 1
    pooled = figures.capped_groups(list(counts), counts)
    groups = [pooled[g] for g in data.groups]
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    order = sorted(sizes, key=lambda g: (g in (figures.MISSING, figures.OTHER), -sizes[g], g))
    index = np.array([order.index(g) for g in groups])
    samples = [data.values[index == i] for i in range(len(order))]
    ax.boxplot(samples, positions=range(len(order)), widths=0.6, showfliers=False,
               medianprops={"color": "black"})
    rng = np.random.default_rng(0)
    for i, (name, values) in enumerate(zip(order, samples)):
        shown = values if len(values) <= MAX_POINTS else rng.choice(values, MAX_POINTS,
                                                                    replace=False)
        ax.scatter(i + rng.uniform(-0.2, 0.2, len(shown)), shown, s=6, alpha=0.5,
                   rasterized=len(shown) > 500, gid=f"points:{name}")
    ax.set_xticks(range(len(order)), [f"{g}\nn={sizes[g]:,}" for g in order],
                  rotation=30 if len(order) > 6 else 0, fontsize="small")
    ax.set_xlabel(data.group_name)
    ax.set_ylabel(score)
    ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
    ax.set_title(f"{score} by {data.group_name} ({len(data.values):,} scored alleles)",
                 loc="left", fontsize="medium")


def _roc_inputs(labels: list[str], values: np.ndarray, label: str, positive: str,
                lower: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(truth, ranking scores, rows left out) for the rows with a label: truth is label ==
    positive, the ranking is -score when lower scores predict positives; an InputError unless
    both classes are present."""
    known = np.array([v != figures.MISSING for v in labels])
    truth = np.array([v == positive for v in labels])[known]
    if truth.all() or not truth.any():
        present = sorted({v for v in labels if v != figures.MISSING})[:10]
        raise InputError(f"the ROC needs both classes: {int(truth.sum())} of {len(truth)} "
                         f"labelled rows have {label} == {positive!r} (values: "
                         f"{', '.join(present) or 'none'})")
    ranked = -values[known] if lower else values[known]
    return truth, ranked, int((~known).sum())


def _draw_roc(ax, truth: np.ndarray, ranked: np.ndarray, direction: str) -> None:
    """The ROC curve of `ranked` against `truth` with its AUROC in the legend."""
    fpr, tpr = roc_curve(truth, ranked)
    ax.plot(fpr, tpr, gid="roc", label=f"AUROC {auroc(truth, ranked):.3f}: {direction}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=0.8, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC: {int(truth.sum()):,} positive, {int((~truth).sum()):,} negative",
                 loc="left", fontsize="medium")
    ax.legend(loc="lower right", fontsize="small")
