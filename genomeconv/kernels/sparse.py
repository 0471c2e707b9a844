"""Frequency-sparse convolutions: the filter spectrum restricted to kept frequency blocks.

Blocks are the residue classes of the bins of an n-point transform modulo `blocks` = P (the
blocks of the first Monarch stage, as in genomeconv.kernels.cuda/tiles): bin f is in block f % P.
A real filter pairs bins f and n - f, so a mask must be symmetric: keep[b] == keep[(P - b) % P].
The result is irfft(rfft(x, n) * (rfft(k, n) + D) * keep[bin % P], n)[:L]; keeping every block
gives the dense convolution.

Pruned transform (what skipped blocks save): with n = P m and t = t1 + m t2,
X[b + P j] = FFT_m( w_n^{b t1} * sum_{t2} x[t1 + m t2] w_P^{b t2} )[j], so block b costs one
(1 x P) @ (P x m) product (2n real multiply-adds) and one m-point complex FFT, forward and
inverse alike; a skipped block costs nothing (no products, no FFT, no spectrum memory). Only
blocks b <= P/2 are computed; their mirrors are the complex conjugates, folded into the real
output with weight 2. Work is about K (4n + 2 m log m) for K computed blocks, against
~2 n log n for the dense transform pair.

Autograd comes from the torch ops (matmul, torch.fft); the filter's pruned spectrum is cached
(fft.SpectrumCache, tagged by the block set) unless k or D needs a gradient.
"""

from __future__ import annotations

import math

import torch

import genomeconv.kernels.fft as fft
from .validate import accumulation_dtype, check_finite


def fraction_mask(fraction: float, blocks: int) -> torch.Tensor:
    """Symmetric mask keeping about `fraction` of the blocks, lowest block indices first
    (0, 1, P-1, 2, P-2, ...); at least block 0."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {fraction}")
    want = max(1, math.ceil(fraction * blocks - 1e-9))
    keep = torch.zeros(blocks, dtype=torch.bool)
    for b in range(blocks // 2 + 1):
        if int(keep.sum()) >= want:
            break
        keep[b] = keep[(blocks - b) % blocks] = True
    return keep


def check_mask(keep: torch.Tensor, blocks: int) -> torch.Tensor:
    """keep as a bool (blocks,) CPU tensor; ValueError naming `keep` when malformed."""
    if not isinstance(keep, torch.Tensor):
        keep = torch.as_tensor(keep)
    if keep.dtype != torch.bool:
        raise TypeError(f"keep must be a bool tensor of frequency blocks, got {keep.dtype}")
    keep = keep.detach().cpu().reshape(-1)
    if keep.numel() != blocks:
        raise ValueError(f"keep must have {blocks} blocks (the `blocks` argument), "
                         f"got {keep.numel()}")
    if not torch.equal(keep, keep[(-torch.arange(blocks)) % blocks]):
        raise ValueError("keep must be symmetric: keep[b] == keep[(blocks - b) % blocks] "
                         "(a real filter's spectrum pairs bins f and n - f)")
    return keep


def transform_size(L: int, Lk: int, blocks: int) -> int:
    """n = blocks * m >= L + Lk - 1 with m a fast complex FFT size."""
    return blocks * fft.fast_len(-(-(L + Lk - 1) // blocks), real=False)


def computed_blocks(keep: torch.Tensor) -> list[int]:
    """The blocks b <= P/2 that are transformed (their mirrors come free); others cost nothing."""
    P = keep.numel()
    return [b for b in range(P // 2 + 1) if bool(keep[b])]


class _Pruned:
    """Twiddles of the pruned transform for computed blocks `bs` (all <= P/2), n = P m."""

    def __init__(self, bs: list[int], P: int, m: int, dtype: torch.dtype, device):
        n = P * m
        b = torch.tensor(bs, dtype=torch.float64)
        t2 = torch.arange(P, dtype=torch.float64)
        t1 = torch.arange(m, dtype=torch.float64)
        ang1 = -2 * math.pi * b[:, None] * t2[None, :] / P  # (K, P): w_P^{b t2}
        self.w1r, self.w1i = (torch.cos(ang1).to(dtype).to(device),
                              torch.sin(ang1).to(dtype).to(device))
        ctype = fft.complex_dtype(dtype)
        ang = -2 * math.pi * b[:, None] * t1[None, :] / n  # (K, m): w_n^{b t1}
        self.tw = torch.polar(torch.ones_like(ang), ang).to(ctype).to(device)
        weight = torch.tensor([1.0 if (x == 0 or 2 * x == P) else 2.0 for x in bs],
                              dtype=torch.float64)
        ang2 = 2 * math.pi * t2[:, None] * b[None, :] / P  # (P, K): w_P^{-b t2}
        self.w2r = (torch.cos(ang2) * weight / n).to(dtype).to(device)
        self.w2i = (torch.sin(ang2) * weight / n).to(dtype).to(device)
        self.P, self.m = P, m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, P*m) real -> (R, K, m) spectra at bins b + P j."""
        xr = x.reshape(x.shape[0], self.P, self.m)
        A = torch.complex(self.w1r @ xr, self.w1i @ xr) * self.tw
        return torch.fft.fft(A, dim=-1)

    def inverse(self, Y: torch.Tensor) -> torch.Tensor:
        """(R, K, m) kept spectra -> (R, P*m) real signal."""
        c = torch.fft.ifft(Y, dim=-1, norm="forward") * self.tw.conj()
        y = self.w2r @ c.real - self.w2i @ c.imag
        return y.reshape(Y.shape[0], self.P * self.m)


def conv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None, *,
         pregate: torch.Tensor | None = None, postgate: torch.Tensor | None = None,
         keep: torch.Tensor | None = None, keep_fraction: float | None = None,
         blocks: int = 16, cache: fft.SpectrumCache | None = None) -> torch.Tensor:
    """Frequency-sparse causal conv (arguments validated, Lk <= L): give `keep` (bool (blocks,),
    symmetric) or `keep_fraction`; see the module docstring."""
    if (keep is None) == (keep_fraction is None):
        raise ValueError("give exactly one of keep or keep_fraction for a sparse convolution")
    if not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"blocks must be a positive int, got {blocks!r}")
    keep = fraction_mask(keep_fraction, blocks) if keep is None else check_mask(keep, blocks)
    B, H, L = u.shape
    Lk = k.shape[-1]
    P = blocks
    n = transform_size(L, Lk, P)
    m = n // P
    acc_dtype = accumulation_dtype(u.dtype)
    bs = computed_blocks(keep)
    tr = _Pruned(bs, P, m, acc_dtype, u.device)

    def transform(rows: torch.Tensor, size: int) -> torch.Tensor:
        return tr.forward(torch.nn.functional.pad(rows, (0, size - rows.shape[-1])))

    def spectrum(kc: torch.Tensor, Dc: torch.Tensor | None, size: int) -> torch.Tensor:
        K = transform(kc, size)
        return K if Dc is None else K + Dc.to(acc_dtype)[:, None, None]

    if torch.is_grad_enabled() and (k.requires_grad or (D is not None and D.requires_grad)):
        check_finite(k, D)
        K = spectrum(k.to(acc_dtype), D, n)
    else:
        c = fft.SPECTRA if cache is None else cache
        K = c.get(k, D, n, acc_dtype, spectrum, tag=("sparse", P, tuple(bs)))
    x = u.to(acc_dtype) if pregate is None else u.to(acc_dtype) * pregate.to(acc_dtype)
    X = transform(x.reshape(B * H, L), n).reshape(B, H, len(bs), m)
    y = tr.inverse((X * K).reshape(B * H, len(bs), m))[:, :L].reshape(B, H, L)
    if postgate is not None:
        y = y * postgate.to(acc_dtype)
    return y.to(u.dtype)

