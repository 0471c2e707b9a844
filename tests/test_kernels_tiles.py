"""The CPU emulation of the CUDA kernels' schedule (genomeconv.kernels.tiles) against float64
numpy references: dense fused and four-step sizes, every operand precision, gates, reversed
(backward) mode, overlap-save segments and frequency-block masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genomeconv.kernels import monarch, tiles

# Max-normalized error bounds per (input dtype, fast): split operands keep ~1e-5 in float32 and
# the output dtype's rounding otherwise; single operands add about one bf16/fp16 rounding.
TOL = {(torch.float32, False): 1e-4, (torch.float16, False): 2e-3, (torch.bfloat16, False): 1e-2,
       (torch.float32, True): 2e-2, (torch.float16, True): 4e-3, (torch.bfloat16, True): 2e-2}


def conv_ref(x, k, D, keep_bins=None, n=None):
    """float64 causal conv; with keep_bins, the circular conv of size n with a masked spectrum."""
    L, Lk = x.shape[-1], k.shape[-1]
    n = L + Lk if n is None else n
    K = np.fft.rfft(k, n=n) + (0 if D is None else D[:, None])
    if keep_bins is not None:
        K = K * keep_bins
    return np.fft.irfft(np.fft.rfft(x, n=n) * K, n=n)[..., :L]


def inputs(B, H, L, Lk, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, H, L, generator=g).to(dtype)
    k = torch.randn(H, Lk, generator=g) / math.sqrt(Lk)
    D = torch.randn(H, generator=g)
    return u, k, D


def f64(t):
    return t.double().numpy()


def rel_err(got, want):
    return float(np.abs(f64(got) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("L,fused_max", [(37, 16384), (1500, 512)])
def test_dense_conv_every_precision(dtype, fast, L, fused_max):
    u, k, D = inputs(2, 3, L, L, dtype, L)
    M = tiles.transform_points(2 * L - 1, fused_max)
    y = tiles.emulate_conv(u, tiles.filter_spectrum(k, D, M), M, fast=fast, fused_max=fused_max)
    assert y.dtype == dtype and y.shape == u.shape
    assert rel_err(y, conv_ref(f64(u), f64(k), f64(D))) < TOL[(dtype, fast)]


def test_four_step_path_is_used_and_exact():
    M = tiles.transform_points(3000, 512)
    assert M > 512  # past the fused size: outer stage + inner conv + inverse outer stage
    r0, S1 = tiles.split_outer(M, 512)
    assert r0 * S1 == M and 2 * S1 <= 512
    u, k, D = inputs(1, 2, 1500, 1200, torch.float32, 1)
    y = tiles.emulate_conv(u, tiles.filter_spectrum(k, D, M), M, fused_max=512)
    assert rel_err(y, conv_ref(f64(u), f64(k), f64(D))) < 1e-4


def test_gates_and_reversed_mode():
    u, k, D = inputs(2, 2, 200, 60, torch.float32, 2)
    pre, post = torch.randn(2, 2, 200), torch.randn(2, 2, 200)
    M = tiles.transform_points(259)
    kf = tiles.filter_spectrum(k, D, M)
    y = tiles.emulate_conv(u, kf, M, pregate=pre, postgate=post)
    want = f64(post) * conv_ref(f64(u * pre), f64(k), f64(D))
    assert rel_err(y, want) < 1e-4
    # reverse=True is the backward's correlation: dx[t] = sum_s k[s] g[t+s] + D g[t]
    r = tiles.emulate_conv(u, kf, M, reverse=True)
    want = conv_ref(f64(u)[..., ::-1], f64(k), f64(D))[..., ::-1]
    assert rel_err(r, want) < 1e-4


@pytest.mark.parametrize("L,Lk", [(3000, 100), (1025, 1)])
def test_overlap_save_segments(L, Lk):
    u, k, D = inputs(1, 2, L, Lk, torch.float32, L)
    M = tiles.transform_points(1024)
    seg_out = 2 * M - (Lk - 1)
    y = tiles.emulate_conv(u, tiles.filter_spectrum(k, D, M), M, seg_out=seg_out, halo=Lk - 1)
    assert rel_err(y, conv_ref(f64(u), f64(k), f64(D))) < 1e-4


@pytest.mark.parametrize("L,fused_max", [(400, 16384), (1500, 512)])
def test_frequency_block_masks(L, fused_max):
    u, k, D = inputs(1, 2, L, L, torch.float32, 3)
    M = tiles.transform_points(2 * L - 1, fused_max)
    count = tiles.first_block_count(M, fused_max)
    keep = torch.zeros(count, dtype=torch.bool)
    keep[[0, 1, count - 1, 3, count - 3]] = True  # symmetric: keep[b] == keep[-b % count]
    kf = tiles.filter_spectrum(k, D, M, keep)
    y = tiles.emulate_conv(u, kf, M, keep=keep, fused_max=fused_max)
    bins = f64(tiles.keep_bins(keep, M))
    want = conv_ref(f64(u), f64(k), f64(D), keep_bins=bins, n=2 * M)
    assert rel_err(y, want) < 1e-4
    full = torch.ones(count, dtype=torch.bool)
    y_all = tiles.emulate_conv(u, tiles.filter_spectrum(k, D, M, full), M, keep=full,
                               fused_max=fused_max)
    assert rel_err(y_all, conv_ref(f64(u), f64(k), f64(D))) < 1e-4


def test_kernel_stages_follow_monarch_layout():
    """One in-CTA FFT (float32 operands) equals monarch.forward_stages / M: same stages, same
    digit-reversed order; the inverse undoes it."""
    for m in (4, 8, 11, 14):
        pl = tiles.plan_for(m)
        assert tiles.plan_ok(m) and pl.points == 2**m
        assert all(r in (16, 32, 64) for r in pl.radices)
        M = pl.points
        g = torch.Generator().manual_seed(m)
        re, im = torch.randn(2, M, generator=g), torch.randn(2, M, generator=g)
        tw = tiles.twiddle_table(M)
        fr, fi = tiles.cta_fft(re, im, pl, False, tw, 2 * M, torch.float32, False)
        want = monarch.forward_stages(torch.complex(re, im), pl) / M
        assert (torch.complex(fr, fi) - want).abs().max() < 1e-5
        br, bi = tiles.cta_fft(fr, fi, pl, True, tw, 2 * M, torch.float32, False)
        assert (br - re).abs().max() < 1e-4 and (bi - im).abs().max() < 1e-4


def test_transform_sizes():
    for n in (1, 17, 255, 256, 257, 4000, 40000, 2**20 + 1):
        M = tiles.transform_points(n)
        assert 2 * M >= n and M & (M - 1) == 0 and M >= 16
        assert M <= tiles.FUSED_MAX_POINTS_H100 or tiles.split_outer(M, tiles.FUSED_MAX_POINTS_H100)
        assert M == 16 or 2 * (M // 2) < n or not tiles.plan_ok((M // 2).bit_length() - 1)
    assert not tiles.plan_ok(7) and tiles.transform_points(200) == 256
    with pytest.raises(ValueError, match="no outer/inner split"):
        tiles.transform_points(2**40)
