"""`fftconv`: the one entry to every convolution path, and `choose_method`, the automatic
choice among them (fft.py, paired.py, partial.py, sparse.py, monarch.py, cuda.py)."""

from __future__ import annotations

import torch

import genomeconv.kernels.fft as fft
import genomeconv.kernels.paired as paired
import genomeconv.kernels.partial as partial
import genomeconv.kernels.sparse as sparse

from .fft import SPECTRA, SpectrumCache
from .validate import check_conv_args, check_finite, check_out_tensor

METHODS = ("auto", "fft", "partial", "sparse", "direct", "monarch", "cuda")
DIRECT_MAX_TAPS = 8  # time domain (one pass per tap) below this many taps or outputs


def choose_method(u: torch.Tensor, Lk: int, history: int = 0) -> str:
    """The automatic path for u (B, H, L) and a filter of Lk <= L taps, for the outputs past
    the first `history` positions: "cuda" for CUDA tensors when the fused kernels are
    available (float32/16/bf16), "direct" when min(L, Lk) <= DIRECT_MAX_TAPS, "partial" when
    overlap-save blocks cost less than one full transform by partial.choose_block's measured
    cost model (Lk well below L - history), else "fft"."""
    L = u.shape[-1]
    if u.is_cuda and u.dtype != torch.float64:
        import genomeconv.kernels.cuda as cuda

        if cuda.available():
            return "cuda"
    if min(L, Lk) <= DIRECT_MAX_TAPS:
        return "direct"
    if partial.choose_block(L - history, Lk) is not None:
        return "partial"
    return "fft"


def fftconv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None, *,
            pregate: torch.Tensor | None = None, postgate: torch.Tensor | None = None,
            method: str = "auto", keep: torch.Tensor | None = None,
            keep_fraction: float | None = None, blocks: int = 16, block: int | None = None,
            cache: SpectrumCache | None = None, history: int = 0,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal long convolution y = postgate * (conv(x, k) + D * x), x = pregate * u.

    y[b,h,t] = sum_{s <= min(t, Lk-1)} k[h,s] x[b,h,t-s] + D[h] x[b,h,t]. u (B, H, L), L >= 1;
    k (H, Lk), Lk >= 1 (taps past L are ignored); D (H,) or None; gates broadcastable to u.
    float32, float64, bfloat16 and float16 inputs; accumulation in float32 (float64 for float64);
    returns u's dtype; CPU and CUDA; autograd for u, k, D and both gates.

    method: "auto" (see `choose_method`; "sparse" when keep/keep_fraction is given), "fft" (one
    full transform, fft.py), "partial" (overlap-save, transform size `block`), "sparse"
    (frequency blocks: `keep` bool (blocks,) symmetric mask or `keep_fraction`, sparse.py),
    "direct" (time domain, O(L Lk)), "monarch" (monarch.monarch_conv, float32 Monarch FFT),
    "cuda" (the fused kernels; CUDA tensors only). cache: SpectrumCache for filter spectra
    (default: the module-wide SPECTRA). history: the first `history` positions of u only feed
    the later outputs (a stream's carried inputs): y is (B, H, L - history), the outputs at
    positions history .. L - 1, and the CPU paths compute no others; gates stay aligned with u.
    out: write y there (y's shape, u's dtype and device; u itself convolves in place; no
    autograd), sparing a fresh output per call in inference loops.
    Bad arguments raise TypeError/ValueError naming them.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_conv_args(u, k, D, pregate, postgate)
    L = u.shape[-1]
    if not isinstance(history, int) or not 0 <= history < L:
        raise ValueError(f"history must be an int in [0, L={L}), got {history!r}")
    if out is not None:
        check_out_tensor(
            out, u, (*u.shape[:2], L - history), _needs_grad(u, k, D, pregate, postgate)
        )
    if k.shape[-1] > L:
        k = k[:, :L]
    if method == "auto":
        sparse_given = keep is not None or keep_fraction is not None
        method = "sparse" if sparse_given else choose_method(u, k.shape[-1], history)
    if method != "sparse" and (keep is not None or keep_fraction is not None):
        raise ValueError(f"keep/keep_fraction need method='sparse', got method={method!r}")
    gates = {"pregate": pregate, "postgate": postgate}
    if method in ("fft", "partial") and paired.available(u) and not _needs_grad(
            u, k, D, pregate, postgate):
        block = None if method == "fft" else partial.resolve_block(L - history, k.shape[-1],
                                                                   block)
        return paired.conv(u, k, D, **gates, block=block, history=history, out=out,
                           cache=SPECTRA if cache is None else cache)
    y = _dispatch(u, k, D, gates, method, keep, keep_fraction, blocks, block, cache)[..., history:]
    return y if out is None else out.copy_(y)


def _dispatch(u, k, D, gates, method, keep, keep_fraction, blocks, block, cache):
    """The non-paired paths of `fftconv`, arguments already checked."""
    if method == "fft":
        return fft.conv(u, k, D, **gates, cache=cache)
    if method == "partial":
        return partial.conv(u, k, D, **gates, block=block, cache=cache)
    if method == "sparse":
        return sparse.conv(u, k, D, **gates, keep=keep, keep_fraction=keep_fraction,
                           blocks=blocks, cache=cache)
    if method == "direct":
        return fft.direct(u, k, D, **gates)
    if method == "cuda":
        import genomeconv.kernels.cuda as cuda

        if not u.is_cuda:
            raise ValueError(f"method='cuda' needs CUDA tensors, u is on {u.device}")
        check_finite(k, D)
        return cuda.fftconv(u, k, D, **gates)
    return _monarch(u, k, D, **gates)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _monarch(u, k, D, *, pregate, postgate):
    import genomeconv.kernels.monarch as monarch

    check_finite(k, D)
    x = u.float() if pregate is None else u.float() * pregate.float()
    y = monarch.monarch_conv(x, k.float(), None if D is None else D.float())
    if postgate is not None:
        y = y * postgate.float()
    return y.to(u.dtype)
