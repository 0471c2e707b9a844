"""Read-only access to genomeconv outputs for the plots: one view's rows, optionally in a region.

Files are found as `genomeconv query` finds them (pipelines.query.discover: every Parquet file
carrying `genomeconv.kind`); rows are read with pyarrow, only the columns a plot needs. Errors are
one line naming the files: a missing view, an unknown column, a region on a contig the view does
not have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from genomeconv.errors import InputError
from genomeconv.io.regions import Interval, UnknownContigError, format_region, parse_region
from genomeconv.io.regions import resolve_contig
from genomeconv.pipelines.query import discover


@dataclass(frozen=True)
class View:
    """The files of one output kind and their (unified) schema."""

    kind: str
    files: list[Path]
    schema: pa.Schema

    @property
    def source(self) -> str:
        """The files, for messages: one path, or the first and how many more."""
        more = f" (+{len(self.files) - 1} more files)" if len(self.files) > 1 else ""
        return f"{self.files[0]}{more}"

    def require(self, columns: Sequence[str], what: str = "column") -> None:
        """An InputError naming the first of `columns` this view lacks, and the ones it has."""
        for name in columns:
            if name not in self.schema.names:
                raise InputError(f"no {what} {name!r} in the {self.kind} view (columns: "
                                 f"{', '.join(self.schema.names)})", path=self.source)

    def read(self, columns: Sequence[str], where: ds.Expression | None = None) -> pa.Table:
        """The rows matching `where`, only `columns` (checked first)."""
        self.require(columns)
        dataset = ds.dataset([str(f) for f in self.files], format="parquet", schema=self.schema)
        return dataset.to_table(columns=list(dict.fromkeys(columns)), filter=where)

    def contig(self, name: str) -> str:
        """The view's chrom value that `name` refers to (chr1 <-> 1 resolved)."""
        chroms = pc.unique(self.read(["chrom"])["chrom"]).drop_null().to_pylist()
        try:
            return resolve_contig(name, chroms, source=f"the {self.kind} view")
        except UnknownContigError as exc:
            raise InputError(str(exc), path=self.source) from None


def open_view(paths: Sequence[str | Path], kind: str) -> View:
    """The `kind` view of the outputs under `paths` (InputError naming the views found)."""
    views = discover(paths)
    if kind not in views:
        raise InputError(f"no {kind} output among {', '.join(map(str, paths))} (found: "
                         f"{', '.join(views)})")
    files = views[kind]
    try:
        schema = pa.unify_schemas([pq.read_schema(f).remove_metadata() for f in files])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        why = " ".join(str(exc).split())
        raise InputError(f"the {kind} files disagree on a column's type ({why}); pass one "
                         "run's output", path=files[0]) from None
    return View(kind, files, schema)


def region_of(view: View, region: str) -> Interval:
    """`region` (samtools style) parsed, its contig renamed to the view's spelling."""
    interval = parse_region(region)
    return Interval(view.contig(interval.chrom), interval.start, interval.end)


def region_filter(interval: Interval, position: str, *, one_based: bool) -> ds.Expression:
    """Rows on the interval's contig whose `position` column lies inside it."""
    offset = 1 if one_based else 0
    where = (ds.field("chrom") == interval.chrom) & (ds.field(position) >= interval.start + offset)
    if interval.end is not None:
        where &= ds.field(position) < interval.end + offset
    return where


def empty_region(view: View, interval: Interval, position: str, *, one_based: bool) -> InputError:
    """The error for a region without rows, saying where the view's rows on that contig are."""
    values = view.read([position], ds.field("chrom") == interval.chrom)[position]
    lo, hi = pc.min(values).as_py(), pc.max(values).as_py()
    offset = 0 if one_based else 1
    return InputError(f"no {view.kind} rows in {format_region(interval)} (the view has "
                      f"{interval.chrom}:{lo + offset}-{hi + offset})", path=view.source)


def floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric column as float64 with nulls as NaN (so plots draw gaps, never zeros)."""
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


def labels(column: pa.ChunkedArray | pa.Array, missing: str) -> list[str]:
    """A column's values as strings for grouping; nulls become `missing`."""
    return [missing if v is None else str(v) for v in column.to_pylist()]
