"""Bounded-memory inference: chunked == one-shot, long inputs == partial convolution, bf16."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from genomeconv.kernels import linear
from genomeconv.models import HyenaConfig, inference, pool
from helpers import TINY, assert_close_ref, random_ids, random_model, reference_hidden


def assert_equals_forward(model, ids, chunk):
    """The bounded-memory hidden states equal the module's own forward."""
    with torch.no_grad():
        one_shot = model(ids)
    torch.testing.assert_close(inference.hidden_states(model, ids, chunk_size=chunk), one_shot,
                               atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 16, 64, None])
def test_chunked_equals_one_shot(rng, chunk):
    assert_equals_forward(random_model(), random_ids(rng, 2, 37), chunk)


@pytest.mark.parametrize("onednn", [False, pytest.param(True, marks=pytest.mark.skipif(
    not linear.ONEDNN, reason="this torch build has no oneDNN linear"))])
def test_float32_linear_paths_equal_one_shot(rng, monkeypatch, onednn):
    """fc1 with its GELU and fc2 with its bias as oneDNN linears (float32 wherever
    kernels.linear takes oneDNN) or as addmm with an in-place GELU or bias pass (other builds
    and devices): both equal the module's forward."""
    monkeypatch.setattr(inference, "ONEDNN", onednn)
    assert inference._fused_epilogues(torch.float32, torch.device("cpu")) == onednn
    assert_equals_forward(random_model(seed=3), random_ids(rng, 3, 45), 32)


def test_channel_groups_equal_one_shot(rng, monkeypatch):
    monkeypatch.setattr(inference, "GROUP_BYTES", 1)  # one channel per long-conv group
    assert_equals_forward(random_model(seed=5), random_ids(rng, 1, 30), 8)


def test_long_input_is_partial_convolution_of_length_max_seq_len(rng):
    """Past max_seq_len (40) the filter has 40 taps; the float64 reference convolves directly."""
    model = random_model(seed=1)
    ids = random_ids(rng, 1, 130)
    hidden = inference.hidden_states(model, ids, chunk_size=25)
    assert_close_ref(hidden, reference_hidden(model, ids))


@pytest.mark.parametrize("piece,chunk", [(1, 25), (7, 3), (20, 25), (45, 8)])
def test_streamed_pieces_equal_one_shot(rng, monkeypatch, piece, chunk):
    """Past max_seq_len + 2 pieces, v' streams through a buffer of max_seq_len - 1 + piece
    positions (outputs written over freed history, the kept history moved forward after each
    piece): same numbers as one piece and as the float64 reference, over batches and channel
    groups."""
    monkeypatch.setattr(inference, "GROUP_BYTES", 3000)  # several channel groups
    model = random_model(seed=2)
    ids = random_ids(rng, 2, 130)
    ws = inference._Workspace(model, 2, 130, chunk, piece, torch.float32)
    assert ws.v.shape == (2, TINY.d_model, TINY.max_seq_len - 1 + piece) and ws.y is not None
    cuts = [p.start for p in ws.pieces]
    assert cuts[0] == 0 and TINY.max_seq_len - 1 in cuts and ws.pieces[-1].stop == 130
    streamed = inference.hidden_states(model, ids, chunk_size=chunk, piece_size=piece)
    whole = inference.hidden_states(model, ids, chunk_size=chunk, piece_size=10**6)
    torch.testing.assert_close(streamed, whole, atol=2e-5, rtol=1e-5)
    assert_close_ref(streamed, reference_hidden(model, ids))


def test_partial_convolution_differs_from_full_length_filter(rng):
    """The same weights with a longer trained length give different outputs past position 40,
    identical ones before: the taps beyond max_seq_len are really dropped."""
    model = random_model(seed=1)
    longer = random_model(HyenaConfig(**{**TINY.to_dict(), "max_seq_len": 200}), seed=1)
    longer.load_state_dict(model.state_dict())
    ids = random_ids(rng, 1, 90)
    a = inference.hidden_states(model, ids)
    b = inference.hidden_states(longer, ids)
    assert not torch.allclose(a[:, 45:], b[:, 45:], atol=1e-3)


def test_loglik_matches_model(rng):
    model = random_model()
    ids = random_ids(rng, 2, 41)
    hidden, loglik = inference.hidden_and_loglik(model, ids, chunk_size=9)
    with torch.no_grad():
        expect = model.autograd_log_likelihoods(ids)
    assert loglik.shape == (2, 40) and hidden.shape == (2, 41, TINY.d_model)
    torch.testing.assert_close(loglik, expect, atol=1e-5, rtol=1e-5)
    assert bool((loglik < 0).all())


def _rel(x: torch.Tensor, ref: np.ndarray) -> float:
    x = x.detach().double().numpy()
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,chunk,piece", [(1, 64, None), (2, 25, 7)])
def test_low_precision_within_twice_plain_torch(rng, dtype, B, chunk, piece):
    """Low-precision matmuls, everything else in float32 (v', short conv, gates, residual):
    against the float64 reference, within 2x the error of the plain PyTorch forward in that
    dtype (the model cast to it), and above the float32 path's (the matmuls really ran low),
    one piece and streamed; log-likelihoods close to float32's."""
    model = random_model(seed=4)
    ids = random_ids(rng, B, 200)
    ws = inference._Workspace(model, B, 200, chunk, piece or 10**6, dtype)
    assert ws.v.dtype == ws.proj.dtype == ws.mm.wide.dtype == torch.float32
    assert ws.mm.norm.dtype == ws.mm.gated.dtype == dtype
    ref = reference_hidden(model, ids)
    low = inference.hidden_states(model, ids, chunk_size=chunk, piece_size=piece, dtype=dtype)
    fp32 = inference.hidden_states(model, ids, chunk_size=chunk, piece_size=piece)
    with torch.no_grad():
        plain = copy.deepcopy(model).to(dtype)(ids)
    assert low.dtype == torch.float32
    assert _rel(fp32, ref) < _rel(low, ref) <= 2 * _rel(plain, ref)
    _, ll32 = inference.hidden_and_loglik(model, ids)
    _, ll16 = inference.hidden_and_loglik(model, ids, dtype=dtype)
    assert (ll16 - ll32).abs().max().item() < 5e-2


def test_float64_model_runs_float64_work_buffers(rng):
    """Float64 matmuls: v', the short conv and the gates in float64 too, the residual float32;
    the outputs reach the float64 reference at float32 rounding."""
    model = random_model(seed=3).double()
    ids = random_ids(rng, 1, 90)
    ws = inference._Workspace(model, 1, 90, 16, 10**6, torch.float64)
    assert ws.v.dtype == ws.proj.dtype == torch.float64 and ws.mm.wide.dtype == torch.float32
    hidden = inference.hidden_states(model, ids, chunk_size=16)
    assert hidden.dtype == torch.float32
    assert_close_ref(hidden, reference_hidden(model, ids), tol=1e-5)


def test_single_position_and_pool_names(rng):
    model = random_model()
    ids = random_ids(rng, 1, 1)
    hidden, loglik = inference.hidden_and_loglik(model, ids)
    assert hidden.shape == (1, 1, TINY.d_model) and loglik.shape == (1, 0)
    x = torch.from_numpy(rng.normal(size=(2, 5, 3)))
    assert torch.equal(pool(x, "max"), x.amax(1))
    np.testing.assert_allclose(pool(x, "mean").numpy(), x.numpy().mean(1))
