"""DeepSpeed training: metrics against brute force, pretraining (loss falls, resume continues the
same curve, 2 torchrun processes match 1 process), fine-tuning round trips (binary and
multi-class, early stopping, the saved head reproduces the validation predictions).

Fixtures are generated per test: genomes from a peaked order-2 Markov chain (so a tiny model can
learn something in a few steps), written as FASTA and indexed with pysam; tiny HyenaDNA models.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genomeconv.errors import InputError
from genomeconv.models import load
from genomeconv.models import heads
from genomeconv.pipelines import metrics
from genomeconv.pipelines import train as tr
from genomeconv.pipelines import training_data as td
from genomeconv.pipelines.options import VariantOptions
from genomeconv.plots.training import training_figure
from helpers import (assert_one_line_error, make_variant_task, markov_genome, run_cli,
                     write_fasta)

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TINY = dict(d_model=16, n_layer=2, seq_len=64, batch_size=4, lr=5e-3, val_windows=4,
            val_fraction=0.1)


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> Path:
    rng = np.random.default_rng(2024)
    path = tmp_path_factory.mktemp("genome") / "g.fa"
    return write_fasta(path, {"r1": markov_genome(rng, 6000), "r2": markov_genome(rng, 3000)})


# ------------------------------------------------------------------------------- metrics
def brute_auroc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = [(p > q) + 0.5 * (p == q) for p, q in itertools.product(pos, neg)]
    return float(np.mean(wins))


def brute_ap(y: np.ndarray, s: np.ndarray) -> float:
    total, prev_recall = 0.0, 0.0
    for thr in sorted(set(s), reverse=True):
        pred = s >= thr
        recall = (pred & (y == 1)).sum() / (y == 1).sum()
        total += (recall - prev_recall) * (pred & (y == 1)).sum() / pred.sum()
        prev_recall = recall
    return float(total)


def test_classification_metrics_match_brute_force(rng):
    y = rng.integers(0, 2, size=60)
    s = np.round(rng.normal(size=60) + y, 1)  # rounding makes ties
    assert metrics.auroc(y, s) == pytest.approx(brute_auroc(y, s), abs=1e-12)
    assert metrics.average_precision(y, s) == pytest.approx(brute_ap(y, s), abs=1e-12)
    probs = rng.dirichlet(np.ones(3), size=60)
    labels = rng.integers(0, 3, size=60)
    m = metrics.classification_metrics(labels, probs)
    assert m["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels))
    assert m["auroc"] == pytest.approx(np.mean([brute_auroc((labels == c).astype(int), probs[:, c])
                                                for c in range(3)]))


def test_markov_baseline_matches_counting(rng):
    seq = rng.integers(7, 11, size=400)
    seq[::37] = 11  # some N
    k = 3
    model = metrics.MarkovBaseline([seq], max_order=k)
    window = rng.integers(7, 12, size=20)
    got = model.window_logprob(window, k)
    s = "".join(chr(65 + int(x)) for x in seq)
    for t in range(1, len(window)):
        c = min(k, t)
        ctx = "".join(chr(65 + int(x)) for x in window[t - c:t])
        nxt = chr(65 + int(window[t]))
        n_ctx = sum(s[i:i + c] == ctx for i in range(len(s) - c))
        n_full = sum(s[i:i + c + 1] == ctx + nxt for i in range(len(s) - c))
        assert got[t - 1] == pytest.approx(math.log((n_full + 1) / (n_ctx + 5)), abs=1e-12)


# ------------------------------------------------------------------------------ pretrain
def run_pretrain(genome: Path, out: Path, **overrides) -> dict:
    opts = tr.PretrainOptions(**{**TINY, "fasta": genome, "out": out, "steps": 8,
                                 "eval_every": 4, "save_every": 4, **overrides})
    return tr.pretrain(opts, log=lambda line: None)


def test_pretrain_learns_and_resume_continues_the_curve(genome, tmp_path):
    full = run_pretrain(genome, tmp_path / "full", kmer_baseline=3,
                        warmup_lengths=(16, 32), warmup_steps=2)
    written = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert written["steps"] == 8 and written["config"]["max_seq_len"] == 64
    assert [r["length"] for r in full["history"]] == [16, 16, 32, 32, 64, 64, 64, 64]
    model = load(tmp_path / "full" / "model")
    assert model.config.d_model == 16 and (tmp_path / "full" / "model" / "MODEL_CARD.md").is_file()
    assert "Markov" in (tmp_path / "full" / "model" / "MODEL_CARD.md").read_text()
    assert full["kmer_baseline"]["order"] in range(4)
    # the real run's files are what `genomeconv plot training` draws (test_plots writes them)
    drawn = {line.get_gid(): line.get_xydata()
             for ax in training_figure(tmp_path / "full").axes for line in ax.get_lines()}
    np.testing.assert_array_equal(drawn["train_loss"],
                                  [(r["step"], r["train_loss"]) for r in full["history"]])
    assert drawn["kmer_val_ppl"][0, 1] == full["kmer_baseline"]["val_ppl"]
    # the model's validation NLL equals its own log-likelihood on the same windows
    split = td.load_genome(genome, model.tokenize, val_fraction=0.1)
    windows = td.tile_windows(split.val, 64, 4)
    with torch.no_grad():
        nll = -np.mean([model.autograd_log_likelihoods(torch.from_numpy(w)[None]).numpy()
                        for w in windows])
    assert full["val_nll"] == pytest.approx(nll, rel=1e-4)
    # resume: drop the last checkpoint and continue from step 4
    ckpt = tmp_path / "resumed" / "checkpoints"
    shutil.copytree(tmp_path / "full" / "checkpoints", ckpt)
    shutil.rmtree(ckpt / "step8")
    (ckpt / "latest").write_text("step4")
    resumed = run_pretrain(genome, tmp_path / "resumed", resume=True,
                           warmup_lengths=(16, 32), warmup_steps=2)
    assert resumed["steps"] == 8
    assert resumed["history"][:4] == full["history"][:4]  # restored from the checkpoint
    logged = (tmp_path / "resumed" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in logged] == resumed["history"]  # steps 5-8 once
    for a, b in zip(resumed["history"][4:], full["history"][4:]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    assert resumed["val_nll"] == pytest.approx(full["val_nll"], rel=1e-5)


def test_deepspeed_steps_reduce_the_loss(genome, tmp_path):
    summary = run_pretrain(genome, tmp_path, steps=20, eval_every=20, save_every=20, lr=1e-2)
    losses = [r["train_loss"] for r in summary["history"]]
    assert losses[0] > math.log(15)  # untrained: about log(16) over the padded vocabulary
    assert np.mean(losses[-3:]) < losses[0] - 0.8
    assert summary["val_nll"] < losses[0] - 0.8


def test_two_torchrun_processes_match_one(genome, tmp_path):
    args = ["pretrain", str(genome), "--d-model", "16", "--n-layer", "2", "--seq-len", "64",
            "--batch-size", "4", "--lr", "5e-3", "--steps", "4", "--eval-every", "4",
            "--save-every", "4", "--val-windows", "4", "--val-fraction", "0.1"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    # --standalone: the rendezvous store binds a free port itself and the workers use it, so no
    # other process (a Ray worker of a parallel test) can take a port chosen here first.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "genomeconv.cli"]
    done = subprocess.run([*torchrun, *args, "--out", str(tmp_path / "two")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    one = run_pretrain(genome, tmp_path / "one", steps=4)
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["processes"] == 2
    for a, b in zip(two["history"], one["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert two["val_nll"] == pytest.approx(one["val_nll"], rel=1e-4)
    a, b = load(tmp_path / "one" / "model"), load(tmp_path / "two" / "model")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


# ------------------------------------------------------------------------------ finetune


@pytest.fixture(scope="module")
def variant_task(tmp_path_factory):
    """Label 1 when the ALT is A or T (learnable from the alt - ref embedding)."""
    return make_variant_task(tmp_path_factory.mktemp("variant_task"), 99, 1500, 40)


def run_finetune(task, out: Path, **overrides) -> dict:
    fasta, table, base, _ = task
    opts = tr.FinetuneOptions(**{"variants": table, "fasta": fasta, "out": out,
                                 "model": str(base), "window": 32, "head_hidden": 16,
                                 "epochs": 3, "batch_size": 8, "lr": 1e-2, "val_chroms": ("chr3",),
                                 **overrides})
    return tr.finetune(opts, log=lambda line: None)


LAYER = "backbone.layers.0"  # the binary head reads the first block's output (--layer)


@pytest.fixture(scope="module")
def binary(variant_task, tmp_path_factory) -> tuple[dict, Path]:
    """One binary fine-tune on the first block's hidden states: its summary and model folder."""
    out = tmp_path_factory.mktemp("binary")
    summary = run_finetune(variant_task, out, freeze="1", positive_label="1", layer=LAYER)
    return summary, out / "model"


def pooled(model, ids: np.ndarray, layer: str | None) -> np.ndarray:
    """Independent reference: the mean of the autograd forward's hidden states of `layer` over
    full-length windows."""
    with torch.no_grad():
        return model(torch.from_numpy(ids), layer=layer).mean(dim=1).numpy()


def test_finetune_binary_round_trip(variant_task, binary):
    summary, model_dir = binary
    assert summary["classes"] == ["0", "1"] and summary["positive_label"] == "1"
    assert summary["val_chroms"] == ["chr3"]
    assert summary["train_variants"] == 80 and summary["val_variants"] == 40
    best = max(summary["history"], key=lambda r: r["auroc"])
    assert best["auroc"] > 0.8
    # the saved model (backbone + head) reproduces the best epoch's validation metrics
    model, head = load(model_dir), heads.load_head(model_dir)
    assert head.classes == ["0", "1"] and head.window == 32
    assert head.layer == LAYER and head.meta["input_dim"] == 3 * model.layer_width(LAYER)
    data = td.read_labelled_variants(variant_task[1], "label")
    windows, _ = tr.build_windows(data, variant_task[0], 32, head.classes, model.tokenize)
    assert (windows.ref_lengths == 32).all() and (windows.alt_lengths == 32).all()
    val = windows.subset(np.array([data.variants[r].chrom == "chr3" for r in windows.rows]))
    ref, alt = pooled(model, val.ref, LAYER), pooled(model, val.alt, LAYER)
    probs = head.predict(ref, alt)
    np.testing.assert_allclose(head.scores(ref, alt)["p_1"], probs[:, 1])
    got = metrics.classification_metrics(val.labels, probs)
    assert got["auroc"] == pytest.approx(best["auroc"], abs=1e-6)
    assert got["accuracy"] == pytest.approx(best["accuracy"], abs=1e-6)


def test_score_variants_adds_the_class_probability(variant_task, binary, tmp_path, ray_local):
    """The head's layer (head.json) is the one score-variants pools for it."""
    import duckdb

    from genomeconv.pipelines.variants import score_variants

    model_dir = binary[1]
    model, head = load(model_dir), heads.load_head(model_dir)
    score_variants(
        VariantOptions(
            variants=variant_task[1],
            fasta=variant_task[0],
            out=tmp_path / "scores",
            model=str(model_dir),
        )
    )
    got = duckdb.sql(f"SELECT chrom, pos, ref, alt, p_1, status FROM "
                     f"'{tmp_path / 'scores'}/*.parquet'").fetchall()
    assert len(got) == len(variant_task[3]) and all(r[5] == "ok" for r in got)
    # independent: the head on mean-pooled hidden states (of its layer) of the training windows
    data = td.read_labelled_variants(variant_task[1], "label")
    windows, _ = tr.build_windows(data, variant_task[0], head.window, head.classes,
                                  model.tokenize)
    ref, alt = pooled(model, windows.ref, LAYER), pooled(model, windows.alt, LAYER)
    want = {(v.chrom, v.pos, v.ref, v.alt): s for v, s in
            zip((data.variants[r] for r in windows.rows), head.scores(ref, alt)["p_1"])}
    scores = {r[:4]: r[4] for r in got}
    assert set(scores) == set(want)
    np.testing.assert_allclose([scores[k] for k in want], list(want.values()), atol=1e-5)
    # a head naming a layer its backbone lacks is refused before any work
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    meta = json.loads((broken / "head.json").read_text())
    (broken / "head.json").write_text(json.dumps({**meta, "layer": "blocks.0"}))
    with pytest.raises(InputError, match=r"'blocks.0'.*valid: backbone.layers.N \(N 0-1\)"):
        score_variants(VariantOptions(variants=variant_task[1], fasta=variant_task[0],
                                      out=tmp_path / "never", model=str(broken)))
    assert not (tmp_path / "never").exists()


def test_finetune_multiclass_early_stopping_and_resume(variant_task, tmp_path):
    first = run_finetune(variant_task, tmp_path, label="three", freeze="all", epochs=2, lr=0.0,
                         patience=1)
    assert first["classes"] == ["0", "1", "2"]
    assert len(first["history"]) == 2  # lr 0: epoch 2 cannot improve
    head = heads.load_head(tmp_path / "model")
    assert head.meta["n_out"] == 3
    again = run_finetune(variant_task, tmp_path, label="three", freeze="all", epochs=5, lr=0.0,
                         patience=1, resume=True)
    assert again["history"] == first["history"]  # already stopped early: nothing more to run


def test_vcf_labels_align_with_alt_alleles(tmp_path):
    vcf = tmp_path / "labels.vcf"
    vcf.write_text(
        "##fileformat=VCFv4.2\n##contig=<ID=chr1,length=1000>\n"
        '##INFO=<ID=CLS,Number=A,Type=String,Description="per ALT">\n'
        '##INFO=<ID=Y,Number=1,Type=Integer,Description="per record">\n'
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
        "chr1\t10\t.\tA\tC,G\t.\t.\tCLS=benign,pathogenic;Y=1\n"
        "chr1\t20\trs2\tT\tA\t.\t.\tCLS=benign;Y=0\n")
    per_alt = td.read_labelled_variants(vcf, "CLS")
    assert [(v.pos, v.alt) for v in per_alt.variants] == [(10, "C"), (10, "G"), (20, "A")]
    assert per_alt.labels == ["benign", "pathogenic", "benign"]
    assert per_alt.classes == ["benign", "pathogenic"]
    assert td.read_labelled_variants(vcf, "Y").labels == ["1", "1", "0"]
    with pytest.raises(ValueError, match="no INFO field"):
        td.read_labelled_variants(vcf, "MISSING")


# ------------------------------------------------------------------ input errors: one line, exit 2
def _cli_error(args: list[str]) -> str:
    """Run the CLI in this process (the same error boundary as the console script) and return
    its single stderr line; the exit code must be 2 and no traceback shown."""
    from typer.testing import CliRunner

    from genomeconv.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, (result.output, result.exception)
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def gas3(tmp_path) -> Path:
    path = tmp_path / "gas3.json"
    path.write_text(json.dumps({"gradient_accumulation_steps": 3, "zero_optimization":
                                {"stage": 0}}))
    return path


@pytest.mark.parametrize("case,extra,want", [
    ("missing_fasta", [], "FASTA file not found"),
    ("deepspeed_name", ["--deepspeed-config", "zero9_fp64"], "'zero9_fp64' not found"),
    ("deepspeed_json", ["--deepspeed-config", "{bad}"], "not a JSON DeepSpeed config"),
    ("batch_vs_accumulation", ["--deepspeed-config", "{gas3}"], "not a multiple"),
    ("warmup_lengths", ["--warmup-lengths", "32,128"], "--warmup-lengths must lie in"),
    ("lr", ["--lr", "nan"], "--lr must be a finite number"),
    ("val_records", ["--val-records", "chrZ"], "--val-records 'chrZ' is not a record"),
    ("window_too_long", ["--seq-len", "8000", "--val-fraction", "0.5"],
     "no training segment is as long as the window (8000 bp"),
    ("out_is_a_file", ["--out", "{file}"], "--out is a file"),
])
def test_pretrain_input_errors(genome, tmp_path, gas3, case, extra, want):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    (tmp_path / "file").write_text("x")
    extra = [e.format(gas3=gas3, bad=bad, file=tmp_path / "file") for e in extra]
    fasta = tmp_path / "none.fa" if case == "missing_fasta" else genome
    args = ["pretrain", fasta, "--out", tmp_path / "o", "--d-model", "16", "--n-layer", "1",
            "--seq-len", "64", "--steps", "2", "--batch-size", "4", "--val-windows", "4",
            "--val-fraction", "0.1", *extra]
    assert want in _cli_error(args)
    assert not (tmp_path / "o" / "checkpoints").exists()


@pytest.mark.parametrize("case,extra,want", [
    ("freeze_word", ["--freeze", "some"], "--freeze takes all, none or a number"),
    ("freeze_too_many", ["--freeze", "5"], "has 2 blocks"),
    ("layer", ["--layer", "mixer"], "--layer 'mixer'"),
    ("label_column", ["--label-column", "nope"], "no column 'nope'"),
    ("single_class", ["--label-column", "one"], "has a single value ['x']"),
    ("no_records", [], "no variants to train on"),
    ("missing_fasta", [], "FASTA file not found"),
    ("deepspeed_name", ["--deepspeed-config", "nope"], "'nope' not found"),
    ("too_few_after_split", ["--batch-size", "200"], "too few variants after the chromosome"),
    ("window", ["--window", "2", "--epochs", "0"], "Invalid value"),
])
def test_finetune_input_errors(variant_task, tmp_path, case, extra, want):
    fasta, table, base, _ = variant_task
    if case == "single_class":
        lines = table.read_text().splitlines()
        table = tmp_path / "one.tsv"
        table.write_text("\n".join([lines[0] + "\tone", *(f"{line}\tx" for line in lines[1:])])
                         + "\n")
    if case == "no_records":
        table = tmp_path / "empty.tsv"
        table.write_text("chrom\tpos\tref\talt\tlabel\n")
    if case == "missing_fasta":
        fasta = tmp_path / "none.fa"
    args = ["finetune", table, "--fasta", fasta, "--model", base, "--window", "32",
            "--out", tmp_path / "o", "--val-chroms", "chr3", *extra]
    if case == "window":  # typer's own usage error for an option value it validates
        from typer.testing import CliRunner

        from genomeconv.cli import app

        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert want in result.output
        return
    assert want in _cli_error(args)
    assert not (tmp_path / "o" / "model").exists()


def test_train_errors_through_the_console_script(tmp_path):
    """The real CLI in a fresh process: one stderr line, exit 2 (pretrain and finetune)."""
    assert_one_line_error(run_cli("pretrain", tmp_path / "none.fa", "--out", tmp_path / "o"),
                          "FASTA file not found")
    assert_one_line_error(run_cli("finetune", tmp_path / "v.tsv", "--fasta", tmp_path / "none.fa",
                                  "--freeze", "x", "--out", tmp_path / "o"), "--freeze takes")


def test_broken_fine_tuned_heads_are_one_line(tmp_path):
    from safetensors.torch import save_file

    meta = {"input_dim": 6, "n_out": 1, "hidden": 4, "classes": ["a", "b"], "window": 8}
    head = heads.make_head(6, 1, 4)
    heads.save_head(head, meta, tmp_path)
    assert heads.load_head(tmp_path).meta["classes"] == ["a", "b"]
    save_file({"0.weight": torch.randn(3, 6)}, str(tmp_path / "head.safetensors"))
    with pytest.raises(InputError, match="unreadable fine-tuned head") as info:
        heads.load_head(tmp_path)
    assert "\n" not in str(info.value)
    (tmp_path / "head.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match="unreadable fine-tuned head"):
        heads.load_head(tmp_path)
    (tmp_path / "head.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match="unknown head format 'other'"):
        heads.load_head(tmp_path)
    (tmp_path / "head.json").write_text("{")
    with pytest.raises(InputError, match="head.json: not valid JSON"):
        heads.load_head(tmp_path)


def test_variants_does_not_import_training():
    """Scoring needs no training code (the pipelines.train <-> pipelines.variants cycle is gone),
    and the command line reads training defaults without importing torch."""
    code = ("import sys, genomeconv.pipelines.variants, genomeconv.commands.train; "
            "print('genomeconv.pipelines.train' in sys.modules, "
            "'genomeconv.pipelines.deepspeed_engine' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["False", "False"], out.stderr
    light = subprocess.run([sys.executable, "-c", "import sys, genomeconv.commands.train; "
                            "print('torch' in sys.modules)"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert light.stdout.strip() == "False", light.stderr


def test_cli_defaults_are_the_options_defaults():
    import inspect

    from genomeconv.commands import train as commands
    from genomeconv.pipelines.options import FinetuneOptions, PretrainOptions

    for command, options in ((commands.pretrain, PretrainOptions),
                             (commands.finetune, FinetuneOptions)):
        for name, param in inspect.signature(command).parameters.items():
            default = getattr(param.default, "default", param.default)
            if hasattr(options, name) and name not in ("warmup_lengths", "val_records",
                                                       "val_chroms"):
                assert default == getattr(options, name), (command.__name__, name)


def test_pretrain_as_ray_train_workers(genome, tmp_path, ray_local):
    """--address: one Ray Train worker follows the same curve as this process."""
    from genomeconv.pipelines.deepspeed_engine import run_on_ray

    opts = tr.PretrainOptions(**{**TINY, "fasta": genome, "out": tmp_path / "ray", "steps": 2,
                                 "eval_every": 2, "save_every": 2})
    on_ray = run_on_ray(tr.pretrain, tr.check_pretrain, (opts,), out=tmp_path / "ray",
                        address=None, num_workers=1)
    here = run_pretrain(genome, tmp_path / "here", steps=2, eval_every=2, save_every=2)
    assert [r["train_loss"] for r in on_ray["history"]] == \
        pytest.approx([r["train_loss"] for r in here["history"]], rel=1e-5)
    assert (tmp_path / "ray" / "model" / "model.safetensors").is_file()
