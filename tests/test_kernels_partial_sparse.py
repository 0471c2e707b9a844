"""Partial (overlap-save, streaming) and frequency-sparse convolutions against float64
references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from genomeconv.kernels import SpectrumCache, StreamingConv, fftconv, partial, sparse
from helpers import conv_inputs, conv_reference, rel_err


@pytest.mark.parametrize("L", [2, 31, 1000, 5003])
@pytest.mark.parametrize("Lk", [1, 2, 7, 64, 300])
def test_partial_matches_reference(L, Lk):
    if Lk > L:
        Lk = L
    a = conv_inputs(2, 3, L, Lk, seed=L * 7 + Lk)
    y = fftconv(a["u"], a["k"], a["D"], pregate=a["pregate"], postgate=a["postgate"],
                method="partial")
    assert rel_err(y, conv_reference(**a)) < 1e-4


@pytest.mark.parametrize("block", [8, 64, 100, 1024])
def test_partial_block_sizes(block):
    a = conv_inputs(1, 2, 777, 8, seed=block)
    y = fftconv(a["u"], a["k"], a["D"], method="partial", block=block)
    assert rel_err(y, conv_reference(a["u"], a["k"], a["D"])) < 1e-4


@pytest.mark.parametrize("cached", [True, False])
def test_partial_inference_form_equals_blockwise_float64(cached):
    """The paired (inference) overlap-save, many segments and a ragged last one, cached or
    not, equals the autograd path's blockwise overlap-save in float64."""
    a = conv_inputs(2, 3, 5003, 40, dtype=torch.float64, seed=9)
    args = (a["u"], a["k"].double(), a["D"].double())
    gates = dict(pregate=a["pregate"], postgate=a["postgate"])
    cache = SpectrumCache() if cached else SpectrumCache(max_bytes=0)
    y = fftconv(*args, **gates, method="partial", block=256, cache=cache)
    blockwise = partial.conv(*args, **gates, block=256)
    assert torch.allclose(y, blockwise, rtol=0, atol=1e-10 * blockwise.abs().max().item())
    assert rel_err(y, conv_reference(*args, **gates)) < 1e-10


def test_partial_long_input_auto_choice():
    L, Lk = 2**17 + 3, 500
    a = conv_inputs(1, 2, L, Lk, seed=1)
    assert partial.choose_block(L, Lk) is not None
    y = fftconv(a["u"], a["k"], a["D"], pregate=a["pregate"], postgate=a["postgate"])
    assert rel_err(y, conv_reference(**a)) < 1e-4


def test_partial_cost_model_prefers_full_transform_for_long_filters():
    assert partial.choose_block(1000, 1000) is None
    assert partial.choose_block(2**16, 2**16) is None
    nb = partial.choose_block(2**22, 2**14)
    assert nb is not None and 2**15 <= nb <= 2**18


def test_partial_bad_block_raises():
    a = conv_inputs(1, 2, 100, 30, gates=False)
    with pytest.raises(ValueError, match="block"):
        fftconv(a["u"], a["k"], method="partial", block=16)


def test_partial_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64,  # noqa: E731
                               requires_grad=True)
    u, k, D, pre, post = r(1, 2, 30), r(2, 4), r(2), r(1, 2, 30), r(1, 2, 30)
    assert gradcheck(lambda u, k, D, pre, post: fftconv(
        u, k, D, pregate=pre, postgate=post, method="partial", block=8), (u, k, D, pre, post))


@pytest.mark.parametrize("Lk", [1, 5, 64])
@pytest.mark.parametrize("chunks", [[1] * 7 + [193], [50, 50, 100], [3, 97, 1, 99], [200]])
def test_streaming_equals_one_shot(Lk, chunks):
    L = sum(chunks)
    a = conv_inputs(2, 3, L, Lk, seed=Lk + len(chunks))
    one_shot = fftconv(a["u"], a["k"], a["D"], pregate=a["pregate"], postgate=a["postgate"])
    stream = StreamingConv(a["k"], a["D"])
    outs, t = [], 0
    for c in chunks:
        sl = slice(t, t + c)
        outs.append(stream.step(a["u"][..., sl], pregate=a["pregate"][..., sl],
                                postgate=a["postgate"][..., sl]))
        t += c
    y = torch.cat(outs, dim=-1)
    assert rel_err(y, one_shot.double().numpy()) < 1e-5
    assert rel_err(y, conv_reference(**a)) < 1e-4
    stream.reset()
    again = stream.step(a["u"], pregate=a["pregate"], postgate=a["postgate"])
    assert rel_err(again, one_shot.double().numpy()) < 1e-5


@pytest.mark.parametrize("method,block", [("fft", None), ("partial", 64), ("partial", 300),
                                          ("direct", None), ("monarch", None)])
@pytest.mark.parametrize("L,Lk,history", [(10, 3, 1), (200, 50, 49), (200, 50, 10),
                                          (1000, 37, 700), (1000, 1000, 999), (513, 200, 300)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_history_gives_the_later_outputs(method, block, L, Lk, history, dtype):
    """history=h returns exactly the outputs at positions h.. of the whole convolution, on the
    paired path (float32/64 without gradients) and the others, gates aligned with u."""
    if block is not None and block < Lk:
        block = None
    a = conv_inputs(2, 3, L, Lk, dtype=dtype, seed=L + Lk + history)
    want = conv_reference(**a)[..., history:]
    y = fftconv(a["u"], a["k"], a["D"], pregate=a["pregate"], postgate=a["postgate"],
                method=method, block=block, history=history)
    assert y.shape == (2, 3, L - history) and y.dtype == dtype
    assert rel_err(y, want) < (1e-10 if dtype == torch.float64 and method != "monarch" else 1e-4)
    out = torch.full_like(y, float("nan"))
    fftconv(a["u"], a["k"], a["D"], pregate=a["pregate"], postgate=a["postgate"],
            method=method, block=block, history=history, out=out)
    assert torch.equal(out, y)


def test_history_with_gradients_and_bad_values():
    a = conv_inputs(1, 2, 40, 6, dtype=torch.float64, gates=False, seed=2)
    u, k = a["u"].clone().requires_grad_(), a["k"].double().requires_grad_()
    assert gradcheck(lambda u, k: fftconv(u, k, history=15), (u, k))
    for bad in (-1, 40, 2.0):
        with pytest.raises(ValueError, match="history"):
            fftconv(a["u"], a["k"], history=bad)
    with pytest.raises(ValueError, match="shape"):
        fftconv(a["u"], a["k"], history=15, out=torch.empty_like(a["u"]))


def test_streaming_long_filter_keeps_bounded_state_and_dtype():
    a = conv_inputs(1, 2, 3000, 700, dtype=torch.bfloat16, gates=False, seed=3)
    stream = StreamingConv(a["k"])
    ys = [stream.step(a["u"][..., i:i + 500]) for i in range(0, 3000, 500)]
    assert all(y.dtype == torch.bfloat16 for y in ys)
    assert stream.state.shape == (1, 2, 699)
    y = torch.cat(ys, dim=-1)
    assert rel_err(y, conv_reference(a["u"], a["k"])) < 1e-2


def test_streaming_shape_mismatch_raises():
    a = conv_inputs(2, 3, 20, 5, gates=False)
    stream = StreamingConv(a["k"])
    stream.step(a["u"])
    with pytest.raises(ValueError, match="reset"):
        stream.step(a["u"][:1])


def sparse_reference(u, k, D, keep: torch.Tensor, L: int, n: int) -> np.ndarray:
    """float64 numpy: irfft(rfft(x, n) * (rfft(k, n) + D) * keep[bin % P], n)[:L]."""
    x, k64, D64 = u.double().numpy(), k.double().numpy(), D.double().numpy()
    K = np.fft.rfft(k64, n) + D64[:, None]
    mask = keep.numpy()[np.arange(n // 2 + 1) % keep.numel()]
    return np.fft.irfft(np.fft.rfft(x, n) * K * mask, n)[..., :L]


@pytest.mark.parametrize("L,Lk", [(1, 1), (7, 3), (100, 100), (1000, 300), (4099, 4099)])
@pytest.mark.parametrize("blocks", [1, 4, 16])
def test_sparse_full_mask_equals_dense(L, Lk, blocks):
    a = conv_inputs(2, 3, L, Lk, seed=L + blocks)
    dense = fftconv(a["u"], a["k"], a["D"], pregate=a["pregate"], postgate=a["postgate"],
                    method="fft")
    full = torch.ones(blocks, dtype=torch.bool)
    y = fftconv(a["u"], a["k"], a["D"], pregate=a["pregate"], postgate=a["postgate"],
                keep=full, blocks=blocks)
    assert rel_err(y, conv_reference(**a)) < 1e-4
    assert rel_err(y, dense.double().numpy()) < 1e-4


@pytest.mark.parametrize("keep", [[1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 1],
                                  [0, 0, 1, 0, 1, 0, 1, 0], [0, 1, 1, 1, 1, 1, 1, 1]])
@pytest.mark.parametrize("L,Lk", [(50, 50), (999, 120)])
def test_sparse_masks_match_float64_reference(keep, L, Lk):
    keep = torch.tensor(keep, dtype=torch.bool)
    a = conv_inputs(2, 2, L, Lk, gates=False, seed=L)
    y = fftconv(a["u"], a["k"], a["D"], keep=keep, blocks=8)
    n = sparse.transform_size(L, Lk, 8)
    ref = sparse_reference(a["u"], a["k"], a["D"], keep, L, n)
    assert float(np.abs(y.double().numpy() - ref).max()) < 1e-4 * max(np.abs(ref).max(), 1.0)


def test_sparse_skipped_blocks_are_not_computed():
    keep = sparse.fraction_mask(0.25, 16)
    assert keep.tolist() == [True, True, True] + [False] * 11 + [True, True]
    assert sparse.computed_blocks(keep) == [0, 1, 2]
    assert sparse.computed_blocks(torch.ones(16, dtype=torch.bool)) == list(range(9))
    assert sparse.fraction_mask(1.0, 16).all()


def test_sparse_keep_fraction_and_cache():
    cache = SpectrumCache()
    a = conv_inputs(1, 2, 600, 600, gates=False, seed=5)
    y1 = fftconv(a["u"], a["k"], a["D"], keep_fraction=0.3, cache=cache)
    y2 = fftconv(a["u"], a["k"], a["D"], keep_fraction=0.3, cache=cache)
    assert cache.computed == 1 and torch.equal(y1, y2)
    keep = sparse.fraction_mask(0.3, 16)
    ref = sparse_reference(a["u"], a["k"], a["D"], keep, 600, sparse.transform_size(600, 600, 16))
    assert rel_err(y1, ref) < 1e-4


def test_sparse_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64,  # noqa: E731
                               requires_grad=True)
    u, k, D, pre, post = r(1, 2, 12), r(2, 12), r(2), r(1, 2, 12), r(1, 2, 12)
    keep = torch.tensor([1, 1, 0, 0, 0, 0, 0, 1], dtype=torch.bool)
    assert gradcheck(lambda u, k, D, pre, post: fftconv(
        u, k, D, pregate=pre, postgate=post, keep=keep, blocks=8), (u, k, D, pre, post))


@pytest.mark.parametrize("kw,exc,name", [
    (dict(keep=torch.tensor([1, 1, 0, 0], dtype=torch.bool), blocks=4), ValueError, "symmetric"),
    (dict(keep=torch.ones(5, dtype=torch.bool), blocks=4), ValueError, "keep"),
    (dict(keep=torch.ones(4), blocks=4), TypeError, "keep"),
    (dict(keep_fraction=0.0), ValueError, "keep_fraction"),
    (dict(keep_fraction=0.5, keep=torch.ones(16, dtype=torch.bool)), ValueError, "keep"),
    (dict(method="sparse"), ValueError, "keep"),
    (dict(keep_fraction=0.5, blocks=0), ValueError, "blocks"),
])
def test_sparse_bad_arguments(kw, exc, name):
    a = conv_inputs(1, 2, 64, 64, gates=False)
    with pytest.raises(exc, match=name):
        fftconv(a["u"], a["k"], **kw)
