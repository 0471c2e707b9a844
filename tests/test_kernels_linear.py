"""kernels.linear.mm_t against float64 products: every shape and layout the models pass."""

from __future__ import annotations

import pytest
import torch

from genomeconv.kernels import linear


def _err(got: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    ref = a.double() @ b.double().T
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("m, k, n", [(1, 7, 5), (3, 64, 192), (257, 256, 768), (1024, 1920, 96),
                                     (0, 8, 4)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "row_slice"])
def test_float32_matches_float64(m, k, n, layout):
    gen = torch.Generator().manual_seed(m * 7 + k)
    a = torch.randn(m + 3, k, generator=gen)
    b = torch.randn(n, k, generator=gen) * 0.05
    a = {"contiguous": a[:m].contiguous(), "transposed": a[:m].T.contiguous().T,
         "row_slice": a[3:]}[layout]
    got = linear.mm_t(a, b)
    assert got.shape == (m, n) and got.dtype == torch.float32
    if m:
        # float32 accumulation over k terms: error grows like sqrt(k) ulps
        assert _err(got, a, b) < 4e-7 * max(8, k) ** 0.5, layout


def test_float32_goes_to_onednn_where_available_and_agrees_with_torch_mm():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(512, 384, generator=gen), torch.randn(640, 384, generator=gen)
    got, plain = linear.mm_t(a, b), torch.mm(a, b.T)
    assert linear.ONEDNN == (torch.backends.mkldnn.is_available()
                             and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    assert _err(got, a, b) <= 4 * max(_err(plain, a, b), 1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes_are_torch_mm(dtype):
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(33, 48, generator=gen).to(dtype), torch.randn(20, 48, generator=gen).to(
        dtype)
    assert torch.equal(linear.mm_t(a, b), torch.mm(a, b.T))
