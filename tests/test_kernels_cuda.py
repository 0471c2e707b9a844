"""genomeconv.kernels.cuda on a machine without the built extension or a GPU: clear reasons and
errors, its host-side planning and filter spectra checked through the CPU emulation, and its
autograd Function run on the emulated extension (tests/test_gpu_kernels.py runs the real one)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genomeconv.kernels import cuda, tiles
from genomeconv.kernels.fft import SPECTRA
from helpers import autograd_reference, grads, plain_torch_conv, rel_err

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only case")


def test_unavailable_with_a_clear_reason():
    assert cuda.available() is False
    reason = cuda.unavailable_reason()
    assert reason and ("_monarch_cuda" in reason or "no CUDA device" in reason)


def test_disable_switch_is_reported(monkeypatch):
    monkeypatch.setenv("GENOMECONV_DISABLE_CUDA_KERNELS", "1")
    assert cuda.unavailable_reason() == "disabled by GENOMECONV_DISABLE_CUDA_KERNELS=1"


def test_require_and_fftconv_raise():
    with pytest.raises(RuntimeError, match="genomeconv CUDA kernels unavailable: .+ Build them"):
        cuda.require()
    u, k = torch.randn(1, 2, 8), torch.randn(2, 8)
    with pytest.raises(RuntimeError, match="CUDA kernels unavailable"):
        cuda.fftconv(u, k)


def conv_ref(x, k, D):
    n = x.shape[-1] + k.shape[-1]
    y = np.fft.irfft(np.fft.rfft(x, n=n) * np.fft.rfft(k, n=n), n=n)[..., :x.shape[-1]]
    return y + x * D[:, None]


@pytest.mark.parametrize("L,Lk,partial", [(5000, 100, None), (300, 300, None), (3000, 40, True)])
def test_plans_run_correctly_in_the_emulation(L, Lk, partial):
    fmax = tiles.FUSED_MAX_POINTS_H100
    p = cuda.plan(L, Lk, fmax, partial=partial)
    assert p.partial == (Lk < 300)
    assert 2 * p.M >= (p.seg_out + p.halo if p.partial else L + Lk - 1)
    g = torch.Generator().manual_seed(L)
    u = torch.randn(1, 2, L, generator=g)
    k = torch.randn(2, Lk, generator=g) / math.sqrt(Lk)
    D = torch.randn(2, generator=g)
    y = tiles.emulate_conv(u, cuda._spectrum(k, D, p.M, None), p.M, seg_out=p.seg_out,
                           halo=p.halo)
    want = conv_ref(u.double().numpy(), k.double().numpy(), D.double().numpy())
    assert np.abs(y.double().numpy() - want).max() / np.abs(want).max() < 1e-4


def test_partial_plan_refuses_too_long_filters():
    assert not cuda.plan(40000, 40000, 16384).partial
    with pytest.raises(ValueError, match="too long for a segmented transform"):
        cuda.plan(40000, 20000, 16384, partial=True)


def test_spectrum_cached_per_filter_and_mask():
    k, D = torch.randn(3, 50), torch.randn(3)
    M = 64
    keep = torch.tensor([True, True] + [False] * 13 + [True])  # 16 blocks, symmetric
    before = SPECTRA.computed
    for mask in (None, keep):
        kf = cuda._spectrum(k, D, M, mask)
        assert kf.dtype == torch.complex64 and kf.shape == (3, M + 1)
        want = tiles.filter_spectrum(k, D, M, mask)
        assert (kf - want).abs().max() < 1e-5 * want.abs().max()
        cuda._spectrum(k, D * 2, M, mask)  # a new D reuses k's transform
    assert SPECTRA.computed - before == 2
    k.add_(1.0)  # an in-place change of k is noticed
    kf = cuda._spectrum(k, D, M, None)
    assert SPECTRA.computed - before == 3
    assert (kf - tiles.filter_spectrum(k, D, M)).abs().max() < 1e-4


class _EmulatedExtension:
    """The extension's `conv` replayed on the CPU by genomeconv.kernels.tiles (same arguments),
    so that cuda.py's autograd (reversed mode, store gates, re-run, dk/dD) runs in CI."""

    @staticmethod
    def conv(u, pregate, postgate, kf, tw, keep, M, seg_out, halo, reverse, fast):
        assert tw.shape == (M,) and kf.shape == (u.shape[1], M + 1)
        return tiles.emulate_conv(u, kf, M, pregate=pregate, postgate=postgate,
                                  seg_out=seg_out, halo=halo, reverse=reverse, fast=fast,
                                  keep=None if keep is None else keep.bool())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("L,Lk,partial,sparse", [(600, 600, False, False),
                                                  (2100, 90, True, False),
                                                  (700, 700, False, True)])
def test_autograd_through_the_emulated_kernels(monkeypatch, dtype, L, Lk, partial, sparse):
    """Gradients of u, k, D and both gates against float64 autograd; in fp16/bf16 each within
    2x plain torch's error in the same precision (each leaves the kernel rounded once)."""
    monkeypatch.setattr(cuda, "require", lambda: _EmulatedExtension)
    g = torch.Generator().manual_seed(L + Lk)
    a = {"u": torch.randn(2, 3, L, generator=g).to(dtype),
         "k": torch.randn(3, Lk, generator=g) / math.sqrt(Lk), "D": torch.randn(3, generator=g),
         "pregate": torch.randn(2, 3, L, generator=g).to(dtype),
         "postgate": torch.randn(2, 3, L, generator=g).to(dtype)}
    dy = torch.randn(2, 3, L, generator=g).to(dtype)
    fmax = tiles.FUSED_MAX_POINTS_H100
    p = cuda.plan(L, Lk, fmax, partial=partial)
    keep = bins = n = None
    if sparse:
        count = tiles.first_block_count(p.M, fmax)
        keep = torch.zeros(count, dtype=torch.bool)
        keep[[0, 1, 2, count - 2, count - 1]] = True
        bins, n = tiles.keep_bins(keep, p.M).double(), 2 * p.M
    got = grads(lambda u, k, D, pregate, postgate: cuda._MonarchConv.apply(
        u, k, D, pregate, postgate, keep, p, False), a, dy)
    want = grads(lambda **t: autograd_reference(**t, keep_bins=bins, n=n),
                 {name: t.double() for name, t in a.items()}, dy.double())
    base = grads(plain_torch_conv, a, dy)
    for name in a:
        assert got[name].dtype == a[name].dtype and got[name].shape == a[name].shape
        err = rel_err(got[name], want[name])
        if dtype == torch.float32 or name in ("k", "D"):
            assert err < 1e-4, (name, err)
        elif sparse:  # plain torch has no masked form: the output rounding's bound
            assert err < 2 * torch.finfo(dtype).eps, (name, err)
        else:
            assert err <= 2 * rel_err(base[name], want[name]) + 1e-6, (name, err)
