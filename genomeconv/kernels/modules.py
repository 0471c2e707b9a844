"""nn.Module wrappers that own a long filter and its cached spectrum."""

from __future__ import annotations

import math

import torch
from torch import nn

from .conv import fftconv
from .fft import SpectrumCache


class LongConv(nn.Module):
    """Causal long convolution with a learned explicit filter k (H, Lk) and skip D (H,).

    `forward(u, pregate=None, postgate=None)` calls genomeconv.kernels.fftconv with the
    module's own spectrum cache: the filter's transform is reused across calls while k and D
    are unchanged, and recomputed after any in-place update (optimizer step, load_state_dict,
    .copy_) since those bump the parameters' version counters. `invalidate()` drops it.
    """

    def __init__(self, channels: int, length: int, *, skip: bool = True, method: str = "auto"):
        super().__init__()
        if channels < 1 or length < 1:
            raise ValueError(f"channels and length must be >= 1, got {channels}, {length}")
        self.k = nn.Parameter(torch.randn(channels, length) / math.sqrt(length))
        self.D = nn.Parameter(torch.randn(channels)) if skip else None
        self.method = method
        self.cache = SpectrumCache(max_bytes=None, max_entries=4)

    def invalidate(self) -> None:
        """Forget the cached spectra."""
        self.cache.clear()

    def forward(self, u: torch.Tensor, pregate: torch.Tensor | None = None,
                postgate: torch.Tensor | None = None) -> torch.Tensor:
        return fftconv(u, self.k, self.D, pregate=pregate, postgate=postgate,
                       method=self.method, cache=self.cache)

    def extra_repr(self) -> str:
        return f"channels={self.k.shape[0]}, length={self.k.shape[1]}, method={self.method!r}"
