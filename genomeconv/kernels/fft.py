"""FFT path: causal convolution as one zero-padded real FFT product per channel; with autograd
on any device, and for every call on CUDA or without ducc0 (CPU inference with ducc0 installed
runs the same product in paired.py, on ducc0's transforms). Home of the filter-spectrum cache.

y = irfft(rfft(x, n) * (rfft(k, n) + D), n)[:L] with x = u * pregate, n = next_fast_len(L + Lk - 1)
(5-smooth, often well below 2L), D folded into the spectrum, then y *= postgate.

- Transforms: scipy.fft (pocketfft, `workers` threads; faster than torch's MKL rfft on the
  CPUs measured, see "scipy_rfft_vs_torch" in benchmarks/results/design_figures.json) for CPU
  tensors, torch.fft for CUDA tensors and as a fallback. Accumulation in float32 (float64 for
  float64 inputs); the output has u's dtype.
- Filter spectra are cached (`SpectrumCache`) keyed on the filter's address, version counter,
  shape, strides, dtype, transform size and D; an entry lives as long as the filter tensor (a
  weak-reference finalizer drops it), and an in-place change bumps `_version` and misses.
  Spectra larger than the cache's byte budget are computed per channel block.
- Memory: channels are processed in blocks of about `BLOCK_BYTES` of spectrum, so the extra memory
  is the output plus one block's transforms (the reference formula holds four full-size arrays).
- Autograd (`BlockConv`): forward and backward both run blockwise through a `Plan`; du is the
  correlation with the filter (the conjugate spectrum), dk and dD are one correlation of x and
  the output gradient accumulated in the frequency domain over the batch.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .validate import accumulation_dtype, check_finite

try:
    import scipy.fft as _sfft
except ImportError:  # torch.fft fallback
    _sfft = None

BLOCK_BYTES = 8 << 20  # spectrum bytes per channel block (few calls, cache-sized rows)


def _default_cache_bytes() -> int:
    """GENOMECONV_SPECTRUM_CACHE_BYTES, else a quarter of physical memory, at most 8 GiB (the
    paired path's coefficients for H = 256 at L = 2^20 take 4 GiB)."""
    if "GENOMECONV_SPECTRUM_CACHE_BYTES" in os.environ:
        return int(os.environ["GENOMECONV_SPECTRUM_CACHE_BYTES"])
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        ram = 16 << 30
    return min(8 << 30, ram // 4)


DEFAULT_CACHE_BYTES = _default_cache_bytes()
# Above this size scipy's pocketfft is memory-bound and slower than torch.fft; below it scipy
# is faster ("scipy_memory_bound" in benchmarks/results/design_figures.json).
SCIPY_MAX_N = 1 << 20


def workers(size: int) -> int:
    """Threads for a scipy.fft call on `size` points: torch's intra-op thread count, or 1 for
    small transforms (thread start-up costs more than it saves there)."""
    return max(1, torch.get_num_threads()) if size >= 1 << 16 else 1


def fast_len(n: int, real: bool = True) -> int:
    """Smallest fast transform size >= n (5-smooth; real or complex transform)."""
    if _sfft is not None:
        return int(_sfft.next_fast_len(n, real=real))
    m = 1
    while m < n:
        m *= 2
    return m


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def rfft(x: torch.Tensor, n: int) -> torch.Tensor:
    """Real FFT of the last axis zero-padded to n (scipy on CPU up to SCIPY_MAX_N, else torch)."""
    if _sfft is not None and x.device.type == "cpu" and n <= SCIPY_MAX_N:
        a = x.detach().numpy()
        return torch.from_numpy(_sfft.rfft(a, n=n, workers=workers(a.size // a.shape[-1] * n)))
    return torch.fft.rfft(x, n=n)


def irfft(X: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse real FFT of the last axis to n points (X may be overwritten)."""
    if _sfft is not None and X.device.type == "cpu" and n <= SCIPY_MAX_N:
        a = X.detach().numpy()
        return torch.from_numpy(_sfft.irfft(a, n=n, workers=workers(a.size // a.shape[-1] * n),
                                            overwrite_x=True))
    return torch.fft.irfft(X, n=n)


def _tensor_key(t: torch.Tensor | None) -> tuple | None:
    if t is None:
        return None
    return (t.data_ptr(), t._version, tuple(t.shape), t.stride(), t.dtype, str(t.device))


def _older(old: tuple | None, new: tuple | None) -> bool:
    """Whether tensor key `old` is `new` or an earlier version of the same tensor."""
    if old is None or new is None:
        return old is new
    return old[0] == new[0] and old[2:] == new[2:] and old[1] <= new[1]


Transform = Callable[[torch.Tensor, "torch.Tensor | None", int], torch.Tensor]  # (k, D, n)


class SpectrumCache:
    """LRU cache of filter spectra rfft(k, n) + D, bounded by `max_bytes` (None: unbounded)
    and `max_entries`.

    Entries are keyed on the filter tensors' address, version counter, shape, strides, dtype
    and device, and live only as long as those tensor objects: when k or D is garbage
    collected its entries are dropped (so a filter recomputed every forward does not pile up
    spectra, and a new tensor at a freed address never meets a stale entry). A fresh view such
    as `k[:, :L]` made on every call therefore misses; pass the same tensor to reuse the
    spectrum. Changes made through `.data` bypass the version counter: call `clear()`.
    `computed` counts spectrum computations (cached or not), so callers and tests see reuse.
    """

    def __init__(self, max_bytes: int | None = DEFAULT_CACHE_BYTES, max_entries: int = 64):
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.computed = 0
        self._entries: OrderedDict[tuple, tuple] = OrderedDict()
        self._dead: set[tuple] = set()
        self._bytes = 0

    def clear(self) -> None:
        """Drop every cached spectrum."""
        for key in list(self._entries):
            self._drop(key)

    def __del__(self) -> None:  # unregister from filters that outlive this cache
        for _, finalizers in self._entries.values():
            for f in finalizers:
                f.detach()

    def fits(self, k: torch.Tensor, n: int, dtype: torch.dtype) -> bool:
        """Whether a spectrum of k at size n fits in the budget at all."""
        size = k.shape[0] * (n // 2 + 1) * (16 if dtype == torch.float64 else 8)
        return self.max_bytes is None or size <= self.max_bytes

    def compute(self, k: torch.Tensor, D: torch.Tensor | None, n: int, dtype: torch.dtype,
                transform: Transform | None = None) -> torch.Tensor:
        """transform(k, D, n) (default: rfft(k, n) + D) in `dtype`, without caching."""
        check_finite(k, D)
        self.computed += 1
        if transform is not None:
            return transform(k.detach().to(dtype), D, n)
        K = rfft(k.detach().to(dtype), n)
        if D is not None:
            K += D.detach().to(dtype)[:, None]
        return K

    def _drop(self, key: tuple) -> None:
        K, finalizers = self._entries.pop(key)
        for f in finalizers:
            f.detach()
        self._bytes -= K.numel() * K.element_size()

    def _full(self, size: int) -> bool:
        """Whether an entry of `size` bytes needs room made (entry count or byte budget)."""
        return len(self._entries) >= self.max_entries or (
            self.max_bytes is not None and self._bytes + size > self.max_bytes)

    def _purge(self) -> None:
        """Drop entries whose filter tensors were garbage collected."""
        while self._dead:
            key = self._dead.pop()
            if key in self._entries:
                self._drop(key)

    def get(self, k: torch.Tensor, D: torch.Tensor | None, n: int, dtype: torch.dtype,
            transform: Transform | None = None, tag: object = None,
            reserve: int | None = None) -> torch.Tensor | None:
        """The cached spectrum of (k, D) at size n (transform and its `tag` identifying it),
        computed on a miss; entries for older versions of the same filter are dropped.
        reserve: the entry's bytes, for forms that cost more to build than to do without: on a
        miss they must fit beside the live entries, else None is returned and nothing is
        computed or evicted (filters used in turn that do not all fit would otherwise evict
        each other on every call)."""
        self._purge()
        kkey = _tensor_key(k)
        key = (kkey, _tensor_key(D), n, dtype, tag)
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit[0]
        for old in [e for e in self._entries if _older(e[0], kkey) and _older(e[1], key[1])
                    and (e[0], e[1]) != (kkey, key[1])]:
            self._drop(old)  # the same filter tensors at older versions: stale
        if reserve is not None and self._full(reserve):
            return None
        K = self.compute(k, D, n, dtype, transform)
        size = K.numel() * K.element_size()
        while self._entries and self._full(size):
            self._drop(next(iter(self._entries)))
        # A view (e.g. k[:, :L] made per call) shares its base's storage and version counter:
        # the entry lives as long as the base tensor, not the short-lived view.
        finalizers = tuple(weakref.finalize(t if t._base is None else t._base, self._dead.add, key)
                           for t in (k, D) if t is not None)
        self._entries[key] = (K, finalizers)
        self._bytes += size
        return K


SPECTRA = SpectrumCache()


@dataclass(frozen=True)
class FullPlan:
    """One zero-padded transform of size n >= L + Lk - 1 per row."""

    L: int
    Lk: int
    n: int

    @staticmethod
    def make(L: int, Lk: int) -> "FullPlan":
        return FullPlan(L, Lk, fast_len(L + Lk - 1))

    def rows_per_block(self) -> int:
        return max(2, BLOCK_BYTES // (8 * (self.n // 2 + 1)))

    def conv(self, x: torch.Tensor, K: torch.Tensor, correlate: bool = False,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """Causal conv of rows x (R, L) with spectrum K (R, n/2+1), into `out` when given;
        correlate: with conj(K), i.e. z[t] = sum_s k[s] x[t+s] (+ D x[t])."""
        X = rfft(x, self.n)
        X *= K.conj() if correlate else K
        y = irfft(X, self.n)[:, :self.L]
        return y if out is None else out.copy_(y)

    def xcorr(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Spectrum of c[s] = sum_t g[t] x[t-s] for rows x, g (R, L); finish with `lags`."""
        X = rfft(x, self.n)
        X.conj_physical_()
        X *= rfft(g, self.n)
        return X

    def lags(self, S: torch.Tensor) -> torch.Tensor:
        """Lags 0..Lk-1 of an accumulated `xcorr` spectrum."""
        return irfft(S, self.n)[:, :self.Lk]


def _block_input(t: torch.Tensor | None, b: int, hs: slice, shape: tuple[int, int, int],
                 dtype: torch.dtype) -> torch.Tensor | None:
    if t is None:
        return None
    return t.expand(shape)[b, hs].to(dtype)


class BlockConv(torch.autograd.Function):
    """Gated causal conv through a plan (FullPlan or partial.OverlapSavePlan), blockwise over
    channels; forward and backward both in the frequency domain."""

    @staticmethod
    def forward(ctx, u, k, D, pregate, postgate, plan, cache):  # type: ignore[override]
        ctx.save_for_backward(u, k, D, pregate, postgate)
        ctx.plan, ctx.cache = plan, cache
        return _forward(u, k, D, pregate, postgate, plan, cache)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        u, k, D, pregate, postgate = ctx.saved_tensors
        need = ctx.needs_input_grad
        grads = _backward(dy, u, k, D, pregate, postgate, ctx.plan, ctx.cache, need)
        return (*grads, None, None)


def select_cache(k: torch.Tensor, D: torch.Tensor | None,
                 cache: SpectrumCache | None) -> SpectrumCache:
    """The cache to use: `cache` (default SPECTRA), or a fresh throwaway one while the filter
    is being trained (it changes every step, and autograd tools such as gradcheck perturb it
    through .data, which the version counter does not see)."""
    if torch.is_grad_enabled() and (k.requires_grad or (D is not None and D.requires_grad)):
        return SpectrumCache(max_entries=1)
    return SPECTRA if cache is None else cache


def _spectra(k, D, plan, cache: SpectrumCache, dtype):
    """Yields (channel slice, spectrum block) over channel blocks."""
    H = k.shape[0]
    rows = plan.rows_per_block()
    whole = cache.get(k, D, plan.n, dtype) if cache.fits(k, plan.n, dtype) else None
    for h0 in range(0, H, rows):
        hs = slice(h0, min(H, h0 + rows))
        if whole is not None:
            yield hs, whole[hs]
        else:
            yield hs, cache.compute(k[hs], None if D is None else D[hs], plan.n, dtype)


def _forward(u, k, D, pregate, postgate, plan, cache):
    B = u.shape[0]
    acc_dtype = accumulation_dtype(u.dtype)
    y = torch.empty_like(u, memory_format=torch.contiguous_format)
    for hs, K in _spectra(k, D, plan, cache, acc_dtype):
        for b in range(B):
            x = u[b, hs].to(acc_dtype)
            if pregate is not None:
                x = x * _block_input(pregate, b, hs, u.shape, acc_dtype)
            if postgate is None and y.dtype == acc_dtype:
                plan.conv(x, K, out=y[b, hs])
                continue
            z = plan.conv(x, K)
            if postgate is not None:
                z *= _block_input(postgate, b, hs, u.shape, acc_dtype)
            y[b, hs] = z
    return y


def _backward(dy, u, k, D, pregate, postgate, plan, cache, need):
    B = u.shape[0]
    acc_dtype = accumulation_dtype(u.dtype)
    need_u, need_k, need_D, need_pre, need_post = need[:5]
    need_D = need_D and D is not None
    need_pre = need_pre and pregate is not None
    need_post = need_post and postgate is not None
    du = torch.empty_like(u) if need_u else None
    dpre = torch.empty(u.shape, dtype=acc_dtype, device=u.device) if need_pre else None
    dpost = torch.empty(u.shape, dtype=acc_dtype, device=u.device) if need_post else None
    dk = torch.empty(k.shape, dtype=acc_dtype, device=k.device) if need_k or need_D else None
    for hs, K in _spectra(k, D, plan, cache, acc_dtype):
        acc = None
        for b in range(B):
            x = u[b, hs].to(acc_dtype)
            if pregate is not None:
                x = x * _block_input(pregate, b, hs, u.shape, acc_dtype)
            g = dy[b, hs].to(acc_dtype)
            if postgate is not None:
                if need_post:
                    dpost[b, hs] = g * plan.conv(x, K)
                g = g * _block_input(postgate, b, hs, u.shape, acc_dtype)
            if need_u or need_pre:
                dx = plan.conv(g, K, correlate=True)
                if need_pre:
                    dpre[b, hs] = dx * u[b, hs].to(acc_dtype)
                if need_u:
                    if pregate is not None:
                        dx *= _block_input(pregate, b, hs, u.shape, acc_dtype)
                    du[b, hs] = dx
            if dk is not None:
                S = plan.xcorr(x, g)
                acc = S if acc is None else acc.add_(S)
        if dk is not None:
            dk[hs] = plan.lags(acc)
    gk = dk.to(k.dtype) if need_k else None
    gD = dk[:, 0].to(D.dtype) if need_D else None
    gpre = dpre.sum_to_size(pregate.shape).to(pregate.dtype) if need_pre else None
    gpost = dpost.sum_to_size(postgate.shape).to(postgate.dtype) if need_post else None
    return du, gk, gD, gpre, gpost


def direct(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None, *,
           pregate: torch.Tensor | None = None,
           postgate: torch.Tensor | None = None) -> torch.Tensor:
    """Time-domain path, one shifted multiply-add per tap (O(L Lk)): for tiny filters.
    (Elementwise ops rather than a depthwise conv1d, which is slow when the machine's cores
    are oversubscribed: "direct_not_conv1d" in benchmarks/results/design_figures.json.)"""
    check_finite(k, D)
    L, Lk = u.shape[-1], k.shape[-1]
    acc_dtype = accumulation_dtype(u.dtype)
    x = u.to(acc_dtype) if pregate is None else u.to(acc_dtype) * pregate.to(acc_dtype)
    kc = k.to(acc_dtype)
    w0 = kc[:, 0] if D is None else kc[:, 0] + D.to(acc_dtype)
    y = x * w0[:, None]
    for s in range(1, Lk):
        y = y + torch.nn.functional.pad(x[..., :L - s] * kc[:, s, None], (s, 0))
    if postgate is not None:
        y = y * postgate.to(acc_dtype)
    return y.to(u.dtype)


def conv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None, *,
         pregate: torch.Tensor | None = None, postgate: torch.Tensor | None = None,
         cache: SpectrumCache | None = None) -> torch.Tensor:
    """The FFT path (arguments already validated, Lk <= L): see the module docstring."""
    plan = FullPlan.make(u.shape[-1], k.shape[-1])
    return BlockConv.apply(u, k, D, pregate, postgate, plan, select_cache(k, D, cache))
