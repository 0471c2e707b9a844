"""HyenaDNA modules against an independent float64 numpy re-implementation of the public
forward pass (direct causal convolutions, no FFT), plus config and tokenizer behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genomeconv.models import HyenaConfig, HyenaDNA
from genomeconv.models.tokenizer import VOCAB, tokenize

TINY = HyenaConfig(d_model=16, n_layer=2, d_inner=48, max_seq_len=40, filter_order=8)


def random_model(cfg: HyenaConfig = TINY, seed: int = 0) -> HyenaDNA:
    """A model with every parameter random (non-default LayerNorms, biases, freq)."""
    torch.manual_seed(seed)
    model = HyenaDNA(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("freq"):
                p.uniform_(5.0, 12.0)
            elif "norm" in name or "ln_f" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def random_ids(rng: np.random.Generator, B: int, L: int) -> torch.Tensor:
    return torch.from_numpy(rng.integers(7, 12, size=(B, L)))


# ------------------------------------------------------------------ float64 reference (numpy)
def _ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _filter(sd, p, cfg: HyenaConfig, length: int):
    """Implicit filter taps (d, length), built from the published formulas."""
    L_max = cfg.max_seq_len
    t = np.linspace(0, 1, L_max)[:, None]
    bands = (cfg.emb_dim - 1) // 2
    w = 2 * math.pi * np.arange(L_max)[:, None] / L_max
    f = np.linspace(1e-4, bands - 1, bands)[None]
    zc = np.exp(-1j * f * w)
    z = np.concatenate([t, zc.real, zc.imag], axis=-1)[:length]
    freq = sd[p + "implicit_filter.1.freq"]
    h = np.sin(freq * (z @ sd[p + "implicit_filter.0.weight"].T + sd[p + "implicit_filter.0.bias"]))
    for i in (2, 4):
        h = np.sin(freq * (h @ sd[p + f"implicit_filter.{i}.weight"].T
                           + sd[p + f"implicit_filter.{i}.bias"]))
    k = h @ sd[p + "implicit_filter.6.weight"].T
    deltas = np.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, cfg.d_model)
    k = k * (np.exp(-t[:length] * np.abs(deltas)[None]) + 0.05)
    return k.T


def reference_hidden(model: HyenaDNA, ids: torch.Tensor) -> np.ndarray:
    """Hidden states after ln_f in float64; the long conv is a direct causal convolution with
    min(L, max_seq_len) taps (a partial convolution past the trained length)."""
    cfg = model.config
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    ids = ids.numpy()
    B, L = ids.shape
    d = cfg.d_model
    x = sd["backbone.embeddings.word_embeddings.weight"][ids]
    for i in range(cfg.n_layer):
        p = f"backbone.layers.{i}."
        u = _ln(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        u = u @ sd[p + "mixer.in_proj.weight"].T + sd[p + "mixer.in_proj.bias"]  # B L 3d
        w = sd[p + "mixer.short_filter.weight"][:, 0]  # 3d x 3: w[:, 2] multiplies x_t
        pad = np.concatenate([np.zeros((B, 2, 3 * d)), u], axis=1)
        u = (w[:, 0] * pad[:, :-2] + w[:, 1] * pad[:, 1:-1] + w[:, 2] * pad[:, 2:]
             + sd[p + "mixer.short_filter.bias"])
        x0, x1, v = u[..., :d], u[..., d:2 * d], u[..., 2 * d:]
        v = x1 * v
        k = _filter(sd, p + "mixer.filter_fn.", cfg, min(L, cfg.max_seq_len))
        y = np.empty_like(v)
        for b in range(B):
            for c in range(d):
                y[b, :, c] = np.convolve(v[b, :, c], k[c])[:L]
        y = y + v * sd[p + "mixer.filter_fn.bias"]
        x = x + (x0 * y) @ sd[p + "mixer.out_proj.weight"].T + sd[p + "mixer.out_proj.bias"]
        h = _ln(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        h = _gelu_tanh(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    return _ln(x, sd["backbone.ln_f.weight"], sd["backbone.ln_f.bias"])


def assert_close_ref(ours: torch.Tensor, ref: np.ndarray, tol: float = 2e-4) -> None:
    err = np.abs(ours.detach().double().numpy() - ref).max() / np.abs(ref).max()
    assert err < tol, f"relative error {err:.2e}"


# ------------------------------------------------------------------------------- the tests
def public_names_shapes(cfg: HyenaConfig) -> dict[str, tuple[int, ...]]:
    """Parameter/buffer names and shapes of the public -hf checkpoints (minus `hyena.`)."""
    d, o, V = cfg.d_model, cfg.filter_order, cfg.padded_vocab_size
    out = {"backbone.embeddings.word_embeddings.weight": (V, d),
           "backbone.ln_f.weight": (d,), "backbone.ln_f.bias": (d,), "lm_head.weight": (V, d)}
    for i in range(cfg.n_layer):
        p = f"backbone.layers.{i}."
        m = p + "mixer."
        f = m + "filter_fn."
        out.update({
            m + "in_proj.weight": (3 * d, d), m + "in_proj.bias": (3 * d,),
            m + "out_proj.weight": (d, d), m + "out_proj.bias": (d,),
            m + "short_filter.weight": (3 * d, 1, 3), m + "short_filter.bias": (3 * d,),
            f + "bias": (d,), f + "pos_emb.z": (1, cfg.max_seq_len, cfg.emb_dim),
            f + "pos_emb.t": (1, cfg.max_seq_len, 1),
            f + "implicit_filter.0.weight": (o, cfg.emb_dim), f + "implicit_filter.0.bias": (o,),
            f + "implicit_filter.1.freq": (1, o), f + "implicit_filter.3.freq": (1, o),
            f + "implicit_filter.5.freq": (1, o),
            f + "implicit_filter.2.weight": (o, o), f + "implicit_filter.2.bias": (o,),
            f + "implicit_filter.4.weight": (o, o), f + "implicit_filter.4.bias": (o,),
            f + "implicit_filter.6.weight": (d, o), f + "modulation.deltas": (1, 1, d),
            p + "norm1.weight": (d,), p + "norm1.bias": (d,),
            p + "norm2.weight": (d,), p + "norm2.bias": (d,),
            p + "mlp.fc1.weight": (cfg.d_inner, d), p + "mlp.fc1.bias": (cfg.d_inner,),
            p + "mlp.fc2.weight": (d, cfg.d_inner), p + "mlp.fc2.bias": (d,)})
    return out


def test_architecture_matches_public_names_and_shapes():
    model = HyenaDNA(TINY)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours.update({k: tuple(v.shape) for k, v in model.named_buffers()})
    assert ours == public_names_shapes(TINY)
    large = HyenaConfig(d_model=256, n_layer=8, d_inner=1024, max_seq_len=1026)
    n_params = sum(p.numel() for p in HyenaDNA(large).parameters())
    assert 6.4e6 < n_params < 6.8e6  # 6.6M, as published for the d256 x 8 checkpoints


@pytest.mark.parametrize("L", [1, 29, 40, 67])  # below, at and past max_seq_len (40)
def test_forward_matches_float64_reference(rng, L):
    model = random_model()
    ids = random_ids(rng, 2, L)
    with torch.no_grad():
        hidden = model(ids)
    assert hidden.shape == (2, L, TINY.d_model) and hidden.dtype == torch.float32
    assert_close_ref(hidden, reference_hidden(model, ids))


def test_logits_and_autograd_log_likelihoods(rng):
    model = random_model()
    ids = random_ids(rng, 2, 33)
    ref = reference_hidden(model, ids) @ model.lm_head.weight.detach().double().numpy().T
    ref_lp = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
    expect = np.take_along_axis(ref_lp[:, :-1], ids.numpy()[:, 1:, None], -1)[..., 0]
    with torch.no_grad():
        logits = model.logits(ids)
        ll = model.autograd_log_likelihoods(ids)
    assert logits.shape == (2, 33, 16)
    assert ll.shape == (2, 32)
    np.testing.assert_allclose(ll.numpy(), expect, atol=1e-4)


def test_deterministic_and_seeded(rng):
    ids = random_ids(rng, 1, 50)
    a, b = random_model(seed=3), random_model(seed=3)
    with torch.no_grad():
        h1, h2, h3 = a(ids), a(ids), b(ids)
    assert torch.equal(h1, h2) and torch.equal(h1, h3)
    assert not torch.equal(h1, random_model(seed=4)(ids))


def test_embed_pooling(rng):
    model = random_model()
    seq = "".join(rng.choice(list("ACGT"), size=45))
    with torch.no_grad():
        hidden = model(tokenize(seq)[None])[0]
    torch.testing.assert_close(model.embed(seq), hidden.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.embed(seq, pooling="max"), hidden.amax(0),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.embed(seq, pooling="last"), hidden[-1], atol=1e-5, rtol=1e-5)
    ids = random_ids(rng, 3, 20)
    assert model.embed(ids).shape == (3, TINY.d_model)
    with pytest.raises(ValueError, match="pooling"):
        model.embed(seq, pooling="median")


def test_config_roundtrip_and_hash():
    cfg = HyenaConfig(d_model=32, n_layer=3, d_inner=64, max_seq_len=100)
    assert HyenaConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.sha256 == HyenaConfig.from_dict(dict(cfg.to_dict())).sha256
    assert cfg.sha256 != HyenaConfig(d_model=32, n_layer=3, d_inner=64, max_seq_len=101).sha256
    assert len(cfg.sha256) == 64 and cfg.padded_vocab_size == 16
    model = HyenaDNA(cfg)
    assert (model.d_model, model.max_seq_len, model.config_sha256) == (32, 100, cfg.sha256)
    with pytest.raises(ValueError, match="unknown"):
        HyenaConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="emb_dim"):
        HyenaConfig(emb_dim=4)


def test_tokenizer_ids_case_and_iupac():
    assert VOCAB["A"] == 7 and VOCAB["N"] == 11 and VOCAB["[PAD]"] == 4
    assert tokenize("ACGTN").tolist() == [7, 8, 9, 10, 11]
    assert tokenize("acgtn").tolist() == [7, 8, 9, 10, 11]
    assert tokenize(b"AcGt").tolist() == [7, 8, 9, 10]
    assert tokenize("RYSWKMBDHVryswkmbdhv").tolist() == [11] * 20
    out = tokenize("")
    assert out.shape == (0,) and out.dtype == torch.int64


@pytest.mark.parametrize("seq, pos, char", [("ACGU", 3, "U"), ("AC-GT", 2, "-"),
                                            ("ACG T", 3, " "), ("ACGTé", 4, "é"),
                                            ("AC\nG", 2, "\n")])
def test_tokenizer_rejects_bad_characters_naming_position(seq, pos, char):
    with pytest.raises(ValueError, match=f"position {pos}") as info:
        tokenize(seq)
    assert repr(char) in str(info.value)


def test_tokenizer_vectorized_speed(rng):
    import time

    seq = rng.choice(np.frombuffer(b"ACGTNacgtn", dtype=np.uint8), size=4_000_000).tobytes()
    t0 = time.perf_counter()
    ids = tokenize(seq.decode())
    assert time.perf_counter() - t0 < 1.0
    assert ids.shape == (4_000_000,) and int(ids.min()) == 7 and int(ids.max()) == 11
