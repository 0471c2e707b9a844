"""The command line's common parts: the error boundary, -v, the dtype warning."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import cli_env, run_cli
from genomeconv.cli import BUG_HINT, USER_ERRORS, app, error_line, is_user_error
from genomeconv.errors import InputError
from genomeconv.pipelines import runtime


def test_info_lists_versions_and_devices():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    for key in ("genomeconv", "torch", "ray", "pysam", "devices", "ray status"):
        assert key in result.output


def _cpuinfo(tmp_path, monkeypatch, flags: str) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n")
    monkeypatch.setattr(runtime, "CPUINFO", path)


@pytest.mark.parametrize("dtype,flags,device,warned", [
    ("bfloat16", "", None, True), ("float16", "avx512_bf16", "cpu", True),
    ("bfloat16", "avx512_bf16", None, False), ("bfloat16", "amx_bf16", None, False),
    ("float16", "avx512_fp16", None, False), ("bfloat16", "", "cuda:0", False),
    ("float32", "", None, False), (None, "", None, False)])
def test_emulated_dtype_warning_follows_the_cpu_flags(tmp_path, monkeypatch, dtype, flags,
                                                      device, warned):
    _cpuinfo(tmp_path, monkeypatch, flags)
    message = runtime.emulated_dtype_warning(dtype, device)
    assert (message is not None) == warned
    if warned:
        assert f"--dtype {dtype} is emulated" in message and "float32" in message


@pytest.mark.parametrize("command", ["embed", "score-variants"])
def test_local_jobs_warn_about_an_emulated_dtype_before_running(tmp_path, monkeypatch, command):
    """The warning comes first, on stderr, even when the job then stops on a bad option; a
    cluster job (--address) does not warn: its workers' CPUs are not this one."""
    _cpuinfo(tmp_path, monkeypatch, "")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    missing = str(tmp_path / "missing.fa")
    args = {"embed": ["embed", missing, "--out", str(tmp_path / "o")],
            "score-variants": ["score-variants", str(tmp_path / "missing.vcf"), "--fasta",
                               missing, "--out", str(tmp_path / "o")]}[command]
    local = CliRunner().invoke(app, [*args, "--dtype", "bfloat16"])
    assert local.exit_code == 2
    assert "warning: --dtype bfloat16 is emulated on this CPU" in local.output
    remote = CliRunner().invoke(app, [*args, "--dtype", "bfloat16", "--address", "10.0.0.1:6379"])
    assert remote.exit_code == 2 and "warning" not in remote.output


# ------------------------------------------------------------------ the error boundary
def test_error_line_is_one_line_from_the_cause():
    from ray.exceptions import RayTaskError

    assert error_line(InputError("a\n  b   c")) == "a b c"
    loop = OSError(errno.ELOOP, "Too many levels of symbolic links", "/data/in.fa")
    assert error_line(loop) == "/data/in.fa: Too many levels of symbolic links"
    remote = RayTaskError("f", "Traceback (most recent call last):\n  ...\nInputError: x",
                          InputError("bad thing", path="/x.fa", line=3)).as_instanceof_cause()
    assert isinstance(remote, USER_ERRORS) and error_line(remote) == "/x.fa, line 3: bad thing"


def test_bugs_keep_their_traceback(monkeypatch):
    """Only user errors become one line; anything else escapes (and shows where it came from)."""
    def broken() -> dict:
        raise RuntimeError("a bug")

    monkeypatch.setattr(runtime, "describe_environment", broken)
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


@pytest.mark.parametrize("error", ["ValueError('bad value')", "KeyError('k')"])
def test_a_value_or_key_error_from_a_bug_shows_its_traceback_and_a_report_hint(error):
    """Issue 27: ValueError and KeyError were user errors (one line, exit 2), so a bug raising
    either looked like the user's fault; only genomeconv's own errors are user errors now."""
    script = ("import genomeconv.pipelines.runtime as r\n"
              f"def broken():\n    raise {error}\n"
              "r.describe_environment = broken\n"
              "from genomeconv.cli import main\nmain()\n")
    run = subprocess.run([sys.executable, "-c", script, "info"], env=cli_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "Traceback" in run.stderr and error.split("(")[0] in run.stderr
    assert run.stderr.strip().splitlines()[-1] == BUG_HINT


def test_os_errors_of_a_path_are_user_errors():
    for code in (errno.ELOOP, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG):
        assert is_user_error(OSError(code, os.strerror(code), "/x"))
    assert not is_user_error(OSError(errno.EBADF, "Bad file descriptor"))
    assert not is_user_error(ValueError("x")) and not is_user_error(KeyError("x"))


@pytest.mark.parametrize("flag", ["-v", "--verbose", "--debug"])
def test_verbose_shows_the_traceback_then_the_line(tmp_path, flag):
    run = run_cli(flag, "query", tmp_path / "nothing")
    assert run.returncode == 2
    assert "Traceback (most recent call last)" in run.stderr and "InputError" in run.stderr
    assert run.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nothing'}: no such output"


def test_every_command_ends_bad_input_with_one_line_and_exit_2(tmp_path):
    """One bad input per command, each in a fresh process of the real console entry point."""
    fasta = tmp_path / "none.fa"
    nowhere = "http://127.0.0.1:9"  # discard port: no job server
    commands = {
        "embed": ["embed", fasta, "--out", tmp_path / "o1"],
        "score-variants": ["score-variants", tmp_path / "none.vcf", "--fasta", fasta,
                           "--out", tmp_path / "o2"],
        "score-variants --saturate": ["score-variants", "--saturate", "c1:1-10", "--fasta",
                                      fasta, "--out", tmp_path / "o5"],
        "track": ["track", fasta, "--out", tmp_path / "o6"],
        "plot track": ["plot", "track", tmp_path / "none", "--region", "c1:1-10", "-o",
                       tmp_path / "t.png"],
        "plot training": ["plot", "training", tmp_path, "-o", tmp_path / "x.gif"],
        "pretrain": ["pretrain", fasta, "--out", tmp_path / "o3"],
        "finetune": ["finetune", tmp_path / "v.tsv", "--fasta", fasta, "--out", tmp_path / "o4"],
        "query": ["query", tmp_path / "none"],
        "neighbors": ["neighbors", tmp_path / "none", "item"],
        "submit": ["submit", "--address", nowhere, "--", "info"],
        "jobs list": ["jobs", "list", "--address", nowhere],
        "jobs status": ["jobs", "status", "x", "--address", nowhere],
        "jobs logs": ["jobs", "logs", "x", "--address", nowhere],
        "jobs stop": ["jobs", "stop", "x", "--address", nowhere],
    }
    script = [sys.executable, "-c", "from genomeconv.cli import main; main()"]
    running = {name: subprocess.Popen([*script, *map(str, args)], env=cli_env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, args in commands.items()}
    for name, proc in running.items():
        _, stderr = proc.communicate(timeout=600)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, (name, stderr)
        assert "Traceback" not in stderr and len(lines) == 1, (name, stderr)
        assert lines[0].startswith("error: "), (name, stderr)


def test_a_symlink_loop_or_a_folder_as_input_is_one_line(tmp_path):
    """A symlink loop as input gave an OSError traceback (issue 30); nothing else is printed,
    not even an empty line before the error."""
    loop = tmp_path / "loop.fa"
    os.symlink(tmp_path / "other.fa", loop)
    os.symlink(loop, tmp_path / "other.fa")
    script = [sys.executable, "-c", "from genomeconv.cli import main; main()"]
    cases = {loop: "Too many levels of symbolic links", tmp_path: "Is a directory"}
    running = {path: subprocess.Popen([*script, "embed", str(path), "--out", str(tmp_path / "o")],
                                      env=cli_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for path in cases}
    for path, proc in running.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, stderr
        assert stderr.splitlines() == [f"error: {path}: {cases[path]}"]


# `python -m` this module: genomeconv's command line, with CPython's "unhandled
# KeyboardInterrupt" flag set once Ray is shut down, as a Ctrl-C that lands in code an extension
# runs through PyRun_String (Ray's _raylet) sets it (CI once saw exit -2 after the one line).
FLAGGED_CLI = """
import ctypes

from genomeconv import cli

run = ctypes.pythonapi.PyRun_String
run.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.py_object, ctypes.py_object]
run.restype = ctypes.py_object
shutdown_ray = cli.shutdown_ray


def shutdown_then_flag():
    shutdown_ray()
    try:
        run(b"raise KeyboardInterrupt", 257, {}, {})  # 257: Py_file_input
    except KeyboardInterrupt:
        pass


cli.shutdown_ray = shutdown_then_flag
cli.main()
"""


def _interrupt(args: list, when, module: str = "genomeconv.cli", path: Path | None = None,
               private_ray: bool = True) -> subprocess.CompletedProcess:
    """Run the real `genomeconv ARGS` (`python -m MODULE`, PATH first on PYTHONPATH; its own
    local Ray unless not `private_ray`) in a session of its own and send SIGINT to its process
    group, as a terminal's Ctrl-C does, once `when()` is true, or (`when` a string) once its
    stdout shows that text."""
    import signal
    import time

    env = cli_env(private_ray)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env["PYTHONPATH"]])
    proc = subprocess.Popen([sys.executable, "-m", module, *map(str, args)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    out = ""
    if isinstance(when, str):
        while when not in out and (line := proc.stdout.readline()):
            out += line
    else:
        t0 = time.monotonic()
        while not when() and proc.poll() is None and time.monotonic() - t0 < 240:
            time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    rest, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out + rest, err)


def test_ctrl_c_at_any_moment_is_one_line_and_exit_130(tmp_path, rng):
    """At the start and mid-run (also with CPython's flag for an unhandled KeyboardInterrupt
    set): one line and exit 130; during Ray's shutdown at the end of a
    finished run (which gave a KeyboardInterrupt traceback and exit 1, issue 30): no traceback,
    130 or the finished run's 0; what was written resumes."""
    import time

    import pyarrow.parquet as pq

    from helpers import random_seq, save_tiny_model, write_fasta
    from genomeconv.cli import INTERRUPTED

    model = save_tiny_model(tmp_path / "m", seed=1, max_seq_len=64)
    fasta = write_fasta(tmp_path / "g.fa", {"c1": random_seq(rng, 12_000)})
    out = tmp_path / "o"
    args = ["track", fasta, "--model", model, "--out", out, "--bigwig", "none",
            "--piece-bp", "2000", "--unit-bp", "2000", "--num-workers", "1"]
    parts = lambda: sorted((out / "track").glob("part-*.parquet"))  # noqa: E731
    (tmp_path / "flagged_cli.py").write_text(FLAGGED_CLI)
    t0 = time.monotonic()
    runs = [_interrupt(args, lambda: time.monotonic() - t0 > 1.0),  # importing, starting Ray
            _interrupt(args, lambda: len(parts()) >= 2, "flagged_cli", tmp_path,
                       private_ray=False)]  # mid-run, on the test run's Ray
    done_mid = len(parts())
    runs.append(_interrupt(args, "output: "))  # the summary is out: Ray is shutting down
    for run in runs:
        assert "Traceback" not in run.stderr
    for run in runs[:2]:
        assert run.returncode == 130, run.stderr
        assert run.stderr.strip().splitlines()[-1] == INTERRUPTED, run.stderr
    # once the summary is out the work is done: Ctrl-C ends Ray's shutdown early (130) or, when
    # it lands after it, changes nothing (0); in CI the 130 once came without the line
    assert runs[2].returncode in (0, 130), runs[2].stderr
    assert 2 <= done_mid < 6  # the mid-run interrupt came with parts left to do
    assert "12,000 positions" in runs[-1].stdout
    positions = sorted(x for p in parts() for x in pq.read_table(p).column("position").to_pylist())
    assert positions == list(range(12_000))  # resumed: every position once
