"""The fused CUDA kernels (genomeconv.kernels.cuda, csrc/) on a GPU against float64 references.

Every path of the extension: the dense fused kernel (one CTA holding several short rows, one row,
the largest fused size), the four-step path past the fused size, overlap-save segments (partial
convolutions), frequency-block masks (sparse), the reversed mode through the backward, float32,
fp16 and bf16 inputs with split (default) and single (`fast`) mma operands, odd and power-of-two
lengths, gates, D, and the errors for bad shapes, dtypes and devices. The kernels are also held
to the CPU replay of their schedule (genomeconv.kernels.tiles) where that is cheap, which tells a
kernel bug from a schedule bug.

Error bounds (max-normalized, as tests/test_kernels_tiles.py): float32 split 1e-4; fp16/bf16
split within 2x the error of plain torch in the same precision (float32 FFTs of the rounded
inputs, output rounded to the dtype); single operands within the emulation's documented bounds.
Skipped without a CUDA device; with one, a missing extension fails them (it must be built).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genomeconv.kernels import choose_method, cuda, fftconv, tiles
from helpers import autograd_reference, f64, grads, plain_torch_conv, rel_err

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EPS = {torch.float32: 1e-5, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
FAST_TOL = {torch.float32: 2e-2, torch.float16: 4e-3, torch.bfloat16: 2e-2}


@pytest.fixture(scope="module")
def fmax() -> int:
    """The device's fused size; fails (not skips) when the extension is not built."""
    cuda.require()
    return cuda.fused_max_points(torch.cuda.current_device())


def make(B, H, L, Lk, dtype, seed, gates=True):
    """Random inputs (never zeros) on the GPU; u and gates rounded to dtype, k and D float32."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, H, L, generator=g).to(dtype)
    k = torch.randn(H, Lk, generator=g) / math.sqrt(Lk)
    D = torch.randn(H, generator=g)
    pre = torch.randn(B, H, L, generator=g).to(dtype) if gates else None
    post = torch.randn(B, H, L, generator=g).to(dtype) if gates else None
    return {name: None if t is None else t.cuda()
            for name, t in dict(u=u, k=k, D=D, pregate=pre, postgate=post).items()}


def reference(u, k, D, pregate=None, postgate=None, keep_bins=None, n=None):
    """float64 numpy: postgate * (conv(x, k) + D x), x = pregate * u; with keep_bins, the
    circular convolution of size n with the masked spectrum (rfft(k) + D) * keep_bins."""
    x = f64(u) * (1.0 if pregate is None else f64(pregate))
    L, Lk = x.shape[-1], k.shape[-1]
    n = L + Lk if n is None else n
    K = np.fft.rfft(f64(k), n=n) + (0.0 if D is None else f64(D)[:, None])
    if keep_bins is not None:
        K = K * keep_bins
    y = np.fft.irfft(np.fft.rfft(x, n=n) * K, n=n)[..., :L]
    return y * (1.0 if postgate is None else f64(postgate))


def check(y, a, want, fast=False, masked=False):
    """y against the float64 reference within the precision's bound. masked: the reference has
    a masked spectrum, which plain torch does not compute; its baseline is then the rounding of
    the float64 result to the dtype (no larger than plain torch's error)."""
    dtype = a["u"].dtype
    assert y.dtype == dtype and y.shape == a["u"].shape and y.is_cuda
    assert bool(torch.isfinite(y).all())
    err = rel_err(y, want)
    if fast:
        assert err < FAST_TOL[dtype], err
    elif dtype == torch.float32:
        assert err < 1e-4, err
    else:
        base = torch.from_numpy(want).to(dtype) if masked else plain_torch_conv(**a)
        assert err <= 2 * rel_err(base, want) + 1e-6, err


def test_extension_loaded_with_device_limits(fmax):
    assert cuda.available() and cuda.unavailable_reason() is None
    assert fmax >= 4096 and fmax & (fmax - 1) == 0
    props = torch.cuda.get_device_properties(0)
    if props.major >= 9:  # Hopper: 227 KB of shared memory per block -> 16K complex points
        assert fmax == tiles.FUSED_MAX_POINTS_H100


# (B, H, L): several short rows per CTA with a ragged last CTA, one row, the largest fused
# size, and the four-step path (odd and power-of-two), up to a 2^20-point transform.
DENSE = [(5, 61, 1), (5, 61, 13), (3, 37, 256), (2, 3, 1000), (2, 3, 4097), (1, 2, 8192),
         (1, 2, 20001), (1, 2, 65536), (1, 1, 2**19 + 7)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("B,H,L", DENSE)
def test_dense_against_float64(B, H, L, dtype, fast, fmax):
    a = make(B, H, L, L, dtype, seed=L)
    y = cuda.fftconv(**a, fast=fast)
    check(y, a, reference(**a), fast)
    assert torch.equal(y, cuda.fftconv(**a, fast=fast))  # a race would move the result


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [13, 1000, 4097])
def test_kernel_follows_its_cpu_schedule(L, dtype, fmax):
    """Same numbers as genomeconv.kernels.tiles (up to the mma's addition order and one
    rounding of the output): a mismatch here with the float64 test passing on the CPU replay
    (tests/test_kernels_tiles.py) points at the kernel, not at the schedule."""
    a = make(2, 3, L, L, dtype, seed=L + 1)
    p = cuda.plan(L, L, fmax)
    y = cuda.fftconv(**a)
    cpu = {n: None if t is None else t.cpu() for n, t in a.items()}
    emu = tiles.emulate_conv(cpu["u"], tiles.filter_spectrum(cpu["k"], cpu["D"], p.M), p.M,
                             pregate=cpu["pregate"], postgate=cpu["postgate"],
                             seg_out=p.seg_out, halo=p.halo, fused_max=fmax)
    assert rel_err(y, emu) <= EPS[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L,Lk,partial", [(30001, 100, True), (4096, 300, None),
                                          (100000, 4097, True), (777, 5, True)])
def test_partial_overlap_save(L, Lk, partial, dtype, fmax):
    p = cuda.plan(L, Lk, fmax, partial=partial)
    assert p.partial and p.halo == Lk - 1 and p.seg_out + p.halo <= 2 * p.M
    a = make(2, 3, L, Lk, dtype, seed=L + Lk)
    check(cuda.fftconv(**a, partial=partial), a, reference(**a))


def symmetric_keep(count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(count, generator=g) < 0.4
    keep = keep | keep[(-torch.arange(count)) % count]
    keep[0] = keep[1] = keep[count - 1] = True
    return keep


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [3000, 40000])  # fused (64 blocks) and four-step (r0 blocks)
def test_frequency_sparse_masks(L, dtype, fmax):
    p = cuda.plan(L, L, fmax, partial=False)
    count = tiles.first_block_count(p.M, fmax)
    keep = symmetric_keep(count, L)
    a = make(1, 3, L, L, dtype, seed=L + 2)
    y = cuda.fftconv(**a, keep=keep)
    bins = f64(tiles.keep_bins(keep, p.M))
    check(y, a, reference(**a, keep_bins=bins, n=2 * p.M), masked=True)
    everything = torch.ones(count, dtype=torch.bool)
    check(cuda.fftconv(**a, keep=everything), a, reference(**a))


def test_rows_past_two_to_the_31_elements(fmax):
    """64-bit offsets: the last rows of a batch with more than 2^31 elements are right."""
    L, H = 8192, 7
    B = -(-(2**31 // L + 3) // H)
    free, _ = torch.cuda.mem_get_info()
    assert free > 6 * B * H * L * 2, "needs about 26 GB of free GPU memory"
    g = torch.Generator(device="cuda").manual_seed(5)
    u = torch.randn(B, H, L, generator=g, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(H, L, generator=g, device="cuda") / math.sqrt(L)
    y = cuda.fftconv(u, k)
    for b in (0, B - 1):
        a = {"u": u[b:b + 1], "k": k, "D": None}
        check(y[b:b + 1], a, reference(**a))
    del u, y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L,Lk,partial,sparse", [(1000, 1000, False, False),
                                                  (20001, 20001, False, False),
                                                  (30001, 100, True, False),
                                                  (3000, 3000, False, True)])
def test_backward_against_float64_autograd(L, Lk, partial, sparse, dtype, fmax):
    """du, dk, dD and both gates' gradients (reversed-mode kernel, ungated re-run and the
    float32 cross-correlation) against float64 autograd; low precision within 2x plain torch's
    gradient error in the same precision."""
    a = make(2, 3, L, Lk, dtype, seed=L + 3)
    dy = torch.randn(2, 3, L, generator=torch.Generator().manual_seed(L)).to(dtype)
    keep = bins = n = None
    if sparse:
        p = cuda.plan(L, Lk, fmax, partial=False)
        keep = symmetric_keep(tiles.first_block_count(p.M, fmax), L)
        bins, n = tiles.keep_bins(keep, p.M).double(), 2 * p.M
    got = grads(lambda **t: cuda.fftconv(**t, keep=keep, partial=partial), a, dy.cuda())
    want = grads(lambda **t: autograd_reference(**t, keep_bins=bins, n=n),
                 {name: t.double().cpu() for name, t in a.items()}, dy.double())
    base = {} if dtype == torch.float32 or sparse else grads(plain_torch_conv, a, dy.cuda())
    for name in a:
        assert got[name].dtype == a[name].dtype and got[name].shape == a[name].shape, name
        err = rel_err(got[name], want[name])
        bound = 1e-4 if dtype == torch.float32 else (
            2 * EPS[dtype] if sparse else 2 * rel_err(base[name], want[name]) + 1e-6)
        assert err <= bound, (name, err, bound)


def test_top_level_fftconv_dispatches_to_the_kernels(fmax):
    a = make(2, 4, 5000, 700, torch.bfloat16, seed=11)
    u, k = a["u"], a["k"]
    assert choose_method(u, k.shape[-1]) == "cuda"
    y = fftconv(u, k, a["D"], pregate=a["pregate"], postgate=a["postgate"])
    check(y, a, reference(**a))
    # out= in place, on a channel slice (non-contiguous), as models/inference.py does
    buf = torch.randn(2, 8, 5000, device="cuda", dtype=torch.float32)
    view, want = buf[:, 2:6], reference(buf[:, 2:6], k, a["D"])
    fftconv(view, k, a["D"], out=view)
    assert rel_err(buf[:, 2:6], want) < 1e-4


def test_bad_arguments_raise(fmax):
    a = make(1, 2, 64, 64, torch.float32, seed=1, gates=False)
    u, k, D = a["u"], a["k"], a["D"]
    with pytest.raises(ValueError, match="CUDA tensor"):
        cuda.fftconv(u.cpu(), k.cpu())
    with pytest.raises(ValueError, match=r"\(B, H, L\)"):
        cuda.fftconv(u[0], k)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        cuda.fftconv(u.double(), k)
    with pytest.raises(ValueError, match="k must be"):
        cuda.fftconv(u, k[:1])
    with pytest.raises(ValueError, match="k must be on"):
        cuda.fftconv(u, k.cpu())
    with pytest.raises(ValueError, match="D must be"):
        cuda.fftconv(u, k, D[:1])
    with pytest.raises(ValueError, match="pregate must be on"):
        cuda.fftconv(u, k, pregate=u.cpu())
    with pytest.raises(ValueError, match="pregate must broadcast"):
        cuda.fftconv(u, k, pregate=u[..., :3])
    count = tiles.first_block_count(cuda.plan(64, 64, fmax).M, fmax)
    with pytest.raises(ValueError, match=f"keep must have {count} frequency blocks"):
        cuda.fftconv(u, k, keep=torch.ones(count + 1, dtype=torch.bool))
    lopsided = torch.ones(count, dtype=torch.bool)
    lopsided[1] = False
    with pytest.raises(ValueError, match="keep must be symmetric"):
        cuda.fftconv(u, k, keep=lopsided)
    long_u = torch.randn(1, 1, 4 * fmax, device="cuda")
    with pytest.raises(ValueError, match="too long for a segmented transform"):
        cuda.fftconv(long_u, torch.randn(1, 2 * fmax, device="cuda"), partial=True)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        fftconv(u.cpu(), k.cpu(), method="cuda")


def test_binding_checks_raise_runtime_errors(fmax):
    """The extension's own checks (TORCH_CHECK and launch_conv's argument checks) become
    RuntimeError, and the CUDA context stays usable afterwards."""
    ext = cuda.require()
    u = torch.randn(2, 3, 100, device="cuda")
    M = cuda.plan(100, 100, fmax).M
    kf = tiles.filter_spectrum(torch.randn(3, 100, device="cuda"), None, M)
    tw = tiles.twiddle_table(M, "cuda")
    ok = dict(pregate=None, postgate=None, kf=kf, tw=tw, keep=None, M=M, seg_out=100, halo=0,
              reverse=False, fast=False)
    assert ext.conv(u, **ok).shape == u.shape
    bad = [dict(kf=kf[:2]), dict(kf=kf.real.contiguous()), dict(tw=tw[:-1]),
           dict(pregate=u.half()), dict(postgate=u[..., :50].contiguous()),
           dict(keep=torch.ones(3, dtype=torch.uint8, device="cuda")),
           dict(seg_out=2 * M + 1), dict(halo=-1),
           dict(M=48, kf=torch.ones(3, 49, dtype=torch.complex64, device="cuda"),
                tw=torch.ones(48, dtype=torch.complex64, device="cuda"))]  # M not 2^m
    for change in bad:
        with pytest.raises(RuntimeError, match="monarch conv"):
            ext.conv(u, **{**ok, **change})
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        ext.conv(u.double(), **ok)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.conv(u.transpose(1, 2), **ok)
    torch.cuda.synchronize()
    assert ext.conv(u, **ok).isfinite().all()
