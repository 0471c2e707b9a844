"""CPU inference path on ducc0's FFTs, in one of two forms by transform size.

Transforms of up to REAL_POINTS real points (windows of up to 8,192 positions with a filter as
long, Evo 2's 8,192-bp windows included, and overlap-save segments) run ducc0's real
transforms: r2c of CHUNK_ROWS rows a call, the product with the filter's real FFT (+ D) in one
pass, c2r scaled by 1 / 2M (`_real_product`). The filter's real FFT is cached in a
`SpectrumCache` where it fits, else formed once per call for batches and per row block for
single rows (`_real_side`, `_real_filter`: the same transforms, so the same bits). Up to
2^14 points this beats the paired form below, 1.4-2.4x per row block up to 2^13 points
("real_transforms"): its paired step is four numpy passes, as long as both of its transforms
together, while ducc0's real transforms of a few rows a call cost about what its half-length
complex ones do. Larger transforms run the paired form (row by row from 2^15 points, four-step
from 2^17), as fast or faster there.

The paired form: the real-input trick with half-length complex FFTs and a paired pointwise
step (FlashFFTConv's real-to-half-complex trick).

A row x (length L) zero-padded to N = 2M >= L + Lk - 1 is read as z[n] = x[2n] + i x[2n+1]
(a free view), transformed by an M-point complex FFT, and the rfft unpack, the product with the
filter spectrum K = rfft(k, N) and the repack for the inverse collapse into one step per bin:
Z'[j] = alpha[j] Z[j] + beta[j] conj Z[(M - j) mod M], with a = (1 - i w)/2, b = (1 + i w)/2,
w = exp(-2 pi i j / N), Kc[j] = conj K[M - j]:
alpha = (|a|^2 K + |b|^2 Kc) / M, beta = (conj(a) b K + a conj(b) Kc) / M (1/M: inverse scale).
The inverse M-point FFT of Z' is y[2n] + i y[2n+1]. The D tap adds D / M to alpha (it is the
identity on z). alpha and beta (twice a spectrum's bytes, formed from the filter's transforms
Zk) are cached per (k, D) in a `SpectrumCache`; where they do not fit but half of that does, Zk
is cached and alpha, beta formed from it chunk by chunk inside the paired step (no transform);
uncached, Zk is computed per row block and used the same way. The paired step runs over a
chunk of bins and its partner chunk at a time (`_pair`), so its temporaries stay in cache.

Partial convolutions (filter much shorter than the input) run either form on overlap-save
segments of transforms of 2M >= `block` points (`Segments`), a few segments per transform call
so memory beyond input and output does not grow with L; the dense case is one segment.

Transforms of M >= FOUR_STEP_POINTS run four-step: M = M1 M2, column FFTs (length M1),
twiddles exp(-2 pi i k1 n2 / M), row FFTs (length M2), i.e. the Monarch decomposition with
p = 2, on ducc0's cache-friendly axis transforms. Bins stay in the four-step order (bin
k1 + M1 k2 at k1 M2 + k2: `to_layout`), so no transposition is ever copied: alpha, beta and the
partner index M - j are laid out to match, and the inverse runs the steps backwards into
natural time order. From FOUR_STEP_POINTS on this beats ducc0's 1-D transform, which falls out
of cache ("four_step_vs_1d").

Why the paired form at large sizes: an M-point complex FFT costs about half an N-point real one
in ducc0 there ("half_length_complex_fft"), ducc0 beats scipy's pocketfft at large N, and a row
block stays in cache through transform, pairing and inverse.
Rows are split across `torch.get_num_threads()` Python threads (ducc0 and numpy release the
GIL), each with its own buffers; blocks hold about `BLOCK_POINTS` complex points (channels, and
batch rows that share their filter), one row for long inputs. With several batch rows the filter
side is formed once per call even uncached, not once per row ("shared_filter_side").
monarch.py computes the same step in its digit-reversed order.

The figures behind the constants and choices here are in benchmarks/results/design_figures.json,
by the ids quoted.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .fft import SpectrumCache, rfft
from .validate import accumulation_dtype, check_finite

try:
    import ducc0
except ImportError:  # the path is then unavailable; fft.py's scipy/torch path runs instead
    ducc0 = None

BLOCK_POINTS = 1 << 17  # complex points per row block (1 MiB in complex64: "row_block_size")
GROUP_POINTS = 1 << 18  # complex points per group of overlap-save segments (2 MiB)
PAIR_POINTS = 1 << 16  # complex points per chunk of the paired step (and as many in its partner)
SHARED_SIDE_BYTES = 1 << 26  # filter sides formed once per call for batches up to this size
BIN_CHUNK = 1 << 16  # bins per chunk when per-bin weights are computed in float64
ONE_ROW_POINTS = 1 << 14  # 1-D transforms of rows this long run row by row (see `_c2c_1d`)
FOUR_STEP_POINTS = 1 << 16  # four-step transforms from this size ("four_step_vs_1d")
# 1-D transforms of CHUNK_POINTS[0] to CHUNK_POINTS[1] - 1 points run CHUNK_ROWS rows a call
CHUNK_POINTS, CHUNK_ROWS = (1 << 9, 1 << 12), 8
REAL_POINTS = 1 << 14  # transforms of up to this many real points run r2c/c2r ("real_transforms")
_local = threading.local()
_pool: ThreadPoolExecutor | None = None


def available(u: torch.Tensor) -> bool:
    """Whether this path can run u: a CPU tensor, with ducc0 installed."""
    return ducc0 is not None and u.device.type == "cpu"


def half_size(n: int) -> int:
    """M, a fast complex FFT size with 2M >= n."""
    return int(ducc0.fft.good_size(max(1, -(-n // 2)))) if ducc0 is not None else -(-n // 2)


def split(M: int) -> tuple[int, int] | None:
    """(M1, M2), M1 <= M2 the divisors of M closest to sqrt(M), when the M-point transform
    runs four-step; None for the plain 1-D transform (M < FOUR_STEP_POINTS)."""
    return None if M < FOUR_STEP_POINTS else _factor(M)


@lru_cache(maxsize=64)
def _factor(M: int) -> tuple[int, int] | None:
    """The divisors (M1, M2) of M closest to sqrt(M), None for a prime M (cached: called per
    row block)."""
    M1 = max(d for d in range(1, math.isqrt(M) + 1) if M % d == 0)
    return (M1, M // M1) if M1 > 1 else None


@lru_cache(maxsize=8)
def _twiddles(M1: int, M2: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """exp(-2 pi i k1 n2 / M) for the (M1, M2) four-step layout, and its conjugate (computed
    over row chunks: see `_bin_weights`)."""
    M = M1 * M2
    w = np.empty((M1, M2), np.complex128 if dtype == np.float64 else np.complex64)
    n2, step = np.arange(M2), max(1, BIN_CHUNK // M2)
    for k0 in range(0, M1, step):
        k1 = np.arange(k0, min(k0 + step, M1))[:, None]
        w[k0:k0 + step] = np.exp(-2j * np.pi * ((k1 * n2) % M) / M)
    return w, w.conj()


def to_layout(v: np.ndarray, M: int) -> np.ndarray:
    """Bins (..., M) in natural order -> the transform's output order (a copy when four-step):
    bin j = k1 + M1 k2 sits at k1 M2 + k2."""
    sp = split(M)
    if sp is None:
        return v
    M1, M2 = sp
    lead = v.shape[:-1]
    return np.ascontiguousarray(np.swapaxes(v.reshape(*lead, M2, M1), -1, -2)).reshape(*lead, M)


def _c2c_1d(z: np.ndarray, forward: bool) -> None:
    """In place over rows z (rows, M): unnormalised 1-D c2c on ducc0, rows of ONE_ROW_POINTS or
    more one at a time (ducc0's 1-D fast path; its several-rows-at-once SIMD path holds 8 rows,
    which spill the L2 from 2^14 points: "one_row_transforms"), rows in the CHUNK_POINTS range
    CHUNK_ROWS a call (more rows a call run ~1.6x slower there, not below or above:
    "eight_row_transforms"), other rows all in one call."""
    M = z.shape[-1]
    if len(z) == 1 or M >= ONE_ROW_POINTS:
        for row in z:
            ducc0.fft.c2c(row, forward=forward, out=row)
        return
    step = CHUNK_ROWS if CHUNK_POINTS[0] <= M < CHUNK_POINTS[1] else len(z)
    for r in range(0, len(z), step):
        ducc0.fft.c2c(z[r:r + step], axes=(-1,), forward=forward, out=z[r:r + step])


def _forward(z: np.ndarray) -> None:
    """In place over rows z (rows, M): the M-point FFT, four-step above FOUR_STEP_POINTS
    (columns, twiddles, rows: the Monarch decomposition with p = 2, output in `to_layout`
    order), else 1-D in natural order."""
    sp = split(z.shape[-1])
    if sp is None:
        return _c2c_1d(z, True)
    z3 = z.reshape(len(z), *sp)
    ducc0.fft.c2c(z3, axes=(1,), out=z3)
    z3 *= _twiddles(*sp, z.real.dtype)[0]
    ducc0.fft.c2c(z3, axes=(2,), out=z3)


def _inverse(z: np.ndarray) -> None:
    """In place, the unnormalised inverse of `_forward`: bins in its order, time in natural."""
    sp = split(z.shape[-1])
    if sp is None:
        return _c2c_1d(z, False)
    z3 = z.reshape(len(z), *sp)
    ducc0.fft.c2c(z3, axes=(2,), forward=False, out=z3)
    z3 *= _twiddles(*sp, z.real.dtype)[1]
    ducc0.fft.c2c(z3, axes=(1,), forward=False, out=z3)


def _row_step(rows: int, M: int) -> int:
    """Rows per ducc0 call of a real transform of 2M points: CHUNK_ROWS from M =
    CHUNK_POINTS[0] on ("real_transforms"), all rows below (where per-call costs dominate)."""
    return CHUNK_ROWS if M >= CHUNK_POINTS[0] else rows


def _r2c(frames: np.ndarray, spec: np.ndarray) -> None:
    """spec (rows, M + 1) = the real FFT of frames (rows, 2M), `_row_step` rows a call."""
    step = _row_step(len(frames), spec.shape[-1] - 1)
    for r in range(0, len(frames), step):
        ducc0.fft.r2c(frames[r:r + step], axes=(-1,), out=spec[r:r + step])


def _real_product(frames: np.ndarray, spec: np.ndarray, K: np.ndarray) -> None:
    """In place over real frames (..., 2M) (contiguous): their circular convolution with the
    filters whose real FFTs K (..., M + 1) broadcast against spec, the transforms' buffer
    (frames' shape with M + 1 bins): r2c, product, c2r scaled by 1 / 2M."""
    N = frames.shape[-1]
    rows, bins = frames.reshape(-1, N, copy=False), spec.reshape(-1, N // 2 + 1, copy=False)
    _r2c(rows, bins)
    spec *= K
    step = _row_step(len(rows), N // 2)
    for r in range(0, len(rows), step):
        ducc0.fft.c2r(bins[r:r + step], axes=(-1,), lastsize=N, forward=False, inorm=2,
                      out=rows[r:r + step])


def _paired_product(frames: np.ndarray, coef: tuple[np.ndarray, ...]) -> None:
    """In place over real frames (..., 2M) (contiguous): their circular convolution through
    the paired step with the filter side `coef` (see `_pair`), between an M-point forward
    transform of the frames read as complex and its unnormalised inverse."""
    z = frames.view(np.complex128 if frames.dtype == np.float64 else np.complex64)
    flat = z.reshape(-1, z.shape[-1], copy=False)
    _forward(flat)
    _pair(z, coef)
    _inverse(flat)


def _bin_weights(M: int, n: int, ctype: type, fn) -> np.ndarray:
    """(n, M) array of `ctype`: fn(a, b) gives the n weights of the bins j of one chunk (in
    float64) from a = (1 - i w)/2 and b = (1 + i w)/2, w = exp(-2 pi i j / 2M). Chunks of
    BIN_CHUNK bins keep the float64 temporaries small: whole-length ones stay behind as freed
    heap ("bin_weight_chunks")."""
    out = np.empty((n, M), ctype)
    for j0 in range(0, M, BIN_CHUNK):
        w = np.exp(-1j * np.pi * np.arange(j0, min(j0 + BIN_CHUNK, M)) / M)
        out[:, j0:j0 + len(w)] = fn((1 - 1j * w) / 2, (1 + 1j * w) / 2)
    return out


@lru_cache(maxsize=16)
def _pair_weights(M: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """|a|^2/M, |b|^2/M, conj(a) b/M, a conj(b)/M: alpha and beta from K and Kc."""
    ctype = np.complex128 if dtype == torch.float64 else np.complex64
    w = _bin_weights(M, 4, ctype, lambda a, b: (
        abs(a) ** 2 / M, abs(b) ** 2 / M, a.conj() * b / M, a * b.conj() / M))
    return tuple(torch.from_numpy(c) for c in w)


@lru_cache(maxsize=16)
def _z_weights(M: int, dtype: np.dtype, layout: tuple[int, int] | None) -> tuple[np.ndarray, ...]:
    """p, q, r with alpha = p Zk + q Zkc and beta = q Zk + r Zkc, where Zk is the M-point FFT
    of the filter read as complex pairs and Zkc[j] = conj Zk[(M - j) mod M] (K = a Zk + b Zkc
    and Kc = b Zk + a Zkc substituted into `_pair_weights`), in the order of `layout`
    (= split(M))."""
    def pqr(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
        A, B = abs(a) ** 2, abs(b) ** 2
        return (A * a + B * b) / M, (A * b + B * a) / M, (a.conj() * b * b + a * a * b.conj()) / M

    ctype = np.complex128 if dtype == np.float64 else np.complex64
    return tuple(to_layout(_bin_weights(M, 3, ctype, pqr), M))


def coefficients(k: torch.Tensor, D: torch.Tensor | None, M: int,
                 dtype: torch.dtype) -> torch.Tensor:
    """(2, H, M) complex: alpha and beta for filter k (H, Lk) and D (H,) or None, bins in
    natural order, computed in `dtype` (float32 or float64); differentiable in k when k
    requires a gradient."""
    kd = k.to(dtype)
    K = torch.fft.rfft(kd, n=2 * M) if torch.is_grad_enabled() and k.requires_grad else rfft(
        kd, 2 * M)
    Kc = K[:, 1:M + 1].flip(-1).conj()
    K = K[:, :M]
    ca = _pair_weights(M, dtype)
    alpha = ca[0] * K + ca[1] * Kc
    if D is not None:
        alpha += D.detach().to(dtype)[:, None] / M
    return torch.stack([alpha, ca[2] * K + ca[3] * Kc])


def _buffers(shapes: tuple[tuple[int, int], ...], dtype: np.dtype) -> list[np.ndarray]:
    """This thread's buffers of the given (rows, points) shapes, complex of the real `dtype`
    (each also read as (rows, 2 points) real)."""
    key = (shapes, dtype)
    if getattr(_local, "key", None) != key:
        _local.key = None
        _local.bufs = [np.empty(shape, np.complex128 if dtype == np.float64 else np.complex64)
                       for shape in shapes]
        _local.key = key
    return _local.bufs


@dataclass(frozen=True)
class Segments:
    """Overlap-save layout of a causal conv of length L with Lk taps on transforms of 2M real
    points, for the outputs at positions start .. L - 1 (the inputs before `start` are history
    that only feeds them): segments of S = 2M - (Lk - 1) outputs, each reading its S inputs
    and the Lk - 1 before them. One segment (S >= L - start) is the plain zero-padded full
    transform. Transforms run G segments (or R rows of one segment each) at a time."""

    L: int
    Lk: int
    M: int
    start: int = 0

    @property
    def S(self) -> int:
        return 2 * self.M - (self.Lk - 1)

    @property
    def nseg(self) -> int:
        return -(-(self.L - self.start) // self.S)

    @property
    def G(self) -> int:
        return 1 if self.nseg == 1 else max(1, min(self.nseg, GROUP_POINTS // self.M))

    def rows_per_block(self, H: int) -> int:
        return max(1, min(H, BLOCK_POINTS // self.M)) if self.nseg == 1 else 1

    def batch_per_block(self, B: int, R: int) -> int:
        """Batch rows per block of R filter rows: as many as fill BLOCK_POINTS (one segment)."""
        return max(1, min(B, BLOCK_POINTS // (self.M * R))) if self.nseg == 1 else 1


def _head(M: int) -> int:
    """Bins at the start of `_forward`'s order that pair among themselves: M2 (four-step), 1."""
    sp = split(M)
    return 1 if sp is None else sp[1]


def _spans(M: int, chunk: int) -> list[list[tuple[slice, slice | None]]]:
    """The bins of an M-point transform in `_forward`'s order as spans closed under the partner
    map j -> (M - j) mod M, each given as its (bins, partner bins) parts: [(c, None)] for a span
    paired with itself, [(c, c2), (c2, c)] for a chunk and its mirror. With head = M2
    (four-step) or 1 (1-D): bin P < head pairs with (head - P) mod head, bin P >= head with
    M + head - 1 - P (a reversal), and a middle bin of the reversal, if any, with itself."""
    head = _head(M)
    mid = (M + head) // 2
    spans: list[list[tuple[slice, slice | None]]] = [[(slice(0, head), None)]]
    if (M + head) % 2:
        spans.append([(slice(mid, mid + 1), None)])
    for s in range(head, mid, chunk):
        e = min(s + chunk, mid)
        c, mirror = slice(s, e), slice(M + head - e, M + head - s)
        spans.append([(c, mirror), (mirror, c)])
    return spans


def _conj_partner(src: np.ndarray, c: slice, mirror: slice | None, head: int,
                  out: np.ndarray) -> None:
    """out = conj src at the partners of the bins c (a part of a `_spans` span)."""
    if mirror is not None:
        np.conjugate(src[..., mirror][..., ::-1], out=out)
    elif c.start == 0:  # the head: P <-> (head - P) mod head
        np.conjugate(src[..., :1], out=out[..., :1])
        np.conjugate(src[..., head - 1:0:-1], out=out[..., 1:])
    else:  # the middle bin
        np.conjugate(src[..., c], out=out)


def _form(zk: np.ndarray, zkc: np.ndarray, p: np.ndarray, q: np.ndarray, r: np.ndarray,
          alpha: np.ndarray, beta: np.ndarray) -> None:
    """alpha = p Zk + q Zkc and beta = q Zk + r Zkc over a span of bins (zkc is overwritten)."""
    np.multiply(zk, p, out=alpha)
    np.multiply(zkc, q, out=beta)
    alpha += beta
    np.multiply(zk, q, out=beta)
    zkc *= r
    beta += zkc


def _pair(z: np.ndarray, coef: tuple[np.ndarray, ...]) -> None:
    """Z' = alpha Z + beta conj Z[(M - j) mod M] in place over the transformed rows z (..., R,
    G, M) (bins in `_forward`'s order; leading dims: batch rows sharing the filter rows), a
    chunk of bins and its partner chunk at a time, so that every temporary stays in cache
    ("paired_step_chunks": faster than whole-row passes).
    coef: (alpha, beta), each (R, 1, M); or (Zk, p, q, r): the filter's transforms (R, 1, M)
    and `_z_weights`, with alpha = p Zk + q Zkc and beta = q Zk + r Zkc formed per chunk
    (Zkc = conj Zk at the partner bins)."""
    M = z.shape[-1]
    head = _head(M)
    chunk = max(head, PAIR_POINTS // (z.size // M))
    zc = np.empty((2, *z.shape[:-1], chunk), z.dtype)
    if len(coef) == 4:
        Zk, p, q, r = coef
        kc, ab = (np.empty((2, *Zk.shape[:-1], chunk), z.dtype) for _ in range(2))
    for parts in _spans(M, chunk):
        n = parts[0][0].stop - parts[0][0].start
        for i, (a, b) in enumerate(parts):  # every partner before any bin changes
            _conj_partner(z, a, b, head, zc[i, ..., :n])
            if len(coef) == 4:
                _conj_partner(Zk, a, b, head, kc[i, ..., :n])
        for i, (a, _) in enumerate(parts):
            zci, zr = zc[i, ..., :n], z[..., a]
            if len(coef) == 2:
                alpha, beta = coef[0][..., a], coef[1][..., a]
            else:
                alpha, beta = ab[0, ..., :n], ab[1, ..., :n]
                _form(Zk[..., a], kc[i, ..., :n], p[a], q[a], r[a], alpha, beta)
            zci *= beta
            zr *= alpha
            zr += zci


def _filter_transform(k: np.ndarray, D: np.ndarray | None, out: np.ndarray) -> np.ndarray:
    """out (R, M) = Zk, the M-point FFT (`_forward`) of the filter rows k (R, Lk) read as
    complex pairs, D (R,) added to the first tap (the identity is a one-tap filter)."""
    real = out.view(k.dtype)
    real[:, :k.shape[1]] = k
    real[:, k.shape[1]:] = 0
    if D is not None:
        real[:, 0] += D
    _forward(out)
    return out


def _real_filter(k: np.ndarray, D: np.ndarray | None, frames: np.ndarray,
                 out: np.ndarray) -> np.ndarray:
    """out (R, M + 1) = the real FFT of the filter rows k (R, Lk) zero-padded to 2M, D (R,)
    added to the first tap, through the real frames (R, 2M) (overwritten)."""
    frames[:, :k.shape[1]] = k
    frames[:, k.shape[1]:] = 0
    if D is not None:
        frames[:, 0] += D
    _r2c(frames, out)
    return out


def _real_side(k: torch.Tensor, D: torch.Tensor | None, M: int) -> torch.Tensor:
    """(H, M + 1) complex: `_real_filter` of the filter k (H, Lk) and D in k's dtype, by row
    blocks of BLOCK_POINTS, as the uncached path forms it per row block (the same bits)."""
    H, step = k.shape[0], max(1, BLOCK_POINTS // M)
    out = torch.empty(H, M + 1, dtype=torch.complex128 if k.dtype == torch.float64
                      else torch.complex64)
    kn, Dn, on = k.numpy(), None if D is None else D.detach().to(k.dtype).numpy(), out.numpy()
    frames = np.empty((min(step, H), 2 * M), kn.dtype)
    for h0 in range(0, H, step):
        hs = slice(h0, min(H, h0 + step))
        _real_filter(kn[hs], None if Dn is None else Dn[hs], frames[:hs.stop - h0], on[hs])
    return out


def _filter_side(k: torch.Tensor, D: torch.Tensor | None, M: int, *,
                 coefficients: bool) -> torch.Tensor:
    """The filter side of the paired step for k (H, Lk) and D in k's dtype, computed per row
    block from the filter's transforms Zk (`_filter_transform`): alpha and beta (2, H, M) with
    `coefficients`, else Zk (H, M) itself (the cached form where alpha and beta would not fit:
    half their bytes). Both cost about one transform per channel plus the new entry's page
    faults, a fraction of the former float64 rfft per channel ("filter_side_cost")."""
    ctype = torch.complex128 if k.dtype == torch.float64 else torch.complex64
    H, step = k.shape[0], max(1, BLOCK_POINTS // M)
    out = torch.empty(*((2,) if coefficients else ()), H, M, dtype=ctype)
    kn, Dn, on = k.numpy(), None if D is None else D.detach().to(k.dtype).numpy(), out.numpy()
    if coefficients:
        p, q, r = _z_weights(M, kn.dtype, split(M))
        Zk, head = np.empty((min(step, H), M), on.dtype), _head(M)
        chunk = max(head, PAIR_POINTS // len(Zk))
        kc = np.empty((len(Zk), chunk), on.dtype)
    for h0 in range(0, H, step):
        hs = slice(h0, min(H, h0 + step))
        Dh = None if Dn is None else Dn[hs]
        if not coefficients:
            _filter_transform(kn[hs], Dh, on[hs])
            continue
        zk = _filter_transform(kn[hs], Dh, Zk[:hs.stop - h0])
        for parts in _spans(M, chunk):
            for a, b in parts:
                zkc = kc[:len(zk), :a.stop - a.start]
                _conj_partner(zk, a, b, head, zkc)
                _form(zk[:, a], zkc, p[a], q[a], r[a], on[0, hs, a], on[1, hs, a])
    return out


def _rows(x: np.ndarray, pre: np.ndarray | None, post: np.ndarray | None,
          product: Callable[[np.ndarray], None], plan: Segments, frames: np.ndarray,
          out: np.ndarray) -> None:
    """out = post * (conv(pre * x) + D * pre * x) at positions plan.start .. L - 1 for the rows
    x (nb, R, L) (nb batch rows of R filter rows; out (nb, R, L - plan.start); gates aligned
    with x), segment group by segment group in the real frames (nb, R, G, 2M), each group's
    circular convolution with the filter (D folded in) made by product(frames of the group)
    (`_real_product` or `_paired_product`; numpy and ducc0 only: no torch intra-op threads)."""
    L = x.shape[-1]
    M, S, G, off, t_first = plan.M, plan.S, plan.G, plan.Lk - 1, plan.start
    for g0 in range(0, plan.nseg, G):
        ng = min(G, plan.nseg - g0)
        real = frames[..., :ng, :]
        for j in range(ng):  # frame j reads inputs s .. s + 2M (zeros outside 0 .. L)
            s = t_first + (g0 + j) * S - off
            lo, hi = max(s, 0), min(s + 2 * M, L)
            frame = real[..., j, :]
            frame[..., :lo - s] = 0
            if pre is None:
                frame[..., lo - s:hi - s] = x[..., lo:hi]
            else:
                np.multiply(x[..., lo:hi], pre[..., lo:hi], out=frame[..., lo - s:hi - s])
            frame[..., hi - s:] = 0
        product(real)
        for j in range(ng):  # segment j's outputs: the S that did not wrap
            t0 = t_first + (g0 + j) * S
            t1 = min(t0 + S, L)
            seg = real[..., j, off:off + t1 - t0]
            dest = out[..., t0 - t_first:t1 - t_first]
            if post is None:
                dest[:] = seg
            else:
                np.multiply(seg, post[..., t0:t1], out=dest)


def _shared_filter_side(k: torch.Tensor, D: torch.Tensor | None, M: int, B: int, real: bool,
                      cache: SpectrumCache, dtype: torch.dtype
                      ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(cached, transforms): the filter side a `conv` call uses for all its row blocks, or
    None where each row block forms its own. cached: the real FFT (real form) or alpha and
    beta (paired form); transforms: the paired form's Zk (half alpha and beta's bytes) where
    only that fits the cache's budget. Each is cached only beside the live entries (building one
    costs more than the uncached path, so filters used in turn must not evict each other on
    every call); uncached, a batch's rows share a side formed once per call."""
    cached = transforms = None
    entry = k.shape[0] * M * (16 if dtype == torch.float64 else 8)
    if real:  # the filter's real FFT (+ D), by the row blocks' own transforms (same bits)
        side = lambda kd, Dd, n: _real_side(kd, Dd, M)  # noqa: E731
        if cache.fits(k, 2 * M, dtype):
            cached = cache.get(k, D, 2 * M, dtype, tag="real", reserve=entry * (M + 1) // M,
                               transform=side)
        if cached is None and B > 1 and entry <= SHARED_SIDE_BYTES:
            cached = cache.compute(k, D, 2 * M, dtype, transform=side)
    else:
        pairs = lambda kd, Dd, n: _filter_side(kd, Dd, M, coefficients=True)  # noqa: E731
        if cache.fits(k, 4 * M, dtype):
            cached = cache.get(k, D, 2 * M, dtype, tag=f"paired{split(M)}", reserve=2 * entry,
                               transform=pairs)
        elif cache.fits(k, 2 * M, dtype):
            transforms = cache.get(k, D, 2 * M, dtype, tag=f"pairedZk{split(M)}", reserve=entry,
                                   transform=lambda kd, Dd, n: _filter_side(
                                       kd, Dd, M, coefficients=False))
        if cached is None and transforms is None and B > 1 and 2 * entry <= SHARED_SIDE_BYTES:
            cached = cache.compute(k, D, 2 * M, dtype, transform=pairs)
    return (None if cached is None else cached.numpy(),
            None if transforms is None else transforms.numpy())


def _run_blocks(block, blocks: list[tuple[int, int]]) -> None:
    """block(*b) for every b of `blocks`, over `torch.get_num_threads()` Python threads
    (ducc0 and numpy release the GIL) when there are several of each."""
    global _pool
    threads = max(1, torch.get_num_threads())
    if threads == 1 or len(blocks) == 1:
        for b in blocks:
            block(*b)
        return
    if _pool is None or _pool._max_workers != threads:
        _pool = ThreadPoolExecutor(threads, thread_name_prefix="genomeconv-fft")
    for f in [_pool.submit(block, *b) for b in blocks]:
        f.result()


def conv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None, *,
         pregate: torch.Tensor | None = None, postgate: torch.Tensor | None = None,
         block: int | None = None, cache: SpectrumCache, history: int = 0,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """Gated causal conv of CPU tensors u (B, H, L), k (H, Lk <= L) without autograd (the
    caller routes anything needing gradients to fft.BlockConv): one zero-padded transform
    (block None) or overlap-save segments on transforms of at least `block` points (a partial
    convolution), for the outputs at positions history .. L - 1 (B, H, L - history).
    Accumulates in float32 (float64 for float64 inputs), returns u's dtype, in `out` when
    given (the output's shape, u's dtype; u itself for an in-place convolution)."""
    B, H, L = u.shape
    Lk = k.shape[-1]
    M = half_size(L - history + Lk - 1 if block is None else max(block, Lk + 1))
    plan = Segments(L, Lk, M, history)
    acc_dtype = accumulation_dtype(u.dtype)
    R = plan.rows_per_block(H)

    def host(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.detach().to(acc_dtype).expand(u.shape).numpy()

    x, pre, post = host(u), host(pregate), host(postgate)
    direct = out is not None and out.dtype == acc_dtype
    y = out if direct else torch.empty(B, H, L - history, dtype=acc_dtype)
    yn = y.numpy()
    # in place: a row block reads all its inputs before writing, except across overlap-save
    # segment groups, which read the Lk - 1 inputs before them: those rows are copied first
    copy_rows = direct and plan.nseg > plan.G and np.may_share_memory(x, yn)
    real = 2 * M <= REAL_POINTS
    cached, transforms = _shared_filter_side(k, D, M, B, real, cache, acc_dtype)
    kn = Dn = None  # the filter on the host where row blocks form its side themselves
    if cached is None and transforms is None:
        check_finite(k, D)
        kn = k.detach().to(acc_dtype).numpy()
        Dn = None if D is None else D.detach().to(acc_dtype).numpy()
    nb = plan.batch_per_block(B, R)

    def block(b0: int, h0: int) -> None:
        hs, bs = slice(h0, min(H, h0 + R)), slice(b0, min(B, b0 + nb))
        n, rows = hs.stop - h0, (bs.stop - b0) * (hs.stop - h0) * plan.G
        Dh = None if Dn is None else Dn[hs]
        if real:
            bufs = _buffers(((nb * R * plan.G, M), (nb * R * plan.G, M + 1))
                            + (((R, M + 1),) if cached is None else ()), x.dtype)
            K = cached[hs] if cached is not None else _real_filter(
                kn[hs], Dh, bufs[0][:n].view(x.dtype), bufs[2][:n])
            spec = bufs[1][:rows].reshape(bs.stop - b0, n, plan.G, M + 1)
            product = lambda f: _real_product(f, spec[..., :f.shape[-2], :], K[:, None])  # noqa: E731
        else:
            bufs = _buffers(((nb * R * plan.G, M),) * (1 if cached is not None else 2), x.dtype)
            if cached is not None:
                coef = (cached[0, hs, None], cached[1, hs, None])
            else:
                Zk = transforms[hs] if transforms is not None else _filter_transform(
                    kn[hs], Dh, bufs[1][:n])
                coef = (Zk[:, None], *_z_weights(M, x.dtype, split(M)))
            product = lambda f: _paired_product(f, coef)  # noqa: E731
        frames = bufs[0][:rows].view(x.dtype).reshape(bs.stop - b0, n, plan.G, 2 * M)
        _rows(x[bs, hs].copy() if copy_rows else x[bs, hs], None if pre is None else pre[bs, hs],
              None if post is None else post[bs, hs], product, plan, frames, yn[bs, hs])

    _run_blocks(block, [(b0, h0) for h0 in range(0, H, R) for b0 in range(0, B, nb)])
    if out is not None:
        return out if direct else out.copy_(y)
    return y if u.dtype == acc_dtype else y.to(u.dtype)
