"""The command line's common parts."""

import pytest
from typer.testing import CliRunner

from genomeconv.cli import app
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
