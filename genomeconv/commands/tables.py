"""Tables printed on the terminal (`query`, `neighbors`, `jobs list`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def print_table(columns: Sequence[str], rows: Iterable[Sequence[str]], *,
                note: str | None = None) -> None:
    """Print `rows` under `columns` on stdout, then `note` dimmed. Every header and cell is
    printed as text: rich would read markup in a value (a record named "c[bold]d" printed as
    "cd", one named "a[/b]" stopped `query` with a MarkupError)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    view = Table(show_lines=False)
    for name in columns:
        view.add_column(Text(name), overflow="fold")
    for row in rows:
        view.add_row(*(Text(cell) for cell in row))
    console = Console()
    console.print(view)
    if note is not None:
        console.print(Text(note, style="dim"))
