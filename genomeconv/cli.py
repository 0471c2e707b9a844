"""The `genomeconv` command line: one thin function per command, each calling a pipeline.

Each command parses its options and hands them to the module that does the work; no logic lives
here beyond option parsing and the one error boundary (`BoundaryGroup`): bad input anywhere, in
any command, ends as one line `error: ...` on stderr and exit code 2 (with -v, after the
traceback). Imports of heavy modules (torch, ray) happen inside the commands so that
`genomeconv --help` stays fast.
"""

from __future__ import annotations

import os
import traceback
from typing import Any

import click
import typer
from typer.core import TyperGroup

from genomeconv.commands import embed, plot, query, submit, track, train, variants
from genomeconv.errors import VERBOSE_ENV, GenomeconvError, verbose

# Usage errors (a bad option): click's, and those of the copy of click newer typers carry.
USAGE_ERRORS = tuple({click.UsageError, typer.BadParameter.__mro__[1]})
EXIT_INPUT = 2  # bad input or options, in every command (typer's usage errors use 2 as well)
# OSErrors that mean a path the user gave is wrong. ValueError and KeyError are still raised for
# bad input by modules that predate InputError (io readers, pipelines' option checks); they stay
# here until every one of them raises InputError.
USER_ERRORS: tuple[type[BaseException], ...] = (
    GenomeconvError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
    PermissionError, ValueError, KeyError)


def error_line(exc: BaseException) -> str:
    """One line for an error: a Ray task error is reported by its cause, whitespace collapsed."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and type(exc).__module__.startswith("ray."):
        exc = cause
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # str(KeyError) quotes its message
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


class BoundaryGroup(TyperGroup):
    """The root command group: runs the chosen command and turns user errors into one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USAGE_ERRORS as exc:  # a bad option: one line, not click's box
            click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            raise typer.Exit(EXIT_INPUT) from None
        except USER_ERRORS as exc:
            if verbose():
                traceback.print_exc()
            click.echo(f"error: {error_line(exc)}", err=True)
            raise typer.Exit(EXIT_INPUT) from None


app = typer.Typer(
    cls=BoundaryGroup,
    add_completion=False,
    no_args_is_help=True,
    help="Long-convolution DNA language models over whole genes and genomes.",
)


@app.callback()
def root(
    verbose_flag: bool = typer.Option(False, "--verbose", "-v", "--debug",
                                      help="Show tracebacks and other libraries' logs."),
) -> None:
    """Long-convolution DNA language models over whole genes and genomes."""
    if verbose_flag:
        os.environ[VERBOSE_ENV] = "1"  # read by errors.verbose(), here and in Ray workers
    from genomeconv.logs import quiet_libraries

    quiet_libraries()  # other libraries' INFO/WARNING lines, unless -v / GENOMECONV_VERBOSE


def main() -> None:
    """Console entry point (`genomeconv`, `python -m genomeconv.cli`)."""
    app(prog_name="genomeconv")


@app.command()
def info() -> None:
    """Print versions, devices and the Ray status."""
    from genomeconv.pipelines.runtime import describe_environment

    for key, value in describe_environment().items():
        typer.echo(f"{key:>14}: {value}")


for _commands in (embed, track, variants, train, query, submit, plot):
    _commands.register(app)  # each module keeps its heavy imports inside its commands


if __name__ == "__main__":
    main()
