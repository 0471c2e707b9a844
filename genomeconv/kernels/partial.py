"""Partial convolutions (filter much shorter than the input): overlap-save and streaming.

Overlap-save: the input is cut into segments of S = nb - (Lk - 1) outputs; each segment's
transform of nb points reads its S inputs plus the Lk - 1 before it, is multiplied by the cached
nb-point filter spectrum, and keeps the S outputs that did not wrap. Work is
O(L/S * nb log nb) = O(L log Lk) for nb a small multiple of Lk, and the transforms stay small
enough for the CPU caches. Segments are processed a few at a time, so the extra memory is
bounded by fft.BLOCK_BYTES, not by L.

This module's OverlapSavePlan serves autograd (fft.BlockConv); CPU inference with ducc0
installed runs the same segments through paired.py (`paired.Segments`).

`StreamingConv` feeds chunks in order and carries the last Lk - 1 (gated) inputs, so inputs of
any length run in memory bounded by the chunk; its output equals the one-shot output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import genomeconv.kernels.fft as fft


SEGMENT_COST = 60_000  # per transform pair (Python, copies), in n log n units


def transform_cost(n: int) -> float:
    """Relative time of one transform pair of n real points in paired.py per overlap-save
    segment: n log n, times 1.3 at 2^18 points and 1.5 past it (rows outgrow the L2), plus
    SEGMENT_COST (which dominates below 2^12 points); fitted to "overlap_save_segment_cost" in
    benchmarks/results/design_figures.json."""
    factor = 1.0 if n <= 1 << 17 else 1.3 if n <= 1 << 18 else 1.5
    return n * math.log2(max(n, 2)) * factor + SEGMENT_COST


def choose_block(L: int, Lk: int) -> int | None:
    """Overlap-save transform size nb minimising the total cost (fast_len(2 Lk) or a power of
    two up to 2^21), or None when one full transform (size fast_len(L + Lk - 1)) is at least
    as cheap."""
    full = transform_cost(fft.fast_len(L + Lk - 1))
    best, best_cost = None, full
    sizes = {fft.fast_len(max(2 * Lk, 64))} | {1 << e for e in range(6, 22) if 1 << e > 2 * Lk}
    for nb in sorted(sizes):
        S = nb - (Lk - 1)
        nseg = -(-L // S)
        if nseg < 2:
            break
        cost = transform_cost(nb) * nseg
        if cost < best_cost:
            best, best_cost = nb, cost
    return best


def resolve_block(L: int, Lk: int, block: int | None) -> int:
    """The overlap-save transform size: `block` if given (at least Lk), else `choose_block`,
    or the smallest fast size >= 4 Lk when a full transform would be cheaper."""
    if block is None:
        block = choose_block(L, Lk) or fft.fast_len(max(4 * Lk, 64))
    if block < Lk:
        raise ValueError(f"block must be >= the filter length {Lk}, got {block}")
    return block


@dataclass(frozen=True)
class OverlapSavePlan:
    """Segments of S = n - (Lk - 1) outputs, transform size n (same interface as FullPlan)."""

    L: int
    Lk: int
    n: int

    @property
    def S(self) -> int:
        return self.n - (self.Lk - 1)

    @property
    def nseg(self) -> int:
        return -(-self.L // self.S)

    def rows_per_block(self) -> int:
        return max(2, fft.BLOCK_BYTES // (8 * (self.n // 2 + 1)))

    def _groups(self, rows: int):
        per = max(1, fft.BLOCK_BYTES // (8 * (self.n // 2 + 1) * rows))
        for g0 in range(0, self.nseg, per):
            yield g0, min(self.nseg, g0 + per)

    def _frames(self, x: torch.Tensor, g0: int, g1: int) -> torch.Tensor:
        """(R, g1-g0, n) input frames of segments g0..g1 (zeros before 0 and past L): a view
        of x for interior segments, a zero-padded copy at the ends."""
        start = g0 * self.S - (self.Lk - 1)
        length = (g1 - g0) * self.S + self.Lk - 1
        if start >= 0 and start + length <= self.L:
            return x[:, start:start + length].unfold(1, self.n, self.S)
        buf = torch.zeros(x.shape[0], length, dtype=x.dtype, device=x.device)
        lo, hi = max(start, 0), min(start + length, self.L)
        if hi > lo:
            buf[:, lo - start:hi - start] = x[:, lo:hi]
        return buf.unfold(1, self.n, self.S)

    def conv(self, x: torch.Tensor, K: torch.Tensor, correlate: bool = False,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """Causal conv of rows x (R, L) with the n-point spectrum K, into `out` (R, L) when
        given; correlate: the time-reversed conv (the adjoint, used by the backward)."""
        if correlate:
            y = self.conv(x.flip(-1), K).flip(-1)
            return y if out is None else out.copy_(y)
        R = x.shape[0]
        y = torch.empty(R, self.L, dtype=x.dtype, device=x.device) if out is None else out
        for g0, g1 in self._groups(R):
            F = fft.rfft(self._frames(x, g0, g1), self.n)
            F *= K[:, None]
            seg = fft.irfft(F, self.n)[..., self.Lk - 1:]  # (R, g1 - g0, S)
            t0, t1 = g0 * self.S, min(g1 * self.S, self.L)
            full = (t1 - t0) // self.S
            y[:, t0:t0 + full * self.S].view(R, full, self.S).copy_(seg[:, :full])
            if t0 + full * self.S < t1:
                y[:, t0 + full * self.S:t1] = seg[:, full, :t1 - t0 - full * self.S]
        return y

    def xcorr(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Spectrum of c[s] = sum_t g[t] x[t-s] for s < Lk, summed over segments."""
        R = x.shape[0]
        acc = None
        for g0, g1 in self._groups(R):
            X = fft.rfft(self._frames(x, g0, g1), self.n)
            gbuf = torch.zeros(R, g1 - g0, self.n, dtype=g.dtype, device=g.device)
            t0 = g0 * self.S
            seg = g[:, t0:g1 * self.S]
            padded = torch.zeros(R, (g1 - g0) * self.S, dtype=g.dtype, device=g.device)
            padded[:, :seg.shape[1]] = seg
            gbuf[..., self.Lk - 1:] = padded.reshape(R, g1 - g0, self.S)
            X.conj_physical_()
            X *= fft.rfft(gbuf, self.n)
            part = X.sum(1)
            acc = part if acc is None else acc.add_(part)
        return acc

    def lags(self, S: torch.Tensor) -> torch.Tensor:
        return fft.irfft(S, self.n)[:, :self.Lk]


def conv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None, *,
         pregate: torch.Tensor | None = None, postgate: torch.Tensor | None = None,
         block: int | None = None, cache: fft.SpectrumCache | None = None) -> torch.Tensor:
    """Overlap-save causal conv (arguments validated, Lk <= L). block: transform size (default
    `choose_block`, or the smallest fast size >= 4 Lk when a full transform would be cheaper)."""
    L, Lk = u.shape[-1], k.shape[-1]
    plan = OverlapSavePlan(L, Lk, resolve_block(L, Lk, block))
    return fft.BlockConv.apply(u, k, D, pregate, postgate, plan, fft.select_cache(k, D, cache))
