"""Variant-effect scoring: window arithmetic, score identities, statuses, the Ray pipeline, resume.

Fixtures are generated per test: a random reference written as text and indexed with pysam
(faidx), VCFs written as text (bgzipped and tabix-indexed with pysam), and a tiny random HyenaDNA
(d_model 16, 2 layers) saved to a temporary directory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from genomeconv.cli import app
from genomeconv.errors import InputError
from genomeconv.io.fasta import FastaFile
from genomeconv.io.regions import reverse_complement
from genomeconv.io.variants import Variant
from genomeconv.models import HyenaConfig, HyenaDNA, load
from genomeconv.models.tokenizer import tokenize
from genomeconv.pipelines import schema
from genomeconv.pipelines.variants import (alt_window, embedding_distances,
                                           plan_variant, score_planned, window_bounds)
from genomeconv.pipelines.options import VariantOptions
from helpers import bgzip_and_index, random_seq, save_tiny_model, write_fasta, write_vcf

W = 33  # odd: the reverse-complement window is then exactly a forward window of the RC genome
MAX_LEN = 66


def other_base(base: str, k: int = 0) -> str:
    return "ACGT".replace(base, "")[k % 3]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random HyenaDNA saved in genomeconv's layout (config.json + model.safetensors)."""
    path = tmp_path_factory.mktemp("tiny_model")
    save_tiny_model(path, seed=7, max_seq_len=MAX_LEN, d_inner=64)
    return path


@pytest.fixture(scope="module")
def model(tiny_model):
    return load(str(tiny_model)).eval()


def score(model, contigs: dict[str, str], variants: list[Variant], tmp_path: Path,
          name: str = "ref.fa", window: int = W, rc: bool = True) -> list[dict]:
    """Plan and score variants against a genome (no Ray)."""
    fasta = FastaFile(str(write_fasta(tmp_path / name, contigs)))
    cache: dict = {}
    planned = [plan_variant(v, fasta, window, cache) for v in variants]
    return score_planned(model, planned, rc=rc, site_probs=True, batch_size=4)


def var(chrom: str, pos: int, ref: str, alt: str, vid: str | None = None) -> Variant:
    return Variant(chrom, pos, ref, alt, vid, "test", 0)


def total_loglik(model, seq: str) -> float:
    """Independent reference: the autograd log-likelihoods of one sequence, summed in float64."""
    with torch.inference_mode():
        return float(model.autograd_log_likelihoods(tokenize(seq)[None]).double().sum())


def test_window_arithmetic():
    assert window_bounds(101, 1, 1, W, 1000) == (100 - W // 2, 100 - W // 2 + W)
    assert window_bounds(101, 1, 1, 32, 1000) == (100 - 16, 100 - 16 + 32)
    assert window_bounds(3, 1, 1, W, 1000) == (0, W)  # shifted inside at the left end
    assert window_bounds(999, 1, 1, W, 1000) == (1000 - W, 1000)  # and at the right end
    assert window_bounds(990, 4, 1, W, 1000) == (1000 - W - 3, 1000 - 3)  # room for the refill
    assert window_bounds(998, 3, 1, W, 1000) == (1000 - W, 1000)  # ...but REF stays inside
    assert window_bounds(40, 1, 1, 1000, 120) == (0, 120)  # a contig shorter than the window
    padded = "AAAACGTTTT" + "GGCC"
    assert alt_window(padded, 4, "C", "T", 10) == "AAAATGTTTT"  # SNV
    assert alt_window(padded, 4, "CGT", "C", 10) == "AAAACTTTGG"  # deletion: extended right
    assert alt_window(padded, 4, "C", "CAA", 10) == "AAAACAAGTT"  # insertion: cut right
    cos, l2 = embedding_distances(np.array([[1.0, 0.0], [1.0, 1.0]]),
                                  np.array([[0.0, 2.0], [2.0, 2.0]]))
    np.testing.assert_allclose(cos, [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(l2, [np.sqrt(5.0), np.sqrt(2.0)])


def test_llr_matches_direct_model_loglik(model, rng, tmp_path):
    genome = random_seq(rng, 200)
    snv = var("chr1", 90, genome[89], other_base(genome[89]))
    deletion = var("chr1", 120, genome[119:123], genome[119])
    rows = score(model, {"chr1": genome}, [snv, deletion], tmp_path)
    s = 89 - W // 2
    ref_win = genome[s:s + W]
    alt_win = genome[s:89] + snv.alt + genome[90:s + W]
    assert rows[0]["llr_fwd"] == pytest.approx(
        total_loglik(model, alt_win) - total_loglik(model, ref_win), rel=1e-5, abs=1e-6)
    assert rows[0]["llr_rev"] == pytest.approx(
        total_loglik(model, reverse_complement(alt_win))
        - total_loglik(model, reverse_complement(ref_win)), rel=1e-5, abs=1e-6)
    s = 119 - W // 2
    alt_win = (genome[s:120] + genome[123:])[:W]  # deletion: the window is refilled on the right
    assert rows[1]["window_start"] == s and rows[1]["window_end"] == s + W
    assert rows[1]["llr_fwd"] == pytest.approx(
        total_loglik(model, alt_win) - total_loglik(model, genome[s:s + W]), rel=1e-5, abs=1e-6)
    with torch.inference_mode():
        logp = torch.log_softmax(model.logits(tokenize(ref_win)[None]).double(), -1)[0, W // 2 - 1]
    assert rows[0]["p_ref"] == pytest.approx(float(logp[tokenize(snv.ref)[0]].exp()), rel=1e-5)
    assert rows[0]["p_alt"] == pytest.approx(float(logp[tokenize(snv.alt)[0]].exp()), rel=1e-5)
    assert rows[1]["p_ref"] is None  # site probabilities are for SNVs only


def test_ref_equal_alt_scores_zero(model, rng, tmp_path):
    genome = random_seq(rng, 200)
    rows = score(model, {"chr1": genome}, [var("chr1", 90, genome[89], genome[89]),
                                           var("chr1", 120, genome[119:122], genome[119:122])],
                 tmp_path)
    for row in rows:
        assert row["status"] == "ok"
        assert row["llr_fwd"] == 0.0 and row["llr_rev"] == 0.0 and row["llr"] == 0.0
        assert row["emb_cosine"] == pytest.approx(0.0, abs=1e-12) and row["emb_l2"] == 0.0
    assert rows[0]["p_ref"] == rows[0]["p_alt"] and 0 < rows[0]["p_ref"] < 1


def apply(genome: str, pos: int, ref: str, alt: str) -> str:
    assert genome[pos - 1:pos - 1 + len(ref)] == ref
    return genome[:pos - 1] + alt + genome[pos - 1 + len(ref):]


@pytest.mark.parametrize("kind", ["SNV", "DEL", "INS"])
def test_alt_genome_gives_opposite_llr(model, rng, tmp_path, kind):
    genome = random_seq(rng, 240)
    pos = 101
    ref = genome[pos - 1:pos + 2] if kind == "DEL" else genome[pos - 1]
    alt = {"SNV": other_base(ref), "DEL": ref[0], "INS": ref + "GT"}[kind]
    forward = score(model, {"chr1": genome}, [var("chr1", pos, ref, alt)], tmp_path, "a.fa")[0]
    back = score(model, {"chr1": apply(genome, pos, ref, alt)}, [var("chr1", pos, alt, ref)],
                 tmp_path, "b.fa")[0]
    assert forward["status"] == back["status"] == "ok"
    assert abs(forward["llr_fwd"]) > 1e-6
    # the ALT window runs from its first difference beside the REF one: swapping the roles
    # changes float32 rounding only (the issue's bound for scores: 1e-5)
    for key in ("llr_fwd", "llr_rev", "llr"):
        assert back[key] == pytest.approx(-forward[key], rel=0, abs=1e-5)
    assert back["emb_l2"] == pytest.approx(forward["emb_l2"], rel=1e-5)
    if kind == "SNV":
        assert back["p_ref"] == pytest.approx(forward["p_alt"], rel=1e-6)


def test_reverse_strand_equals_forward_of_reverse_complemented_inputs(model, rng, tmp_path):
    genome = random_seq(rng, 200)
    n = len(genome)
    snvs = [var("chr1", p, genome[p - 1], other_base(genome[p - 1], k))
            for k, p in enumerate((40, 100, 101, 170))]
    fwd = score(model, {"chr1": genome}, snvs, tmp_path, "a.fa")
    rc_snvs = [var("chr1", n - v.pos + 1, reverse_complement(v.ref), reverse_complement(v.alt))
               for v in snvs]
    rev = score(model, {"chr1": reverse_complement(genome)}, rc_snvs, tmp_path, "b.fa")
    for a, b in zip(fwd, rev):
        assert a["llr_rev"] == pytest.approx(b["llr_fwd"], rel=1e-6, abs=1e-9)
        assert a["llr_fwd"] == pytest.approx(b["llr_rev"], rel=1e-6, abs=1e-9)
        assert a["llr"] == pytest.approx(b["llr"], rel=1e-6, abs=1e-9)
    no_rc = score(model, {"chr1": genome}, snvs, tmp_path, "c.fa", rc=False)
    assert [r["llr_rev"] for r in no_rc] == [None] * 4
    assert [r["llr"] for r in no_rc] == pytest.approx([r["llr_fwd"] for r in fwd], rel=1e-6)


def test_statuses_edges_and_contig_naming(model, rng, tmp_path):
    genome = random_seq(rng, 120)
    wrong = other_base(genome[59])
    cases = {
        "ok": var("1", 60, genome[59], wrong),  # FASTA says chr1
        "ref_mismatch": var("chr1", 60, wrong, genome[59]),
        "symbolic_alt": var("chr1", 61, genome[60], "<DEL>"),
        "spanning_deletion": var("chr1", 62, genome[61], "*"),
        "missing_alt": var("chr1", 63, genome[62], "."),
        "unknown_contig": var("chrX", 10, "A", "C"),
        "out_of_contig": var("chr1", 120, genome[119] + "A", "A"),
        "left_edge": var("chr1", 3, genome[2], wrong),
        "right_edge": var("chr1", 118, genome[117:120], genome[117]),
    }
    rows = dict(zip(cases, score(model, {"chr1": genome}, list(cases.values()), tmp_path)))
    assert len(rows) == len(cases)
    assert rows["ok"]["contig"] == "chr1" and rows["ok"]["chrom"] == "1"
    for name, row in rows.items():
        expected = "ok" if name in ("ok", "left_edge", "right_edge") else name
        assert row["status"] == expected, name
        assert (row["llr"] is not None) == (expected == "ok"), name
    assert rows["ref_mismatch"]["ref_match"] is False
    assert rows["symbolic_alt"]["ref_match"] is True
    assert rows["unknown_contig"]["ref_match"] is None
    assert rows["unknown_contig"]["contig"] is None
    assert (rows["ok"]["window_start"], rows["ok"]["window_end"]) == (59 - W // 2, 59 - W // 2 + W)
    assert (rows["left_edge"]["window_start"], rows["left_edge"]["window_end"]) == (0, W)
    # the deletion of the contig's last 2 bases: REF stays in the window, the ALT window is
    # shorter (nothing to refill it with)
    assert (rows["right_edge"]["window_start"], rows["right_edge"]["window_end"]) == (120 - W, 120)
    assert np.isfinite(rows["right_edge"]["llr"]) and np.isfinite(rows["left_edge"]["emb_l2"])


def run_cli(args: list[str]) -> str:
    result = CliRunner().invoke(app, ["score-variants", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_cli_ray_end_to_end_duckdb_and_resume(ray_local, tiny_model, model, rng, tmp_path):
    genome = {"chr1": random_seq(rng, 300), "chr2": random_seq(rng, 150)}
    fasta = write_fasta(tmp_path / "ref.fa", genome)
    g1, g2 = genome["chr1"], genome["chr2"]
    records = [  # the VCF uses Ensembl names (1, 2); the FASTA says chr1, chr2
        ("1", 5, "rs1", g1[4], other_base(g1[4])),  # left edge: padded
        ("1", 50, ".", g1[49:52], f"{g1[49]},{g1[49]}GA,<DEL>"),  # multi-allelic
        ("1", 50, "rs2b", g1[49], other_base(g1[49], 1)),  # same position: shares a window
        ("1", 120, "bad", other_base(g1[119]), g1[119]),  # REF mismatch
        ("1", 200, ".", g1[199], f"{other_base(g1[199])},*"),
        ("2", 30, ".", g2[29], "."),
        ("2", 149, "rs9", g2[148], other_base(g2[148], 2)),  # right edge: padded
        ("3", 10, ".", "A", "C"),  # contig absent from the FASTA
    ]
    vcf = bgzip_and_index(write_vcf(tmp_path / "calls.vcf", {"1": 300, "2": 150, "3": 50},
                                    records))
    n_alts = sum(len(r[4].split(",")) for r in records)
    out = tmp_path / "scores"
    args = [str(vcf), "--fasta", str(fasta), "--model", str(tiny_model), "--out", str(out),
            "--window", str(W), "--site-probs", "--unit-size", "3", "--num-workers", "2"]
    first = run_cli(args)
    assert "contig '1' matched to 'chr1'" in first and f"{n_alts} ALT alleles (0 already done)" \
        in first
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 4 and f"scored {n_alts} in" in first

    meta = pq.read_schema(parts[0]).metadata
    assert meta[b"genomeconv.kind"] == b"variants"
    assert meta[b"genomeconv.model"] == str(tiny_model).encode()
    assert pq.read_schema(parts[0]).remove_metadata() == schema.VARIANTS

    db = duckdb.connect()
    db.execute(f"CREATE VIEW T AS SELECT * FROM read_parquet('{out}/*.parquet')")

    def table(sql: str) -> list[tuple]:
        return db.execute(sql).fetchall()

    assert table("SELECT count(*) FROM T") == [(n_alts,)]
    statuses = dict(table("SELECT status, count(*) FROM T GROUP BY status"))
    assert statuses == {"ok": 6, "symbolic_alt": 1, "ref_mismatch": 1, "spanning_deletion": 1,
                        "missing_alt": 1, "unknown_contig": 1}
    assert table("SELECT count(*) FROM T WHERE status = 'ok' AND llr IS NULL") == [(0,)]
    assert table("SELECT id, ref_match FROM T WHERE status = 'ref_mismatch'") == [("bad", False)]
    edges = table("SELECT pos, window_start, window_end FROM T WHERE pos IN (5, 149) "
                  "AND status = 'ok' ORDER BY pos")
    assert edges == [(5, 0, W), (149, 150 - W, 150)]  # shifted inside the contigs, no padding
    assert table("SELECT count(*) FROM T WHERE nonfinite") == [(0,)]
    assert table("SELECT DISTINCT contig FROM T WHERE chrom = '1'") == [("chr1",)]
    # the scores equal those computed without Ray on the same windows
    got = table("SELECT pos, ref, alt, llr_fwd, llr_rev, p_alt FROM T WHERE status = 'ok' "
                "ORDER BY chrom, pos, alt")
    ok_variants = [var(f"chr{c}", p, ref, alt) for c, p, ref, alt in
                   table("SELECT chrom, pos, ref, alt FROM T WHERE status = 'ok' "
                         "ORDER BY chrom, pos, alt")]
    direct = score(model, genome, ok_variants, tmp_path, "direct.fa")
    for g, d in zip(got, direct):
        assert g[3] == pytest.approx(d["llr_fwd"], rel=1e-5, abs=1e-6)
        assert g[4] == pytest.approx(d["llr_rev"], rel=1e-5, abs=1e-6)
        assert (g[5] is None) == (d["p_alt"] is None)

    # resume: one part lost and a half-written temp file left by a killed run
    mtimes = {p.name: p.stat().st_mtime_ns for p in parts}
    lost = pq.read_table(parts[1]).num_rows
    parts[1].unlink()
    (out / ".tmp-crashed").write_bytes(b"partial")
    second = run_cli(args)
    assert f"({n_alts - lost} already done); scored {lost} in" in second
    for p in parts[:1] + parts[2:]:
        assert p.stat().st_mtime_ns == mtimes[p.name]
    assert table("SELECT count(*), count(DISTINCT (chrom, pos, ref, alt)) FROM T") == [
        (n_alts, n_alts)]
    third = run_cli(args)
    assert f"({n_alts} already done); scored 0 in" in third
    assert not os.path.exists(out / ".tmp-crashed")  # removed by the next run, never read
    other = CliRunner().invoke(app, ["score-variants", *args[:8], str(W - 2), *args[9:]])
    assert other.exit_code == 2 and f"window: {W} (in the folder) vs {W - 2} (this run)" \
        in other.output
    assert len(list(out.glob("part-*.parquet"))) == 4


SCORES = ("llr_fwd", "llr_rev", "llr", "emb_cosine", "emb_l2", "p_ref", "p_alt")


def test_contig_ends_score_as_on_a_longer_contig(model, rng, tmp_path):
    """Windows never hold padding: a variant near either end scores exactly as the same variant on
    a contig extended beyond the window (the window shifts inside, both strands alike)."""
    genome = random_seq(rng, 150)
    extra = random_seq(rng, 60)
    near_left = [var("c", 1, genome[0], other_base(genome[0])),  # the first base
                 var("c", 5, genome[4], other_base(genome[4], 1)),
                 var("c", 9, genome[8:11], genome[8]),  # deletion
                 var("c", 12, genome[11], genome[11] + "TTA")]  # insertion
    near_right = [var("c", 150, genome[149], other_base(genome[149])),  # the last base
                  var("c", 140, genome[139], other_base(genome[139], 2)),
                  var("c", 136, genome[135:138], genome[135]),  # deletion, refilled
                  var("c", 147, genome[146:150], genome[146]),  # deletion of the last 3 bases
                  var("c", 141, genome[140], genome[140] + "GC")]
    here = score(model, {"c": genome}, near_left + near_right, tmp_path, "here.fa")
    longer_right = score(model, {"c": genome + extra}, near_left, tmp_path, "longer_right.fa")
    shifted = [var("c", v.pos + len(extra), v.ref, v.alt) for v in near_right]
    longer_left = score(model, {"c": extra + genome}, shifted, tmp_path, "longer_left.fa")
    for a, b in zip(here, longer_right + longer_left):
        assert a["status"] == b["status"] == "ok"
        for key in SCORES:
            assert (a[key] is None) == (b[key] is None), key
            if a[key] is not None:
                assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key
    for row, v in zip(here, near_left + near_right):
        assert 0 <= row["window_start"] and row["window_end"] <= len(genome)
        assert row["window_end"] - row["window_start"] == W
        assert row["window_start"] <= v.pos - 1 < v.pos - 1 + len(v.ref) <= row["window_end"]
    # left end: the window starts at the contig's first base; the variant sits off-centre
    assert [r["window_start"] for r in here[:4]] == [0, 0, 0, 0]
    assert here[0]["p_ref"] is None  # the first base has no context to be predicted from
    assert here[1]["p_ref"] is not None
    # an independent check of one shifted window: log p of the two whole windows
    s = len(genome) - W
    alt = genome[s:139] + near_right[1].alt + genome[140:]
    assert here[5]["llr_fwd"] == pytest.approx(
        total_loglik(model, alt) - total_loglik(model, genome[s:]), rel=1e-5, abs=1e-6)


def test_contig_shorter_than_the_window_is_the_window(ray_local, tiny_model, model, rng,
                                                      tmp_path, capsys):
    from genomeconv.pipelines.variants import score_variants

    genome = {"short": random_seq(rng, 90), "long": random_seq(rng, 400)}
    fasta = write_fasta(tmp_path / "ref.fa", genome)
    table = tmp_path / "v.tsv"
    picks = [("short", 10), ("short", 80), ("long", 200)]
    table.write_text("chrom\tpos\tref\talt\n" + "".join(
        f"{c}\t{p}\t{genome[c][p - 1]}\t{other_base(genome[c][p - 1])}\n" for c, p in picks))
    summary = score_variants(
        VariantOptions(
            variants=table, fasta=fasta, out=tmp_path / "out", model=str(tiny_model), window=120
        )
    )
    assert summary.tally["rows"] == 3 and summary.tally["statuses"] == {"ok": 3}
    assert capsys.readouterr().err.count("\n") == 1  # one line names the short contig
    got = {(r["chrom"], r["pos"]): r for r in pq.read_table(tmp_path / "out").to_pylist()}
    assert (got[("short", 10)]["window_start"], got[("short", 10)]["window_end"]) == (0, 90)
    assert (got[("long", 200)]["window_start"], got[("long", 200)]["window_end"]) == (139, 259)
    g = genome["short"]
    alt = g[:79] + other_base(g[79]) + g[80:]
    assert got[("short", 80)]["llr_fwd"] == pytest.approx(
        total_loglik(model, alt) - total_loglik(model, g), rel=1e-5, abs=1e-6)


def test_short_contig_note_is_one_line(tmp_path, rng):
    from genomeconv.pipelines.variants import short_contig_note

    genome = {f"c{i}": random_seq(rng, 50 + i) for i in range(5)}
    genome["big"] = random_seq(rng, 500)
    fasta = write_fasta(tmp_path / "ref.fa", genome)
    variants = [var(c, 3, s[2], other_base(s[2])) for c, s in genome.items()]
    text = short_contig_note(variants, fasta, 10_000_000)
    assert text == ("--window 10,000,000 is longer than contigs c0 (50 bp), c1 (51 bp), c2 "
                    "(52 bp) and 3 more: variants there are scored with the whole contig as "
                    "window")
    assert short_contig_note(variants, fasta, 40) is None


def test_nonfinite_scores_stop_or_are_marked(rng, tmp_path):
    torch.manual_seed(2)
    broken = HyenaDNA(HyenaConfig(d_model=16, n_layer=2, d_inner=64, max_seq_len=MAX_LEN))
    with torch.no_grad():
        broken.backbone.ln_f.weight[5] = float("nan")
    broken.model_id = "tests/nan-model"
    genome = random_seq(rng, 120)
    fasta = FastaFile(write_fasta(tmp_path / "ref.fa", {"chr1": genome}))
    planned = [plan_variant(var("chr1", 60, genome[59], other_base(genome[59]), "rsX"), fasta,
                            W, {})]
    with pytest.raises(InputError) as err:
        score_planned(broken.eval(), planned)
    assert str(err.value).startswith("tests/nan-model: the model gives non-finite")
    assert f"variant chr1:60 {genome[59]}>{other_base(genome[59])} (rsX)" in str(err.value)
    rows = score_planned(broken, planned, keep_nonfinite=True)
    assert rows[0]["nonfinite"] is True and math.isnan(rows[0]["llr_fwd"])


def test_reruns_resume_by_allele_and_refuse_other_settings(ray_local, tiny_model, model, rng,
                                                           tmp_path, capsys):
    """A region, then the whole input with another --unit-size (one part emptied, one cut, and
    an allele listed twice): each allele lands as often as the input lists it, with the scores
    of a direct computation; another window, strand setting, FASTA or model weights is refused
    naming the difference; --overwrite starts afresh."""
    import shutil

    from genomeconv.pipelines.variants import score_variants

    genome = {"chr1": random_seq(rng, 300), "chr2": random_seq(rng, 200)}
    fasta = write_fasta(tmp_path / "ref.fa", genome)
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model, model_dir)
    picks = [("chr1", p) for p in (20, 60, 61, 150, 151, 290)] + [("chr2", p) for p in (5, 90)]
    lines = [f"{c}\t{p}\t{genome[c][p - 1]}\t{other_base(genome[c][p - 1], p)}\n"
             for c, p in picks]
    lines.append(lines[1])  # listed twice: two rows
    table = tmp_path / "v.tsv"
    table.write_text("chrom\tpos\tref\talt\n" + "".join(lines))
    out = tmp_path / "out"
    def run(**changes):
        return score_variants(VariantOptions(variants=table, fasta=fasta, out=out,
                                             model=str(model_dir), window=W, **changes))

    first = run(regions=("chr1:1-100",), unit_alleles=1)
    assert (first.items, first.items_skipped, first.tally["rows"]) == (4, 0, 4)
    parts = sorted(out.glob("part-*.parquet"))
    parts[0].write_bytes(b"")
    parts[1].write_bytes(parts[1].read_bytes()[:100])
    capsys.readouterr()
    second = run(unit_alleles=3)
    assert capsys.readouterr().err.count("not counted as done") == 2
    assert (second.items, second.items_skipped, second.tally["rows"]) == (9, 2, 7)
    rows = pq.read_table(out).to_pylist()
    keys = sorted((r["chrom"], r["pos"]) for r in rows)
    assert keys == sorted(picks + [picks[1]])  # each allele as often as listed
    direct = {(r["chrom"], r["pos"]): r for r in score(
        model, genome, [var(c, p, genome[c][p - 1], other_base(genome[c][p - 1], p))
                        for c, p in picks], tmp_path, "direct.fa")}
    for r in rows:
        for key in ("llr_fwd", "llr_rev", "emb_l2"):
            assert r[key] == pytest.approx(direct[(r["chrom"], r["pos"])][key], rel=1e-5,
                                           abs=1e-6)

    def refused(**changes) -> str:
        with pytest.raises(InputError) as err:
            score_variants(
                VariantOptions(
                    variants=table,
                    fasta=changes.pop("fasta", fasta),
                    out=out,
                    model=str(model_dir),
                    **{"window": W, **changes},
                )
            )
        return str(err.value)

    assert f"window: {W} (in the folder) vs {W + 2} (this run)" in refused(window=W + 2)
    assert "rc: True (in the folder) vs False (this run)" in refused(strands="fwd")
    assert "site_probs: False (in the folder) vs True (this run)" in refused(site_probs=True)
    other_fasta = write_fasta(tmp_path / "other.fa", genome)
    assert f"fasta.path: '{Path(fasta).resolve()}' (in the folder) vs " in refused(
        fasta=other_fasta)
    changed = load(str(model_dir))
    with torch.no_grad():
        changed.lm_head.weight.mul_(1.5)  # other weights, same config, same folder
    changed.save(model_dir)
    text = refused()
    assert "model_weights_sha256: " in text and "model_config_sha256" not in text
    fresh = run(unit_alleles=4, overwrite=True)
    assert (fresh.items_skipped, fresh.tally["rows"]) == (0, 9)
    assert pq.read_table(out).num_rows == 9 and not list(out.glob(".damaged-*"))
