"""genomeconv.kernels.monarch against float64 numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genomeconv.kernels import monarch
from genomeconv.kernels.fft import SpectrumCache

RTOL = 1e-4


def conv_ref(x: np.ndarray, k: np.ndarray, D: np.ndarray | None) -> np.ndarray:
    """Causal conv in float64 numpy: y[t] = sum_s k[s] x[t-s] + D x[t]."""
    L, Lk = x.shape[-1], k.shape[-1]
    n = L + Lk
    y = np.fft.irfft(np.fft.rfft(x, n=n) * np.fft.rfft(k, n=n), n=n)[..., :L]
    return y + (0 if D is None else x * D[:, None])


def rel_err(got: torch.Tensor, want: np.ndarray) -> float:
    return float(np.abs(got.double().numpy() - want).max() / np.abs(want).max())


def inputs(B: int, H: int, L: int, Lk: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, L, generator=g)
    k = torch.randn(H, Lk, generator=g) / math.sqrt(Lk)
    D = torch.randn(H, generator=g)
    return x, k, D


def check(B, H, L, Lk, p, with_d, seed=0):
    x, k, D = inputs(B, H, L, Lk, seed)
    D = D if with_d else None
    y = monarch.monarch_conv(x, k, D, p=p)
    assert y.shape == x.shape and y.dtype == torch.float32
    want = conv_ref(x.double().numpy(), k[:, :L].double().numpy(),
                    None if D is None else D.double().numpy())
    assert rel_err(y, want) < RTOL


LENGTHS = [1, 2, 3, 17, 100, 257, 1000, 4099]


CASES = [(p, L) for p in (2, 3) for L in LENGTHS] + [(4, L) for L in (1, 17, 4099)]


@pytest.mark.parametrize("p,L", CASES)
@pytest.mark.parametrize("short", [False, True])
def test_conv_matches_reference(p, L, short):
    Lk = max(1, L // 5) if short else L
    check(2, 3, L, Lk, p, with_d=(L % 2 == 1), seed=L)


@pytest.mark.parametrize("p,L,Lk", [(3, 2**16, 2**16), (4, 2**16, 2**16), (3, 2**16 - 1, 300),
                                    (4, 12289, 12289)])
def test_conv_long(p, L, Lk):
    check(1, 2, L, Lk, p, with_d=True, seed=L + Lk)


@pytest.mark.parametrize("L,Lk", [(5000, 5000), (8191, 8191), (30000, 1000)])
def test_conv_two_stage_limits(L, Lk):
    check(1, 2, L, Lk, 2, with_d=False, seed=L)


@pytest.mark.parametrize("L,Lk", [(1, 1), (3, 3), (333, 20), (5003, 5003), (40000, 40000)])
def test_automatic_p(L, Lk):
    check(2, 2, L, Lk, None, with_d=True, seed=L)


def test_filter_longer_than_input_and_batch_channel_one():
    x, k, D = inputs(1, 1, 50, 80, 7)
    want = conv_ref(x.double().numpy(), k[:, :50].double().numpy(), D.double().numpy())
    assert rel_err(monarch.monarch_conv(x, k, D), want) < RTOL


def test_row_chunks_cover_every_channel(monkeypatch):
    monkeypatch.setattr(monarch, "CHUNK_POINTS", 512)  # forces (batch, channel) blocks
    check(3, 4, 200, 200, 2, with_d=True, seed=3)


def test_noncontiguous_and_low_precision_inputs():
    x, k, D = inputs(3, 4, 300, 300, 11)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert not xt.is_contiguous()
    want = conv_ref(x.double().numpy(), k.double().numpy(), D.double().numpy())
    assert rel_err(monarch.monarch_conv(xt, k, D), want) < RTOL
    xb = x.to(torch.bfloat16)
    yb = monarch.monarch_conv(xb, k, D)
    assert yb.dtype == torch.bfloat16
    wb = conv_ref(xb.double().numpy(), k.double().numpy(), D.double().numpy())
    assert rel_err(yb.float(), wb) < 2 ** -7  # one bf16 rounding of the output


@pytest.mark.parametrize("p", [2, 3])
@pytest.mark.parametrize("M_rows", [None, 1])
def test_dft_stages_match_numpy(p, M_rows):
    g = np.random.default_rng(p)
    plan = monarch.plan_for(2 * 16**p * 3 - 5, p)
    M, s1 = plan.points, plan.strides[0]
    q = plan.radices[0] if M_rows is None else M_rows  # q < r_1: zero padding skipped
    z = g.standard_normal((3, q * s1)) + 1j * g.standard_normal((3, q * s1))
    got = monarch.forward_stages(torch.from_numpy(z).to(torch.complex64), plan)
    pos = monarch.digit_reversed_positions(plan.radices, torch.arange(M)).numpy()
    want = np.fft.fft(z, n=M)
    assert np.abs(got.numpy()[:, pos] - want).max() / np.abs(want).max() < RTOL
    Zdr = np.empty_like(want)
    Zdr[:, pos] = want
    back = monarch.inverse_stages(torch.from_numpy(Zdr).to(torch.complex64), plan, q)
    expect = M * np.fft.ifft(want)[:, :q * s1]
    assert np.abs(back.numpy() - expect).max() / np.abs(expect).max() < RTOL


def test_plans_are_valid_and_smallest():
    for n in [1, 2, 511, 512, 513, 2000, 4097, 9999, 32768, 65535, 2**17 + 1, 2**21 + 7]:
        p = monarch.choose_p(n)
        assert p in (2, 3, 4)
        for q in (2, 3, 4):
            try:
                plan = monarch.plan_for(n, q)
            except ValueError:
                assert 2 * 128**q < n
                continue
            assert len(plan.radices) == q and 2 * plan.points >= n
            assert all(r % 16 == 0 and 16 <= r <= 128 for r in plan.radices)
            assert list(plan.radices) == sorted(plan.radices, reverse=True)
            if q == 2:  # brute force: no smaller two-factor size covers n
                sizes = [a * b for a in range(16, 129, 16) for b in range(16, 129, 16)
                         if 2 * a * b >= n]
                assert plan.points == min(sizes)
    assert monarch.choose_p(2**24) in (3, 4)
    with pytest.raises(ValueError, match="exceeds"):
        monarch.plan_for(2**30, 4)


def test_two_stages_too_small_for_long_input():
    x, k, _ = inputs(1, 1, 2**16, 2**16, 0)
    with pytest.raises(ValueError, match="2-stage"):
        monarch.monarch_conv(x, k, p=2)


def test_cached_filter_side_reused_and_invalidated():
    x, k, D = inputs(2, 3, 900, 900, 5)
    cache = SpectrumCache()
    y1 = monarch.monarch_conv(x, k, D, cache=cache)
    y2 = monarch.monarch_conv(x, k, D, cache=cache)
    assert cache.computed == 1 and torch.equal(y1, y2)
    k.mul_(-2.0)  # an in-place change must be noticed
    y3 = monarch.monarch_conv(x, k, D, cache=cache)
    assert cache.computed == 2
    D.add_(1.0)  # D is applied in the time domain: no new filter side needed
    y4 = monarch.monarch_conv(x, k, D, cache=cache)
    assert cache.computed == 2
    want3 = conv_ref(x.double().numpy(), k.double().numpy(), (D - 1).double().numpy())
    want4 = conv_ref(x.double().numpy(), k.double().numpy(), D.double().numpy())
    assert rel_err(y3, want3) < RTOL and rel_err(y4, want4) < RTOL


def test_uncacheable_filter_side_computed_per_channel_block(monkeypatch):
    monkeypatch.setattr(monarch, "CHUNK_POINTS", 1024)
    cache = SpectrumCache(max_bytes=1024)  # too small for the (2, H, M) coefficients
    x, k, D = inputs(2, 5, 600, 600, 4)
    want = conv_ref(x.double().numpy(), k.double().numpy(), D.double().numpy())
    assert rel_err(monarch.monarch_conv(x, k, D, cache=cache), want) < RTOL
    assert cache.computed == 0


def test_gradients_match_numpy():
    B, H, L, Lk = 2, 3, 37, 11
    x, k, D = inputs(B, H, L, Lk, 9)
    g = torch.randn(B, H, L, generator=torch.Generator().manual_seed(1))
    x.requires_grad_(True)
    k.requires_grad_(True)
    D.requires_grad_(True)
    (monarch.monarch_conv(x, k, D, p=2) * g).sum().backward()
    xn, kn, Dn, gn = (t.detach().double().numpy() for t in (x, k, D, g))
    dx = np.zeros_like(xn)
    dk = np.zeros_like(kn)
    for s in range(Lk):  # y[t] += k[s] x[t-s]
        dx[..., :L - s] += kn[:, s, None] * gn[..., s:]
        dk[:, s] = (gn[..., s:] * xn[..., :L - s]).sum(axis=(0, 2))
    dx += Dn[:, None] * gn
    dD = (gn * xn).sum(axis=(0, 2))
    for got, want in ((x.grad, dx), (k.grad, dk), (D.grad, dD)):
        assert rel_err(got, want) < RTOL


def test_bad_inputs_raise():
    x, k, D = inputs(1, 2, 10, 4, 0)
    with pytest.raises(ValueError, match="x must be"):
        monarch.monarch_conv(x[0], k)
    with pytest.raises(ValueError, match="k must be"):
        monarch.monarch_conv(x, k[:1])
    with pytest.raises(ValueError, match="k must be"):
        monarch.monarch_conv(x, k[:, :0])
    with pytest.raises(ValueError, match="D must be"):
        monarch.monarch_conv(x, k, D[:1])
    with pytest.raises(TypeError, match="x must be"):
        monarch.monarch_conv(x.long(), k)
    with pytest.raises(TypeError, match="k must be"):
        monarch.monarch_conv(x, k.to(torch.complex64))
    with pytest.raises(ValueError, match="p must be"):
        monarch.monarch_conv(x, k, p=5)
