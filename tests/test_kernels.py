"""genomeconv.kernels.fftconv (FFT and direct paths, dispatch), the spectrum cache, LongConv and
argument checks, against float64 numpy/scipy references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from genomeconv.kernels import LongConv, SpectrumCache, choose_method, fft, fftconv
from helpers import conv_inputs, conv_reference, rel_err


def direct_reference(u, k) -> np.ndarray:
    """Float64 np.convolve per channel (independent of FFTs), for small sizes."""
    u64, k64 = u.double().numpy(), k.double().numpy()
    B, H, L = u64.shape
    out = np.empty_like(u64)
    for b in range(B):
        for h in range(H):
            out[b, h] = np.convolve(u64[b, h], k64[h])[:L]
    return out


LENGTHS = [1, 2, 3, 5, 17, 31, 100, 127, 257, 1000, 4099, 6000]


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("ratio", ["one", "third", "full"])
@pytest.mark.parametrize("method", ["auto", "fft"])
def test_fp32_matches_float64_reference(L, ratio, method):
    Lk = {"one": 1, "third": max(1, L // 3), "full": L}[ratio]
    a = conv_inputs(2, 3, L, Lk, seed=L + Lk)
    y = fftconv(a["u"], a["k"], a["D"], pregate=a["pregate"], postgate=a["postgate"],
                method=method)
    assert y.dtype == torch.float32 and y.shape == (2, 3, L)
    assert rel_err(y, conv_reference(**a)) < 1e-4


@pytest.mark.parametrize("B,H", [(1, 1), (1, 4), (3, 1), (2, 5)])
@pytest.mark.parametrize("method", ["fft", "direct", "auto"])
def test_batch_channels_no_gates_vs_np_convolve(B, H, method):
    a = conv_inputs(B, H, 211, 50, gates=False, D=False, seed=B * 10 + H)
    y = fftconv(a["u"], a["k"], method=method)
    assert rel_err(y, direct_reference(a["u"], a["k"])) < 1e-4


def test_large_non_pow2_and_pow2_lengths():
    for L, Lk in [(2**17, 2**17), (3 * 5**6, 3 * 5**6)]:  # 131072 and 46875 = 3 * 5^6
        a = conv_inputs(1, 2, L, Lk, seed=L)
        y = fftconv(a["u"], a["k"], a["D"], pregate=a["pregate"], postgate=a["postgate"])
        assert rel_err(y, conv_reference(**a)) < 1e-4


def test_non_contiguous_inputs_and_broadcast_gates():
    g = torch.Generator().manual_seed(3)
    u = torch.randn(2, 333, 4, generator=g).transpose(1, 2)  # (2, 4, 333), strided
    k = torch.randn(333, 4, generator=g).t()[:, ::2]  # (4, 167), strided
    D = torch.randn(8, generator=g)[::2]
    pre = torch.randn(1, 4, 333, generator=g)
    post = torch.randn(2, 1, 1, generator=g)
    for method in ("fft", "partial", "direct"):
        y = fftconv(u, k, D, pregate=pre, postgate=post, method=method)
        assert rel_err(y, conv_reference(u, k, D, pre, post)) < 1e-4


def test_filter_longer_than_input_is_truncated():
    a = conv_inputs(1, 2, 40, 90, seed=9)
    y = fftconv(a["u"], a["k"], a["D"])
    assert rel_err(y, conv_reference(a["u"], a["k"], a["D"])) < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("L", [3, 100, 1000, 4099])
def test_low_precision_within_twice_plain_torch_error(dtype, L):
    a = conv_inputs(2, 3, L, L, dtype=dtype, seed=L)
    y = fftconv(a["u"], a["k"], a["D"], pregate=a["pregate"], postgate=a["postgate"])
    assert y.dtype == dtype
    ref = conv_reference(**a)
    # The same formula in plain torch: float32 FFTs of the rounded inputs, output in dtype.
    x = a["u"].float() * a["pregate"].float()
    n = 2 * L
    z = torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(a["k"], n=n), n=n)[..., :L]
    plain = ((z + a["D"][:, None] * x) * a["postgate"].float()).to(dtype)
    assert rel_err(y, ref) <= 2 * rel_err(plain, ref) + 1e-6


def test_float64_inputs_accumulate_in_float64():
    a = conv_inputs(1, 2, 500, 500, dtype=torch.float64, seed=5)
    a["k"] = a["k"].double()
    y = fftconv(a["u"], a["k"], a["D"], pregate=a["pregate"], postgate=a["postgate"])
    assert y.dtype == torch.float64 and rel_err(y, conv_reference(**a)) < 1e-12


@pytest.mark.parametrize("method,L,Lk", [("fft", 13, 7), ("fft", 8, 8), ("direct", 9, 4),
                                         ("partial", 40, 5), ("auto", 11, 11)])
def test_gradcheck_float64(method, L, Lk):
    g = torch.Generator().manual_seed(L)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64,  # noqa: E731
                               requires_grad=True)
    u, k, D, pre, post = r(2, 3, L), r(3, Lk), r(3), r(2, 3, L), r(1, 3, L)
    kw = {"block": 16} if method == "partial" else {}
    assert gradcheck(lambda u, k, D, pre, post: fftconv(
        u, k, D, pregate=pre, postgate=post, method=method, **kw), (u, k, D, pre, post),
        fast_mode=method == "partial")


def test_fp32_gradients_match_float64_autograd_reference():
    a = conv_inputs(2, 3, 300, 300, seed=2)
    leaves = {n: t.clone().requires_grad_() for n, t in a.items()}
    y = fftconv(leaves["u"], leaves["k"], leaves["D"], pregate=leaves["pregate"],
                postgate=leaves["postgate"])
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y * w).sum().backward()
    ref_leaves = {n: t.double().requires_grad_() for n, t in a.items()}
    ru, rk, rD, rpre, rpost = (ref_leaves[n] for n in ("u", "k", "D", "pregate", "postgate"))
    x = ru * rpre
    idx = torch.arange(300)
    lag = idx[:, None] - idx[None, :]  # Toeplitz matrix T[t, s] = k[t - s]
    T = torch.where(lag >= 0, rk[:, lag.clamp(min=0)], torch.zeros((), dtype=torch.float64))
    yr = (torch.einsum("hts,bhs->bht", T, x) + rD[:, None] * x) * rpost
    (yr * w.double()).sum().backward()
    for name in leaves:
        assert rel_err(leaves[name].grad, ref_leaves[name].grad.numpy()) < 1e-4, name


@pytest.mark.parametrize("path", ["paired", "blockwise"])
def test_spectrum_cache_reuses_and_notices_in_place_change(path):
    """Both the inference path (paired.py) and the blockwise autograd path (fft.py) fold D
    into the cached filter side, so a change to either k or D is noticed."""
    cache = SpectrumCache()
    a = conv_inputs(1, 3, 700, 700, gates=False, seed=4)
    u, k, D = a["u"], a["k"], a["D"]
    conv = (lambda: fftconv(u, k, D, method="fft", cache=cache)) if path == "paired" else (
        lambda: fft.conv(u, k, D, cache=cache))
    y1, y2 = conv(), conv()
    assert cache.computed == 1 and torch.equal(y1, y2)
    k.mul_(-0.5)  # in place: the version counter moves
    y3 = conv()
    assert cache.computed == 2 and rel_err(y3, conv_reference(u, k, D)) < 1e-4
    D.add_(1.0)
    y4 = conv()
    assert cache.computed == 3 and rel_err(y4, conv_reference(u, k, D)) < 1e-4
    fresh = k.clone()  # a different tensor with the same values: its own entry
    fftconv(u, fresh, D, method="fft", cache=cache) if path == "paired" else fft.conv(
        u, fresh, D, cache=cache)
    assert cache.computed == 4 and len(cache._entries) == 2
    del fresh  # a collected filter's entry goes with it
    conv()
    assert cache.computed == 4 and len(cache._entries) == 1


def test_default_cache_reused_across_calls_and_bypassed_when_training():
    a = conv_inputs(1, 2, 513, 513, gates=False, seed=6)
    before = fft.SPECTRA.computed
    for _ in range(3):
        fftconv(a["u"], a["k"], a["D"], method="fft")
    assert fft.SPECTRA.computed == before + 1
    k = a["k"].clone().requires_grad_()
    fftconv(a["u"], k, method="fft")
    with torch.no_grad():
        k.add_(1.0)
    y = fftconv(a["u"], k, method="fft")
    assert rel_err(y, conv_reference(a["u"], k)) < 1e-4


def test_spectrum_cache_budget_evicts_and_blocks_oversized():
    tiny = SpectrumCache(max_bytes=3 * 8 * 1001)
    a = conv_inputs(1, 3, 1000, 1000, gates=False, seed=8)
    y = fftconv(a["u"], a["k"], method="fft", cache=tiny)  # n = 2000: spectrum fits exactly
    assert rel_err(y, conv_reference(a["u"], a["k"])) < 1e-4
    big = conv_inputs(1, 3, 4000, 4000, gates=False, seed=8)
    y = fftconv(big["u"], big["k"], method="fft", cache=tiny)  # too big: computed per block
    assert rel_err(y, conv_reference(big["u"], big["k"])) < 1e-4
    assert tiny._bytes <= tiny.max_bytes


def test_choose_method_rules():
    u = torch.zeros(1, 1, 2**14)
    assert choose_method(u[..., :8], 8) == "direct"
    assert choose_method(u, 2**14) == "fft"
    assert choose_method(torch.zeros(1, 1, 2**20), 256) == "partial"
    assert choose_method(torch.zeros(1, 1, 2**22), 2**14) == "partial"


def test_monarch_method_dispatch_with_gates():
    a = conv_inputs(2, 3, 300, 120, seed=12)
    y = fftconv(a["u"], a["k"], a["D"], pregate=a["pregate"], postgate=a["postgate"],
                method="monarch")
    assert rel_err(y, conv_reference(**a)) < 1e-4


def test_long_conv_module_caches_and_invalidates():
    torch.manual_seed(0)
    m = LongConv(4, 256)
    u = torch.randn(2, 4, 256)
    with torch.no_grad():
        y1 = m(u)
        y2 = m(u)
    assert m.cache.computed == 1 and torch.equal(y1, y2)
    assert rel_err(y1, conv_reference(u, m.k, m.D)) < 1e-4
    loss = m(u).square().mean()
    loss.backward()
    assert m.k.grad is not None and m.D.grad is not None
    with torch.no_grad():  # an SGD step, in place like torch.optim's
        for p in m.parameters():
            p.sub_(0.1 * p.grad)
    with torch.no_grad():
        y3 = m(u)
    assert rel_err(y3, conv_reference(u, m.k, m.D)) < 1e-4
    m.invalidate()
    with torch.no_grad():
        m(u)
    assert m.cache.computed == 3
    post = torch.randn(2, 4, 256)
    with torch.no_grad():
        yg = m(u, postgate=post)
    assert rel_err(yg, conv_reference(u, m.k, m.D, postgate=post)) < 1e-4


def _bad_cases():
    u, k, D = torch.randn(2, 3, 10), torch.randn(3, 5), torch.randn(3)
    nan_k = k.clone()
    nan_k[1, 2] = float("nan")
    inf_D = D.clone()
    inf_D[0] = float("inf")
    return [
        (dict(u=u[0], k=k), ValueError, "u"),
        (dict(u=u.long(), k=k), TypeError, "u"),
        (dict(u=u.to(torch.complex64), k=k), TypeError, "u"),
        (dict(u=u[..., :0], k=k), ValueError, "u"),
        (dict(u=u, k=k[:2]), ValueError, "k"),
        (dict(u=u, k=k[:, :0]), ValueError, "k"),
        (dict(u=u, k=k.int()), TypeError, "k"),
        (dict(u=u, k=k.to(torch.complex64)), TypeError, "k"),
        (dict(u=u, k=[1.0, 2.0]), TypeError, "k"),
        (dict(u=u, k=nan_k), ValueError, "k"),
        (dict(u=u, k=k, D=inf_D), ValueError, "D"),
        (dict(u=u, k=k, D=D[:2]), ValueError, "D"),
        (dict(u=u, k=k, D=D.long()), TypeError, "D"),
        (dict(u=u, k=k.to("meta")), ValueError, "k"),
        (dict(u=u, k=k, pregate=torch.randn(2, 3, 11)), ValueError, "pregate"),
        (dict(u=u, k=k, postgate=torch.randn(3, 3, 10)), ValueError, "postgate"),
        (dict(u=u, k=k, postgate=torch.ones(2, 3, 10, dtype=torch.int32)), TypeError,
         "postgate"),
        (dict(u=u, k=k, method="winograd"), ValueError, "method"),
        (dict(u=u, k=k, method="cuda"), ValueError, "cuda"),
        (dict(u=u, k=k, method="fft", keep_fraction=0.5), ValueError, "keep"),
        (dict(u=u, k=k, out=u[..., :9]), ValueError, "out"),
        (dict(u=u, k=k, out=u.double()), ValueError, "out"),
        (dict(u=u, k=k, out=u.numpy()), TypeError, "out"),
        (dict(u=u[..., :9], k=k, out=u[..., 1:]), ValueError, "out"),
        (dict(u=u.requires_grad_(False), k=k.clone().requires_grad_(), out=torch.empty_like(u)),
         ValueError, "out"),
    ]


def _bad_cases_all_paths():
    for case, exc, name in _bad_cases():
        yield case, exc, name
        if "method" not in case:
            for method in ("fft", "partial", "direct", "sparse"):
                extra = {"keep_fraction": 0.5} if method == "sparse" else {}
                yield {**case, "method": method, **extra}, exc, name


@pytest.mark.parametrize("case,exc,name", list(_bad_cases_all_paths()))
def test_bad_inputs_raise_naming_the_argument(case, exc, name):
    case = dict(case)
    u, k = case.pop("u"), case.pop("k")
    with pytest.raises(exc, match=name):
        fftconv(u, k, **case)


FORMS = ["real", "paired"]


def use_form(monkeypatch, form: str) -> None:
    """The CPU path's form at every size: real transforms (`paired.REAL_POINTS` unbounded) or
    the paired step (REAL_POINTS 0)."""
    from genomeconv.kernels import paired

    monkeypatch.setattr(paired, "REAL_POINTS", 1 << 40 if form == "real" else 0)


@pytest.mark.parametrize("method,L,Lk", [("fft", 300, 300), ("fft", 5000, 1200),
                                          ("partial", 5003, 40), ("direct", 50, 5),
                                          ("sparse", 300, 300), ("monarch", 300, 300)])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("form", FORMS)
def test_out_fresh_and_in_place_equal_the_returned_result(monkeypatch, method, L, Lk, groups,
                                                          form):
    """out= (a fresh tensor, or u itself: in place) gives the returned result, with gates,
    for every path and both forms of the CPU path; groups=3 makes the overlap-save run several
    segment groups, whose inputs overlap the previous group's outputs."""
    from genomeconv.kernels import paired

    use_form(monkeypatch, form)
    if groups > 1:
        monkeypatch.setattr(paired, "GROUP_POINTS", 2 * 128)
    a = conv_inputs(2, 3, L, Lk, seed=L + groups)
    kw = dict(D=a["D"], pregate=a["pregate"], postgate=a["postgate"], method=method,
              **({"block": 256} if method == "partial" else {}),
              **({"keep_fraction": 0.5} if method == "sparse" else {}))
    expected = fftconv(a["u"], a["k"], **kw)
    fresh = torch.full_like(a["u"], float("nan"))
    assert fftconv(a["u"], a["k"], **kw, out=fresh) is fresh
    u = a["u"].clone()
    assert fftconv(u, a["k"], **kw, out=u) is u
    torch.testing.assert_close(fresh, expected, rtol=0, atol=0)
    torch.testing.assert_close(u, expected, rtol=0, atol=0)


@pytest.mark.parametrize("L", [1, 2, 5, 31, 64, 97, 300, 1000, 3001])
@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("chunk_from", [1, 1 << 30])  # CHUNK_ROWS rows a call; all rows
def test_real_transforms_match_float64_reference(monkeypatch, L, cached, chunk_from):
    """The real-transform form (r2c, product with the filter's real FFT, c2r) at every size,
    CHUNK_ROWS rows a ducc0 call or all rows in one, gives the reference result cached and
    uncached, batched (ragged row blocks), dense and with overlap-save segments; float64 to
    1e-12, and float32 within 1e-5."""
    from genomeconv.kernels import paired

    use_form(monkeypatch, "real")
    monkeypatch.setattr(paired, "CHUNK_POINTS", (chunk_from, 1 << 30))
    monkeypatch.setattr(paired, "BLOCK_POINTS", 3 << 9)
    cache = SpectrumCache() if cached else SpectrumCache(max_bytes=0)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        a = conv_inputs(3, 5, L, L, dtype=dtype, seed=L)
        gates = dict(pregate=a["pregate"], postgate=a["postgate"])
        for Lk, kw in ((L, {"method": "fft"}),
                       (max(1, L // 7), {"method": "partial", "block": max(64, 2 * L // 7)})):
            args = (a["u"], a["k"][:, :Lk].to(dtype), a["D"].to(dtype))
            y = fftconv(*args, **gates, **kw, cache=cache)
            assert y.dtype == dtype and rel_err(y, conv_reference(*args, **gates)) < tol


@pytest.mark.parametrize("L", [1, 2, 5, 31, 64, 97, 300, 1000, 3001])
@pytest.mark.parametrize("cached", [True, False])
def test_paired_four_step_transforms_match_float64_reference(monkeypatch, L, cached):
    """The four-step (Monarch p = 2) transforms, forced down to tiny sizes, including prime
    and composite half-sizes, give the reference result cached and uncached, dense and with
    overlap-save segments; float64 to 1e-12."""
    from genomeconv.kernels import paired

    use_form(monkeypatch, "paired")
    monkeypatch.setattr(paired, "FOUR_STEP_POINTS", 4)
    a = conv_inputs(2, 3, L, L, dtype=torch.float64, seed=L)
    args = (a["u"], a["k"].double(), a["D"].double())
    gates = dict(pregate=a["pregate"], postgate=a["postgate"])
    cache = SpectrumCache() if cached else SpectrumCache(max_bytes=0)
    y = fftconv(*args, **gates, method="fft", cache=cache)
    assert rel_err(y, conv_reference(*args, **gates)) < 1e-12
    Lk = max(1, L // 7)
    short = (a["u"], a["k"][:, :Lk].double(), a["D"].double())
    y = fftconv(*short, **gates, method="partial", block=max(64, 2 * Lk), cache=cache)
    assert rel_err(y, conv_reference(*short, **gates)) < 1e-12


# blocks of channels x batch rows: 2+1 x 1 each, 3 x 2+2+1, 3 x 5 (M = 200)
@pytest.mark.parametrize("points", [1 << 9, 3 << 9, 1 << 17])
@pytest.mark.parametrize("form", FORMS)
def test_paired_row_blocks_match_float64_reference(monkeypatch, points, form):
    """However BLOCK_POINTS groups channels and batch rows into row blocks, ragged last blocks
    included, with and without a filter side cached, every row gets the reference result, in
    both forms."""
    from genomeconv.kernels import paired

    use_form(monkeypatch, form)
    monkeypatch.setattr(paired, "BLOCK_POINTS", points)
    a = conv_inputs(5, 3, 200, 200, dtype=torch.float64, seed=11)
    args = (a["u"], a["k"].double(), a["D"].double())
    gates = dict(pregate=a["pregate"], postgate=a["postgate"])
    ref = conv_reference(*args, **gates)
    for cache in (SpectrumCache(), SpectrumCache(max_bytes=0)):
        assert rel_err(fftconv(*args, **gates, method="fft", cache=cache), ref) < 1e-12


@pytest.mark.parametrize("L", [5, 97, 1000, 3001])
@pytest.mark.parametrize("one_row", [4, 1 << 30])
def test_paired_1d_transforms_row_by_row_or_batched_match_reference(monkeypatch, L, one_row):
    """1-D transforms of several rows (channel blocks, overlap-save segment groups, the cached
    coefficients' filter transforms) run row by row from ONE_ROW_POINTS up, batched below: both
    give the float64 reference to 1e-12."""
    from genomeconv.kernels import paired

    use_form(monkeypatch, "paired")
    monkeypatch.setattr(paired, "ONE_ROW_POINTS", one_row)
    a = conv_inputs(2, 5, L, L, dtype=torch.float64, seed=L + one_row % 7)
    gates = dict(pregate=a["pregate"], postgate=a["postgate"])
    partial = {"method": "partial", "block": max(64, L // 4)}
    for (Lk, kw), budget in itertools.product([(L, {"method": "fft"}), (max(1, L // 9), partial)],
                                              [None, 0]):  # cached coefficients, uncached
        args = (a["u"], a["k"][:, :Lk].double(), a["D"].double())
        y = fftconv(*args, **gates, **kw, cache=SpectrumCache(max_bytes=budget))
        assert rel_err(y, conv_reference(*args, **gates)) < 1e-12

def test_paired_split_and_layout():
    """split picks the divisors nearest sqrt(M) from FOUR_STEP_POINTS up; to_layout puts bin
    k1 + M1 k2 at k1 M2 + k2."""
    from genomeconv.kernels import paired

    assert paired.split(paired.FOUR_STEP_POINTS // 2) is None
    assert paired.split(1 << 17) == (256, 512)
    assert paired.split(3 * 5 * (1 << 14)) == (480, 512)
    assert paired.split(65537) is None  # prime: no split, plain 1-D transform
    M1, M2 = paired.split(1 << 16)
    v = np.arange(M1 * M2)
    laid = paired.to_layout(v, M1 * M2).reshape(M1, M2)
    assert laid[3, 5] == 3 + M1 * 5 and laid[M1 - 1, 0] == M1 - 1


# real transforms: rows per block, 8 rows a call; paired: one row, four-step
@pytest.mark.parametrize("L", [300, 10_000, 40_000, 70_000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_paired_path_uncached_single_thread_and_blockwise_agree(L, dtype):
    """The inference path (paired.py) with its filter side cached, formed per row block
    (cache too small), on one thread, and the blockwise autograd path give one result."""
    a = conv_inputs(2, 5, L, L, dtype=dtype, seed=L)
    args = (a["u"], a["k"].to(dtype), a["D"].to(dtype))
    gates = dict(pregate=a["pregate"], postgate=a["postgate"])
    cached = fftconv(*args, **gates, method="fft", cache=SpectrumCache())
    uncached = fftconv(*args, **gates, method="fft", cache=SpectrumCache(max_bytes=0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = fftconv(*args, **gates, method="fft", cache=SpectrumCache())
    finally:
        torch.set_num_threads(threads)
    blockwise = fft.conv(*args, **gates)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    ref = conv_reference(*args, **gates)
    for y in (cached, uncached, one, blockwise):
        assert y.dtype == dtype and rel_err(y, ref) < 10 * tol
    assert torch.equal(cached, one)
    assert rel_err(uncached, cached.double().numpy()) < tol


@pytest.mark.parametrize("L,four_step", [(3001, False), (3001, True), (40_000, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_paired_cached_filter_transforms(monkeypatch, L, four_step, dtype):
    """A cache too small for alpha and beta but large enough for the filter's transforms
    keeps those (half the bytes), computes them once, and gives the uncached result."""
    from genomeconv.kernels import paired

    use_form(monkeypatch, "paired")
    if four_step:
        monkeypatch.setattr(paired, "FOUR_STEP_POINTS", 4)
    a = conv_inputs(1, 3, L, L, dtype=dtype, seed=L)
    args = (a["u"], a["k"].to(dtype), a["D"].to(dtype))
    M = paired.half_size(2 * L - 1)
    itemsize = 16 if dtype == torch.float64 else 8
    cache = SpectrumCache(max_bytes=3 * (M + 1) * itemsize)
    assert not cache.fits(args[1], 4 * M, dtype) and cache.fits(args[1], 2 * M, dtype)
    y = fftconv(*args, pregate=a["pregate"], method="fft", cache=cache)
    again = fftconv(*args, pregate=a["pregate"], method="fft", cache=cache)
    assert cache.computed == 1 and torch.equal(y, again)
    uncached = fftconv(*args, pregate=a["pregate"], method="fft", cache=SpectrumCache(0))
    assert torch.equal(y, uncached)
    ref = conv_reference(*args, pregate=a["pregate"])
    assert rel_err(y, ref) < (1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("form", ["real", "coefficients", "zk"])
def test_paired_filters_used_in_turn_do_not_evict_each_other(monkeypatch, form):
    """Two filters whose cached forms (the real FFT; the paired step's alpha and beta, or its
    Zk) do not fit together, used in turn (a model's layers): the first keeps its entry, the
    second runs uncached, nothing is rebuilt; an in-place change frees the stale entry, so the
    changed filter is cached again; the LRU spectra of fft.py still evict."""
    from genomeconv.kernels import paired

    use_form(monkeypatch, "real" if form == "real" else "paired")
    L, H = 300, 3
    a, b = conv_inputs(1, H, L, L, seed=1), conv_inputs(1, H, L, L, seed=2)
    M = paired.half_size(2 * L - 1)
    one = {"real": H * (M + 1) * 8, "coefficients": 2 * H * M * 8, "zk": H * (M + 1) * 8}[form]
    cache = SpectrumCache(max_bytes=one * 3 // 2)
    assert cache.fits(a["k"], 4 * M, torch.float32) == (form == "coefficients")
    for _ in range(3):
        for f in (a, b):
            y = fftconv(f["u"], f["k"], f["D"], method="fft", cache=cache)
            assert rel_err(y, conv_reference(f["u"], f["k"], f["D"])) < 1e-5
    assert cache.computed == 1 and len(cache._entries) == 1
    with torch.no_grad():
        a["k"].mul_(0.5)
    b_only = fftconv(b["u"], b["k"], b["D"], method="fft", cache=cache)  # a's entry is stale
    assert cache.computed == 1 and torch.equal(b_only, y)
    y = fftconv(a["u"], a["k"], a["D"], method="fft", cache=cache)
    assert cache.computed == 2 and len(cache._entries) == 1
    assert rel_err(y, conv_reference(a["u"], a["k"], a["D"])) < 1e-5
    n = fft.FullPlan.make(L, L).n
    spectra = SpectrumCache(max_bytes=3 * H * (n // 2 + 1) * 4)  # fft.py: one spectrum, LRU
    for f in (a, b, a):
        fft.conv(f["u"], f["k"], f["D"], cache=spectra)
    assert spectra.computed == 3 and len(spectra._entries) == 1


@pytest.mark.parametrize("M", [1, 2, 6, 7, 10, 12, 30, 64, 105])
@pytest.mark.parametrize("four_step", [False, True])
@pytest.mark.parametrize("points", [1, 8, 1 << 14])
@pytest.mark.parametrize("zk_form", [False, True])
def test_paired_step_chunks_pair_every_bin_with_its_partner(monkeypatch, M, four_step, points,
                                                           zk_form):
    """The chunked paired step (heads, middle bins, chunk/mirror pairs of any size) equals
    Z' = alpha Z + beta conj Z[(M - j) mod M] computed with an explicit partner index, in the
    1-D and four-step orders, from alpha/beta or from the filter's transforms."""
    from genomeconv.kernels import paired

    monkeypatch.setattr(paired, "FOUR_STEP_POINTS", 4 if four_step else 1 << 16)
    monkeypatch.setattr(paired, "PAIR_POINTS", points)
    rng = np.random.default_rng(M + points)
    c = lambda *s: rng.standard_normal(s) + 1j * rng.standard_normal(s)  # noqa: E731
    z, Zk = c(2, 3, M), c(2, 1, M)
    bins = paired.to_layout(np.arange(M), M)  # the bin at each position
    where = np.empty(M, int)
    where[bins] = np.arange(M)
    partner = where[(M - bins) % M]
    if zk_form:
        p, q, r = paired._z_weights(M, np.dtype(np.float64), paired.split(M))
        coef = (Zk, p, q, r)
        Zkc = Zk[..., partner].conj()
        alpha, beta = p * Zk + q * Zkc, q * Zk + r * Zkc
    else:
        alpha, beta = c(2, 1, M), c(2, 1, M)
        coef = (alpha, beta)
    expected = alpha * z + beta * z[..., partner].conj()
    paired._pair(z, coef)
    np.testing.assert_allclose(z, expected, rtol=1e-12, atol=1e-12)
