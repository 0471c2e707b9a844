"""CPU inference path: the real-input trick with half-length complex FFTs and a paired pointwise
step (FlashFFTConv's real-to-half-complex trick, on ducc0's FFTs).

A row x (length L) zero-padded to N = 2M >= L + Lk - 1 is read as z[n] = x[2n] + i x[2n+1]
(a free view), transformed by an M-point complex FFT, and the rfft unpack, the product with the
filter spectrum K = rfft(k, N) and the repack for the inverse collapse into one step per bin:
Z'[j] = alpha[j] Z[j] + beta[j] conj Z[(M - j) mod M], with a = (1 - i w)/2, b = (1 + i w)/2,
w = exp(-2 pi i j / N), Kc[j] = conj K[M - j]:
alpha = (|a|^2 K + |b|^2 Kc) / M, beta = (conj(a) b K + a conj(b) Kc) / M (1/M: inverse scale).
The inverse M-point FFT of Z' is y[2n] + i y[2n+1]. The D tap adds D / M to alpha (it is the
identity on z). alpha and beta (twice a spectrum's bytes) are cached per (k, D) in a
`SpectrumCache`.

Why: an M-point complex FFT costs about half an N-point real one in ducc0 at the sizes HyenaDNA
uses (measured here: 0.49 vs 1.06 ms at N = 2^17), ducc0 is about 2x scipy's pocketfft at
N >= 2^18, and a row block stays in cache through transform, pairing and inverse.
Rows are split across `torch.get_num_threads()` Python threads (ducc0 and numpy release the
GIL), each with its own buffers; blocks hold about `BLOCK_POINTS` complex points, one row for
long inputs. monarch.py computes the same step in its digit-reversed order.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch

from .fft import SpectrumCache, rfft
from .validate import check_finite, compute_dtype

try:
    import ducc0
except ImportError:  # the path is then unavailable; fft.py's scipy/torch path runs instead
    ducc0 = None

BLOCK_POINTS = 1 << 15  # complex points per row block (256 KiB in complex64: L2-resident)
COEFF_BYTES = 64 << 20  # uncached filter coefficients are computed in chunks of this size
_local = threading.local()
_pool: ThreadPoolExecutor | None = None


def available(u: torch.Tensor) -> bool:
    """Whether this path can run u: a CPU tensor, with ducc0 installed."""
    return ducc0 is not None and u.device.type == "cpu"


def half_size(n: int) -> int:
    """M, a fast complex FFT size with 2M >= n."""
    return int(ducc0.fft.good_size(max(1, -(-n // 2)))) if ducc0 is not None else -(-n // 2)


@lru_cache(maxsize=16)
def _pair_weights(M: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """|a|^2/M, |b|^2/M, conj(a) b/M, a conj(b)/M for bins j < M, computed in float64."""
    j = torch.arange(M, dtype=torch.float64)
    w = torch.polar(torch.ones_like(j), -2 * math.pi * j / (2 * M))
    a, b = (1 - 1j * w) / 2, (1 + 1j * w) / 2
    cdt = torch.complex128 if dtype == torch.float64 else torch.complex64
    return tuple(c.to(cdt) for c in (a.abs() ** 2 / M, b.abs() ** 2 / M,
                                      a.conj() * b / M, a * b.conj() / M))


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


def _buffers(R: int, M: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """This thread's padded-row buffer (R, 2M) real and pairing buffer (R, M) complex."""
    key = (R, M, dtype)
    if getattr(_local, "key", None) != key:
        _local.key = key
        _local.bufs = (np.empty((R, 2 * M), dtype),
                       np.empty((R, M), np.complex128 if dtype == np.float64 else np.complex64))
    return _local.bufs


def _rows(x: np.ndarray, pre: np.ndarray | None, post: np.ndarray | None, alpha: np.ndarray,
          beta: np.ndarray, M: int, out: np.ndarray) -> None:
    """out = post * (conv(pre * x) + D * pre * x) for the rows x (R, L), D folded into alpha,
    through the paired step in this thread's buffers (numpy and ducc0 only: no torch intra-op
    threads here). A single row runs as 1-D transforms (ducc0's faster path)."""
    R, L = x.shape
    buf, T = _buffers(R, M, x.dtype)
    if pre is None:
        buf[:, :L] = x
    else:
        np.multiply(x, pre, out=buf[:, :L])
    buf[:, L:] = 0
    z = buf.view(T.dtype)
    if R == 1:
        z, T, alpha, beta = z[0], T[0], alpha[0], beta[0]
    ducc0.fft.c2c(z, axes=(-1,), out=z)
    np.conjugate(z[..., :1], out=T[..., :1])
    np.conjugate(z[..., :0:-1], out=T[..., 1:])
    T *= beta
    z *= alpha
    z += T
    ducc0.fft.c2c(z, axes=(-1,), forward=False, out=z)
    y = buf[:, :L]
    if post is None:
        out[...] = y
    else:
        np.multiply(y, post, out=out)


def _coefficient_chunks(k: torch.Tensor, D: torch.Tensor | None, M: int, cdt: torch.dtype,
                        cache: SpectrumCache):
    """Yields (first channel, (2, h, M) coefficients) over channel chunks: from the cache when
    they fit its budget (computed once per filter, in float64), else computed per chunk of
    about COEFF_BYTES in the compute dtype."""
    H = k.shape[0]
    if cache.fits(k, 4 * M, cdt):
        ctype = torch.complex128 if cdt == torch.float64 else torch.complex64
        yield 0, cache.get(k, D, 2 * M, cdt, tag="paired", transform=lambda kd, Dd, n: (
            coefficients(kd, Dd, M, torch.float64).to(ctype)))
        return
    check_finite(k, D)
    step = max(1, COEFF_BYTES // (4 * M * torch.finfo(cdt).bits // 8))
    for h0 in range(0, H, step):
        yield h0, coefficients(k[h0:h0 + step], None if D is None else D[h0:h0 + step], M, cdt)


def conv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None, *,
         pregate: torch.Tensor | None = None, postgate: torch.Tensor | None = None,
         cache: SpectrumCache) -> torch.Tensor:
    """Gated causal conv of CPU tensors u (B, H, L), k (H, Lk <= L) without autograd (the
    caller routes anything needing gradients to fft.BlockConv). Accumulates in float32
    (float64 for float64 inputs) and returns u's dtype."""
    global _pool
    B, H, L = u.shape
    M = half_size(L + k.shape[-1] - 1)
    cdt = compute_dtype(u.dtype)
    R = max(1, min(H, BLOCK_POINTS // M))

    def host(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.detach().to(cdt).expand(u.shape).numpy()

    x, pre, post = host(u), host(pregate), host(postgate)
    y = torch.empty(u.shape, dtype=cdt)
    yn = y.numpy()

    def block(coeffs: torch.Tensor, c0: int, h0: int) -> None:
        hs = slice(h0, min(H, h0 + R))
        alpha = coeffs[0, h0 - c0:hs.stop - c0].numpy()
        beta = coeffs[1, h0 - c0:hs.stop - c0].numpy()
        for b in range(B):
            _rows(x[b, hs], None if pre is None else pre[b, hs],
                  None if post is None else post[b, hs], alpha, beta, M, yn[b, hs])

    threads = max(1, torch.get_num_threads())
    if threads > 1 and (_pool is None or _pool._max_workers != threads):
        _pool = ThreadPoolExecutor(threads, thread_name_prefix="genomeconv-fft")
    for c0, coeffs in _coefficient_chunks(k, D, M, cdt, cache):
        starts = range(c0, c0 + coeffs.shape[1], R)
        if threads == 1 or len(starts) == 1:
            for h0 in starts:
                block(coeffs, c0, h0)
        else:
            for f in [_pool.submit(block, coeffs, c0, h0) for h0 in starts]:
                f.result()
    return y if u.dtype == cdt else y.to(u.dtype)
