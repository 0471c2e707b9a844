"""Evo 2's `log_likelihoods_shared`: ALT windows continued from their REF window's captured
per-block state (attention keys and values, filter tails, modal states) equal full windows
within float32 rounding, for SNVs, MNVs and indel-like tails at every distance from the window
start (including rows that share nothing but their first base); a row's numbers do not depend
on the rows beside it; the contract is checked as for every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evo2_configs import CONFIGS, dna_ids, random_model
from genomeconv.models import pool

BASES = torch.tensor([65, 67, 71, 84])


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIGS["types"], seed=21)


def family(rng: np.random.Generator, L: int, refs: int, starts: list[int]):
    """ids, parent, start: `refs` random REF rows, then per REF one edited row per start: an
    SNV, an MNV of 3 bases or a fresh random tail (an indel's shifted tail), in turn."""
    ref_ids = BASES[torch.from_numpy(rng.integers(0, 4, size=(refs, L)))]
    ids, parent, start = [ref_ids], [-1] * refs, [0] * refs
    for r in range(refs):
        for k, s in enumerate(starts):
            row = ref_ids[r].clone()
            end = {0: s + 1, 1: min(L, s + 3), 2: L}[k % 3]
            row[s:end] = BASES[torch.from_numpy(rng.integers(0, 4, size=end - s))]
            row[s] = BASES[(int((BASES == ref_ids[r, s]).nonzero()) + 1) % 4]  # differs at s
            ids.append(row[None])
            parent.append(r)
            start.append(s)
    return torch.cat(ids), torch.tensor(parent), torch.tensor(start)


@pytest.mark.parametrize("L", [300, 2500])  # one piece; several pieces and chunks
def test_suffixes_equal_full_windows(model, rng, L):
    starts = [1, 2, 7, L // 3, L // 2, L - 2, L - 1]
    ids, parent, start = family(rng, L, 2, starts)
    options = {"chunk_size": 512} if L > 1000 else {}
    loglik, pooled = model.log_likelihoods_shared(ids, parent, start, pooled=True, **options)
    full, hidden = model.log_likelihoods(ids, with_hidden=True)
    assert loglik.shape == (len(ids), L - 1) and pooled.shape == (len(ids), model.d_model)
    # this random model's log-likelihoods reach -60: float32 rounding is ~4e-6 there
    torch.testing.assert_close(loglik, full, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(pooled, pool(hidden.double(), "mean"), atol=1e-5, rtol=0)
    llr = loglik.double().sum(1) - loglik.double().sum(1)[parent.clamp(min=0)]
    want = full.double().sum(1) - full.double().sum(1)[parent.clamp(min=0)]
    scale = float(full.double().abs().sum(1).max())
    assert float((llr - want).abs().max()) < 1e-7 * scale  # sums of L-1 float32 terms


def test_rows_do_not_depend_on_their_batch(model, rng):
    ids, parent, start = family(rng, 400, 3, [50, 200, 333])
    together, pooled = model.log_likelihoods_shared(ids, parent, start, pooled=True)
    for r in range(3):
        rows = [r, 3 + 3 * r, 4 + 3 * r, 5 + 3 * r]
        alone, alone_pooled = model.log_likelihoods_shared(
            ids[rows], torch.tensor([-1, 0, 0, 0]), start[rows], pooled=True)
        torch.testing.assert_close(alone, together[rows], atol=2e-6, rtol=1e-6)  # rounding
        torch.testing.assert_close(alone_pooled, pooled[rows], atol=2e-6, rtol=1e-6)


def test_bfloat16_follows_the_full_path(model, rng):
    ids, parent, start = family(rng, 300, 2, [40, 150])
    got, _ = model.log_likelihoods_shared(ids, parent, start, dtype=torch.bfloat16)
    want, _ = model.log_likelihoods(ids, dtype=torch.bfloat16)
    plain, _ = model.log_likelihoods(ids)
    assert float((got - want).abs().max()) <= 2 * float((want - plain).abs().max()) + 1e-5


def test_contract_is_checked(model):
    ids = dna_ids(50, batch=2, seed=3)
    with pytest.raises(ValueError, match="differs from its parent"):
        model.log_likelihoods_shared(ids, torch.tensor([-1, 0]), torch.tensor([0, 49]))


def test_short_rows_batched_equal_each_alone(model):
    """Rows shorter than a chunk share its matmuls (spans of whole rows); each row's hidden
    states and log-likelihoods equal its own pass, whatever the chunk size."""
    ids = dna_ids(163, batch=7, seed=4)
    alone = torch.cat([model.log_likelihoods(ids[i:i + 1], with_hidden=True)[1]
                       for i in range(len(ids))])
    for chunk in (None, 500, 100):
        loglik, hidden = model.log_likelihoods(ids, with_hidden=True, chunk_size=chunk)
        torch.testing.assert_close(hidden, alone, atol=2e-6, rtol=0)
    layer = "blocks.3.inner_mha_cls"
    torch.testing.assert_close(model.hidden_states(ids, layer=layer, chunk_size=400),
                               torch.cat([model.hidden_states(ids[i:i + 1], layer=layer)
                                          for i in range(len(ids))]), atol=2e-6, rtol=0)


def test_row_groups_of_whole_windows_equal_one_pass(model, rng, monkeypatch):
    """Rows whose pieces would not hold the whole window together run in groups of rows that
    do (`rows_per_pass`): REF rows with their states captured, ALT rows continued from a
    group's slice of those states; the numbers equal one pass of every row (rounding)."""
    from genomeconv.models.families.evo2 import inference

    L = 2500
    ids, parent, start = family(rng, L, 3, [1, L // 2, L - 1])
    one_pass, one_pooled = model.log_likelihoods_shared(ids, parent, start, pooled=True)
    per_row = 7 * model.config.hidden_size * 4  # piece_length's bytes per position and row
    monkeypatch.setattr(inference, "PIECE_BYTES", 4096 * per_row * 2)  # two rows of L fit
    assert inference.rows_per_pass(model.config, 3, L) == 2
    assert inference.rows_per_pass(model.config, 9, L // 2) == 4  # pieces of 2,048
    assert inference.rows_per_pass(model.config, 1, 10 * L) == 1  # one row in pieces
    grouped, pooled = model.log_likelihoods_shared(ids, parent, start, pooled=True)
    torch.testing.assert_close(grouped, one_pass, atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(pooled, one_pooled, atol=2e-6, rtol=1e-6)
