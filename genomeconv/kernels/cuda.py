"""Loader and dispatch for the fused CUDA kernels (csrc/, extension `genomeconv._monarch_cuda`).

`available()` says whether CUDA tensors can use the kernels (extension built, a CUDA device
present, not disabled with GENOMECONV_DISABLE_CUDA_KERNELS=1); `fftconv` is the autograd entry
point genomeconv.kernels.fftconv calls for CUDA tensors; `require()` raises a clear error when
the kernels are asked for but missing. The schedule the kernels run is emulated on the CPU by
genomeconv.kernels.tiles, which also defines the transform sizes, twiddle table and filter
spectrum used here.

Method choice (`plan`): a dense conv uses the smallest supported rfft size N = 2M >= L + Lk - 1;
when the filter is short (partial convolution), overlap-save segments with N_b = 2M_b >= 4 Lk
(at least 1024) are used when that at least halves the transform size, so work grows as
L log Lk. Backward: du, dpregate and the D part run through the same kernel in time-reversed
mode (correlation = reversed convolution, same cached spectrum); dpostgate re-runs the forward
ungated; dk and dD are one float32 torch.fft cross-correlation summed over the batch.

Errors: launch and configuration errors are raised by the binding as RuntimeError (TORCH_CHECK);
faults during an asynchronous kernel surface as RuntimeError at the next synchronizing call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

import torch

import genomeconv.kernels.tiles as tiles
from .fft import SPECTRA

_EXT: ModuleType | None = None
_REASON: str | None = None
try:  # built by setup.py only where torch has CUDA and nvcc is present
    from genomeconv import _monarch_cuda as _EXT  # type: ignore[attr-defined,no-redef]
except ImportError as exc:  # the pure-Python install
    _REASON = f"the genomeconv._monarch_cuda extension is not built ({exc})"


def unavailable_reason() -> str | None:
    """Why the kernels cannot be used now, or None when they can."""
    if os.environ.get("GENOMECONV_DISABLE_CUDA_KERNELS", "") == "1":
        return "disabled by GENOMECONV_DISABLE_CUDA_KERNELS=1"
    if _EXT is None:
        return _REASON
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


def available() -> bool:
    """True when CUDA tensors can run on the fused kernels."""
    return unavailable_reason() is None


def require() -> ModuleType:
    """The extension module, or a RuntimeError saying why the kernels cannot run."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(
            f"genomeconv CUDA kernels unavailable: {reason}. Build them with "
            "`pip install --no-build-isolation -e .` on a machine with CUDA torch and nvcc "
            "(GENOMECONV_BUILD_CUDA=1 forces the build), or use method='fft'/'monarch'.")
    assert _EXT is not None
    return _EXT


@lru_cache(maxsize=None)
def fused_max_points(device_index: int) -> int:
    """Largest complex size M the fused single kernel handles on this device."""
    return int(require().fused_max_points(torch.device("cuda", device_index)))


@dataclass(frozen=True)
class ConvPlan:
    """Transform of one launch: complex size M (rfft size 2M), overlap-save segments of seg_out
    outputs with a halo of Lk - 1 inputs (seg_out = L, halo = 0 for a dense conv)."""

    M: int
    seg_out: int
    halo: int

    @property
    def partial(self) -> bool:
        return self.halo > 0


def _cost(points: int, count: int, fused_max: int) -> float:
    """Relative cost of `count` transforms of 2*points real points: n log n, three passes over
    device memory past the fused size (outer stage, inner conv, inverse outer stage)."""
    n = 2 * points
    return count * n * n.bit_length() * (1 if points <= fused_max else 3)


def plan(L: int, Lk: int, fused_max: int, partial: bool | None = None) -> ConvPlan:
    """Dense or overlap-save transform for input length L and filter length Lk (<= L).

    Segments use rfft size 2M_b >= 4 Lk (at least 1024), capped at the fused size while at least
    Lk outputs per segment remain; partial=None picks whichever has the lower `_cost`.
    """
    dense = ConvPlan(tiles.transform_points(L + Lk - 1, fused_max), L, 0)
    if partial is False or Lk <= 1:
        return dense
    Mb = min(tiles.transform_points(max(4 * Lk, 1024), fused_max), fused_max)
    seg_out = 2 * Mb - (Lk - 1)
    if seg_out < Lk:
        if partial:
            raise ValueError(f"partial convolution: filter length {Lk} is too long for a "
                             f"segmented transform (at most {fused_max} taps on this device)")
        return dense
    seg = ConvPlan(Mb, min(seg_out, L), Lk - 1)
    nseg = -(-L // seg.seg_out)
    if partial is None and _cost(Mb, nseg, fused_max) >= _cost(dense.M, 1, fused_max):
        return dense
    return seg


@lru_cache(maxsize=64)
def _twiddles(M: int, device: torch.device) -> torch.Tensor:
    return tiles.twiddle_table(M, device)


def _spectrum(k: torch.Tensor, D: torch.Tensor | None, M: int,
              keep: torch.Tensor | None) -> torch.Tensor:
    """kf = (rfft(k, 2M) + D) * mask as complex64 (H, M+1) (tiles.filter_spectrum), the k part
    kept in genomeconv.kernels.fft.SPECTRA (keyed by k's storage and version, tagged by M and
    the mask); D is added per call, so a changed D needs no new transform."""
    keep_key = None if keep is None else tuple(keep.tolist())
    Kk = SPECTRA.get(k, None, 2 * M, torch.float64,
                     transform=lambda kd, _, n: tiles.filter_spectrum(kd, None, M, keep),
                     tag=("cuda", keep_key))
    if D is not None:
        Dk = D.detach().to(Kk.dtype)[:, None]
        Kk = Kk + (Dk if keep is None else Dk * tiles.keep_bins(keep.to(Kk.device), M))
    return Kk.contiguous()


def _launch(u, pregate, postgate, kf, M, p: ConvPlan, keep, reverse, fast):
    return require().conv(u, pregate, postgate, kf, _twiddles(M, u.device), keep, M,
                          p.seg_out, p.halo, reverse, fast)


class _MonarchConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, k, D, pregate, postgate, keep, p, fast):  # type: ignore[override]
        kf = _spectrum(k, D, p.M, keep)
        keep8 = None if keep is None else keep.to(device=u.device, dtype=torch.uint8).contiguous()
        y = _launch(u, pregate, postgate, kf, p.M, p, keep8, False, fast)
        ctx.save_for_backward(u, k, D, pregate, postgate)
        ctx.extra = (kf, keep, keep8, p, fast)
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        u, k, D, pregate, postgate = ctx.saved_tensors
        kf, keep, keep8, p, fast = ctx.extra
        dy = dy.contiguous().to(u.dtype)
        need = ctx.needs_input_grad
        # dx = correlation of g = dy * postgate with k (+ D g): the kernel in reversed time;
        # dpostgate = dy * z, z the ungated forward re-run. Each gradient leaves the kernel
        # through its store gate (du = pregate dx, dpregate = u dx, dpostgate = dy z), so it
        # is rounded to u.dtype once, as plain torch's (gating a rounded dx or z afterwards
        # doubles the error in bf16: "cuda_backward_rounding", benchmarks/results/).
        du = dpre = dpost = None
        if need[0]:
            du = _launch(dy, postgate, pregate, kf, p.M, p, keep8, True, fast)
        if need[3] and pregate is not None:
            dpre = _launch(dy, postgate, u, kf, p.M, p, keep8, True, fast)
        if need[4] and postgate is not None:
            dpost = _launch(u, pregate, dy, kf, p.M, p, keep8, False, fast)
        dk = dD = None
        if need[1] or (need[2] and D is not None):
            x = u.float() * (pregate.float() if pregate is not None else 1.0)
            g = dy.float() * (postgate.float() if postgate is not None else 1.0)
            # The forward's transform (a mask is defined on its bins); a segmented forward
            # needs one full-length transform here instead.
            n = 2 * p.M if not p.partial else 1 << (u.shape[-1] + k.shape[-1] - 2).bit_length()
            spec = (torch.fft.rfft(x, n=n).conj() * torch.fft.rfft(g, n=n)).sum(0)
            if keep is not None:
                spec = spec * tiles.keep_bins(keep.to(spec.device), n // 2)
            corr = torch.fft.irfft(spec, n=n)
            dk = corr[:, :k.shape[-1]].to(k.dtype) if need[1] else None
            dD = corr[:, 0].to(D.dtype) if (need[2] and D is not None) else None
        return du, dk, dD, dpre, dpost, None, None, None


def fftconv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None, *,
            pregate: torch.Tensor | None = None, postgate: torch.Tensor | None = None,
            keep: torch.Tensor | None = None, partial: bool | None = None,
            fast: bool = False) -> torch.Tensor:
    """Causal y = postgate * (conv(pregate * u, k) + D * pregate * u) on the CUDA kernels.

    u (B, H, L) float32/bf16/fp16 CUDA; k (H, Lk) float32; D (H,) or None; gates broadcastable
    to u (cast to u.dtype). keep: bool (first_block_count(M),) frequency-block mask, symmetric
    (keep[b] == keep[-b % count]); the result is the conv with the masked spectrum, and masked
    blocks skip their transform work. partial: None = automatic overlap-save choice (see
    `plan`), True/False to force. fast: single-operand mma (about 2x the output rounding error
    instead of 1x). Autograd for u, k, D and both gates. Returns u.dtype.
    """
    require()
    if not u.is_cuda or u.dim() != 3:
        raise ValueError(f"u must be a (B, H, L) CUDA tensor, got {tuple(u.shape)} on {u.device}")
    if u.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"u must be float32, float16 or bfloat16, got {u.dtype}")
    B, H, L = u.shape
    if k.dim() != 2 or k.shape[0] != H or k.shape[1] < 1:
        raise ValueError(f"k must be (H={H}, Lk>=1), got {tuple(k.shape)}")
    if k.device != u.device:
        raise ValueError(f"k must be on {u.device}, got {k.device}")
    if D is not None and (D.shape != (H,) or D.device != u.device):
        raise ValueError(f"D must be ({H},) on {u.device}, got {tuple(D.shape)} on {D.device}")
    if L == 0 or B * H == 0:
        return torch.empty_like(u)
    if k.shape[1] > L:  # taps past L never reach an output
        k = k[:, :L]
    gates = []
    for name, gate in (("pregate", pregate), ("postgate", postgate)):
        if gate is not None:
            if gate.device != u.device:
                raise ValueError(f"{name} must be on {u.device}, got {gate.device}")
            try:
                gate = gate.to(u.dtype).expand(B, H, L).contiguous()
            except RuntimeError:
                raise ValueError(f"{name} must broadcast to u's shape {(B, H, L)}, got "
                                 f"{tuple(gate.shape)}") from None
        gates.append(gate)
    fmax = fused_max_points(u.device.index if u.device.index is not None
                            else torch.cuda.current_device())
    p = plan(L, k.shape[1], fmax, partial=False if keep is not None else partial)
    if keep is not None:
        count = tiles.first_block_count(p.M, fmax)
        keep = keep.to(device=u.device, dtype=torch.bool).reshape(-1)
        if keep.numel() != count:
            raise ValueError(f"keep must have {count} frequency blocks for L={L}, "
                             f"Lk={k.shape[1]} (complex size {p.M}), got {keep.numel()}")
        mirrored = keep[(-torch.arange(count, device=keep.device)) % count]
        if not torch.equal(keep, mirrored):
            raise ValueError("keep must be symmetric: keep[b] == keep[(count - b) % count] "
                             "(a real filter's spectrum pairs bins k and N - k)")
    return _MonarchConv.apply(u.contiguous(), k, D, gates[0], gates[1], keep, p, fast)
