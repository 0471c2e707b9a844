"""Small generated inputs shared by the tests (written fresh into each test's tmp_path)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pysam


def random_seq(rng: np.random.Generator, n: int, alphabet: str = "ACGT") -> str:
    """n random letters from `alphabet`."""
    return "".join(rng.choice(list(alphabet), size=n))


def write_fasta(path: str | Path, records: dict[str, str], width: int = 60,
                index: bool = True) -> str:
    """A plain FASTA with `width` bases a line (headers carry a description); indexed with
    pysam.faidx unless index=False. Returns the path as a string."""
    with open(path, "w") as fh:
        for name, seq in records.items():
            fh.write(f">{name} generated\n")
            fh.writelines(seq[i:i + width] + "\n" for i in range(0, len(seq), width))
    if index:
        pysam.faidx(str(path))
    return str(path)


def cli_env() -> dict[str, str]:
    """Environment for a fresh `genomeconv` process: this checkout on PYTHONPATH, and neither
    GENOMECONV_VERBOSE nor RAY_ADDRESS from the calling shell."""
    import os

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for key in ("GENOMECONV_VERBOSE", "RAY_ADDRESS"):
        env.pop(key, None)
    return env


def run_cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real `genomeconv` command line in a fresh process (see `cli_env`)."""
    import sys

    return subprocess.run([sys.executable, "-m", "genomeconv.cli", *map(str, args)],
                          env=cli_env(), capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(run: subprocess.CompletedProcess[str], *texts: str) -> str:
    """Exit code 2, and stderr is exactly one line `error: ...` holding each of `texts`."""
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in run.stderr, run.stderr
    for text in texts:
        assert text in lines[0], lines[0]
    return lines[0]


def worker_setup(model: str | None, out: str | Path, **fields: object):
    """A job.WorkerSetup for running an actor in this process (no run, no lock)."""
    from genomeconv.pipelines.job import WorkerSetup

    base = dict(model=model, model_id=None, device=None, dtype=None, threads=None, out=str(out),
                command="genomeconv test", keep_nonfinite=False, manifest_sha256=None,
                token=None)
    return WorkerSetup(**{**base, **fields})


def save_tiny_model(path: str | Path, *, seed: int, max_seq_len: int, d_inner: int = 32) -> str:
    """A random HyenaDNA (d_model 16, 2 layers) saved in genomeconv's layout at `path`: small
    enough to run hundreds of items in seconds; `seed` makes its weights reproducible."""
    import torch

    from genomeconv.models import HyenaConfig, HyenaDNA

    torch.manual_seed(seed)
    HyenaDNA(HyenaConfig(d_model=16, n_layer=2, d_inner=d_inner,
                         max_seq_len=max_seq_len)).save(path)
    return str(path)
