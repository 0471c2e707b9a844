"""The `genomeconv` command line: one thin function per command, each calling a pipeline.

Each command parses its options and hands them to the module that does the work; no logic lives
here beyond option parsing and the one error boundary (`BoundaryGroup`, `main`): bad input
anywhere, in any command, ends as one line `error: ...` on stderr and exit code 2 (with -v, after
the traceback); Ctrl-C at any moment as one line and exit code 130; anything else is a bug and
keeps its traceback, followed by a line asking for a report (exit code 1). Imports of heavy
modules (torch, ray) happen inside the commands so that `genomeconv --help` stays fast.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any

import click
import typer
from typer.core import TyperGroup

from genomeconv.commands import embed, plot, query, submit, track, train, variants
from genomeconv.errors import PATH_ERRNOS, VERBOSE_ENV, GenomeconvError, verbose

# Usage errors (a bad option): click's, and those of the copy of click newer typers carry.
USAGE_ERRORS = tuple({click.UsageError, typer.BadParameter.__mro__[1]})
EXIT_INPUT = 2  # bad input or options, in every command (typer's usage errors use 2 as well)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report a process ended by SIGINT
# genomeconv's own errors, and the OSErrors that mean a path the user gave cannot be used.
# Anything else (ValueError, KeyError, ... from a bug) keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    GenomeconvError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
    PermissionError)
INTERRUPTED = ("genomeconv: interrupted; what was written is kept (finished parts, no partial "
               "ones): rerun the same command to resume")
BUG_HINT = ("genomeconv: this is a bug in genomeconv, not a problem with your input: please "
            "report it with the command and the traceback above")


def _cause(exc: BaseException) -> BaseException:
    """The error itself, or for a Ray task error the error raised in the task."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and type(exc).__module__.startswith("ray."):
        return cause
    return exc


def is_user_error(exc: BaseException) -> bool:
    """Whether `exc` is the user's to fix (one line, exit 2) rather than a bug (a traceback)."""
    exc = _cause(exc)
    return isinstance(exc, USER_ERRORS) or (isinstance(exc, OSError)
                                            and exc.errno in PATH_ERRNOS)


def error_line(exc: BaseException) -> str:
    """One line for an error: a Ray task error is reported by its cause, an OSError by its path
    and reason, whitespace collapsed."""
    exc = _cause(exc)
    if isinstance(exc, OSError) and not isinstance(exc, GenomeconvError) and exc.filename:
        text = f"{exc.filename}: {exc.strerror or exc}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


class BoundaryGroup(TyperGroup):
    """The root command group: runs the chosen command, turns user errors into one line and
    Ctrl-C into one line and exit code 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USAGE_ERRORS as exc:  # a bad option: one line, not click's box
            click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            raise typer.Exit(EXIT_INPUT) from None
        except KeyboardInterrupt:
            click.echo(INTERRUPTED, err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            if not is_user_error(exc):
                raise
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


_COMMAND_RUNNING = [True]  # until the command returns (`_on_sigint`)


def main() -> None:
    """Console entry point (`genomeconv`, `python -m genomeconv.cli`): the command inside the
    error boundary (a bug's traceback is followed by BUG_HINT), then the shutdown of the Ray it
    started, which a Ctrl-C ends at once with one line (`_on_sigint`)."""
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        app(prog_name="genomeconv")
        code: int | str | None = 0
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:  # after the boundary, before the command's end: still one line
        click.echo(INTERRUPTED, err=True)
        code = EXIT_INTERRUPTED
    except Exception:
        sys.excepthook(*sys.exc_info())  # typer's traceback, as if uncaught
        click.echo(BUG_HINT, err=True)
        code = 1
    _COMMAND_RUNNING[0] = False
    shutdown_ray()
    if code == EXIT_INTERRUPTED:
        # A Ctrl-C that landed in code an extension runs through PyRun_String (Ray's _raylet
        # does) leaves CPython's "unhandled KeyboardInterrupt" flag set although it was handled
        # here, and `python -m` then ends the process by SIGINT (-2) instead of with 130.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    # Python's exit restores the default SIGINT action (death by signal, no line); a Ctrl-C
    # that late changes nothing left to do
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


def _on_sigint(signum: int, frame: Any) -> None:
    """Ctrl-C: a KeyboardInterrupt while the command runs (the boundary and the pipelines end
    it cleanly); once it is over, the process ends at once with one line, whatever it is doing
    (Ray's shutdown, Python's exit hooks), so no traceback of theirs is printed."""
    if _COMMAND_RUNNING[0]:
        raise KeyboardInterrupt
    click.echo(INTERRUPTED, err=True)
    os._exit(EXIT_INTERRUPTED)


def shutdown_ray() -> None:
    """Stop the Ray this process started (a local instance's servers) here rather than in Ray's
    atexit hook, under `_on_sigint`'s exit-at-once handling of Ctrl-C."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


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
