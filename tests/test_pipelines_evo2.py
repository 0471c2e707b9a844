"""Every pipeline with an Evo 2 model, unchanged (issue 26 item 5): a tiny random Evo 2 saved in
genomeconv's layout runs embed (--layer with the release's module names), track, score-variants
(default window 8,192, variant centred, both strands; --saturate), query, plot and finetune
(a head on a layer's embeddings, --freeze in blocks) on the CPU through the real CLI and local
Ray; outputs name the family, the layer and the checkpoint's hash. `submit` runs an Evo 2 job
in tests/test_submit.py."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from evo2_configs import CONFIGS, random_model
from genomeconv.cli import app
from genomeconv.models import load, pool
from genomeconv.pipelines import manifest, schema
from helpers import markov_genome, write_fasta

LAYER = "blocks.2.mlp.l3"


def invoke(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved tiny Evo 2 (max length 8,192) and a 9 kbp two-record genome."""
    root = tmp_path_factory.mktemp("evo2")
    random_model(CONFIGS["types"], seed=31).save(root / "model")
    rng = np.random.default_rng(31)
    genome = {"c1": markov_genome(rng, 9000), "c2": markov_genome(rng, 700)}
    return root, root / "model", write_fasta(root / "g.fa", genome), genome


def metadata(folder) -> dict[bytes, bytes]:
    part = sorted(p for p in folder.rglob("*.parquet"))[0]
    return pq.read_schema(part).metadata


def test_embed_layer_and_metadata(setup, ray_local):
    root, model_dir, fasta, genome = setup
    out = root / "embed"
    invoke("embed", fasta, "--model", model_dir, "--out", out, "--layer", LAYER,
           "--region", "c1:1-600", "--region", "c2")
    model = load(str(model_dir))
    rows = {r["seq_name"]: r for r in pq.read_table(out).to_pylist()}
    assert len(rows) == 2
    for name, seq in (("c1:1-600", genome["c1"][:600]), ("c2", genome["c2"])):
        ids = model.tokenize([seq])
        with torch.no_grad():  # the autograd forward: independent of the inference path
            want = model(ids, layer=LAYER).mean(dim=1)[0].double().numpy()
        got = [r for n, r in rows.items() if n.startswith(name.split(":")[0])][0]
        np.testing.assert_allclose(got["embedding"], want, rtol=1e-4, atol=1e-5)
    meta = metadata(out)
    assert meta[schema.KEY_FAMILY] == b"evo2" and meta[schema.KEY_LAYER] == LAYER.encode()
    expect = manifest.model_fingerprint(str(model_dir), model.config_sha256)
    assert meta[schema.KEY_WEIGHTS] == expect["model_weights_sha256"].encode()
    bad = CliRunner().invoke(app, ["embed", str(fasta), "--model", str(model_dir), "--out",
                                   str(root / "bad"), "--layer", "blocks.99"])
    assert bad.exit_code == 2 and "blocks.N.mlp.l3 (N 0-5)" in bad.output, bad.output
    assert "blocks.N.inner_mha_cls (N 3)" in bad.output, bad.output


def test_track_and_plot(setup, ray_local):
    root, model_dir, fasta, genome = setup
    out = root / "track"
    invoke("track", fasta, "--model", model_dir, "--out", out, "--region", "c2:1-500")
    table = pq.read_table(out / "track").to_pylist()
    assert len(table) == 500 and metadata(out)[schema.KEY_FAMILY] == b"evo2"
    model = load(str(model_dir))
    logp = model.base_log_probs(model.tokenize([genome["c2"]]))[0]  # one pass, whole record
    row = next(r for r in table if r["position"] == 300)  # 0-based
    base = "ACGT".index(genome["c2"][300])
    assert row["logp_ref_fwd"] == pytest.approx(float(logp[299, base]), abs=2e-4)
    png = root / "track.png"
    invoke("plot", "track", out, "--region", "c2:1-500", "-o", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_variants_window_query_and_saturate(setup, ray_local):
    root, model_dir, fasta, genome = setup
    vcf = root / "v.tsv"
    rows = [("c1", 4600, genome["c1"][4599], "A" if genome["c1"][4599] != "A" else "C"),
            ("c2", 350, genome["c2"][349], "G" if genome["c2"][349] != "G" else "T")]
    vcf.write_text("chrom\tpos\tref\talt\n" + "".join("\t".join(map(str, r)) + "\n"
                                                       for r in rows))
    out = root / "scores"
    invoke("score-variants", vcf, "--fasta", fasta, "--model", model_dir, "--out", out)
    got = {r["chrom"]: r for r in pq.read_table(out).to_pylist()}
    assert got["c1"]["window_end"] - got["c1"]["window_start"] == 8192  # Evo 2's window
    assert got["c1"]["window_start"] == 4599 - 4096  # the variant's base at index W // 2
    assert got["c2"]["window_end"] - got["c2"]["window_start"] == 700  # the whole record
    model = load(str(model_dir))
    start, end = got["c1"]["window_start"], got["c1"]["window_end"]
    ref = genome["c1"][start:end]
    alt = ref[:4096] + rows[0][3] + ref[4097:]
    ll, _ = model.log_likelihoods(model.tokenize([ref, alt]))
    assert got["c1"]["llr_fwd"] == pytest.approx(float(ll[1].double().sum()
                                                       - ll[0].double().sum()), abs=1e-3)
    assert metadata(out)[schema.KEY_FAMILY] == b"evo2"
    listed = invoke("query", out, "SELECT chrom, llr FROM variants ORDER BY chrom",
                    "--format", "json")
    assert [json.loads(x)["chrom"] for x in listed.splitlines() if x.strip()] == ["c1", "c2"]
    sat = root / "sat"
    invoke("score-variants", "--saturate", "c2:300-303", "--fasta", fasta, "--model", model_dir,
           "--out", sat, "--window", "256")
    assert len(pq.read_table(sat)) == 12
    png = root / "sat.png"
    invoke("plot", "mutagenesis", sat, "--region", "c2:300-303", "-o", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_finetune_head_on_a_layer(setup, tmp_path):
    root, model_dir, fasta, genome = setup
    rng = np.random.default_rng(5)
    lines = ["chrom\tpos\tref\talt\tlabel"]
    for pos in rng.choice(np.arange(40, 8900), size=24, replace=False):
        ref = genome["c1"][pos - 1]
        alt = "ACGT".replace(ref, "")[int(rng.integers(3))]
        lines.append(f"c1\t{pos}\t{ref}\t{alt}\t{int(alt in 'AT')}")
    table = tmp_path / "labels.tsv"
    table.write_text("\n".join(lines) + "\n")
    out = tmp_path / "ft"
    invoke("finetune", table, "--fasta", fasta, "--model", model_dir, "--out", out,
           "--window", "64", "--layer", "blocks.3", "--freeze", "2", "--epochs", "1",
           "--batch-size", "8", "--head-hidden", "8", "--val-fraction", "0.25")
    tuned = load(str(out / "model"))
    assert tuned.family == "evo2"
    base = load(str(model_dir))
    for name, p in tuned.state_tensors().items():  # frozen: the embedding and blocks 0-1
        same = torch.equal(p, base.state_tensors()[name])
        if name.startswith(("embedding_layer", "blocks.0.", "blocks.1.")):
            assert same, name
    assert not all(torch.equal(p, base.state_tensors()[n])
                   for n, p in tuned.state_tensors().items() if n.startswith("blocks.2."))
    head = json.loads((out / "model" / "head.json").read_text())
    assert head["layer"] == "blocks.3"
    pooled = pool(tuned.hidden_states(tuned.tokenize(["ACGT" * 16]), layer="blocks.3"), "mean")
    assert pooled.shape == (1, tuned.layer_width("blocks.3"))
