"""`genomeconv query` and `genomeconv neighbors`: questions about outputs without a notebook."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from genomeconv.commands.options import Force, Genes, OldGene, Regions, build
from genomeconv.errors import InputError

if TYPE_CHECKING:
    import pyarrow as pa

TERMINAL_ROWS = 100  # rows shown on the terminal when no --limit is given


def register(app: typer.Typer) -> None:
    """Add `query` and `neighbors`."""
    app.command("query")(query)
    app.command("neighbors")(neighbors)


def query(
    args: list[str] = typer.Argument(..., metavar="PATH... [SQL]",
                                     help="Output files or directories, then optionally SQL over "
                                          "the views embeddings, per_base, variants, ... (SQL "
                                          "begins with SELECT, WITH, FROM, ... or '(')."),
    genes: Genes = None,
    old_gene: OldGene = None,
    regions: Regions = None,
    top: Optional[int] = typer.Option(None, min=0, help="The N first rows by --by."),
    by: Optional[str] = typer.Option(None, help="Ranking column (default llr: most negative "
                                                "first; other columns largest first)."),
    ascending: Optional[bool] = typer.Option(None, "--ascending/--descending",
                                             help="Override the ranking direction."),
    view: Optional[str] = typer.Option(None, help="View the shortcuts apply to (default: "
                                                  "variants, else embeddings, else per_base)."),
    limit: Optional[int] = typer.Option(None, min=0, help="At most this many rows."),
    fmt: str = typer.Option("table", "--format", help="table, csv, json (one object per line) "
                                                      "or parquet."),
    out: Optional[Path] = typer.Option(None, help="Write the rows here (needed for parquet); "
                                                  "never inside a genomeconv output folder."),
    force: Force = False,
) -> None:
    """Query genomeconv outputs with DuckDB: one view per output kind.

    Without SQL or shortcuts, lists the views with their row counts and columns. SQL is one
    read-only SELECT over the views (no other files, no writes).
    """
    from genomeconv.pipelines import query as pipeline

    paths, sql = _split_sql(args)
    shortcuts = build(pipeline.Shortcuts, locals())
    if sql is not None and shortcuts.any():
        raise InputError("give either SQL or the --genes/--region/--top/--by shortcuts")
    target = _target(fmt, out, force)
    con, views = pipeline.open_views(paths)
    params: list[object] = []
    if sql is None and not shortcuts.any():
        con.register("views", pipeline.describe_views(con, views))
        sql = "SELECT * FROM views"
    elif sql is None:
        sql, params = pipeline.shortcut_query(con, views, shortcuts)
    else:
        sql = pipeline.check_select(con, sql)
    _emit(con, pipeline.limited(sql, limit), params, fmt, target, limit)


def neighbors(
    embeddings: Path = typer.Argument(..., help="Embeddings output: a file or a directory."),
    item: str = typer.Argument(..., help="item_id, or a gene_name/gene_id/seq_name naming one "
                                         "item."),
    k: int = typer.Option(10, "-k", min=1, help="Number of neighbours."),
    pooling: Optional[str] = typer.Option(None, help="Compare only embeddings with this pooling."),
    fmt: str = typer.Option("table", "--format", help="table, csv, json or parquet."),
    out: Optional[Path] = typer.Option(None, help="Write the rows here (needed for parquet); "
                                                  "never inside a genomeconv output folder."),
    force: Force = False,
) -> None:
    """Cosine nearest neighbours of one item among pooled embeddings."""
    from genomeconv.pipelines import query as pipeline

    target = _target(fmt, out, force)
    result = pipeline.nearest_neighbors([embeddings], item, k, pooling=pooling)
    _emit(pipeline.table_connection("neighbors", result), "SELECT * FROM neighbors", [], fmt,
          target, None)


def _split_sql(args: list[str]) -> tuple[list[str], Optional[str]]:
    """The last argument is SQL when it reads as SQL (pipelines.query.is_sql): it is never
    looked up as a path (SQL of over 255 characters without a '/' failed as a file name)."""
    from genomeconv.pipelines.query import is_sql

    if len(args) > 1 and is_sql(args[-1]):
        return args[:-1], args[-1]
    return args, None


def _target(fmt: str, out: Optional[Path], force: bool) -> Optional[Path]:
    """The checked --out path, before any query runs (format and path errors come first)."""
    from genomeconv.pipelines import query as pipeline

    if fmt != "table" and fmt not in pipeline.FORMATS:
        raise InputError(f"--format must be table, {', '.join(pipeline.FORMATS)}")
    if fmt == "table" and out is not None:
        raise InputError("--out needs --format csv, json or parquet")
    if fmt == "parquet" and out is None:
        raise InputError("--format parquet needs --out FILE")
    return None if out is None else pipeline.check_output_file(out, force=force)


def _emit(con, sql: str, params: list[object], fmt: str, out: Optional[Path],
          limit: Optional[int]) -> None:
    """Print the rows as a table, or write/print them as CSV, JSON or Parquet (`out` checked
    by `_target`)."""
    from genomeconv.pipelines import query as pipeline

    if fmt == "table":
        shown = limit if limit is not None else TERMINAL_ROWS
        table = pipeline.fetch(con, pipeline.limited(sql, shown + 1), params)
        _print_table(table.slice(0, shown), more=table.num_rows > shown)
        return
    if out is not None:
        path = pipeline.write(con, sql, params, out, fmt)
        typer.echo(f"wrote {path}", err=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = pipeline.write(con, sql, params, Path(tmp) / f"rows.{fmt}", fmt)
        typer.echo(path.read_text(), nl=False)


def _print_table(table: "pa.Table", *, more: bool) -> None:
    from genomeconv.commands.tables import print_table

    note = f"{table.num_rows} row{'' if table.num_rows == 1 else 's'}" + (
        " shown; more with --limit N or --out FILE" if more else "")
    print_table(table.column_names, ([_cell(v) for v in row.values()]
                                     for row in table.to_pylist()), note=note)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        head = ", ".join(_cell(v) for v in value[:3])
        return f"[{head}{', ...' if len(value) > 3 else ''}] ({len(value)})"
    return str(value)
