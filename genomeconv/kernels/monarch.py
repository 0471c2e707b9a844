"""Causal long convolution through a Monarch decomposition of the FFT (FlashFFTConv's algorithm).

Transform. The causal conv of x (length L) with k (length Lk) is a circular conv of real length
N = 2M >= L + Lk - 1. Real-input trick: z[n] = x[2n] + i x[2n+1] is transformed with an M-point
complex FFT. That FFT is a product of p in {2, 3, 4} stages, M = r_1 * ... * r_p, every factor
r_t a multiple of 16 in 16..128 (one or more 16x16 tensor-core tiles; `plan_for`). Stage t
(decimation in frequency) views each block of S_t = r_t * s_t points, s_t = M / (r_1...r_t), as
an (r_t, s_t) tile (n = n1 * s_t + n2), left-multiplies it by the dense DFT matrix F_{r_t}
(n1 -> k1) and multiplies elementwise by the twiddles W_{S_t}^{k1 n2} (none for the last stage).

Data layout. Rows are the B*H channels. After stage t a row is the contiguous array
(r_1, ..., r_t, s_t): stage t+1 reshapes it to (rows * r_1...r_t, r_{t+1}, s_{t+1}) tiles and does
one batched matmul; the last stage (s_p = 1) is one (rows * M / r_p, r_p) @ F_{r_p} GEMM. No data
moves between stages, so the spectrum ends in digit-reversed order: frequency
k = d_1 + r_1 (d_2 + r_2 (...)) sits at position sum_t d_t * s_t (`digit_reversed_positions`).
The pointwise step works in that order (the filter side is permuted once), and the inverse runs
the conjugate stages in reverse order (conj twiddle, then conj(F_{r_t})), which restores natural
order. Complex numbers are complex64 tensors (torch's complex GEMM: real and imaginary parts in one
product; float32 accumulation); twiddles and DFT matrices are computed in float64 and rounded.

Zero padding is skipped: z occupies only its first ceil(L/2) points, so the first stage multiplies
by the first q = ceil(ceil(L/2) / s_1) columns of F_{r_1} only (input tiles (q, s_1), never
padded to r_1 rows); the inverse's last stage computes only the first q rows of conj(F_{r_1}),
i.e. only the outputs t < L (about half the work of the first and last stages when Lk = L).

Pointwise step. With Zc[k] = conj Z[(M - k) mod M], the real trick's unpack (X = rfft(x)),
product with the filter spectrum K = rfft(k, N) and repack for the inverse collapse into
Z'[k] = alpha[k] Z[k] + beta[k] Zc[k] with a = (1 - i w)/2, b = (1 + i w)/2,
w = exp(-2 pi i k / N), Kc[k] = conj K[M - k]:
alpha = (|a|^2 K + |b|^2 Kc) / M, beta = (conj(a) b K + a conj(b) Kc) / M (1/M: inverse scale).
A D tap (K + D) would add D / M to alpha and nothing to beta (|a|^2 + |b|^2 = 1 and
conj(a) b + a conj(b) = 0): it is the identity on z, so D x is added in the time domain instead
and the filter side depends on k alone. alpha and beta, (2, H, M) complex64 in digit-reversed
order, are computed in float64 once per filter and kept in genomeconv.kernels.fft's
SpectrumCache (default SPECTRA; keyed by the filter's storage and version, so an in-place change
is noticed); when k needs a gradient they are recomputed each call with autograd (monarch_conv
is differentiable in x, k and D).

Rows are processed in blocks of about 2^21 complex points (channel blocks outside, batch
blocks inside), which bounds the extra memory and keeps a block's working set in cache.

The CUDA kernels (csrc/monarch_conv.cu, replayed on the CPU by tiles.py) run this decomposition
(same stages, tiles, twiddles and digit-reversed order) restricted to power-of-two sizes with
factors 16, 32 and 64; they share `Plan` and `digit_reversed_positions` from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations_with_replacement

import torch

import genomeconv.kernels.paired as paired
from .fft import SPECTRA, SpectrumCache

TILE = 16                      # factors are multiples of the 16x16 tensor-core tile
MAX_FACTOR = 128               # factors are TILE, 2 TILE, ..., MAX_FACTOR
STAGES = (2, 3, 4)
CHUNK_POINTS = 1 << 21         # complex points per block of rows

# Cost model constants (see `plan_cost`), fitted to the GEMM rates of "monarch_gemm_rates" in
# benchmarks/results/design_figures.json (narrow factors are memory bound), modelled as
# MATMUL_FLOPS * r / (r + MATMUL_HALF_WIDTH).
MATMUL_FLOPS = 70e9            # real flop/s of wide complex64 GEMMs
MATMUL_HALF_WIDTH = 96         # factor width at which GEMMs reach half that rate
MEMORY_BYTES = 10e9            # bytes/s of a streaming elementwise pass


@dataclass(frozen=True)
class Plan:
    """Monarch factors r_1..r_p of an M-point complex FFT (rfft size N = 2M)."""

    radices: tuple[int, ...]

    @property
    def points(self) -> int:
        """M, the complex transform size."""
        return math.prod(self.radices)

    @property
    def strides(self) -> tuple[int, ...]:
        """s_t = M / (r_1 ... r_t) for each stage t (s_p = 1)."""
        out, s = [], self.points
        for r in self.radices:
            s //= r
            out.append(s)
        return tuple(out)


@lru_cache(maxsize=None)
def _multiples(p: int) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """All non-increasing p-tuples of tile multiples a_i in 1..8 (r_i = 16 a_i), sorted by
    (product, sum of factors): the first with product >= a target is the best plan."""
    most = MAX_FACTOR // TILE
    tuples = combinations_with_replacement(range(most, 0, -1), p)
    return tuple(sorted(((math.prod(a), a) for a in tuples), key=lambda e: (e[0], sum(e[1]))))


def plan_for(n: int, p: int) -> Plan:
    """Smallest plan with p factors (multiples of 16 in 16..128, larger first, least total
    matmul width among equal sizes) whose rfft size 2M covers n >= 1 real points."""
    if p not in STAGES:
        raise ValueError(f"p must be one of {STAGES}, got {p}")
    if n < 1:
        raise ValueError(f"transform length must be >= 1, got {n}")
    need = -(-(-(-n // 2)) // TILE**p)  # noqa: B002 (ceil(ceil(n / 2) / 16^p))
    for prod, a in _multiples(p):
        if prod >= need:
            return Plan(tuple(TILE * ai for ai in a))
    raise ValueError(f"a {n}-point transform exceeds the largest {p}-stage plan "
                     f"({2 * MAX_FACTOR**p} points)")


def plan_cost(plan: Plan) -> float:
    """Modelled seconds per row for forward + inverse transforms (the paper's
    C = sum_i [16 N N_i / gamma(N_i) + 4 N / omega_i] adapted to this CPU layout).

    Matmul: stage t is a complex (r_t x r_t) product, 8 r_t real flops per point, at
    gamma(r) = MATMUL_FLOPS * r / (r + MATMUL_HALF_WIDTH); the first forward and last inverse
    stages count half (zero padding skipped, assuming the dense case Lk = L where the input fills
    half the transform). Memory: each stage reads and writes the M complex64 points once, each
    twiddle multiply (all stages but the last) once more, and the pointwise step once, at
    MEMORY_BYTES. Both directions are counted.
    """
    M, p = plan.points, len(plan.radices)
    seconds = 0.0
    for t, r in enumerate(plan.radices):
        gamma = MATMUL_FLOPS * r / (r + MATMUL_HALF_WIDTH)
        seconds += 2 * 8 * M * r * (0.5 if t == 0 else 1.0) / gamma
    passes = 2 * (p + (p - 1)) + 1
    return seconds + passes * 16 * M / MEMORY_BYTES


@lru_cache(maxsize=4096)
def choose_p(n: int) -> int:
    """Number of Monarch stages for an n-point real transform (n = L + Lk - 1): the p in
    {2, 3, 4} whose smallest plan has the lowest `plan_cost` (ties: fewer stages)."""
    costs = []
    for p in STAGES:
        try:
            costs.append((plan_cost(plan_for(n, p)), p))
        except ValueError:
            continue
    if not costs:
        raise ValueError(f"a {n}-point transform exceeds every Monarch plan")
    return min(costs)[1]


@lru_cache(maxsize=64)
def _dft(r: int, inverse: bool, device: torch.device) -> torch.Tensor:
    """F_r[j, k] = exp(-+2 pi i j k / r), complex64 (computed in float64)."""
    jk = torch.outer(torch.arange(r, dtype=torch.float64), torch.arange(r, dtype=torch.float64))
    ang = (2 if inverse else -2) * math.pi * (jk % r) / r
    return torch.polar(torch.ones_like(ang), ang).to(torch.complex64).to(device)


@lru_cache(maxsize=64)
def _twiddles(r: int, s: int, inverse: bool, device: torch.device) -> torch.Tensor:
    """W_{rs}^{+-k1 n2} as an (r, s) complex64 tile (computed in float64)."""
    kn = torch.outer(torch.arange(r, dtype=torch.float64), torch.arange(s, dtype=torch.float64))
    ang = (2 if inverse else -2) * math.pi * (kn % (r * s)) / (r * s)
    return torch.polar(torch.ones_like(ang), ang).to(torch.complex64).to(device)


def digit_reversed_positions(radices: tuple[int, ...], k: torch.Tensor) -> torch.Tensor:
    """Position of natural frequency k in the stages' (digit-reversed) output order."""
    pos = torch.zeros_like(k)
    s = math.prod(radices)
    for r in radices:
        s //= r
        pos = pos + (k % r) * s
        k = k // r
    return pos


def forward_stages(z: torch.Tensor, plan: Plan) -> torch.Tensor:
    """M-point DFT of z (rows, q * s_1) complex64, zero past its end (q <= r_1 first-stage
    rows), as p batched matmuls with twiddles; returns (rows, M) in digit-reversed order."""
    rows = z.shape[0]
    r1, s1 = plan.radices[0], plan.strides[0]
    q = z.shape[1] // s1
    x = torch.matmul(_dft(r1, False, z.device)[:, :q], z.reshape(rows, q, s1))
    for t, (r, s) in enumerate(zip(plan.radices, plan.strides)):
        if t > 0:
            x = x.reshape(-1, r, s) if s > 1 else x.reshape(-1, r)
            F = _dft(r, False, z.device)
            x = torch.matmul(F, x) if s > 1 else torch.matmul(x, F)  # F is symmetric
        if s > 1:
            x.mul_(_twiddles(r, s, False, z.device))  # x is this stage's fresh matmul output
    return x.reshape(rows, plan.points)


def inverse_stages(Z: torch.Tensor, plan: Plan, q: int | None = None) -> torch.Tensor:
    """Unnormalized inverse of `forward_stages` (M times the inverse DFT) of Z (rows, M) in
    digit-reversed order; returns only the first q * s_1 points (natural order), q <= r_1."""
    rows = Z.shape[0]
    r1 = plan.radices[0]
    q = r1 if q is None else q
    x = Z
    for t in range(len(plan.radices) - 1, -1, -1):
        r, s = plan.radices[t], plan.strides[t]
        x = x.reshape(-1, r, s) if s > 1 else x.reshape(-1, r)
        if s > 1:
            x.mul_(_twiddles(r, s, True, Z.device))  # a fresh matmul output (s_p = 1)
        F = _dft(r, True, Z.device)
        if t == 0:
            x = torch.matmul(F[:q], x.reshape(rows, r, s))
        else:
            x = torch.matmul(F, x) if s > 1 else torch.matmul(x, F)
    return x.reshape(rows, q * plan.strides[0])


@lru_cache(maxsize=32)
def _negated_positions(radices: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """neg[pos] = position of frequency (M - k) mod M, k the frequency at pos."""
    M = math.prod(radices)
    k = torch.arange(M)
    freq = torch.empty_like(k)
    freq[digit_reversed_positions(radices, k)] = k
    return digit_reversed_positions(radices, (-freq) % M).to(device)


def filter_coefficients(k: torch.Tensor, plan: Plan) -> torch.Tensor:
    """(2, H, M) complex64: alpha and beta of the pointwise step for filter k (H, Lk)
    (paired.coefficients), digit-reversed order. Computed in float64 over chunks of channels;
    differentiable in k."""
    M = plan.points
    freq = torch.empty(M, dtype=torch.long)
    freq[digit_reversed_positions(plan.radices, torch.arange(M))] = torch.arange(M)
    freq = freq.to(k.device)
    step = max(1, CHUNK_POINTS // M)
    return torch.cat([paired.coefficients(k[h0:h0 + step], None, M, torch.float64)[:, :, freq]
                      .to(torch.complex64) for h0 in range(0, k.shape[0], step)], dim=1)


def _check(x: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a (B, H, L) tensor, got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a real floating tensor, got {x.dtype}")
    B, H, L = x.shape
    if not isinstance(k, torch.Tensor) or k.dim() != 2 or k.shape[0] != H or k.shape[1] < 1:
        raise ValueError(f"k must be (H={H}, Lk>=1), got {getattr(k, 'shape', type(k))}")
    if not k.is_floating_point():
        raise TypeError(f"k must be a real floating tensor, got {k.dtype}")
    if k.device != x.device:
        raise ValueError(f"k must be on {x.device}, got {k.device}")
    if D is not None:
        if not isinstance(D, torch.Tensor) or D.shape != (H,) or D.device != x.device:
            raise ValueError(f"D must be an ({H},) tensor on {x.device}, got "
                             f"{getattr(D, 'shape', type(D))}")
        if not D.is_floating_point():
            raise TypeError(f"D must be a real floating tensor, got {D.dtype}")


def _coefficient_blocks(k: torch.Tensor, plan: Plan, hs: int, cache: SpectrumCache | None):
    """Yields (channel slice, (2, h, M) coefficients) over channel blocks of hs channels: from
    the cache when k needs no gradient and they fit its budget, else computed per block."""
    H = k.shape[0]
    grad = torch.is_grad_enabled() and k.requires_grad
    cache = SPECTRA if cache is None else cache
    whole = None
    if not grad and cache.fits(k, 2 * plan.points, torch.float64):
        whole = cache.get(k, None, 2 * plan.points, torch.float64,
                          transform=lambda kd, _, n: filter_coefficients(kd, plan),
                          tag=("monarch", plan.radices))
    for h0 in range(0, H, hs):
        sl = slice(h0, min(H, h0 + hs))
        yield sl, whole[:, sl] if whole is not None else filter_coefficients(
            k[sl] if grad else k[sl].detach(), plan)


def monarch_conv(x: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None, *,
                 p: int | None = None, cache: SpectrumCache | None = None) -> torch.Tensor:
    """Causal y[b, h, t] = sum_{s <= min(t, Lk-1)} k[h, s] x[b, h, t-s] + D[h] x[b, h, t].

    x (B, H, L) real floating (computed in float32, returned in x's dtype), k (H, Lk), D (H,) or
    None; p: Monarch stages (2, 3 or 4), None = `choose_p`. Any L >= 1. Differentiable in x, k
    and D. cache: where the filter side is kept (default genomeconv.kernels.fft.SPECTRA).
    """
    _check(x, k, D)
    B, H, L = x.shape
    if L == 0 or B * H == 0:
        return torch.zeros_like(x)
    k = k[:, :L]  # taps past L never reach an output
    n = L + k.shape[1] - 1
    plan = plan_for(n, choose_p(n) if p is None else p)
    M, s1 = plan.points, plan.strides[0]
    q = -(-((L + 1) // 2) // s1)  # first-stage rows holding data (the rest is padding)
    neg = _negated_positions(plan.radices, x.device)
    hs = min(H, max(1, CHUNK_POINTS // M))
    bs = max(1, CHUNK_POINTS // (M * H)) if hs == H else 1
    columns = []
    for hsl, coeffs in _coefficient_blocks(k, plan, hs, cache):
        parts = []
        for b0 in range(0, B, bs):
            xb = x[b0:b0 + bs, hsl].to(torch.float32)
            nb, nh = xb.shape[:2]
            z = torch.view_as_complex(torch.nn.functional.pad(
                xb.reshape(nb * nh, L), (0, 2 * q * s1 - L)).reshape(nb * nh, q * s1, 2))
            Z = forward_stages(z, plan).reshape(nb, nh, M)
            Z = torch.addcmul(coeffs[0] * Z, coeffs[1], Z[..., neg].conj())
            y = torch.view_as_real(inverse_stages(Z.reshape(nb * nh, M), plan, q))
            y = y.reshape(nb, nh, 2 * q * s1)[..., :L]
            if D is not None:  # the D tap is the identity on z: added in the time domain
                y = torch.addcmul(y, D[hsl, None].to(torch.float32), xb)
            parts.append(y)
        columns.append(torch.cat(parts) if len(parts) > 1 else parts[0])
    y = torch.cat(columns, dim=1) if len(columns) > 1 else columns[0]
    return y.to(x.dtype).contiguous()
