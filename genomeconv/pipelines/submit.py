"""Hand a genomeconv command to a Ray cluster through Ray Job Submission (`genomeconv submit`).

Address: `--address`, else RAY_ADDRESS when it is an http(s) URL (Ray's own convention for job
submission), else http://127.0.0.1:8265, the dashboard of a local `ray start --head`. A bare
HOST:PORT gets http://. Remote clusters are reached through an SSH tunnel to their dashboard port
or an authenticated HTTPS endpoint; Ray's token authentication is honoured (RAY_AUTH_MODE=token
with RAY_AUTH_TOKEN or ~/.ray/auth_token, read by Ray's client).

The job's runtime_env carries:
- the package: this genomeconv source directory as a py_module (no install on the cluster, only
  its dependencies), unless `upload_package=False` (the cluster image has genomeconv);
- extra pip requirements, when given;
- the data: `working_dir` uploads a directory and runs the command inside it (relative paths then
  resolve there for the driver and every Ray worker; Ray limits its size), else the command runs
  in `cwd` (default: the submitting directory), which must exist on the cluster: true on the
  local machine and on shared filesystems (SLURM), not on Kubernetes (give `working_dir` or an
  absolute `cwd` there). Only the driver runs in `cwd`, so give data paths absolute (on storage
  every node mounts) unless the pipeline resolves them before handing them to workers;
- environment variables: GENOMECONV_* of the submitting shell plus explicit KEY=VALUE pairs.
Inside the job Ray sets RAY_ADDRESS, so `runtime.connect()` joins the cluster. Jobs never retry.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from genomeconv.errors import InputError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
ENV_PREFIX = "GENOMECONV_"
PACKAGE_EXCLUDES = ["__pycache__", "*.pyc"]
AUTH_HINT = ("the cluster requires a token: export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<token> "
             "(or put it in ~/.ray/auth_token); see the README on remote clusters")
T = TypeVar("T")


def resolve_address(address: str | None = None) -> str:
    """The job server URL: `address`, else an http(s) RAY_ADDRESS, else the local default."""
    chosen = address or os.environ.get("RAY_ADDRESS", "")
    if not address and not chosen.startswith(("http://", "https://")):
        chosen = DEFAULT_ADDRESS
    return chosen if "://" in chosen else f"http://{chosen}"


def client(address: str | None = None) -> JobSubmissionClient:
    """A Job Submission client for the cluster (auth errors explain how to pass a token)."""
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    return _request(url, JobSubmissionClient, url)


def _request(url: str, call: Callable[..., T], *args: Any) -> T:
    """`call(*args)` against the job server at `url`; a wrong address, a missing token or a
    request the server refuses (an unknown job id) becomes one InputError."""
    from ray.exceptions import AuthenticationError

    try:
        return call(*args)
    except AuthenticationError as exc:
        raise InputError(f"{url}: {AUTH_HINT} ({exc})") from None
    except ConnectionError as exc:
        raise InputError(f"no Ray job server at {url} (start one with `ray start --head "
                         f"--dashboard-host 127.0.0.1`, or tunnel to it): {exc}") from None
    except RuntimeError as exc:  # the server's answer to a bad request (e.g. 404 for a job id)
        raise InputError(f"{url}: {exc}") from None


def package_dir() -> Path:
    """The directory of the genomeconv package being run (uploaded as a py_module)."""
    import genomeconv

    return Path(genomeconv.__file__).resolve().parent


def entrypoint(command: Sequence[str], *, cwd: str | Path | None = None,
               python: str = "python") -> str:
    """Shell command the job runs: `python -m genomeconv.cli ...`, inside `cwd` when given."""
    if not command:
        raise InputError("no genomeconv command to submit (put it after --)")
    args = list(command[1:] if command[0] == "genomeconv" else command)
    line = shlex.join([python, "-m", "genomeconv.cli", *args])
    return f"cd {shlex.quote(str(cwd))} && {line}" if cwd is not None else line


def runtime_env(*, working_dir: str | Path | None = None, upload_package: bool = True,
                pip: Sequence[str] = (), env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The job's runtime_env: package, pip requirements, working directory, environment."""
    env_vars = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    env_vars.update(env or {})
    renv: dict[str, Any] = {"env_vars": env_vars}
    if upload_package:
        renv["py_modules"] = [str(package_dir())]
        renv["excludes"] = list(PACKAGE_EXCLUDES)
    if pip:
        renv["pip"] = list(pip)
    if working_dir is not None:
        path = Path(working_dir)
        if not path.is_dir():
            raise InputError("working directory does not exist", path=path)
        renv["working_dir"] = str(path.resolve())
    return renv


def submit(command: Sequence[str], *, address: str | None = None, gpus: float = 0,
           cpus: float | None = None, working_dir: str | Path | None = None,
           cwd: str | Path | None = None, upload_package: bool = True, pip: Sequence[str] = (),
           env: Mapping[str, str] | None = None, job_id: str | None = None,
           python: str = "python") -> str:
    """Submit a genomeconv command as a Ray job and return its submission id.

    gpus / cpus are reserved for the job's driver process (Ray's entrypoint_num_gpus/_cpus);
    the actors that the command starts request their own resources.
    """
    if working_dir is None and cwd is None:
        cwd = Path.cwd()
    line = entrypoint(command, cwd=None if working_dir is not None else cwd, python=python)
    renv = runtime_env(working_dir=working_dir, upload_package=upload_package, pip=pip, env=env)
    kwargs: dict[str, Any] = {"entrypoint_num_gpus": gpus} if gpus else {}
    if cpus is not None:
        kwargs["entrypoint_num_cpus"] = cpus
    jobs = client(address)
    return _request(jobs.get_address(), lambda: jobs.submit_job(
        entrypoint=line, runtime_env=renv, submission_id=job_id,
        metadata={"submitted_by": "genomeconv", "command": shlex.join(list(command))}, **kwargs))


def wait(job_id: str, *, address: str | None = None, timeout: float | None = None,
         poll: float = 1.0, on_log: Callable[[str], None] | None = None) -> str:
    """Wait until the job ends and return its final status, passing new log text to `on_log`.

    After `timeout` seconds, returns the job's current (not terminal) status; it keeps running.
    """
    jobs = client(address)
    url = jobs.get_address()
    deadline = None if timeout is None else time.monotonic() + timeout
    printed = 0
    while True:
        status = str(_request(url, jobs.get_job_status, job_id).value)
        if on_log is not None:
            logs = _request(url, jobs.get_job_logs, job_id)
            if len(logs) > printed:
                on_log(logs[printed:])
                printed = len(logs)
        if status in TERMINAL_STATUSES:
            return status
        if deadline is not None and time.monotonic() > deadline:
            return status
        time.sleep(poll)


def list_jobs(address: str | None = None) -> list[dict[str, Any]]:
    """Every job the cluster knows: id, status, times, entrypoint, message."""
    jobs = client(address)
    return [_summary(job) for job in _request(jobs.get_address(), jobs.list_jobs)]


def job_status(job_id: str, address: str | None = None) -> dict[str, Any]:
    """One job's id, status, times, entrypoint and message."""
    jobs = client(address)
    return _summary(_request(jobs.get_address(), jobs.get_job_info, job_id))


def job_logs(job_id: str, address: str | None = None) -> str:
    """The job's driver output so far."""
    jobs = client(address)
    return _request(jobs.get_address(), jobs.get_job_logs, job_id)


def stop_job(job_id: str, address: str | None = None) -> bool:
    """Ask the cluster to stop a job; False when it had already ended."""
    jobs = client(address)
    return bool(_request(jobs.get_address(), jobs.stop_job, job_id))


def _summary(job: Any) -> dict[str, Any]:
    def stamp(ms: int | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else ""

    return {"job_id": job.submission_id or job.job_id, "status": str(job.status.value),
            "start": stamp(job.start_time), "end": stamp(job.end_time),
            "entrypoint": job.entrypoint, "message": job.message or ""}

