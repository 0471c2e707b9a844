"""`genomeconv submit` / `jobs` against a real two-node local Ray cluster with token auth.

The cluster (a head with the dashboard and job server on 127.0.0.1, plus a second node joined to
it) runs as `ray start --block` processes in their own sessions and private temp dir; teardown
stops only those processes (never `ray stop`, which would kill every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from genomeconv.pipelines import submit as pipeline

STARTUP_S = 300  # the whole cluster; Ray needs ~10 s on an idle 2-core box, minutes under load


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    names = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
    return [arg for name in names for arg in (name, str(_free_port()))]


def _get(url: str, token: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def _alive_nodes(dashboard: str, token: str) -> int:
    try:
        status, body = _get(f"{dashboard}/nodes?view=summary", token)
    except OSError:
        return 0
    if status != 200:
        return 0
    nodes = json.loads(body)["data"]["summary"]
    return sum(1 for n in nodes if n.get("raylet", {}).get("state") == "ALIVE")


def _stop(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM a `ray start --block` (it stops its own Ray processes), then SIGKILL its session."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # leftovers of this session only
    except ProcessLookupError:
        pass
    process.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (job server on 127.0.0.1) + one worker node, 1 CPU each, token auth on."""
    token = secrets.token_hex(16)
    temp_dir = f"/tmp/gcs_{os.getpid()}"
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               RAY_USAGE_STATS_ENABLED="0", PATH=venv_bin + os.pathsep + os.environ["PATH"])
    env.pop("RAY_ADDRESS", None)
    logs = tmp_path_factory.mktemp("ray_logs")
    gcs_port, dash_port = _free_port(), _free_port()
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
              "--temp-dir", temp_dir, "--disable-usage-stats", "--include-log-monitor", "False"]
    ray = str(Path(venv_bin) / "ray")
    dashboard = f"http://127.0.0.1:{dash_port}"
    deadline = time.monotonic() + STARTUP_S
    processes: list[subprocess.Popen] = []

    def start(args: list[str], nodes: int, log: Path) -> None:
        """Start a node and wait until `nodes` are alive; retry when Ray gives up under load."""
        for _ in range(3):
            process = subprocess.Popen([ray, "start", *args, *common, *_node_ports()], env=env,
                                       cwd=logs, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                       start_new_session=True)
            processes.append(process)
            while _alive_nodes(dashboard, token) < nodes and process.poll() is None:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
            if process.poll() is None:
                return
            _stop(process, grace=0)  # its raylet timed out registering: clean up, try again
        raise AssertionError(log.read_text()[-3000:])

    try:
        start(["--head", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(dash_port), "--ray-client-server-port", str(_free_port())],
              1, logs / "head.log")
        start(["--address", f"127.0.0.1:{gcs_port}"], 2, logs / "worker.log")
        yield {"address": dashboard, "env": env, "token": token}
    finally:
        _stop_running_jobs(dashboard, env)
        for process in reversed(processes):  # the worker first, while the head can drain it
            _stop(process, grace=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_running_jobs(address: str, env: dict[str, str]) -> None:
    """Job drivers run in their own sessions, so a failed test stops its jobs through Ray."""
    listed = genomeconv("jobs", "list", "--address", address, "--json", env=env, timeout=60)
    if listed.returncode != 0:
        return
    running = [j["job_id"] for j in json.loads(listed.stdout)
               if j["status"] not in pipeline.TERMINAL_STATUSES]
    for job_id in running:
        genomeconv("jobs", "stop", job_id, "--address", address, env=env, timeout=60)
    deadline = time.monotonic() + 30
    while running and time.monotonic() < deadline:
        statuses = [json.loads(genomeconv("jobs", "status", j, "--address", address, env=env,
                                          timeout=60).stdout)["status"] for j in running]
        if all(s in pipeline.TERMINAL_STATUSES for s in statuses):
            return
        time.sleep(2)


def genomeconv(*args: str, env: dict[str, str], cwd: Path | None = None,
               timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process (Ray reads its auth mode from the environment at import)."""
    return subprocess.run([sys.executable, "-m", "genomeconv.cli", *map(str, args)], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_address_and_entrypoint(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert pipeline.resolve_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # a GCS address is for ray.init, not jobs
    assert pipeline.resolve_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "https://ray.example.org")
    assert pipeline.resolve_address() == "https://ray.example.org"
    assert pipeline.resolve_address("head:8265") == "http://head:8265"
    line = pipeline.entrypoint(["genomeconv", "embed", "my genome.fa", "--out", "o"], cwd="/d x")
    assert line == "cd '/d x' && python -m genomeconv.cli embed 'my genome.fa' --out o"
    with pytest.raises(ValueError):
        pipeline.entrypoint([])
    monkeypatch.setenv("GENOMECONV_TEST_FLAG", "1")
    renv = pipeline.runtime_env(working_dir=tmp_path, pip=["pysam"], env={"A": "b"})
    assert renv["py_modules"] == [str(pipeline.package_dir())]
    assert (pipeline.package_dir() / "cli.py").is_file()
    assert renv["env_vars"]["GENOMECONV_TEST_FLAG"] == "1" and renv["env_vars"]["A"] == "b"
    assert renv["working_dir"] == str(tmp_path) and renv["pip"] == ["pysam"]
    assert "py_modules" not in pipeline.runtime_env(upload_package=False)


def _tiny_inputs(root: Path, rng) -> tuple[Path, Path, dict[str, str]]:
    """A random two-record FASTA and a tiny random Evo 2 saved as safetensors (submit is
    family-blind; every other job test runs HyenaDNA, so this one runs Evo 2)."""
    from evo2_configs import CONFIGS, random_model

    records = {f"contig{i}": "".join(rng.choice(list("ACGT"), size=n))
               for i, n in enumerate((150, 90))}
    fasta = root / "tiny.fa"
    fasta.write_text("".join(f">{name}\n{seq}\n" for name, seq in records.items()))
    model_dir = root / "model"
    random_model(CONFIGS["types"], seed=int(rng.integers(1 << 31))).save(model_dir)
    return fasta, model_dir, records


@pytest.mark.slow  # > 60 s: two Ray nodes, a job with two model actors, then queries
def test_submit_embed_then_query(cluster, tmp_path, rng):
    fasta, model_dir, records = _tiny_inputs(tmp_path, rng)
    env, address = cluster["env"], cluster["address"]
    out = tmp_path / "out"
    run = genomeconv("submit", "--address", address, "--wait", "--timeout", "200",
                     "--",
                     "embed", fasta, "--model", model_dir, "--out", out, "--batch-size", "1",
                     "--num-workers", "2", env=env, cwd=tmp_path)  # one model actor per node
    assert run.returncode == 0, run.stdout + run.stderr
    job_id = run.stdout.strip().splitlines()[-1]
    assert "SUCCEEDED" in run.stderr

    query = genomeconv("query", out, "SELECT seq_name, length, embedding FROM embeddings "
                       "ORDER BY seq_name", "--format", "json", env=env)
    assert query.returncode == 0, query.stderr
    rows = [json.loads(line) for line in query.stdout.splitlines() if line.strip()]
    assert [(r["seq_name"], r["length"]) for r in rows] == [(n, len(s)) for n, s in
                                                            sorted(records.items())]
    from genomeconv.models import load, pool

    model = load(str(model_dir), device="cpu")
    for row in rows:
        ids = model.tokenize([records[row["seq_name"]]])
        expected = pool(model.hidden_states(ids), "mean")[0].double().numpy()
        np.testing.assert_allclose(np.array(row["embedding"]), expected, rtol=1e-4, atol=1e-5)

    listed = genomeconv("jobs", "list", "--address", address, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert {j["job_id"]: j["status"] for j in json.loads(listed.stdout)}[job_id] == "SUCCEEDED"
    status = json.loads(genomeconv("jobs", "status", job_id, "--address", address, env=env).stdout)
    assert status["status"] == "SUCCEEDED" and "genomeconv.cli embed" in status["entrypoint"]
    logs = genomeconv("jobs", "logs", job_id, "--address", address, env=env)
    assert "items" in logs.stdout and "output:" in logs.stdout


def test_failed_job_and_missing_token(cluster, tmp_path):
    env, address = cluster["env"], cluster["address"]
    run = genomeconv("submit", "--address", address, "--wait", "--", "query",
                     "/nonexistent/output", env=env, cwd=tmp_path)
    assert run.returncode == 1 and "FAILED" in run.stderr
    assert "no such output" in run.stderr  # the job's own error, streamed back
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    denied = genomeconv("jobs", "list", "--address", address,
                        env=dict(no_token, HOME=str(tmp_path)))
    assert denied.returncode == 2 and "RAY_AUTH_MODE=token" in denied.stderr
