"""Quiet by default: a plain `genomeconv embed` of the bundled sample prints only genomeconv's own
lines on stderr (no Ray, Ray Data, DeepSpeed or htslib chatter); GENOMECONV_VERBOSE brings them
back; a genuine error still surfaces as one line."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import genomeconv
from genomeconv import logs

SAMPLE = Path(genomeconv.__file__).parent / "data" / "sample"
# genomeconv's own stderr lines: the progress bar, "error: ...", "warning: ..." and the cache line
OWN = re.compile(r"^(embedding |error: |warning: |genomeconv: )")


def embed(tmp_path: Path, out: str, **env: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "genomeconv.cli", "embed", str(SAMPLE / "lambda.fa.gz"),
            "--gtf", str(SAMPLE / "lambda.gtf"), "--genes", "ORF01,ORF02", "--out",
            str(tmp_path / out)]
    base = {k: v for k, v in os.environ.items() if k not in ("GENOMECONV_VERBOSE",
                                                             "RAY_BACKEND_LOG_LEVEL")}
    base["PYTHONPATH"] = os.pathsep.join([str(SAMPLE.parents[2]), base.get("PYTHONPATH", "")])
    return subprocess.run(args, env={**base, **env, "RAY_ADDRESS": ""}, capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)


def test_plain_embed_prints_only_genomeconv_lines(tmp_path):
    proc = embed(tmp_path, "quiet")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and all(OWN.match(ln) for ln in lines), proc.stderr
    assert "2 items" in proc.stdout


def test_verbose_shows_other_libraries_lines(tmp_path):
    proc = embed(tmp_path, "loud", GENOMECONV_VERBOSE="1")
    assert proc.returncode == 0, proc.stderr
    assert any(not OWN.match(ln) for ln in proc.stderr.splitlines() if ln.strip())


@pytest.mark.parametrize("loud", [False, True])
def test_deepspeed_accelerator_line_hidden_unless_verbose(loud):
    """DeepSpeed creates its logger on import (resetting its level): the filter added before
    still drops its "Setting accelerator to CPU" warning."""
    code = ("from genomeconv.logs import quiet_libraries; quiet_libraries()\n"
            "from deepspeed.accelerator import get_accelerator; get_accelerator()")
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR",
                                                            "GENOMECONV_VERBOSE")}
    env["PYTHONPATH"] = os.pathsep.join([str(SAMPLE.parents[2]), env.get("PYTHONPATH", "")])
    if loud:
        env["GENOMECONV_VERBOSE"] = "1"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    import torch

    cpu_only = not torch.cuda.is_available()  # with a GPU DeepSpeed has nothing to say here
    assert ("Setting accelerator to CPU" in proc.stdout + proc.stderr) == (loud and cpu_only)


def test_errors_of_other_libraries_still_surface(monkeypatch, caplog):
    monkeypatch.delenv("GENOMECONV_VERBOSE", raising=False)
    monkeypatch.setenv("RAY_BACKEND_LOG_LEVEL", "fatal")  # restored after the test
    with warnings.catch_warnings():
        logs.quiet_libraries()
        with caplog.at_level(logging.NOTSET, logger="ray.data"):
            logging.getLogger("ray.data").setLevel(logging.NOTSET)
            logs.quiet_libraries()
            logging.getLogger("ray.data.x").warning("hidden")
            logging.getLogger("ray.data.x").error("shown")
    assert [r.getMessage() for r in caplog.records] == ["shown"]


def test_ray_start_output_shown_when_start_fails(capfd, monkeypatch):
    monkeypatch.delenv("GENOMECONV_VERBOSE", raising=False)
    with logs.ray_start_output():
        os.write(2, b"held back\n")
    assert capfd.readouterr().err == ""
    with pytest.raises(RuntimeError), logs.ray_start_output():
        os.write(2, b"why it failed\n")
        raise RuntimeError("start failed")
    assert capfd.readouterr().err == "why it failed\n"
