"""`genomeconv submit -- <command>` and `genomeconv jobs list|status|logs|stop` (Ray jobs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from genomeconv.errors import InputError

ADDRESS_HELP = ("Ray job server URL (default: RAY_ADDRESS if http(s), else "
                "http://127.0.0.1:8265; tunnel to remote clusters).")

jobs_app = typer.Typer(no_args_is_help=True,
                       help="Ray jobs on a cluster: list, status, logs, stop.")


def register(app: typer.Typer) -> None:
    """Add `submit` and the `jobs` group."""
    app.command("submit", context_settings={"allow_interspersed_args": False})(submit)
    app.add_typer(jobs_app, name="jobs")


def submit(
    command: list[str] = typer.Argument(..., metavar="COMMAND",
                                        help="The genomeconv command to run, after --."),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
    gpus: float = typer.Option(0, help="GPUs reserved for the job's driver process."),
    cpus: Optional[float] = typer.Option(None, help="CPUs reserved for the job's driver process."),
    working_dir: Optional[Path] = typer.Option(None, help="Directory uploaded with the job; the "
                                                          "command runs inside it."),
    cwd: Optional[str] = typer.Option(None, help="Directory on the cluster to run in (default: "
                                                 "this one; needs a shared filesystem)."),
    upload_package: bool = typer.Option(True, "--upload-package/--installed-package",
                                        help="Upload this genomeconv source, or use the "
                                             "cluster's installed one."),
    pip: list[str] = typer.Option([], help="Extra pip requirement for the job (repeatable)."),
    env: list[str] = typer.Option([], help="KEY=VALUE for the job's environment (repeatable)."),
    job_id: Optional[str] = typer.Option(None, help="Submission id (default: generated)."),
    python: str = typer.Option("python", help="Python interpreter on the cluster."),
    wait: bool = typer.Option(False, "--wait", help="Stream the logs until the job ends; exit "
                                                    "non-zero unless it succeeded."),
    timeout: Optional[float] = typer.Option(None, help="With --wait: give up after this many "
                                                       "seconds (the job keeps running)."),
) -> None:
    """Run a genomeconv command on a Ray cluster, e.g. `genomeconv submit --wait -- embed ...`."""
    from genomeconv.pipelines import submit as pipeline

    variables = dict(_pair(item) for item in env)
    job = pipeline.submit(command, address=address, gpus=gpus, cpus=cpus,
                          working_dir=working_dir, cwd=cwd, upload_package=upload_package,
                          pip=pip, env=variables, job_id=job_id, python=python)
    typer.echo(f"submitted {job} to {pipeline.resolve_address(address)}", err=True)
    typer.echo(job)
    if wait:
        status = pipeline.wait(job, address=address, timeout=timeout,
                               on_log=lambda text: typer.echo(text, nl=False, err=True))
        still = status not in pipeline.TERMINAL_STATUSES
        typer.echo(f"job {job} {status}" + (f" after {timeout} s (it keeps running)" if still
                                            else ""), err=True)
        if status != "SUCCEEDED":
            raise typer.Exit(1)


@jobs_app.command("list")
def jobs_list(address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
              as_json: bool = typer.Option(False, "--json", help="JSON instead of a table.")
              ) -> None:
    """Jobs the cluster knows, newest first."""
    from genomeconv.pipelines import submit as pipeline

    rows = sorted(pipeline.list_jobs(address), key=lambda r: r["start"], reverse=True)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    from genomeconv.commands.tables import print_table

    columns = ("job_id", "status", "start", "end", "entrypoint")
    print_table(columns, ([str(row[k]) for k in columns] for row in rows))


@jobs_app.command("status")
def jobs_status(job_id: str,
                address: Optional[str] = typer.Option(None, help=ADDRESS_HELP)) -> None:
    """One job's status, times, entrypoint and message (JSON)."""
    from genomeconv.pipelines import submit as pipeline

    typer.echo(json.dumps(pipeline.job_status(job_id, address), indent=1))


@jobs_app.command("logs")
def jobs_logs(job_id: str, address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
              follow: bool = typer.Option(False, "--follow", "-f",
                                          help="Keep printing until the job ends.")) -> None:
    """The job's driver output."""
    from genomeconv.pipelines import submit as pipeline

    if follow:
        pipeline.wait(job_id, address=address, on_log=lambda t: typer.echo(t, nl=False))
    else:
        typer.echo(pipeline.job_logs(job_id, address), nl=False)


@jobs_app.command("stop")
def jobs_stop(job_id: str, address: Optional[str] = typer.Option(None, help=ADDRESS_HELP)) -> None:
    """Stop a running job."""
    from genomeconv.pipelines import submit as pipeline

    stopped = pipeline.stop_job(job_id, address)
    typer.echo(f"job {job_id} {'stopping' if stopped else 'had already ended'}")


def _pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise InputError(f"--env expects KEY=VALUE, got {item!r}")
    return key, value
