"""`StreamingConv`: a causal convolution over an input fed in chunks, carrying the last Lk - 1
inputs between them, each chunk through `fftconv` (kernels/conv.py)."""

from __future__ import annotations

import torch

from .conv import fftconv
from .validate import accumulation_dtype


class StreamingConv:
    """Causal conv over an input fed in chunks (B, H, l), in order; state = the last Lk - 1
    gated inputs. `step(chunk)` (or calling the object) returns that chunk's outputs, equal to
    the one-shot output.

    k (H, Lk), D (H,) or None, method: passed to fftconv for each chunk (with the carried state
    prepended). Gates are given per chunk. `reset()` starts a new sequence.
    """

    def __init__(self, k: torch.Tensor, D: torch.Tensor | None = None, *, method: str = "auto"):
        self.k, self.D, self.method = k, D, method
        self.state: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the carried inputs (the next chunk starts a new sequence)."""
        self.state = None

    def step(self, u: torch.Tensor, *, pregate: torch.Tensor | None = None,
             postgate: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs for the chunk u (B, H, l), continuing the previous chunks."""
        if not isinstance(u, torch.Tensor) or u.dim() != 3:
            raise ValueError("u must be a (B, H, l) tensor chunk")
        acc_dtype = accumulation_dtype(u.dtype)
        x = u.to(acc_dtype) if pregate is None else u.to(acc_dtype) * pregate.to(acc_dtype)
        keep = self.k.shape[-1] - 1
        if self.state is None:
            self.state = x.new_zeros(*x.shape[:2], keep)
        elif self.state.shape[:2] != x.shape[:2]:
            raise ValueError(f"u chunk has (B, H) = {tuple(x.shape[:2])}, the stream has "
                             f"{tuple(self.state.shape[:2])}; call reset() to start anew")
        xx = torch.cat([self.state, x], dim=-1)
        y = fftconv(xx, self.k, self.D, method=self.method, history=keep)
        self.state = xx[..., xx.shape[-1] - keep:]
        if postgate is not None:
            y = y * postgate.to(acc_dtype)
        return y.to(u.dtype)

    __call__ = step
