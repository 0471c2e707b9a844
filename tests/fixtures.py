"""Small generated inputs shared by the tests (written fresh into each test's tmp_path)."""

from __future__ import annotations

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
