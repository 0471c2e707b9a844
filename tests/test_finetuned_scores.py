"""score-variants with fine-tuned models: the LM-derived columns (llr, llr_fwd, llr_rev, p_ref,
p_alt) never come from a fine-tuned backbone under its old LM head. With a trainable backbone
they come from the base model (equal to scoring with the base model itself) or stay null with
the reason in the file metadata; --freeze all keeps them from the one model; heads write named
p_<class> columns; old fine-tuned folders still score, with a note.

Real DeepSpeed fine-tuning (one epoch, tiny model, one thread), real Ray, real Parquet read with
DuckDB; fixtures generated here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from genomeconv.models import HyenaConfig, HyenaDNA, heads, load
from genomeconv.pipelines import schema
from genomeconv.pipelines import train as tr
from genomeconv.pipelines import training_data as td
from genomeconv.pipelines.options import VariantOptions
from helpers import assert_one_line_error, make_variant_task, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

LM = ["llr_fwd", "llr_rev", "llr", "p_ref", "p_alt"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """Labelled SNVs on three chromosomes, 'damaging' (ALT A or T, every third variant: the
    minority) vs 'benign', and a tiny base model."""
    fasta, table, base, _ = make_variant_task(
        tmp_path_factory.mktemp("finetuned"), 7, 800, 16,
        lambda i, alt: "damaging" if alt in "AT" and i % 3 == 0 else "benign")
    return fasta, table, base


def finetune(task, out: Path, base: Path | None = None, **overrides) -> Path:
    fasta, table, task_base = task
    opts = tr.FinetuneOptions(**{"variants": table, "fasta": fasta, "out": out,
                                 "model": str(base or task_base), "window": 32,
                                 "head_hidden": 8, "epochs": 1, "batch_size": 8, "lr": 2e-2,
                                 "val_chroms": ("chr3",), **overrides})
    tr.finetune(opts, log=lambda line: None)
    return out / "model"


def score(task, model: Path, out: Path) -> tuple[list[dict], dict]:
    """Rows keyed by (chrom, pos, ref, alt) and the fine-tuned metadata of the parts."""
    import duckdb

    from genomeconv.pipelines.variants import score_variants

    score_variants(
        VariantOptions(variants=task[1], fasta=task[0], out=out, model=str(model), site_probs=True)
    )
    rows = duckdb.sql(f"SELECT * FROM '{out}/*.parquet' ORDER BY chrom, pos, ref, alt")
    names = rows.columns
    meta = pq.read_schema(next(out.glob("*.parquet"))).metadata or {}
    finetuned = json.loads(meta[schema.KEY_FINETUNED]) if schema.KEY_FINETUNED in meta else {}
    return [dict(zip(names, r)) for r in rows.fetchall()], finetuned


@pytest.fixture(scope="module")
def tuned(task, tmp_path_factory) -> Path:
    """A fine-tune with a trainable backbone (--freeze none; positive class by default: the
    minority label, damaging)."""
    return finetune(task, tmp_path_factory.mktemp("tuned"), freeze="none")


@pytest.fixture(scope="module")
def base_scores(task, tmp_path_factory, ray_local) -> tuple[list[dict], dict]:
    """The base model's own scores of the task's variants."""
    return score(task, task[2], tmp_path_factory.mktemp("base_scores"))


def assert_columns_equal(a: list[dict], b: list[dict], columns: list[str]) -> None:
    assert [r["pos"] for r in a] == [r["pos"] for r in b]
    for c in columns:
        got, want = [r[c] for r in a], [r[c] for r in b]
        assert all(x is not None for x in want), c
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=c)


def test_trainable_backbone_takes_lm_columns_from_the_base_model(task, tuned, base_scores,
                                                                 tmp_path):
    model = tuned
    head = json.loads((model / "head.json").read_text())
    assert head["freeze"] == "none" and head["positive_label"] == "damaging"
    assert head["classes"] == ["benign", "damaging"] and head["columns"] == ["p_damaging"]
    assert head["base_model"]["load"] == str(task[2].resolve())
    base = load(task[2])
    tuned = load(model)
    assert any(not torch.equal(p, q) for p, q in
               zip(base.state_dict().values(), tuned.state_dict().values()))
    rows, meta = score(task, model, tmp_path / "scores")
    base_rows, base_meta = base_scores
    assert base_meta == {}
    assert_columns_equal(rows, base_rows, LM)  # the base model's LM columns, exactly
    # the embedding columns are the fine-tuned model's (its backbone changed)
    assert not np.allclose([r["emb_l2"] for r in rows], [r["emb_l2"] for r in base_rows])
    assert meta["lm_columns"] == "base" and meta["positive_label"] == "damaging"
    assert meta["columns"] == ["p_damaging"] and "--freeze none" in meta["note"]
    assert all(0.0 < r["p_damaging"] < 1.0 for r in rows)
    assert "p_benign" not in rows[0] and "finetuned_score" not in rows[0]


def test_base_model_with_other_weights_leaves_lm_columns_null(task, tmp_path, ray_local):
    base = tmp_path / "base"
    shutil.copytree(task[2], base)
    model = finetune(task, tmp_path / "ft", base=base, freeze="1", positive_label="benign")
    torch.manual_seed(11)
    HyenaDNA(HyenaConfig(d_model=16, n_layer=2, d_inner=32, max_seq_len=32)).save(base)
    rows, meta = score(task, model, tmp_path / "scores")
    assert meta["lm_columns"] == "none" and "other weights" in meta["note"]
    assert meta["positive_label"] == "benign" and meta["columns"] == ["p_benign"]
    assert all(r[c] is None for r in rows for c in LM)
    assert all(r["emb_l2"] is not None and r["p_benign"] is not None for r in rows)
    shutil.rmtree(base)  # gone: also null, the reason says why
    rows, meta = score(task, model, tmp_path / "scores2")
    assert meta["lm_columns"] == "none" and "cannot be loaded" in meta["note"]
    assert all(r[c] is None for r in rows for c in LM)


def test_frozen_backbone_keeps_lm_columns_and_multiclass_writes_each_class(task, base_scores,
                                                                            tmp_path):
    model = finetune(task, tmp_path / "ft", freeze="all", label="three")
    rows, meta = score(task, model, tmp_path / "scores")
    own, _ = base_scores  # frozen: the backbone is the base's
    assert meta["lm_columns"] == "model" and meta["positive_label"] is None
    assert meta["columns"] == ["p_0", "p_1", "p_2"]
    assert_columns_equal(rows, own, LM + ["emb_l2"])
    sums = [r["p_0"] + r["p_1"] + r["p_2"] for r in rows]
    np.testing.assert_allclose(sums, 1.0, atol=1e-6)
    # independent: the head on the mean of the final hidden states of each training window
    backbone, head = load(model), heads.load_head(model)
    assert head.layer is None
    data = td.read_labelled_variants(task[1], "three")
    windows, _ = tr.build_windows(data, task[0], head.window, head.classes, backbone.tokenize)
    with torch.no_grad():
        ref, alt = (backbone(torch.from_numpy(w)).mean(dim=1).numpy()
                    for w in (windows.ref, windows.alt))
    want = dict(zip(((v.chrom, v.pos, v.ref, v.alt) for v in (data.variants[r]
                                                             for r in windows.rows)),
                    head.predict(ref, alt)))
    got = {(r["chrom"], r["pos"], r["ref"], r["alt"]): [r["p_0"], r["p_1"], r["p_2"]]
           for r in rows}
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-5)


def test_old_fine_tuned_folders_still_score_with_a_note(task, tuned, tmp_path, ray_local):
    model = tmp_path / "ft"
    shutil.copytree(tuned, model)
    head = json.loads((model / "head.json").read_text())
    for key in ("freeze", "positive_label", "columns"):
        del head[key]
    head["base_model"] = head["base_model"]["model"]  # the old format: an id string
    (model / "head.json").write_text(json.dumps(head))
    rows, meta = score(task, model, tmp_path / "scores")
    own = tmp_path / "own"  # the same folder without its head: the fine-tuned backbone alone
    shutil.copytree(model, own)
    (own / "head.json").unlink()
    plain, _ = score(task, own, tmp_path / "plain")
    assert meta["lm_columns"] == "model" and "fine-tuned before" in meta["note"]
    assert "sorting last" in meta["note"] and meta["columns"] == ["p_damaging"]
    assert_columns_equal(rows, plain, LM)


def test_positive_label_through_the_cli(task, tmp_path):
    fasta, table, base = task
    args = ["finetune", table, "--fasta", fasta, "--model", base, "--window", "32",
            "--val-chroms", "chr3", "--epochs", "1", "--head-hidden", "0",
            "--out", tmp_path / "o"]
    assert_one_line_error(run_cli(*args, "--positive-label", "nope"),
                          "--positive-label 'nope' is not one of the labels")
    from typer.testing import CliRunner

    from genomeconv.cli import app

    # in this process: the process group that earlier tests started here holds MASTER_PORT
    ok = CliRunner().invoke(app, [str(a) for a in (*args, "--positive-label", "benign")])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "o" / "model" / "head.json").read_text())["positive_label"] \
        == "benign"
