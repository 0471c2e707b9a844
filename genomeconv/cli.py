"""The `genomeconv` command line: one thin function per command, each calling a pipeline.

Each command parses its options and hands them to the module that does the work; no logic lives
here beyond option parsing. Imports of heavy modules (torch, ray) happen inside the commands so that
`genomeconv --help` stays fast.
"""

from __future__ import annotations

import os
import sys

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Long-convolution DNA language models over whole genes and genomes.",
)


@app.callback()
def main() -> None:
    """Long-convolution DNA language models over whole genes and genomes."""
    from genomeconv.logs import quiet_libraries

    quiet_libraries()  # other libraries' INFO/WARNING lines, unless -v / GENOMECONV_VERBOSE


def command_line() -> str:
    """The command as typed, recorded in every output file's metadata."""
    return " ".join(["genomeconv", *sys.argv[1:]])


def warn_emulated_dtype(dtype: str | None, device: str | None, address: str | None) -> None:
    """Warn on stderr when a local job's --dtype would run emulated on this CPU (see
    runtime.emulated_dtype_warning; a cluster's workers may have other CPUs: no warning)."""
    from genomeconv.pipelines.runtime import emulated_dtype_warning

    message = emulated_dtype_warning(dtype, device)
    if message and address is None and not os.environ.get("RAY_ADDRESS"):
        typer.secho(f"warning: {message}", err=True, fg="yellow")


@app.command()
def info() -> None:
    """Print versions, devices and the Ray status."""
    from genomeconv.pipelines.runtime import describe_environment

    for key, value in describe_environment().items():
        typer.echo(f"{key:>14}: {value}")


COMMAND_MODULES: tuple[str, ...] = ("embed", "variants", "train", "query", "submit")


def _register_commands() -> None:
    """Add each command group from genomeconv.commands (kept light: heavy imports are lazy)."""
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"genomeconv.commands.{name}").register(app)


_register_commands()


if __name__ == "__main__":
    app()
