"""`LanguageModel.log_likelihoods_shared`: rows that repeat another row's start (ALT windows and
their REF window) equal full windows, for HyenaDNA (suffix-only passes), the k-mer family and
the base class's default; a row's result does not depend on the rows beside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genomeconv.models import pool
from genomeconv.models.base import LanguageModel
from genomeconv.models.families.kmer import KmerModel
from helpers import TINY, random_ids, random_model, reference_hidden


def edited_rows(rng: np.random.Generator, ref: torch.Tensor, L: int,
                starts: list[int]) -> torch.Tensor:
    """One row per start: `ref` up to the start, then a substitution (start < L - 3: an SNV)
    or a fresh random tail (the others, like an indel's shifted tail)."""
    rows = []
    for s in starts:
        row = ref.clone()
        if s < L - 3:
            row[s] = 7 + (int(row[s]) - 7 + 1 + int(rng.integers(0, 3))) % 4
        else:
            row[s:] = torch.from_numpy(rng.integers(7, 11, size=L - s))
            row[s] = 7 + (int(ref[s]) - 7 + 1) % 4
        rows.append(row)
    return torch.stack(rows)


def family(rng: np.random.Generator, L: int, refs: int, starts: list[int]):
    """ids, parent, start: `refs` REF rows, then for each the rows of `edited_rows`."""
    ref_ids = random_ids(rng, refs, L).clamp(max=10)  # bases only (the k-mer reads them)
    ids, parent, start = [ref_ids], [-1] * refs, [0] * refs
    for r in range(refs):
        ids.append(edited_rows(rng, ref_ids[r], L, starts))
        parent += [r] * len(starts)
        start += starts
    return torch.cat(ids), torch.tensor(parent), torch.tensor(start)


@pytest.mark.parametrize("L", [37, 40, 90])  # below, at and past max_seq_len (40)
def test_hyena_suffixes_equal_full_windows_and_the_float64_reference(rng, L):
    model = random_model(seed=11)
    starts = [1, 2, 3, L // 2, L - 4, L - 2, L - 1]
    ids, parent, start = family(rng, L, 2, starts)
    loglik, pooled = model.log_likelihoods_shared(ids, parent, start, pooled=True)
    full, hidden = model.log_likelihoods(ids, with_hidden=True)
    assert loglik.shape == (len(ids), L - 1) and pooled.shape == (len(ids), TINY.d_model)
    torch.testing.assert_close(loglik, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, pool(hidden.double(), "mean"), atol=1e-6, rtol=0)
    ref = reference_hidden(model, ids)  # independent: float64, direct convolutions
    np.testing.assert_allclose(pooled.numpy(), ref.mean(1), atol=2e-5)
    sums = loglik.double().sum(1) - loglik.double().sum(1)[parent.clamp(min=0)]
    expect = full.double().sum(1) - full.double().sum(1)[parent.clamp(min=0)]
    assert float((sums - expect).abs().max()) < 1e-5  # the llr of each edited row


def test_hyena_rows_do_not_depend_on_their_batch(rng):
    """Variant windows alone, with their REF only, and among many others: the same numbers."""
    model = random_model(seed=12)
    L = 40
    ids, parent, start = family(rng, L, 3, [5, 20, 33])
    together, pooled = model.log_likelihoods_shared(ids, parent, start, pooled=True)
    for r in range(3):  # REF r (row r) and its edited rows 3 + 3 r ..
        rows = [r, 3 + 3 * r, 4 + 3 * r, 5 + 3 * r]
        sub_parent = torch.tensor([-1, 0, 0, 0])
        alone, alone_pooled = model.log_likelihoods_shared(ids[rows], sub_parent, start[rows],
                                                           pooled=True)
        torch.testing.assert_close(alone, together[rows], atol=2e-6, rtol=0)
        torch.testing.assert_close(alone_pooled, pooled[rows], atol=2e-7, rtol=0)


def test_hyena_low_precision_and_chunks_follow_the_full_path(rng):
    model = random_model(seed=13)
    ids, parent, start = family(rng, 40, 2, [4, 30])
    for options in ({"chunk_size": 7}, {"dtype": torch.bfloat16}):
        got, _ = model.log_likelihoods_shared(ids, parent, start, **options)
        want, _ = model.log_likelihoods(ids, **options)
        tol = 1e-5 if "chunk_size" in options else 5e-2
        torch.testing.assert_close(got, want, atol=tol, rtol=0)


@pytest.fixture(scope="module")
def kmer(tmp_path_factory) -> KmerModel:
    rng = np.random.default_rng(3)
    return KmerModel.fit(["".join(rng.choice(list("ACGTN"), 3000))], 4)


def test_kmer_and_default_equal_full_windows_exactly(rng, kmer):
    L = 30
    ids, parent, start = family(rng, L, 2, [1, 2, 4, 5, 15, 26, 28, 29])
    full, _ = kmer.log_likelihoods(ids)
    got, pooled = kmer.log_likelihoods_shared(ids, parent, start)
    assert pooled is None and got.dtype == torch.float64
    torch.testing.assert_close(got, full, atol=1e-12, rtol=0)
    default, _ = LanguageModel.log_likelihoods_shared(kmer, ids, parent, start)
    assert torch.equal(default, full)


def test_contract_is_checked(rng, kmer):
    ids, parent, start = family(rng, 20, 2, [5])
    with pytest.raises(ValueError, match="differs from its parent"):
        kmer.log_likelihoods_shared(ids, parent, torch.where(parent >= 0, 10, 0))
    chained = parent.clone()
    chained[1] = 2
    with pytest.raises(ValueError, match="no parent itself"):
        kmer.log_likelihoods_shared(ids, chained, start.clamp(max=1))
    with pytest.raises(ValueError, match="must be"):
        kmer.log_likelihoods_shared(ids, parent[:-1], start)
