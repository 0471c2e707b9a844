"""The command line's common parts: the error boundary, -v, the dtype warning."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from helpers import cli_env, run_cli
from genomeconv.cli import USER_ERRORS, app, error_line
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

    assert error_line(KeyError("no such gene 'X'")) == "no such gene 'X'"
    assert error_line(ValueError("a\n  b   c")) == "a b c"
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
