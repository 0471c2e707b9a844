"""Shared figure plumbing: headless figures, the output path check, saving by file extension."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from genomeconv.errors import InputError

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
DPI = 150
PANEL_WIDTH = 10.0  # inches
PANEL_HEIGHT = 2.2
MAX_GROUPS = 20  # legend entries / groups shown by name; the rest are pooled as "other"
OTHER = "other"
MISSING = "missing"


def figure_format(out: str | Path) -> str:
    """The format named by `out`'s extension (png, svg or pdf); an InputError otherwise."""
    fmt = FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise InputError(f"unknown figure format {Path(out).suffix or '(no extension)'!r}; name "
                         f"the file .png, .svg or .pdf", path=out)
    return fmt


def check_figure_out(out: str | Path, *, force: bool = False) -> Path:
    """`out` resolved, when a figure may be written there: a known extension, not inside a
    genomeconv output folder, not an existing file unless `force` (checked before any work)."""
    from genomeconv.pipelines.query import check_output_file

    figure_format(out)
    return check_output_file(out, force=force, what="figure")


def new_figure(rows: int, *, height_ratios: list[float] | None = None,
               width: float = PANEL_WIDTH, height: float = PANEL_HEIGHT) -> tuple[Figure, list]:
    """A pyplot-free figure with `rows` stacked axes sharing x (no display, no global state)."""
    fig = Figure(figsize=(width, height * sum(height_ratios or [1.0] * rows)),
                 layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": height_ratios} if height_ratios else None)
    return fig, list(axes[:, 0])


def new_row(width_ratios: list[float], *, width: float = PANEL_WIDTH,
            height: float = PANEL_HEIGHT) -> tuple[Figure, list]:
    """A pyplot-free figure with axes side by side, widths in `width_ratios`."""
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, len(width_ratios), squeeze=False,
                        gridspec_kw={"width_ratios": width_ratios})
    return fig, list(axes[0])


def save(fig: Figure, out: str | Path) -> Path:
    """Write `fig` to `out` in the format its extension names; returns the path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=figure_format(path), dpi=DPI)
    return path


def capped_groups(labels: list[str], counts: dict[str, int], cap: int = MAX_GROUPS
                  ) -> dict[str, str]:
    """Map each label to itself, or to "other" beyond the `cap` largest groups (ties by name);
    "missing" is never pooled, so the user always sees how many values were absent."""
    ranked = sorted((g for g in counts if g != MISSING), key=lambda g: (-counts[g], g))
    kept = set(ranked[:cap]) | {MISSING}
    return {label: label if label in kept else OTHER for label in labels}
