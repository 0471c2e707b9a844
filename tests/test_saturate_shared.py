"""`score-variants --saturate ... --shared-windows`: the SNVs of a cell of W//2 positions share
the window centred on the cell; each scores exactly as its own window computed in full (the
model's own forward), window_start/window_end and the manifest say so, and the option is
refused without --saturate."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from genomeconv.models import load
from genomeconv.models.tokenizer import tokenize
from genomeconv.pipelines.manifest import MANIFEST_FILE
from genomeconv.pipelines.variants import grid_window
from helpers import (random_seq, run_cli, save_tiny_model, score_variants_cli, variant_rows,
                     write_fasta)

W = 33


def test_grid_windows_share_cells_and_keep_a_quarter_window_from_the_edges():
    size = 1000
    for window in (33, 64, 1024):
        w, cell = min(window, size), min(window, size) // 2
        seen = {}
        for pos in range(1, size + 1):
            start, end = grid_window(pos, window, size)
            assert end - start == w and 0 <= start and end <= size
            seen.setdefault((pos - 1) // cell, set()).add(start)
            if w // 2 <= start + w // 2 < size - w // 2 and 0 < start < size - w:
                assert w // 4 - 1 <= pos - 1 - start < w - w // 4 + 1
        assert all(len(starts) == 1 for starts in seen.values())  # one window per cell
    assert grid_window(5, 1024, 300) == (0, 300)  # a contig shorter than the window


def loglik(model, seq: str) -> float:
    with torch.inference_mode():
        return float(model.autograd_log_likelihoods(tokenize(seq)[None]).double().sum())


def test_shared_windows_score_as_their_own_windows(ray_local, rng, tmp_path):
    model_dir = save_tiny_model(tmp_path / "m", seed=5, max_seq_len=66)
    genome = random_seq(rng, 150)
    fasta = write_fasta(tmp_path / "ref.fa", {"chr1": genome})
    out = tmp_path / "sat"
    args = ["--saturate", "chr1:1-150", "--fasta", fasta, "--model", model_dir, "--window", W,
            "--unit-size", 60, "--out", out]
    assert "scored 450 in" in score_variants_cli(*args, "--shared-windows")
    got = variant_rows(out)
    windows = {(r["window_start"], r["window_end"]) for r in got}
    assert windows == {grid_window(p, W, 150) for p in range(1, 151)}
    assert len(windows) <= -(-150 // (W // 2))  # one per cell (the end ones coincide)
    model = load(model_dir)
    for r in got[::17]:
        start, end = r["window_start"], r["window_end"]
        assert (start, end) == grid_window(r["pos"], W, len(genome))
        ref = genome[start:end]
        at = r["pos"] - 1 - start
        alt = ref[:at] + r["alt"] + ref[at + 1:]
        assert r["llr_fwd"] == pytest.approx(loglik(model, alt) - loglik(model, ref), abs=2e-5)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["settings"]["shared_windows"] is True
    # the centred windows are other settings: refused in this folder, fine in another
    refused = run_cli("score-variants", *args)
    assert refused.returncode != 0
    assert "scored 450 in" in score_variants_cli(*args[:-1], tmp_path / "centred")
    centred = variant_rows(tmp_path / "centred")
    assert [r["llr"] for r in centred] != [r["llr"] for r in got]
    assert pq.read_table(out).num_rows == 450


def test_shared_windows_need_saturate(rng, tmp_path):
    from genomeconv.errors import InputError
    from genomeconv.io.variants import Variant
    from genomeconv.pipelines.options import VariantOptions
    from genomeconv.pipelines.variants import score_variants

    genome = random_seq(rng, 100)
    fasta = write_fasta(tmp_path / "ref.fa", {"chr1": genome})
    with pytest.raises(InputError, match="--saturate runs only"):
        score_variants(VariantOptions(
            variants=[Variant("chr1", 5, genome[4], "A", None, "x", 0)], fasta=fasta,
            out=tmp_path / "o", model="kmer:2", shared_windows=True))
