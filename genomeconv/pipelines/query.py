"""DuckDB over genomeconv outputs (`genomeconv query`); cosine neighbours (`genomeconv neighbors`).

Views. Every Parquet file under the given paths that carries the metadata key `genomeconv.kind`
joins the view named by that kind (`embeddings`, `per_base`, `variants`, ...); the directory
layout does not matter. Parquet files without the key are ignored inside directories and refused
when named directly.

Shortcuts (no SQL needed) filter one target view: `--view`, else the first present of
variants, embeddings, per_base (then any other kind, alphabetically).
- `--region chr17:43,044,295-43,125,483` (samtools style, 1-based closed) becomes the 0-based
  half-open [start, end) and keeps rows that OVERLAP it by at least one base: an embedding item
  [start, end) overlaps when start < q_end and end > q_start; a variant occupies
  [pos - 1, pos - 1 + len(ref)), a track row [position, position + 1). The contig is matched across
  conventions (chr17 <-> 17).
- `--genes NAME[,NAME...]` keeps rows whose gene_name or gene_id equals a NAME (exact,
  case-sensitive); a view without gene columns (variants) keeps rows overlapping any embeddings
  item of that gene, so it needs an embeddings output among the paths (variants match on their
  `contig` column, the FASTA name, when present, else on chrom).
- `--top N --by COLUMN` orders by the raw column value, no absolute value: descending, except
  log-likelihood-ratio columns (llr, llr_fwd, llr_rev) ascending, so the most damaging variants
  (alt least likely) come first; `ascending` overrides; NULLs (unscored rows) last. Without
  `--by`, a view with an `llr` column ranks by llr.

Read-only. The connection that runs the user's SQL may read the output files behind its views and
nothing else: DuckDB's external access is disabled (allowed_paths = those files), extension
install/autoload is off and the configuration is locked before any user SQL runs, so COPY ... TO,
ATTACH, read_csv('/etc/...'), INSTALL and LOAD fail. The SQL must also parse (DuckDB's own parser)
as exactly one SELECT, checked again after any wrapping (`limited`), so closing the wrapper's
parenthesis cannot smuggle in a second statement. Rows are written out by a separate connection
that sees only the query's result stream, to a path that `check_output_file` accepted: never inside
a genomeconv output folder (under a folder with a run manifest or lock, or beside parts), never
over an existing file unless forced.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genomeconv.errors import InputError
from genomeconv.io.regions import UnknownContigError, parse_region, resolve_contig
from genomeconv.pipelines import schema
from genomeconv.pipelines.manifest import COMMIT_LOCK_FILE, LOCK_FILE, MANIFEST_FILE

if TYPE_CHECKING:
    import duckdb

VIEW_PRIORITY = ("variants", "embeddings", "per_base")
FORMATS = ("csv", "json", "parquet")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NEIGHBOR_COLUMNS = ("item_id", "gene_name", "gene_id", "seq_name", "chrom", "start", "end",
                    "strand", "pooling")
# Files that mark a folder as a pipeline's output folder besides its Parquet parts: the run
# manifest and the writer's lock and commit files of pipelines/manifest.py. Not any "*.lock":
# pytest, pip and others leave those in plain folders.
OUTPUT_MARKERS = (MANIFEST_FILE, LOCK_FILE, COMMIT_LOCK_FILE)
PART_FOLDERS = ("embeddings", "per_base", "track")  # output kinds written to OUT/<kind>/
# Words a SQL statement begins with (SELECT and the others that check_select then refuses):
# `query` takes its last argument as SQL when it begins so, whatever files exist (the text is
# never looked up as a path); a path beginning with one of these words is given as ./PATH.
SQL_START_WORDS = frozenset({
    "select", "with", "from", "values", "table", "summarize", "describe", "show", "pivot",
    "unpivot", "explain", "insert", "update", "delete", "copy", "attach", "detach", "create",
    "drop", "alter", "install", "load", "set", "reset", "pragma", "call", "export", "import",
    "use", "checkpoint", "vacuum", "begin", "commit", "rollback", "truncate", "prepare",
    "execute", "analyze"})
_FIRST_SQL_WORD = re.compile(r"(?:\s|--[^\n]*\n|/\*.*?\*/)*(\(|[A-Za-z]+(?=[\s(*]))", re.S)
_LOCKDOWN = ("SET autoinstall_known_extensions = false", "SET autoload_known_extensions = false",
             "SET enable_external_access = false", "SET lock_configuration = true")


@dataclass(frozen=True)
class Shortcuts:
    """Query shortcuts that need no SQL (see the module docstring for their semantics)."""

    view: str | None = None
    genes: tuple[str, ...] | None = None
    regions: tuple[str, ...] | None = None
    top: int | None = None
    by: str | None = None
    ascending: bool | None = None

    def any(self) -> bool:
        """Whether any filter or ranking was asked for."""
        return any(v is not None for v in (self.genes, self.regions, self.top, self.by))


def discover(paths: Sequence[str | Path]) -> dict[str, list[Path]]:
    """Group the genomeconv Parquet files under `paths` (files or directories) by output kind."""
    kinds: dict[str, list[Path]] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
        elif path.is_file():
            candidates = [path]
        else:
            raise InputError("no such output", path=path)
        for file in candidates:
            kind = _kind(file)
            if kind is None:
                if file == path:
                    raise InputError("not a genomeconv output (no genomeconv.kind)", path=file)
                continue
            kinds.setdefault(kind, []).append(file.resolve())
    if not kinds:
        raise InputError(f"no genomeconv outputs under {', '.join(map(str, paths))}")
    return {kind: sorted(set(files)) for kind, files in sorted(kinds.items())}


def _kind(file: Path) -> str | None:
    """The genomeconv output kind of a Parquet file, or None (not ours, or not Parquet)."""
    try:
        kind = (pq.read_schema(file).metadata or {}).get(schema.KEY_KIND)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"unreadable Parquet file ({' '.join(str(exc).split())})",
                         path=file) from None
    return None if kind is None else kind.decode()


def open_views(paths: Sequence[str | Path]
               ) -> tuple[duckdb.DuckDBPyConnection, dict[str, list[Path]]]:
    """A read-only in-memory DuckDB connection with one view per output kind under `paths`
    (it can read those files and nothing else; see the module docstring)."""
    import duckdb

    views = discover(paths)
    con = duckdb.connect()
    files = sorted({str(f) for listed in views.values() for f in listed})
    con.execute(f"SET allowed_paths = [{', '.join(_literal(f) for f in files)}]")
    for kind, listed in views.items():
        if not _IDENTIFIER.match(kind):
            raise InputError(f"output kind {kind!r} cannot name a view")
        names = ", ".join(_literal(str(f)) for f in listed)
        con.execute(f"CREATE VIEW {kind} AS SELECT * FROM read_parquet([{names}], "
                    "union_by_name = true)")
    _lock(con)
    return con, views


def table_connection(name: str, table: pa.Table) -> duckdb.DuckDBPyConnection:
    """A read-only connection whose one view, `name`, is an Arrow table (no file access)."""
    import duckdb

    con = duckdb.connect()
    _lock(con)
    con.register(name, table)
    return con


def _lock(con: duckdb.DuckDBPyConnection) -> None:
    for statement in _LOCKDOWN:
        con.execute(statement)


def is_sql(text: str) -> bool:
    """Whether a `query` argument is SQL: it begins (after spaces and comments) with "(" or one
    of SQL_START_WORDS followed by a space, "(" or "*"."""
    match = _FIRST_SQL_WORD.match(text)
    return match is not None and (match[1] == "(" or match[1].lower() in SQL_START_WORDS)


def check_select(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """`sql` without a trailing semicolon, when DuckDB parses it as exactly one SELECT;
    otherwise an InputError (one line)."""
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise InputError(f"SQL: {_one_line(exc)}") from None
    if len(statements) != 1:
        raise InputError(f"SQL: give exactly one statement (got {len(statements)})")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise InputError(f"SQL: only SELECT queries are allowed (got {kind.name})")
    return sql.strip().rstrip(";").strip()


def describe_views(con: duckdb.DuckDBPyConnection, views: dict[str, list[Path]]) -> pa.Table:
    """One row per view: name, number of files, rows and columns."""
    rows = []
    for kind, files in views.items():
        n = con.execute(f"SELECT count(*) FROM {kind}").fetchone()[0]
        rows.append({"view": kind, "files": len(files), "rows": n,
                     "columns": ", ".join(_columns(con, kind))})
    return pa.Table.from_pylist(rows)


def shortcut_query(con: duckdb.DuckDBPyConnection, views: dict[str, list[Path]],
                   shortcuts: Shortcuts) -> tuple[str, list[object]]:
    """SQL text and parameters for the shortcuts, over the target view."""
    target = shortcuts.view or _default_view(views)
    if target not in views:
        raise InputError(f"no {target!r} view (views: {', '.join(views)})")
    columns = _columns(con, target)
    where: list[str] = []
    params: list[object] = []
    if shortcuts.regions:
        clauses = [_region_clause(con, target, columns, r) for r in shortcuts.regions]
        where.append("(" + " OR ".join(c for c, _ in clauses) + ")")
        params += [v for _, values in clauses for v in values]
    if shortcuts.genes is not None:
        clause, values = _gene_clause(target, columns, views, shortcuts.genes)
        where.append(clause)
        params += values
    sql = f"SELECT * FROM {target} AS t"
    if where:
        sql += " WHERE " + " AND ".join(where)
    by = shortcuts.by or ("llr" if shortcuts.top is not None and "llr" in columns else None)
    if shortcuts.top is not None and by is None:
        raise InputError(f"--top needs --by COLUMN for the {target} view")
    if shortcuts.top is not None and shortcuts.top < 0:
        raise InputError(f"--top must be >= 0 (got {shortcuts.top})")
    if by is not None:
        if by not in columns:
            raise InputError(f"no column {by!r} in {target} (columns: {', '.join(columns)})")
        ascending = shortcuts.ascending
        if ascending is None:
            ascending = by.startswith("llr")
        sql += f' ORDER BY t."{by}" {"ASC" if ascending else "DESC"} NULLS LAST'
    if shortcuts.top is not None:
        sql += f" LIMIT {int(shortcuts.top)}"
    return sql, params


def limited(sql: str, limit: int | None) -> str:
    """Wrap a query so that it returns at most `limit` rows (unchanged when limit is None); the
    newlines keep a trailing `--` comment from swallowing the wrapper."""
    if limit is None:
        return sql
    if limit < 0:
        raise InputError(f"--limit must be >= 0 (got {limit})")
    return f"SELECT * FROM (\n{sql.strip().rstrip(';')}\n) AS q LIMIT {int(limit)}"


def fetch(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] = ()) -> pa.Table:
    """Run one SELECT and return its rows as an Arrow table (SQL errors: one-line InputError)."""
    import duckdb

    rows = _run(con, sql, params)
    try:
        return rows.read_all()
    except (duckdb.Error, pa.ArrowException) as exc:  # errors met while the rows stream
        raise InputError(f"SQL: {_one_line(exc)}") from None


def write(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object], out: str | Path,
          fmt: str) -> Path:
    """Write a SELECT's rows to `out` as CSV (header), JSON (one object per line) or Parquet.

    The rows stream from the read-only connection into a separate one that only writes them;
    `out` should have passed `check_output_file`.
    """
    import duckdb

    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    options = {"csv": "FORMAT csv, HEADER true", "json": "FORMAT json",
               "parquet": "FORMAT parquet"}[fmt]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = duckdb.connect()
    try:
        writer.register("query_rows", _run(con, sql, params))
        writer.execute(f"COPY query_rows TO {_literal(str(path))} ({options})")
    except (duckdb.Error, pa.ArrowException) as exc:
        raise InputError(f"SQL: {_one_line(exc)}") from None
    finally:
        writer.close()
    return path


def _run(con: duckdb.DuckDBPyConnection, sql: str,
         params: Sequence[object]) -> pa.RecordBatchReader:
    """The rows of one SELECT (checked by `check_select`) as a stream."""
    import duckdb

    body = check_select(con, sql)
    try:
        return con.sql(body, params=list(params)).to_arrow_reader()
    except duckdb.Error as exc:
        raise InputError(f"SQL: {_one_line(exc)}") from None


def check_output_file(out: str | Path, *, force: bool = False, what: str = "rows") -> Path:
    """`out` when `what` (rows, a figure) may be written there: not a folder, not an existing
    file unless `force`, and not inside a genomeconv output folder (its parts and manifest are
    never touched)."""
    path = Path(out).expanduser().resolve()
    if path.is_dir():
        raise InputError("is a folder; --out takes a file name", path=out)
    if path.exists() and not force:
        raise InputError("already exists (pass --force to replace it)", path=out)
    for folder in path.parents:
        if _is_output_folder(folder, parts=folder == path.parent):
            raise InputError(f"is inside the genomeconv output folder {folder}; write the "
                             f"{what} elsewhere", path=out)
    return path


def _is_output_folder(folder: Path, *, parts: bool = True) -> bool:
    """Whether `folder` holds a run manifest / lock file or, with `parts`, genomeconv Parquet
    parts (directly, or in a subfolder named after their kind, as embed's embeddings/ and
    per_base/). Folders further up count by their run files only: a part file copied somewhere
    must not fence off everything below that folder."""
    if not folder.is_dir():
        return False
    if any(p.is_file() for pattern in OUTPUT_MARKERS for p in folder.glob(pattern)):
        return True
    if not parts:
        return False
    for file in folder.glob("*.parquet"):
        if _kind_or_none(file) is not None:
            return True
    for sub in folder.iterdir():
        if sub.is_dir() and sub.name in PART_FOLDERS:
            if any(_kind_or_none(f) == sub.name for f in sub.glob("*.parquet")):
                return True
    return False


def _kind_or_none(file: Path) -> str | None:
    try:
        return _kind(file)
    except InputError:
        return None


def _one_line(exc: BaseException) -> str:
    """The first line of a DuckDB error (its caret diagram is left out)."""
    return " ".join(str(exc).strip().splitlines()[0].split())


def nearest_neighbors(paths: Sequence[str | Path], item: str, k: int = 10, *,
                      pooling: str | None = None) -> pa.Table:
    """The k items whose embeddings are closest to `item`'s by cosine similarity.

    `item` is an item_id, else a gene_name, gene_id or seq_name naming exactly one item (among
    rows with `pooling`, when given). Only items with the query's pooling are compared, and all
    files must come from one model. Returns rank, cosine and the item keys, most similar first;
    the query item itself is left out.
    """
    if k < 1:
        raise InputError(f"-k must be >= 1 (got {k})")
    if pooling is not None:
        from genomeconv.models import POOLINGS

        if pooling not in POOLINGS:
            raise InputError(f"--pooling must be one of {', '.join(POOLINGS)} (got {pooling!r})")
    files = discover(paths).get("embeddings")
    if not files:
        raise InputError("no embeddings output among the given paths")
    models = {(pq.read_schema(f).metadata or {}).get(schema.KEY_MODEL_SHA) for f in files}
    if len(models) > 1:
        raise InputError("embeddings from different models cannot be compared; pass one model's "
                         "output")
    import pyarrow.dataset as ds

    table = ds.dataset([str(f) for f in files], format="parquet").to_table(
        columns=[*NEIGHBOR_COLUMNS, "embedding"])
    usable = pc.is_valid(table["embedding"]).to_numpy(zero_copy_only=False)
    if pooling is not None:
        usable &= _equals(table["pooling"], pooling)
    row = _find_item(table, item, usable)
    usable &= _equals(table["pooling"], table["pooling"][row].as_py())
    usable[row] = False
    matrix = _matrix(table["embedding"])
    if not np.isfinite(matrix[row]).all():
        raise InputError(f"the embedding of {item!r} is not finite (NaN or inf): the model that "
                         "wrote it is broken; nothing to compare")
    if not usable.any():
        raise InputError(f"no other item with pooling {table['pooling'][row].as_py()!r} to "
                         f"compare {item!r} with")
    similarity = cosine_similarity(matrix, matrix[row])
    similarity[~usable | np.isnan(similarity)] = -np.inf
    if not np.isfinite(similarity).any():
        raise InputError(f"all {int(usable.sum())} candidate embeddings are non-finite (NaN or "
                         f"inf) or zero, or {item!r}'s is zero: no neighbours to rank")
    k = min(k, int(np.isfinite(similarity).sum()))
    best = np.argpartition(-similarity, k - 1)[:k] if k else np.array([], dtype=np.int64)
    best = best[np.argsort(-similarity[best], kind="stable")]
    result = table.select(list(NEIGHBOR_COLUMNS)).take(pa.array(best, type=pa.int64()))
    result = result.add_column(0, "cosine", pa.array(similarity[best], type=pa.float64()))
    return result.add_column(0, "rank", pa.array(np.arange(1, len(best) + 1), type=pa.int64()))


def cosine_similarity(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `matrix` (n, d) with `vector` (d,); NaN for zero norms."""
    dots = matrix @ vector
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix)) * np.linalg.norm(vector)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > 0, dots / norms, np.nan).astype(np.float64)


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    """(n, d) float32 matrix of a fixed-size-list column (null slots keep their backing values)."""
    d = column.type.list_size
    flat = [chunk.values.slice(chunk.offset * d, len(chunk) * d).to_numpy(zero_copy_only=False)
            for chunk in column.chunks]
    values = np.concatenate(flat) if flat else np.empty(0, dtype=np.float32)
    return values.astype(np.float32, copy=False).reshape(-1, d)


def _equals(column: pa.ChunkedArray, value: str) -> np.ndarray:
    """Boolean mask of rows equal to `value` (nulls are False)."""
    return pc.fill_null(pc.equal(column, value), False).to_numpy(zero_copy_only=False)


def _find_item(table: pa.Table, item: str, usable: np.ndarray) -> int:
    """Row index of the one usable item named by item_id, else gene_name, gene_id or seq_name."""
    for column in ("item_id", "gene_name", "gene_id", "seq_name"):
        rows = np.flatnonzero(_equals(table[column], item) & usable)
        if len(rows) == 1:
            return int(rows[0])
        if len(rows) > 1:
            ids = [table["item_id"][int(r)].as_py() for r in rows[:5]]
            raise InputError(f"{item!r} matches {len(rows)} items by {column} "
                             f"(e.g. {', '.join(ids)}); pass an item_id or --pooling")
    raise InputError(f"no embedding for {item!r} (searched item_id, gene_name, gene_id, "
                     "seq_name)")


def _default_view(views: dict[str, list[Path]]) -> str:
    for kind in (*VIEW_PRIORITY, *sorted(views)):
        if kind in views:
            return kind
    raise InputError("no views")


def _columns(con: duckdb.DuckDBPyConnection, view: str) -> list[str]:
    return [row[0] for row in con.execute(f"DESCRIBE {view}").fetchall()]


def _span(columns: Sequence[str]) -> tuple[str, str] | None:
    """SQL for a row's 0-based half-open [start, end), or None when the view has no coordinates."""
    if {"chrom", "start", "end"} <= set(columns):
        return 't."start"', 't."end"'
    if {"chrom", "pos", "ref"} <= set(columns):
        return "t.pos - 1", "t.pos - 1 + length(t.ref)"
    if {"chrom", "position"} <= set(columns):  # a track: one 0-based position per row
        return "t.position", "t.position + 1"
    return None


def _region_clause(con: duckdb.DuckDBPyConnection, view: str, columns: Sequence[str],
                   region: str) -> tuple[str, list[object]]:
    span = _span(columns)
    if span is None:
        raise InputError(f"the {view} view has no coordinates for --region; join it with "
                         "embeddings on item_id in SQL")
    interval = parse_region(region)
    available = [r[0] for r in con.execute(f"SELECT DISTINCT chrom FROM {view}").fetchall()
                 if r[0] is not None]
    try:
        chrom = resolve_contig(interval.chrom, available, source=f"the {view} view")
    except UnknownContigError as exc:
        raise InputError(exc.args[0] if exc.args else str(exc)) from None
    start, end = span
    clause = f"t.chrom = ? AND {end} > ?"
    params: list[object] = [chrom, interval.start]
    if interval.end is not None:
        clause += f" AND {start} < ?"
        params.append(interval.end)
    return clause, params


def _gene_clause(view: str, columns: Sequence[str], views: dict[str, list[Path]],
                 genes: Sequence[str]) -> tuple[str, list[object]]:
    marks = ", ".join("?" * len(genes))
    names = [*genes, *genes]
    if {"gene_name", "gene_id"} <= set(columns):
        return f"(t.gene_name IN ({marks}) OR t.gene_id IN ({marks}))", names
    span = _span(columns)
    if span is None or "embeddings" not in views:
        raise InputError(f"--genes on the {view} view needs coordinates and an embeddings output "
                         "(gene coordinates come from its items)")
    start, end = span
    chrom = ("coalesce(t.contig, t.chrom)" if "contig" in columns  # variants: the FASTA name
             else "t.chrom")
    return ("EXISTS (SELECT 1 FROM embeddings AS g WHERE (g.gene_name IN "
            f"({marks}) OR g.gene_id IN ({marks})) AND g.chrom = {chrom} "
            f'AND {start} < g."end" AND {end} > g.start)'), names


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
