"""`genomeconv plot mutagenesis`: a saturation-mutagenesis heat map, position x base.

Cell (base b, position p) is the score of the SNV ref -> b at p, from `score-variants` rows (the
`variants` view: SNVs with status ok). A reference base has no SNV of its own: its cell is empty
(grey) and marked with a dot; an SNV without a row is an empty grey cell too, so no missing value
reads as 0. The colour map diverges around 0 (symmetric limits), so for llr (log p(alt) -
log p(ref), natural log) red cells are alleles the model finds less likely than the reference,
blue cells more likely. Without a region, the plot shows the one region that the output's
`score-variants --saturate` run scored (the command each file records); an output of a VCF, or of
several saturated regions, needs --region.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from genomeconv.errors import InputError
from genomeconv.io.regions import format_region
from genomeconv.pipelines import schema
from genomeconv.plots import figures, inputs

BASES = "ACGT"
CMAP = "RdBu"  # low (negative) red, high blue, white at 0
BLANK = "0.8"  # grey: a cell without a score (reference base, or no row for that SNV)


def mutagenesis_matrix(paths: Sequence[str | Path], region: str | None, score: str = "llr",
                       *, warn: Callable[[str], None] | None = None
                       ) -> tuple[int, np.ndarray, list[str | None], str]:
    """(first 1-based position, scores (4, L) with NaN where no SNV row, reference base per
    position or None, contig) for the SNVs with status ok in `region` (None: the output's
    saturated region, `saturated_region`)."""
    view = inputs.open_view(paths, "variants")
    view.require([score])
    interval = inputs.region_of(view, region or saturated_region(view))
    table = view.read(["pos", "ref", "alt", "status", score],
                      inputs.region_filter(interval, "pos", one_based=True))
    if table.num_rows == 0:
        raise inputs.empty_region(view, interval, "pos", one_based=True)
    checks = (pc.equal(table["status"], "ok"), pc.equal(pc.utf8_length(table["ref"]), 1),
              pc.is_in(table["alt"], value_set=pa.array(list(BASES))), pc.is_valid(table[score]))
    usable = pc.fill_null(functools.reduce(pc.and_, checks), False)
    snvs = table.filter(usable)
    if snvs.num_rows == 0:
        statuses = pc.value_counts(table["status"]).to_pylist()
        shown = ", ".join(f"{s['values']} {s['counts']}" for s in statuses)
        raise InputError(f"no scored SNVs (status ok, with a {score}) in "
                         f"{format_region(interval)}: {table.num_rows} rows ({shown})",
                         path=view.source)
    if warn is not None and snvs.num_rows < table.num_rows:
        warn(f"{table.num_rows - snvs.num_rows} of {table.num_rows} rows in the region left "
             f"out (not SNVs, status not ok, or no {score})")
    pos = snvs["pos"].to_numpy()
    first = interval.start + 1 if interval.end is not None else int(pos.min())
    last = interval.end if interval.end is not None else int(pos.max())
    matrix = np.full((4, last - first + 1), np.nan)
    refs: list[str | None] = [None] * (last - first + 1)
    values = inputs.floats(snvs[score])
    for p, ref, alt, value in zip(pos, snvs["ref"].to_pylist(), snvs["alt"].to_pylist(),
                                  values):
        col, row = int(p) - first, BASES.index(alt)
        ref = ref.upper()
        if refs[col] not in (None, ref):
            raise InputError(f"{interval.chrom}:{p} has two reference bases ({refs[col]}, "
                             f"{ref}); pass one reference's scores", path=view.source)
        if not np.isnan(matrix[row, col]) and matrix[row, col] != value:
            raise InputError(f"{interval.chrom}:{p} {ref}>{alt} has two different {score} "
                             "values; pass one run's scores", path=view.source)
        refs[col], matrix[row, col] = ref, value
    return first, matrix, refs, interval.chrom


def saturated_region(view: inputs.View) -> str:
    """The one region that the `score-variants --saturate` runs behind the view's files scored,
    read from the command each file records; InputError asking for --region unless there is
    exactly one."""
    regions = {region for file in view.files for region in _saturate_args(
        (pq.read_schema(file).metadata or {}).get(schema.KEY_COMMAND, b"").decode()) if region}
    if len(regions) != 1:
        held = (f"several saturated regions ({', '.join(sorted(regions))})" if regions else
                "no saturated region (its files record no score-variants --saturate run)")
        raise InputError(f"the output holds {held}: choose one with --region",
                         path=view.source)
    return regions.pop()


def _saturate_args(command: str) -> list[str]:
    """The --saturate values of a recorded command line (`--saturate R` or `--saturate=R`)."""
    words = command.split()
    return [word.partition("=")[2] or following for word, following in zip(words, words[1:] + [""])
            if word == "--saturate" or word.startswith("--saturate=")]


def mutagenesis_figure(paths: Sequence[str | Path], region: str | None, score: str = "llr", *,
                       warn: Callable[[str], None] | None = None) -> Figure:
    """The heat map (a QuadMesh whose array is the (4, L) score matrix, rows A C G T) with the
    reference bases marked by dots."""
    first, matrix, refs, chrom = mutagenesis_matrix(paths, region, score, warn=warn)
    length = matrix.shape[1]
    fig, (ax,) = figures.new_figure(1, height=2.6, width=min(16.0, max(6.0, 0.06 * length + 3)))
    limit = float(np.nanmax(np.abs(matrix))) or 1.0
    x_edges = np.arange(first, first + length + 1) - 0.5
    mesh = ax.pcolormesh(x_edges, np.arange(5) - 0.5, np.ma.masked_invalid(matrix), cmap=CMAP,
                         vmin=-limit, vmax=limit, gid="scores")
    ax.set_facecolor(BLANK)  # cells without a score show the background: never read as 0
    handles = [Patch(facecolor=BLANK, label="no score")]
    marked = [(first + i, BASES.index(r)) for i, r in enumerate(refs)
              if r is not None and r in BASES]
    if marked:
        xs, ys = np.array(marked, dtype=float).T
        handles.insert(0, ax.scatter(xs, ys, s=max(2.0, min(16.0, 600.0 / length)),
                                     color="black", marker="o", label="reference base",
                                     gid="reference"))
    ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize="small",
              frameon=False, ncols=2)
    ax.set_yticks(range(4), list(BASES))
    ax.set_ylim(3.5, -0.5)
    ax.set_xlabel(f"{chrom} position (1-based)")
    ax.set_ylabel("alternative base")
    ax.set_title(f"{score} of every SNV, {chrom}:{first:,}-{first + length - 1:,}", loc="left",
                 fontsize="medium")
    bar = fig.colorbar(mesh, ax=ax, pad=0.01)
    bar.set_label(f"{score}" + (" (alt vs ref, nats)" if score.startswith("llr") else ""))
    return fig
