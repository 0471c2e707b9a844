"""Evo 2 against the official implementation (vortex, `vtx`; tests/evo2_official.py runs it on
the CPU) on random tiny models with the published layer patterns, at 512 to 20,000 bp: float32
hidden states of named layers and log-likelihoods within 1e-4 relative error (max |error| /
max |value|), bfloat16 within twice the official bfloat16 path's error, both against the
official float32 output. Then the bounded-memory path: pieces equal one pass, a suffix computed
from captured states equals the full computation, the autograd forward equals inference."""

from __future__ import annotations

import pytest
import torch

from evo2_configs import CONFIGS, dna_ids, random_model, rel_err
from genomeconv.errors import InputError
from genomeconv.models.families.evo2 import inference
from genomeconv.models.families.evo2.layouts import build

pytest.importorskip("vortex", reason="the official Evo 2 code (vtx, the [test] extra)")
import evo2_official as official  # noqa: E402

TOL = 1e-4


def official_loglik(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)[:, :-1]
    return logp.gather(-1, ids[:, 1:, None])[..., 0]


def named_layers(model, every: bool) -> tuple[str, ...]:
    """Layer outputs to compare (the final norm's always): the first hcl filter's and the first
    attention block's attention output; with `every`, also a middle block's output, the last
    attention block's attention and MLP outputs and an MLP's l1."""
    cfg = model.config
    hcl, attn = cfg.hcl_layer_idxs[0], cfg.attn_layer_idxs
    layers = (f"blocks.{hcl}.filter", f"blocks.{attn[0]}.inner_mha_cls")
    if every:
        layers += (f"blocks.{cfg.num_layers // 2}", f"blocks.{attn[-1]}.inner_mha_cls",
                   f"blocks.{attn[-1]}.mlp.l3", f"blocks.{cfg.hcm_layer_idxs[0]}.mlp.l1")
    return layers + ("norm",)


@pytest.fixture(scope="module", params=["types", "1b", "7b-1m"])
def case(request):
    """(name, config values, float32 model, its release state dict)."""
    model = random_model(CONFIGS[request.param])
    return request.param, CONFIGS[request.param], model, model.state_tensors()


LONG = {"types": 20_000, "1b": 8192, "7b-1m": 12_000}  # attention costs L^2 x heads


@pytest.mark.parametrize("long", [False, True], ids=["512", "long"])
def test_float32_matches_official(case, long):
    name, values, model, state = case
    ids = dna_ids(LONG[name] if long else 512)
    layers = named_layers(model, every=not long)
    logits, ref = official.forward(official.build(values, state), ids, layers)
    loglik, hidden = model.log_likelihoods(ids, with_hidden=True)
    errors = {"loglik": rel_err(loglik, official_loglik(logits, ids)),
              "norm": rel_err(hidden, ref["norm"])}
    for layer in layers[:-1]:
        errors[layer] = rel_err(model.hidden_states(ids, layer=layer), ref[layer])
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("name", ["1b", "7b-1m"])
def test_bfloat16_within_twice_official(name):
    """The official inference precision: both bf16 paths against official float32."""
    values = CONFIGS[name]
    model = random_model(values)
    state = model.state_tensors()
    ids = dna_ids(2048, seed=2)
    layers = named_layers(model, every=False)
    logits, ref = official.forward(official.build(values, state), ids, layers)
    logits16, off16 = official.forward(official.build(values, state, bf16=True), ids, layers)
    model16 = build(model.config, state, "bf16", None, torch.bfloat16, None)
    loglik, hidden = model16.log_likelihoods(ids, with_hidden=True)
    ref_ll = official_loglik(logits, ids)
    ours = {"loglik": rel_err(loglik, ref_ll), "norm": rel_err(hidden, ref["norm"])}
    theirs = {"loglik": rel_err(official_loglik(logits16, ids), ref_ll),
              "norm": rel_err(off16["norm"], ref["norm"])}
    for layer in layers[:-1]:
        ours[layer] = rel_err(model16.hidden_states(ids, layer=layer), ref[layer])
        theirs[layer] = rel_err(off16[layer], ref[layer])
    assert all(ours[k] <= 2 * theirs[k] for k in ours), (ours, theirs)


def test_pieces_equal_one_pass():
    """Pieces of 1024 (and a last partial one), chunks of 700, two rows: the carried short
    tails, modal states and keys/values give one pass's numbers."""
    model = random_model(CONFIGS["types"], seed=3)
    ids = torch.cat([dna_ids(3000, seed=4), dna_ids(3000, seed=5)])
    whole = inference.run(model, ids, piece_size=3000).hidden
    pieces = inference.run(model, ids, piece_size=1024, chunk_size=700).hidden
    assert rel_err(pieces, whole) < 1e-5
    layer = "blocks.2.filter"
    assert rel_err(inference.run(model, ids, layer=layer, piece_size=1024).hidden,
                   inference.run(model, ids, layer=layer).hidden) < 1e-5


def test_suffix_from_captured_states():
    """An ALT input's positions from p on, computed from the REF input's states at p alone,
    equal the ALT input's full computation there (the suffix-only scoring of issue 28)."""
    model = random_model(CONFIGS["types"], seed=6)
    ref = dna_ids(3000, seed=7)
    p = 1700
    alt = ref.clone()
    alt[0, p] = 84 if alt[0, p] != 84 else 65
    alt[0, p + 500:] = dna_ids(3000 - p - 500, seed=8)
    captured = inference.run(model, ref, capture_at=p, piece_size=1024).states[p]
    assert [s.position for s in captured] == [p] * model.config.num_layers
    suffix = inference.run(model, alt[:, p:], start=captured, piece_size=512).hidden
    full = inference.run(model, alt).hidden
    assert rel_err(suffix, full[:, p:]) < 1e-5
    again = inference.run(model, alt[:, p:], start=captured, piece_size=512).hidden  # reusable
    assert torch.equal(again, suffix)
    residual = model.embedding_layer(alt[:, p:]).float()  # block by block, with run_block
    for i, state in enumerate(captured):
        inference.run_block(model, i, residual, state.clone(), chunk_size=333)
    last = f"blocks.{model.config.num_layers - 1}"
    assert rel_err(residual, inference.run(model, alt, layer=last).hidden[:, p:]) < 1e-5


def test_autograd_forward_matches_inference_and_trains():
    model = random_model(CONFIGS["types"], seed=9)
    ids = dna_ids(300, batch=2, seed=10)
    for layer in (None, "blocks.3.inner_mha_cls", "blocks.2.filter", "blocks.4"):
        assert rel_err(model(ids, layer=layer).detach(),
                       model.hidden_states(ids, layer=layer)) < 1e-5
    model.train()
    model.freeze(1)
    loss = model.logits(ids)[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).mean()
    loss.backward()
    assert model.blocks[0].projections.weight.grad is None
    grads = [model.blocks[2].filter.log_poles.grad, model.blocks[1].filter.h.grad,
             model.blocks[3].inner_mha_cls.Wqkv.weight.grad]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_tokenize_and_layers():
    model = random_model(CONFIGS["types"])
    ids = model.tokenize(["ACGTNacgtn", "GgR"])
    assert ids.tolist() == [[65, 67, 71, 84, 78, 65, 67, 71, 84, 78],
                            [71, 71, 82, 1, 1, 1, 1, 1, 1, 1]]
    for bad in ("ACG T", "AC-G", "ACGÅ"):
        with pytest.raises(InputError, match="invalid character"):
            model.tokenize([bad])
    assert {"blocks.28.mlp.l3", "norm"} <= set(random_model(CONFIGS["7b-1m"]).layers)
    assert model.layer_width("blocks.1.mlp.l1") == model.config.inner_mlp_size
    assert model.layer_width("blocks.0.projections") == 3 * 48
    with pytest.raises(InputError, match="no such layer"):
        model.check_layer("blocks.3.filter")  # an attention block has no filter
    lp = model.base_log_probs(ids[:1])
    ll, _ = model.log_likelihoods(ids[:1])
    column = torch.tensor([{65: 0, 67: 1, 71: 2, 84: 3}.get(int(i), -1) for i in ids[0, 1:]])
    known = column >= 0
    assert torch.allclose(lp[0, known, column[known]], ll[0, known])
