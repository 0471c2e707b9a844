"""Variant classification heads: class order (--positive-label and its default), probability
column names, predictions against a float64 numpy reference, and the head files (new and
written before the base model and freeze were recorded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genomeconv.errors import InputError
from genomeconv.models import heads


def test_positive_class_defaults_to_the_minority_label_and_goes_last():
    labels = ["benign"] * 5 + ["pathogenic"] * 2
    assert heads.order_classes(labels, ["benign", "pathogenic"], None) == ["benign", "pathogenic"]
    labels = ["benign"] * 2 + ["pathogenic"] * 5
    assert heads.order_classes(labels, ["benign", "pathogenic"], None) == ["pathogenic", "benign"]
    tie = ["a", "b", "b", "a"]  # a tie: the label sorting last, as before --positive-label
    assert heads.order_classes(tie, ["a", "b"], None) == ["a", "b"]
    assert heads.order_classes(labels, ["benign", "pathogenic"], "benign") == \
        ["pathogenic", "benign"]
    with pytest.raises(InputError, match="--positive-label 'x' is not one of the labels"):
        heads.order_classes(labels, ["benign", "pathogenic"], "x")
    three = ["a", "b", "c"]
    assert heads.order_classes(three, three, None) == three
    with pytest.raises(InputError, match="applies to two classes"):
        heads.order_classes(three, three, "a")


def test_column_names_are_sanitised_deterministically():
    assert heads.column_names(["Nonsense", "synonymous"]) == ["p_nonsense", "p_synonymous"]
    assert heads.column_names(["loss-of function", "0", "A/B  c"]) == \
        ["p_loss_of_function", "p_0", "p_a_b_c"]
    # DuckDB folds case: "A" and "a" would clash, so the second gets its index
    assert heads.column_names(["A", "a", "--", "ref"]) == ["p_a", "p_a_1", "p_2", "p_ref_3"]
    assert heads.probability_columns(["x", "Y"]) == ["p_y"]  # binary: the positive class only
    assert heads.probability_columns(["x", "y", "z"]) == ["p_x", "p_y", "p_z"]


def reference_mlp(state: dict[str, torch.Tensor], x: np.ndarray) -> np.ndarray:
    """Linear -> GELU (erf) -> Linear in float64."""
    from scipy.special import erf

    w0, b0 = state["0.weight"].double().numpy(), state["0.bias"].double().numpy()
    w2, b2 = state["2.weight"].double().numpy(), state["2.bias"].double().numpy()
    h = x @ w0.T + b0
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    return h @ w2.T + b2


@pytest.mark.parametrize("classes", [["neg", "Pos"], ["a", "b", "c"]])
def test_scores_match_a_float64_reference(tmp_path, rng, classes):
    d, n_out = 6, (1 if len(classes) == 2 else len(classes))
    torch.manual_seed(0)
    head = heads.make_head(3 * d, n_out, 5)
    heads.save_head(head, {"classes": classes, "n_out": n_out, "hidden": 5, "input_dim": 3 * d,
                           "window": 16, "freeze": "none",
                           "base_model": {"model": "m", "load": "m"}}, tmp_path)
    loaded = heads.load_head(tmp_path)
    assert not loaded.legacy
    ref, alt = rng.normal(size=(7, d)), rng.normal(size=(7, d))
    logits = reference_mlp(head.state_dict(), np.concatenate([ref, alt, alt - ref], axis=1))
    got = loaded.scores(ref, alt)
    assert list(got) == loaded.columns
    if n_out == 1:
        want = {"p_pos": 1 / (1 + np.exp(-logits[:, 0]))}
    else:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        want = dict(zip(["p_a", "p_b", "p_c"], (e / e.sum(axis=1, keepdims=True)).T))
    assert list(got) == list(want)
    for c in want:  # float32 head vs float64: a few float32 ulps
        np.testing.assert_allclose(got[c], want[c], rtol=1e-5, atol=1e-6)


def test_heads_written_before_the_base_model_was_recorded_are_legacy(tmp_path):
    head = heads.make_head(6, 1, 0)
    heads.save_head(head, {"classes": ["0", "1"], "n_out": 1, "hidden": 0, "input_dim": 6,
                           "window": 8, "score": "P(1)", "base_model": "genomeconv/bundled"},
                    tmp_path)
    loaded = heads.load_head(tmp_path)
    assert loaded.legacy and loaded.columns == ["p_1"]
    meta = json.loads((tmp_path / "head.json").read_text())
    assert meta["format"] == heads.HEAD_FORMAT


def test_classifier_pools_each_window_over_its_own_positions_of_its_layer(rng):
    """VariantClassifier is sized by the layer's width and reads `model(ids, layer=)` pooled by
    models.base.pool: right padding never enters a window's mean, so a padded batch gives the
    logits of each pair run alone."""
    from genomeconv.models import HyenaConfig, HyenaDNA
    from genomeconv.models.tokenizer import tokenize

    torch.manual_seed(3)
    model = HyenaDNA(HyenaConfig(d_model=8, n_layer=2, d_inner=16, max_seq_len=32)).eval()
    layer = "backbone.layers.0"
    clf = heads.VariantClassifier(model, 3, 4, layer).eval()
    assert clf.head[0].in_features == 3 * model.layer_width(layer)
    pairs = [("".join(rng.choice(list("ACGT"), n)), "".join(rng.choice(list("ACGT"), m)))
             for n, m in ((20, 20), (20, 17), (9, 12))]
    ref = model.tokenize([r for r, _ in pairs])
    alt = model.tokenize([a for _, a in pairs])
    lengths = [torch.tensor([len(s) for s in seqs]) for seqs in zip(*pairs)]
    with torch.no_grad():
        batched = clf(ref, alt, *lengths)
        for k, (r, a) in enumerate(pairs):
            hr, ha = (model(tokenize(s)[None], layer=layer)[0].double().mean(0) for s in (r, a))
            features = torch.cat([hr, ha, ha - hr])[None].float()
            torch.testing.assert_close(batched[k:k + 1], clf.head(features), rtol=1e-5,
                                       atol=1e-6)
