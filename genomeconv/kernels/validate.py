"""Argument checks shared by every convolution path: clear errors that name the argument."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_real(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a real floating tensor (float32, float64, float16 or "
                        f"bfloat16), got {t.dtype}")
    return t


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_conv_args(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None,
                    pregate: torch.Tensor | None, postgate: torch.Tensor | None) -> None:
    """Validate fftconv's tensors: u (B, H, L) with L >= 1; k (H, Lk) with Lk >= 1;
    D (H,) or None; gates broadcastable to u; all real floating on u's device.

    Raises TypeError for non-tensors and wrong dtypes, ValueError for shapes and devices
    (non-finite filters: `check_finite`).
    """
    _check_real("u", u)
    if u.dim() != 3:
        raise ValueError(f"u must have shape (B, H, L), got {tuple(u.shape)}")
    B, H, L = u.shape
    if L < 1:
        raise ValueError(f"u must have length L >= 1, got shape {tuple(u.shape)}")
    _check_real("k", k)
    if k.dim() != 2 or k.shape[0] != H or k.shape[1] < 1:
        raise ValueError(f"k must have shape (H={H}, Lk>=1), got {tuple(k.shape)}")
    named = [("k", k)]
    if D is not None:
        _check_real("D", D)
        if tuple(D.shape) != (H,):
            raise ValueError(f"D must have shape (H={H},), got {tuple(D.shape)}")
        named.append(("D", D))
    for name, gate in (("pregate", pregate), ("postgate", postgate)):
        if gate is None:
            continue
        _check_real(name, gate)
        try:
            shape = torch.broadcast_shapes(gate.shape, u.shape)
        except RuntimeError:
            shape = None
        if shape != u.shape:
            raise ValueError(f"{name} must broadcast to u's shape {tuple(u.shape)}, "
                             f"got {tuple(gate.shape)}")
        named.append((name, gate))
    for name, t in named:
        if t.device != u.device:
            raise ValueError(f"{name} is on {t.device} but u is on {u.device}")


def check_finite(k: torch.Tensor | None, D: torch.Tensor | None) -> None:
    """ValueError naming k or D when it holds NaN or Inf (the FFT paths call this only when
    they compute a filter spectrum, so cached filters are not rescanned on every call)."""
    for name, t in (("k", k), ("D", D)):
        if t is None or not t.numel():
            continue
        lo, hi = torch.aminmax(t.detach())  # one read-only pass; NaN propagates to both
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            raise ValueError(f"{name} contains non-finite values (NaN or Inf)")


def check_out_tensor(
    out: object, u: torch.Tensor, shape: tuple[int, ...], needs_grad: bool
) -> None:
    """Validate fftconv's `out`: a tensor of the output's `shape` and u's dtype and device,
    either u itself (an in-place convolution) or not sharing memory with u, and no autograd
    (out= writes cannot be differentiated)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape) or out.dtype != u.dtype or out.device != u.device:
        raise ValueError(f"out must have the output's shape {tuple(shape)} and u's dtype "
                         f"{u.dtype} and device {u.device}, got {tuple(out.shape)}, {out.dtype}, "
                         f"{out.device}")
    if needs_grad:
        raise ValueError("out= cannot be used when gradients are needed (use the return value)")
    same = out.data_ptr() == u.data_ptr() and out.stride() == u.stride()
    if not same and out.untyped_storage().data_ptr() == u.untyped_storage().data_ptr():
        raise ValueError("out must be u itself or not share memory with u")
