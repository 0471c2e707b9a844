"""score-variants with ALT windows run from their first difference beside their REF window
equals full windows (today's computation) within 1e-5 on llr, llr_fwd and llr_rev: every
variant kind the pipeline scores, near both contig ends and in the middle, both strands, with
HyenaDNA (a tiny random model and the bundled one), Evo 2 (a tiny random model: every block
type) and the k-mer family."""

from __future__ import annotations

import pytest
import torch

from evo2_configs import CONFIGS, random_model
from genomeconv.io.fasta import FastaFile
from genomeconv.io.variants import Variant
from genomeconv.models import load
from genomeconv.models.families.kmer import KmerModel
from genomeconv.pipelines import variants as pipeline
from genomeconv.pipelines.variants import plan_variant, score_planned
from helpers import random_seq, save_tiny_model, write_fasta

LLR = ("llr", "llr_fwd", "llr_rev")


def kinds(genome: str, pos: int) -> list[Variant]:
    """Every kind at 1-based `pos`: the three SNVs, REF == ALT, an MNV, a deletion, an
    insertion and a complex replacement."""
    g = genome[pos - 1:pos + 2]
    alts = [b for b in "ACGT" if b != g[0]]
    pairs = [(g[0], a) for a in alts] + [(g[0], g[0]), (g[:2], alts[0] + alts[1]),
                                        (g, g[0]), (g[0], g[0] + "TTA"), (g, "GA")]
    return [Variant("c", pos, r, a, None, "test", 0) for r, a in pairs]


def score_both(model, genome: str, window: int, positions: list[int], tmp_path, monkeypatch,
               batch_size: int | None = None):
    """(shared, full) rows of the same variants; full: no window has a parent."""
    fasta = FastaFile(str(write_fasta(tmp_path / "g.fa", {"c": genome})))
    found = [v for p in positions for v in kinds(genome, p)]
    planned = [plan_variant(v, fasta, window, {}) for v in found]
    assert all(pv.status == "ok" for pv in planned)
    calls = []
    real = type(model).log_likelihoods_shared

    def spy(self, ids, parent, start, **options):
        calls.append(int((parent >= 0).sum()))
        return real(self, ids, parent, start, **options)

    monkeypatch.setattr(type(model), "log_likelihoods_shared", spy)
    shared = score_planned(model, planned, site_probs=True, batch_size=batch_size)
    assert sum(calls) > len(positions)  # ALT windows really ran beside their REF
    monkeypatch.setattr(pipeline, "_ref_parents", lambda scored, seqs: [None] * len(seqs))
    full = score_planned(model, planned, site_probs=True, batch_size=batch_size)
    return shared, full


def assert_equal_scores(shared, full, tol: float = 1e-5) -> None:
    worst = 0.0
    for a, b in zip(shared, full):
        assert a["status"] == b["status"] == "ok"
        for key in (*LLR, "p_ref", "p_alt", "emb_cosine", "emb_l2"):
            assert (a[key] is None) == (b[key] is None), key
            if a[key] is not None and key in LLR:
                worst = max(worst, abs(a[key] - b[key]))
            elif a[key] is not None:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert worst <= tol, worst


def test_tiny_hyena_every_kind_at_both_ends(rng, tmp_path, monkeypatch):
    path = save_tiny_model(tmp_path / "m", seed=3, max_seq_len=66, d_inner=64)
    genome = random_seq(rng, 160)
    shared, full = score_both(load(path), genome, 33, [1, 2, 20, 80, 140, 157, 158], tmp_path,
                              monkeypatch, batch_size=5)
    assert_equal_scores(shared, full)


def test_bundled_model_window_1024(rng, tmp_path, monkeypatch):
    genome = random_seq(rng, 3000)
    shared, full = score_both(load(None), genome, 1024, [3, 1500, 2997], tmp_path, monkeypatch)
    assert_equal_scores(shared, full)


def test_tiny_evo2_every_kind_at_both_ends(rng, tmp_path, monkeypatch):
    model = random_model(CONFIGS["types"], seed=7)
    with torch.no_grad():  # log-likelihoods of a trained model's size (-6 per base, not -60)
        model.embedding_layer.weight.mul_(0.1)
    genome = random_seq(rng, 900)
    shared, full = score_both(model, genome, 301, [1, 2, 150, 450, 895, 897, 898], tmp_path,
                              monkeypatch, batch_size=6)
    # A random Evo 2 spreads each base's probability over its 512-token vocabulary (-6.2 per
    # base, a trained model -1.4): float32 rounding of its window sums alone differs by up to
    # 1.3e-5 between the two computations (6 genomes: 4.8e-6 to 1.29e-5 with MKL's matmuls,
    # 5.3e-6 to 1.29e-5 with oneDNN's), 1e-5 at a trained model's magnitudes.
    assert_equal_scores(shared, full, tol=2e-5)


def test_kmer_every_kind_at_both_ends(rng, tmp_path, monkeypatch):
    genome = random_seq(rng, 400)
    model = KmerModel.fit([genome], 5)
    shared, full = score_both(model, genome, 41, [1, 3, 200, 396, 397], tmp_path, monkeypatch,
                              batch_size=3)
    assert_equal_scores(shared, full, tol=1e-9)


def test_batches_keep_each_family_together():
    seqs = ["A" * 8] * 9
    parents = [None, 0, 0, 0, None, 4, 4, None, 7]
    start = [0, 4, 6, 2, 0, 1, 3, 0, 5]
    for size in (1, 2, 3, 4, None):
        batches = pipeline._shared_batches(seqs, parents, start, size)
        assert sorted(i for b in batches for i in b if parents[i] is not None) == [
            i for i, p in enumerate(parents) if p is not None]
        for b in batches:
            assert all(parents[i] is None or parents[i] in b for i in b)
            assert size is None or len(b) <= max(size, 2)
    assert pipeline._common_prefix("ACGTA", "ACGAA") == 3
