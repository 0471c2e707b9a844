"""`genomeconv plot embeddings`: a 2-D PCA of pooled embeddings, coloured by a column.

PCA in float64 on the centred embeddings (numpy SVD); a component's sign is fixed so that its
largest-magnitude loading is positive, which makes the picture reproducible across runs and
machines. Axis labels give each component's share of the total variance. A categorical column
colours by value (the largest groups by name, the rest as "other", nulls as "missing"); a numeric
column colours continuously with a colour bar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from matplotlib import colormaps
from matplotlib.figure import Figure

from genomeconv.errors import InputError
from genomeconv.pipelines import schema
from genomeconv.plots import figures, inputs


def pca(matrix: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates (n, k), explained variance ratio (k,)) of the rows of `matrix` in float64,
    each component's largest-|loading| positive."""
    x = np.asarray(matrix, dtype=np.float64)
    x = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    components = vt[:k]
    pivot = np.abs(components).argmax(axis=1)
    components = components * np.sign(components[np.arange(len(components)), pivot])[:, None]
    total = float((s ** 2).sum())
    ratio = (s[:k] ** 2) / total if total > 0 else np.zeros(len(components))
    coords = x @ components.T
    if coords.shape[1] < k:  # fewer dimensions than components: the rest are zero
        coords = np.pad(coords, ((0, 0), (0, k - coords.shape[1])))
        ratio = np.pad(ratio, (0, k - len(ratio)))
    return coords, ratio


def read_embeddings(paths: Sequence[str | Path], color_by: str, pooling: str | None = None,
                    warn: Callable[[str], None] | None = None) -> tuple[np.ndarray, pa.Array]:
    """(embeddings (n, d) float32, the `color_by` column) of the finite pooled embeddings under
    `paths` with one pooling (`pooling`, needed when the outputs hold several)."""
    view = inputs.open_view(paths, "embeddings")
    view.require([color_by])
    columns = ["embedding", "pooling", color_by]
    models = {(pq.read_schema(f).metadata or {}).get(schema.KEY_MODEL_SHA) for f in view.files}
    if len(models) > 1:
        raise InputError("embeddings from different models share no space; pass one model's "
                         "output", path=view.source)
    table = view.read(columns)
    poolings = sorted(pc.unique(table["pooling"]).drop_null().to_pylist())
    if pooling is None and len(poolings) > 1:
        raise InputError(f"the embeddings have several poolings ({', '.join(poolings)}); choose "
                         "one with --pooling", path=view.source)
    if pooling is not None:
        if pooling not in poolings:
            raise InputError(f"no embeddings with pooling {pooling!r} (poolings: "
                             f"{', '.join(poolings)})", path=view.source)
        table = table.filter(pc.equal(table["pooling"], pooling))
    table = table.filter(pc.is_valid(table["embedding"]))
    d = table.schema.field("embedding").type.list_size
    flat = table["embedding"].combine_chunks().flatten()
    matrix = flat.to_numpy(zero_copy_only=False).reshape(-1, d)
    finite = np.isfinite(matrix).all(axis=1)
    if warn is not None and not finite.all():
        warn(f"{int((~finite).sum())} embeddings with NaN/inf values left out")
    if finite.sum() < 2:
        raise InputError(f"a PCA needs at least 2 finite embeddings (found {int(finite.sum())})",
                         path=view.source)
    keep = pa.array(finite)
    return matrix[finite], table[color_by].combine_chunks().filter(keep)


def embeddings_figure(paths: Sequence[str | Path], color_by: str = "gene_name", *,
                      pooling: str | None = None,
                      warn: Callable[[str], None] | None = None) -> Figure:
    """PC1 against PC2 of the pooled embeddings, one scatter per category of `color_by` (with
    a legend), or one scatter with a colour bar when `color_by` is numeric."""
    matrix, colour = read_embeddings(paths, color_by, pooling, warn)
    coords, ratio = pca(matrix)
    fig, (ax,) = figures.new_figure(1, width=7.5, height=5.5)
    if pa.types.is_integer(colour.type) or pa.types.is_floating(colour.type):
        values = inputs.floats(colour)
        points = ax.scatter(coords[:, 0], coords[:, 1], c=values, cmap="viridis", s=14,
                            plotnonfinite=True, gid="points")
        fig.colorbar(points, ax=ax, label=color_by)
    else:
        names = inputs.labels(colour, figures.MISSING)
        counts: dict[str, int] = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        pooled = figures.capped_groups(list(counts), counts)
        groups = [pooled[n] for n in names]
        pooled_names = (figures.MISSING, figures.OTHER)
        order = sorted(set(groups), key=lambda g: (g in pooled_names, g))
        palette = colormaps["tab10" if len(order) <= 10 else "tab20"]
        for i, g in enumerate(order):
            rows = np.array([x == g for x in groups])
            ax.scatter(coords[rows, 0], coords[rows, 1], s=14, label=f"{g} ({int(rows.sum())})",
                       color="0.6" if g in pooled_names else palette(i % palette.N),
                       gid=f"points:{g}")
        ax.legend(title=color_by, fontsize="small", loc="center left",
                  bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}% of variance)")
    ax.set_title(f"PCA of {len(matrix):,} pooled embeddings (d = {matrix.shape[1]})", loc="left",
                 fontsize="medium")
    ax.grid(alpha=0.3)
    return fig
