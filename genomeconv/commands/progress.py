"""A progress bar in bases for jobs that plan work units (embed, track), on stderr."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def bases_progress(label: str) -> Iterator[tuple[Callable[[int, int], None],
                                                 Callable[[int, int], None]]]:
    """Yield (on_plan(bases, units), on_unit(items, bases)) callbacks for a pipeline: the bar
    appears once there is work to do, shows bases done, the rate and the time left, and is
    removed however the block ends."""
    from rich.console import Console
    from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    progress = Progress(TextColumn(label), BarColumn(),
                        TextColumn("{task.completed:,.0f}/{task.total:,.0f} bp"),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=Console(stderr=True))
    task = progress.add_task(label, total=None, rate="")
    started = False

    def on_plan(bp: int, units: int) -> None:
        nonlocal started
        progress.update(task, total=bp)
        if units:
            progress.start()
            started = True

    def on_unit(items: int, bp: int) -> None:
        progress.advance(task, bp)
        elapsed = progress.tasks[0].elapsed or 0.0
        done = progress.tasks[0].completed
        progress.update(task, rate=f"{done / elapsed:,.0f} bp/s" if elapsed > 0 else "")

    try:
        yield on_plan, on_unit
    finally:
        if started:  # stopping a bar never shown prints an empty line on a non-terminal
            progress.stop()
