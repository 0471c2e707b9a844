"""genomeconv.kernels.cuda on a machine without the built extension or a GPU: clear reasons and
errors, and its host-side planning and filter spectra checked through the CPU emulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genomeconv.kernels import cuda, tiles
from genomeconv.kernels.fft import SPECTRA

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
