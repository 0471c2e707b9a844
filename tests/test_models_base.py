"""The model interface (models/base.py): HyenaDNA behind it (bounded-memory path and bf16
included), load() dispatching on the saved family, old folders without a family, pooling, and a
new family added through `register` alone being scored by the variants pipeline."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from genomeconv.errors import InputError
from genomeconv.io.fasta import FastaFile
from genomeconv.io.variants import Variant
from genomeconv.models import (POOLINGS, HyenaConfig, HyenaDNA, LanguageModel, inference, load,
                               pool)
from genomeconv.models.tokenizer import VOCAB, tokenize
from genomeconv.models import base
from genomeconv.pipelines.variants import plan_variant, score_planned
from helpers import random_seq, write_fasta

TINY = HyenaConfig(d_model=16, n_layer=2, d_inner=32, max_seq_len=48, filter_order=8)


@pytest.fixture
def hyena(rng) -> HyenaDNA:
    torch.manual_seed(5)
    model = HyenaDNA(TINY).eval()
    with torch.no_grad():  # non-zero biases: the public init leaves them at zero
        for p in model.parameters():
            p.add_(torch.from_numpy(rng.normal(0, 0.02, size=p.shape)).float())
    return model


def test_hyena_behind_the_interface(hyena, rng):
    assert isinstance(hyena, LanguageModel) and hyena.family == "hyena" and hyena.has_embeddings
    assert (hyena.d_model, hyena.max_seq_len) == (16, 48)
    ids = torch.stack([tokenize(random_seq(rng, 40)) for _ in range(2)])
    hidden = hyena.hidden_states(ids, chunk_size=7)
    assert torch.equal(hidden, inference.hidden_states(hyena, ids, chunk_size=7))
    loglik, none = hyena.log_likelihoods(ids, chunk_size=7)
    loglik2, hidden2 = hyena.log_likelihoods(ids, with_hidden=True, chunk_size=7)
    assert none is None and torch.equal(loglik, loglik2) and torch.equal(hidden2, hidden)
    with torch.no_grad():
        direct = hyena.autograd_log_likelihoods(ids)  # the autograd forward, float32
    np.testing.assert_allclose(loglik.numpy(), direct.numpy(), rtol=1e-4, atol=1e-5)
    bf16, _ = hyena.log_likelihoods(ids, dtype=torch.bfloat16)  # the bf16 arrangement
    ref_bf16 = inference.hidden_and_loglik(hyena, ids, dtype=torch.bfloat16)[1]
    assert torch.equal(bf16, ref_bf16) and bf16.dtype == torch.float32


def test_next_base_distribution_agrees_with_log_likelihoods(hyena, rng):
    """base_log_probs at the observed base is log_likelihoods, for both families; its four
    entries are the full softmax's (they sum to at most 1: N and special tokens keep the rest),
    and it equals the plain forward's log-softmax (float64 reference) over A, C, G, T; the
    receptive field bounds what earlier bases can change."""
    from genomeconv.models.families.kmer import KmerModel

    seqs = [random_seq(rng, 60) for _ in range(2)]
    ids = torch.stack([tokenize(s) for s in seqs])
    observed = (ids[:, 1:] - 7)[..., None]  # A C G T are ids 7..10
    for model in (hyena, KmerModel.fit(seqs, 3)):
        probs = model.base_log_probs(ids, chunk_size=7)
        assert probs.shape == (2, 59, 4)
        loglik, _ = model.log_likelihoods(ids, chunk_size=7)
        torch.testing.assert_close(probs.gather(-1, observed)[..., 0], loglik, rtol=0, atol=0)
        assert (probs.exp().sum(-1) <= 1 + 1e-6).all()
    with torch.no_grad():
        logits = hyena.double().logits(ids)[:, :-1]
    want = torch.log_softmax(logits, dim=-1)[..., 7:11]
    np.testing.assert_allclose(hyena.float().base_log_probs(ids).numpy(), want.numpy(),
                               atol=2e-5)
    assert hyena.receptive_field == 2 * (47 + 2) + 1
    assert KmerModel.fit(seqs, 3).receptive_field == 3


def test_pool_matches_numpy(rng):
    x = torch.from_numpy(rng.normal(size=(3, 7, 5)))
    want = {"mean": x.numpy().mean(1), "max": x.numpy().max(1), "last": x.numpy()[:, -1]}
    assert set(POOLINGS) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(pool(x, name).numpy(), value, rtol=1e-12)
    with pytest.raises(ValueError, match="mean, max, last"):
        pool(x, "median")


def test_load_dispatches_on_family(hyena, tmp_path):
    hyena.save(tmp_path / "new")
    meta = json.loads((tmp_path / "new" / "config.json").read_text())
    assert meta["family"] == "hyena" and meta["format"] == "genomeconv-hyena"
    assert meta["tokenizer"]["vocab"]["A"] == 7
    loaded = load(str(tmp_path / "new"))
    assert isinstance(loaded, HyenaDNA) and loaded.config_sha256 == hyena.config_sha256
    for key, value in hyena.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    old = tmp_path / "old"  # a folder written before families existed
    old.mkdir()
    (old / "model.safetensors").write_bytes((tmp_path / "new" / "model.safetensors").read_bytes())
    (old / "config.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "family"}))
    assert isinstance(load(str(old)), HyenaDNA)
    (old / "config.json").write_text(json.dumps({**meta, "family": "mamba"}))
    with pytest.raises(InputError, match="unknown model family 'mamba' .*hyena, kmer"):
        load(str(old))
    assert load(str(tmp_path / "new"), model_id="renamed").model_id == "renamed"


def test_save_writes_half_precision_as_float32(hyena, tmp_path):
    """A model held in bfloat16 (trained in mixed precision) is saved as float32: training
    exports through `save` whatever dtype DeepSpeed ran it in."""
    from safetensors.torch import load_file

    hyena.to(torch.bfloat16).save(tmp_path / "bf16")
    stored = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float32}
    for key, value in hyena.state_tensors().items():
        assert torch.equal(stored[key], value.float()), key


class Uniform(LanguageModel):
    """A family defined outside the package: every base equally likely (log 1/5)."""

    family = "uniform-test"
    has_embeddings = False

    def __init__(self, model_id: str = "uniform") -> None:
        self.model_id = model_id

    def tokenize(self, seqs):
        return torch.tensor([[ord(c) for c in s.ljust(max(map(len, seqs)))] for s in seqs])

    @property
    def d_model(self) -> int:
        return 0

    @property
    def max_seq_len(self) -> int:
        return 1000

    def config_dict(self) -> dict[str, Any]:
        return {"bases": 5}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"dummy": torch.ones(1)}

    def log_likelihoods(self, ids, *, with_hidden=False, chunk_size=None, dtype=None):
        return torch.full((ids.shape[0], ids.shape[1] - 1), float(np.log(0.2)),
                          dtype=torch.float64), None

    def base_log_probs(self, ids, *, chunk_size=None, dtype=None):
        return torch.full((ids.shape[0], ids.shape[1] - 1, 4), float(np.log(0.2)),
                          dtype=torch.float64)


def test_a_registered_family_loads_and_scores(tmp_path, rng, monkeypatch):
    monkeypatch.setitem(base.FAMILIES, Uniform.family, base.Family(
        Uniform.family, lambda values, state, folder, model_id, device, dtype: Uniform(model_id)))
    Uniform().save(tmp_path / "u")
    model = load(str(tmp_path / "u"))
    assert isinstance(model, Uniform) and model.model_id == str(tmp_path / "u")
    genome = random_seq(rng, 120)
    fasta = FastaFile(write_fasta(tmp_path / "ref.fa", {"c": genome}))
    alt = "ACGT".replace(genome[59], "")[0]
    planned = [plan_variant(Variant("c", 60, genome[59], alt, None, "t", 0), fasta, 21, {})]
    (row,) = score_planned(model, planned, site_probs=True)
    assert row["llr"] == 0.0 and row["emb_l2"] is None and row["p_alt"] == pytest.approx(0.2)
    assert row["model"] == str(tmp_path / "u")


def test_every_saved_model_names_its_family(tmp_path):
    """Folders this version writes always carry "family"; FAMILIES knows both built-ins."""
    assert {"hyena", "kmer"} <= set(base.FAMILIES)
    assert base.folder_format("kmer") == "genomeconv-kmer"
    for name in ("hyena", "kmer"):
        with pytest.raises(InputError, match="no 'config' object"):
            folder = tmp_path / name
            folder.mkdir()
            (folder / "config.json").write_text(json.dumps(
                {"format": base.folder_format(name), "format_version": 1, "family": name}))
            load(str(folder))


def test_freeze_for_fine_tuning(hyena, tmp_path):
    """The interface's freeze (what fine-tuning calls): embedding and the first blocks stop
    learning; too many blocks, or a family without trainable weights, is one InputError."""
    hyena.freeze(1)
    frozen = {n for n, p in hyena.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("backbone.embeddings.", "backbone.layers.0."))
                          for n in frozen)
    assert all(p.requires_grad for n, p in hyena.named_parameters()
               if n.startswith("backbone.layers.1."))
    with pytest.raises(InputError, match="has 2 blocks"):
        hyena.freeze(3)
    with pytest.raises(InputError, match="cannot be fine-tuned"):
        Uniform().freeze(0)


def test_hidden_states_of_a_named_layer(hyena, rng):
    """layer= names a module as the public checkpoints do: a block's output is the residual
    stream after it (the plain forward's, block by block); the final norm is the default; an
    unknown name is one InputError listing the valid ones."""
    ids = hyena.tokenize([random_seq(rng, 300), random_seq(rng, 300)])
    residual = hyena.backbone.embeddings.word_embeddings(ids).float()
    with torch.no_grad():
        for i, block in enumerate(hyena.backbone.layers):
            residual = block(residual)
            got = hyena.hidden_states(ids, layer=f"backbone.layers.{i}", chunk_size=70)
            torch.testing.assert_close(got, residual, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(hyena(ids, layer=f"backbone.layers.{i}"), residual)
        final = hyena.backbone.ln_f(residual)
    torch.testing.assert_close(hyena.hidden_states(ids, layer="backbone.ln_f"), final,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hyena.hidden_states(ids), final, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match=r"no such layer \(valid: backbone.layers.N \(N 0-"):
        hyena.hidden_states(ids, layer="blocks.0")


def test_tokenize_pads_on_the_right_and_base_codes(hyena):
    ids = hyena.tokenize(["ACGTN", "acg"])
    assert ids.shape == (2, 5) and ids[1, :3].tolist() == ids[0, :3].tolist()
    assert ids[1, 3:].tolist() == [VOCAB["[PAD]"]] * 2
    assert base.base_codes("ACGTacgtNRx").tolist() == [0, 1, 2, 3, 0, 1, 2, 3, -1, -1, -1]
