"""The progress bar of the jobs (pipelines/job.py), on stderr, in the job's work (bases,
alleles)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def work_progress(label: str, unit: str) -> Iterator[tuple[Callable[[int, int], None],
                                                      Callable[[int, int], None]]]:
    """Yield (on_plan(work, units), on_unit(count, work)) callbacks for job.run_job: the bar
    appears once there is work to do, shows the work done in `unit`s (bp, alleles), the rate
    and the time left, and is removed however the block ends."""
    from rich.console import Console
    from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    progress = Progress(TextColumn(label), BarColumn(),
                        TextColumn(f"{{task.completed:,.0f}}/{{task.total:,.0f}} {unit}"),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=Console(stderr=True))
    task = progress.add_task(label, total=None, rate="")
    started = False

    def on_plan(work: int, units: int) -> None:
        nonlocal started
        progress.update(task, total=work)
        if units:
            progress.start()
            started = True

    def on_unit(count: int, work: int) -> None:
        progress.advance(task, work)
        elapsed = progress.tasks[0].elapsed or 0.0
        done = progress.tasks[0].completed
        progress.update(task, rate=f"{done / elapsed:,.0f} {unit}/s" if elapsed > 0 else "")

    try:
        yield on_plan, on_unit
    finally:
        if started:  # stopping a bar never shown prints an empty line on a non-terminal
            progress.stop()
