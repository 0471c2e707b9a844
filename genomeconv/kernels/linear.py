"""Dense products a @ b.T, the matmuls of a model's projections and MLPs.

On the CPU in float32, torch.mm goes to MKL, which on this project's AMD EPYC machines was slower
than oneDNN's linear over every Evo 2 shape tried (benchmarks/results/bench_evo2_onednn.json for
the whole model): float32 products go to oneDNN there (`torch.ops.mkldnn._linear_pointwise`, the
op torch's own compiler emits for linear layers). Its rounding differs from MKL's (both
accumulate in float32; tests/test_kernels_linear.py holds both to float64). Every other dtype and
device, and torch builds without oneDNN, use torch.mm.
"""

from __future__ import annotations

import torch


def _onednn() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                            "_linear_pointwise")


ONEDNN = _onednn()


def mm_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (m, k) @ b (n, k).T as a new (m, n) tensor, in a's dtype (a and b alike)."""
    if ONEDNN and a.device.type == "cpu" and a.dtype == torch.float32 == b.dtype:
        return onednn_linear(a, b.contiguous())
    return torch.mm(a, b.T)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  gelu: bool = False) -> torch.Tensor:
    """x @ weight.T (+ bias), then GELU (tanh) when `gelu`, as one oneDNN linear with the bias and
    GELU in its epilogue (no passes of their own over memory): a fresh tensor (the op has no
    out= form). CPU tensors, float32 where ONEDNN, bfloat16 where oneDNN supports it."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [],
                                              "tanh" if gelu else "")
