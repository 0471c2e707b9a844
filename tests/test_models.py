"""HyenaDNA modules against an independent float64 numpy re-implementation of the public
forward pass (direct causal convolutions, no FFT), plus config and tokenizer behaviour."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from genomeconv.models import HyenaConfig, HyenaDNA
from genomeconv.models.tokenizer import VOCAB, tokenize
from helpers import TINY, assert_close_ref, random_ids, random_model, reference_hidden


# ------------------------------------------------------------------ float64 reference (numpy)


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
