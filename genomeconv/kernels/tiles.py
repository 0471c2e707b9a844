"""CPU emulation of the CUDA kernels' exact schedule (csrc/monarch_conv.cu), step by step.

The CUDA kernels cannot run without a GPU, so this module replays their arithmetic on the CPU:
the same transform sizes and Monarch plans, the same float32 twiddle table, the same stage order
(decimation in frequency, digit-reversed positions), the same mma operand rounding (fp16, bf16
or the bf16x3 split used for float32 inputs, with float32 accumulation), the same real-trick
pairing of sub-blocks, the same four-step split past the fused size, overlap-save segments for
partial convolutions and the same frequency-block masks. Tests compare it with a float64
reference, so an indexing or twiddle mistake in the schedule shows up in CI; the kernels follow
it line by line (function names match the device functions). Not bit-exact in one respect: the
order of float32 additions inside one tensor-core mma is the hardware's.

The decomposition is monarch.py's (decimation in frequency, stage t on (r_t, s_t) tiles, twiddles
W_{S_t}^{k1 n2}, digit-reversed spectrum): `Plan` and `digit_reversed_positions` come from there;
the kernels restrict it to power-of-two sizes with factors 16, 32, 64 (`plan_for`) and build
their DFT tiles from one float32 twiddle table. The host side of the extension
(genomeconv.kernels.cuda) uses `transform_points`, `twiddle_table`, `first_block_count` and
`filter_spectrum` from here, so both share one definition.
"""

from __future__ import annotations

import math

import torch

from .monarch import Plan, digit_reversed_positions

MAX_STAGES = 4
MIN_FACTOR, MAX_FACTOR = 16, 64
OUTER_POINTS = 8192  # complex points per outer-stage CTA (kOuterPoints in the kernel)
FUSED_MAX_POINTS_H100 = 16384  # fused_max_points() on H100/A100 (227/163 KB of shared memory)


def plan_for(m: int) -> Plan:
    """The kernel's plan for a 2^m point FFT: ceil(m/6) stages of 4..6 bits, larger first
    (power-of-two factors 16..64, a subset of monarch.py's multiples of 16 in 16..128)."""
    p = (m + 5) // 6
    base, rem = divmod(m, p)
    return Plan(tuple(1 << (base + (1 if t < rem else 0)) for t in range(p)))


def plan_ok(m: int) -> bool:
    """Whether a 2^m point FFT has a plan with factors in 16..64 and at most 4 stages."""
    if m < 4:
        return False
    pl = plan_for(m)
    return len(pl.radices) <= MAX_STAGES and all(MIN_FACTOR <= r <= MAX_FACTOR for r in pl.radices)


def split_outer(M: int, fused_max: int) -> tuple[int, int]:
    """(r0, S1) for M > fused_max: outer r0-point stage, pairs of S1-point inner sub-blocks."""
    m = M.bit_length() - 1
    for a in range(4, 13):
        b = m - a
        if not (plan_ok(a) and plan_ok(b)):
            continue
        if (2 << b) > fused_max or (8 << a) > 2 * OUTER_POINTS:
            continue
        return 1 << a, 1 << b
    raise ValueError(f"no outer/inner split for {M} complex points")


def transform_points(n_min: int, fused_max: int = FUSED_MAX_POINTS_H100) -> int:
    """Complex size M (rfft size N = 2M) for a transform of at least n_min real points."""
    M = 16
    while 2 * M < n_min:
        M *= 2
    m = M.bit_length() - 1
    if M <= fused_max and not plan_ok(m):
        M *= 2  # 2^7 has no 16..64 split
    if M > fused_max:
        split_outer(M, fused_max)  # raises when too large
    return M


def first_block_count(M: int, fused_max: int = FUSED_MAX_POINTS_H100) -> int:
    """Number of frequency blocks of a sparse mask: bins k with k % count == b form block b."""
    if M <= fused_max:
        return plan_for(M.bit_length() - 1).radices[0]
    return split_outer(M, fused_max)[0]


def twiddle_table(M: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """tw[j] = exp(-2 pi i j / 2M) for j < M, complex64 (computed in float64)."""
    j = torch.arange(M, dtype=torch.float64)
    ang = -2 * math.pi * j / (2 * M)
    return torch.polar(torch.ones_like(ang), ang).to(torch.complex64).to(device)


def _twid(tw: torch.Tensor, twN: int, j: torch.Tensor) -> torch.Tensor:
    j = j % twN
    half = twN // 2
    w = tw[torch.where(j < half, j, j - half)]
    return torch.where(j < half, w, -w)


def keep_bins(keep: torch.Tensor, M: int) -> torch.Tensor:
    """Per-bin mask (M+1,) of a block mask keep (count,): bin k is kept when keep[k % count]."""
    bins = torch.arange(M + 1, device=keep.device)
    return keep.to(torch.bool)[bins % keep.numel()]


def filter_spectrum(k: torch.Tensor, D: torch.Tensor | None, M: int,
                    keep: torch.Tensor | None = None) -> torch.Tensor:
    """(rfft(k, 2M) + D) * mask as complex64 (H, M+1), natural order (computed in float64).

    keep: bool (count,) over first_block_count blocks; bins with keep[k % count] False are zero.
    """
    K = torch.fft.rfft(k.detach().to(torch.float64), n=2 * M)
    if D is not None:
        K = K + D.detach().to(torch.float64)[:, None]
    if keep is not None:
        K = K * keep_bins(keep.to(K.device), M)
    return K.to(torch.complex64)


# --- operand rounding of one mma ------------------------------------------------------------

def operand_format(dtype: torch.dtype, fast: bool) -> tuple[torch.dtype, bool]:
    """(mma operand dtype, split) the kernel uses: the bf16x3 split by default for every input
    dtype (16-bit operand mantissas: about 1e-5 relative error in float32); fast: one fp16
    operand for fp16 inputs, else one bf16."""
    if not fast:
        return torch.bfloat16, True
    return (torch.float16 if dtype == torch.float16 else torch.bfloat16), False


def _parts(x: torch.Tensor, op: torch.dtype, split: bool) -> list[torch.Tensor]:
    hi = x.to(op).to(torch.float32)
    return [hi, (x - hi).to(op).to(torch.float32)] if split else [hi]


def _cmatmul(ar, ai, br, bi, op, split):
    """Complex A @ B on the tensor cores: real/imag fragments, float32 accumulation; the split
    adds hi*lo + lo*hi (cmma in the kernel). A: (r, r); B: (..., r, n)."""
    A_r, A_i = _parts(ar, op, split), _parts(ai, op, split)
    B_r, B_i = _parts(br, op, split), _parts(bi, op, split)
    terms = [(0, 0)] + ([(0, 1), (1, 0)] if split else [])
    dr = sum(A_r[p] @ B_r[q] - A_i[p] @ B_i[q] for p, q in terms)
    di = sum(A_r[p] @ B_i[q] + A_i[p] @ B_r[q] for p, q in terms)
    return dr, di


def monarch_stage(re, im, r, S, inverse, tw, twN, op, split):
    """One stage of radix r over blocks of S points (re, im: (V, P) float32)."""
    V, P = re.shape
    s = S // r
    xr = re.reshape(V, P // S, r, s)
    xi = im.reshape(V, P // S, r, s)
    k1 = torch.arange(r)[:, None]
    n2 = torch.arange(s)[None, :]
    w = _twid(tw, twN, ((k1 * n2) % S) * (twN // S)) if s > 1 else None
    if inverse and w is not None:
        xr, xi = xr * w.real + xi * w.imag, xi * w.real - xr * w.imag
    e = (torch.arange(r)[:, None] * torch.arange(r)[None, :]) % r
    F = _twid(tw, twN, e * (twN // r))
    scale = 1.0 if inverse else 1.0 / r
    ar, ai = F.real * scale, (-F.imag if inverse else F.imag) * scale
    yr, yi = _cmatmul(ar, ai, xr, xi, op, split)
    if not inverse and w is not None:
        yr, yi = yr * w.real - yi * w.imag, yr * w.imag + yi * w.real
    return yr.reshape(V, P), yi.reshape(V, P)


def cta_fft(re, im, pl: Plan, inverse, tw, twN, op, split):
    """The full in-CTA FFT (or its exact inverse) over rows of pl.points points."""
    P = pl.points
    sizes = [P]
    for r in pl.radices[:-1]:
        sizes.append(sizes[-1] // r)
    order = range(len(pl.radices) - 1, -1, -1) if inverse else range(len(pl.radices))
    for t in order:
        re, im = monarch_stage(re, im, pl.radices[t], sizes[t], inverse, tw, twN, op, split)
    return re, im


def pointwise(Z: torch.Tensor, kf: torch.Tensor, tw: torch.Tensor, M: int) -> torch.Tensor:
    """Real-trick pointwise step on natural-order spectra Z (V, M) of z = x_even + i x_odd:
    recover X[k], multiply by kf (V, M+1), pack Z'[k] for the inverse (pointwise_pair)."""
    k = torch.arange(M)
    j = (M - k) % M
    A, Bz = Z, Z[:, j]
    wk, wj = tw[k], tw[j]
    xek = (A + Bz.conj()) / 2
    xok = -1j * (A - Bz.conj()) / 2
    xej = (Bz + A.conj()) / 2
    xoj = -1j * (Bz - A.conj()) / 2
    Yk = (xek + wk * xok) * kf[:, k]
    Yj = (xej + wj * xoj) * kf[:, j]
    out = (Yk + Yj.conj()) / 2 + 1j * ((Yk - Yj.conj()) / 2 * wk.conj())
    # k = 0 pairs with the Nyquist bin M: X[0] = Re + Im, X[M] = Re - Im.
    x0 = A[:, 0].real + A[:, 0].imag
    xm = A[:, 0].real - A[:, 0].imag
    y0, ym = x0 * kf[:, 0], xm * kf[:, M]
    out[:, 0] = (y0 + ym) / 2 + 1j * ((y0 - ym) / 2)
    return out.to(torch.complex64)


def _pack(x: torch.Tensor, M: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, n) float32 -> z[n] = x[2n] + i x[2n+1], zero padded to M complex points."""
    V, n = x.shape
    buf = torch.zeros(V, 2 * M, dtype=torch.float32)
    buf[:, :n] = x
    return buf[:, 0::2].contiguous(), buf[:, 1::2].contiguous()


def emulate_conv(u: torch.Tensor, kf: torch.Tensor, M: int, *, pregate=None, postgate=None,
                 seg_out: int | None = None, halo: int = 0, reverse: bool = False,
                 keep: torch.Tensor | None = None, fast: bool = False,
                 fused_max: int = FUSED_MAX_POINTS_H100) -> torch.Tensor:
    """What launch_conv computes, on the CPU: u (B, H, L) float32/bf16/fp16, kf (H, M+1) from
    filter_spectrum. seg_out/halo: overlap-save segments (partial conv); reverse: time-reversed
    load and store (the backward's correlation); keep: frequency-block mask; fast: single mma
    operands (see operand_format)."""
    B, H, L = u.shape
    op, split = operand_format(u.dtype, fast)
    rows = u.reshape(B * H, L).float()
    if pregate is not None:
        rows = rows * pregate.reshape(B * H, L).float()
    if reverse:
        rows = rows.flip(-1)
    seg_out = L if seg_out is None else seg_out
    nseg = -(-L // seg_out)
    if 2 * M < seg_out + halo:
        raise ValueError("transform too small for the segment")
    # Virtual rows: (row, segment) with input x[t0 : t0 + 2M], t0 = seg * seg_out - halo.
    padded = torch.zeros(B * H, halo + nseg * seg_out + 2 * M, dtype=torch.float32)
    padded[:, halo:halo + L] = rows
    idx = torch.arange(nseg)[:, None] * seg_out + torch.arange(2 * M)[None, :]
    segs = padded[:, idx].reshape(B * H * nseg, 2 * M)
    kf_rows = kf.repeat_interleave(nseg, dim=0).repeat(B, 1)
    tw = twiddle_table(M)
    twN = 2 * M
    re, im = _pack(segs, M)
    if M <= fused_max:
        out = _fused(re, im, kf_rows, M, tw, twN, op, split, keep)
    else:
        if nseg != 1 or halo:
            raise ValueError("partial convolutions use the fused kernel")
        out = _four_step(re, im, kf_rows, M, tw, twN, op, split, keep, fused_max)
    y = torch.stack([out.real, out.imag], dim=-1).reshape(B * H * nseg, 2 * M)
    y = y[:, halo:halo + seg_out].reshape(B * H, nseg * seg_out)[:, :L]
    if reverse:
        y = y.flip(-1)
    if postgate is not None:
        y = y * postgate.reshape(B * H, L).float()
    return y.reshape(B, H, L).to(u.dtype)


def _fused(re, im, kf, M, tw, twN, op, split, keep):
    pl = plan_for(M.bit_length() - 1)
    re, im = cta_fft(re, im, pl, False, tw, twN, op, split)
    pos = digit_reversed_positions(pl.radices, torch.arange(M))
    Zp = pointwise(torch.complex(re, im)[:, pos], kf, tw, M)
    if keep is not None:
        Zp = Zp * keep[torch.arange(M) % keep.numel()]
    Z = torch.empty_like(Zp)
    Z[:, pos] = Zp
    re, im = cta_fft(Z.real.contiguous(), Z.imag.contiguous(), pl, True, tw, twN, op, split)
    return torch.complex(re, im)


def _four_step(re, im, kf, M, tw, twN, op, split, keep, fused_max):
    r0, S1 = split_outer(M, fused_max)
    pl0, pl1 = plan_for(r0.bit_length() - 1), plan_for(S1.bit_length() - 1)
    V = re.shape[0]
    # outer_fwd_kernel: r0-point FFTs down the columns n2, twiddle W_M^{k1 n2}.
    cr = re.reshape(V, r0, S1).transpose(1, 2).reshape(V * S1, r0)
    ci = im.reshape(V, r0, S1).transpose(1, 2).reshape(V * S1, r0)
    cr, ci = cta_fft(cr, ci, pl0, False, tw, twN, op, split)
    q = torch.arange(r0)
    k1 = torch.empty_like(q)
    k1[digit_reversed_positions(pl0.radices, q)] = q  # frequency at each position (plan_freq)
    n2 = torch.arange(S1)
    w = _twid(tw, twN, 2 * ((k1[:, None] * n2[None, :]) % M))  # (q, n2)
    work = torch.complex(cr, ci).reshape(V, S1, r0).transpose(1, 2) * w  # work[v, q, n2]
    # inner_conv_kernel: S1-point FFT per sub-block, pointwise over pairs, inverse.
    br, bi = cta_fft(work.real.reshape(V * r0, S1).contiguous(),
                     work.imag.reshape(V * r0, S1).contiguous(), pl1, False, tw, twN, op, split)
    inner = torch.complex(br, bi).reshape(V, r0, S1)
    # Natural order k = k1 + r0 k2 sits at (pos0(k1), pos1(k2)).
    kk = torch.arange(M)
    flat = (digit_reversed_positions(pl0.radices, kk % r0) * S1
            + digit_reversed_positions(pl1.radices, kk // r0))
    Zp = pointwise(inner.reshape(V, M)[:, flat], kf, tw, M)
    if keep is not None:
        Zp = Zp * keep[kk % r0]
    Z = torch.empty_like(Zp)
    Z[:, flat] = Zp
    Z = Z.reshape(V * r0, S1)
    br, bi = cta_fft(Z.real.contiguous(), Z.imag.contiguous(), pl1, True, tw, twN, op, split)
    work = torch.complex(br, bi).reshape(V, r0, S1) * w.conj()
    # outer_inv_kernel: inverse r0-point column FFTs.
    cr = work.real.transpose(1, 2).reshape(V * S1, r0).contiguous()
    ci = work.imag.transpose(1, 2).reshape(V * S1, r0).contiguous()
    cr, ci = cta_fft(cr, ci, pl0, True, tw, twN, op, split)
    out = torch.complex(cr, ci).reshape(V, S1, r0).transpose(1, 2).reshape(V, M)
    return out
