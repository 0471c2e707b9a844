"""The k-mer (order-k Markov) family against a direct float64 numpy/Python computation, through
the model interface, saved folders, score-variants on Ray (`--model kmer:K`), and the refusals of
commands that need embeddings.

The reference counts (k+1)-mers with a Python Counter over each sequence and its reverse
complement, and sums log((c(ctx + x) + a) / (sum_y c(ctx + y) + 5 a)) position by position.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from genomeconv.errors import InputError
from genomeconv.io.fasta import FastaFile
from genomeconv.io.regions import reverse_complement
from genomeconv.io.variants import Variant
from genomeconv.models import KmerModel, LanguageModel, NoEmbeddingsError, load
from genomeconv.models.tokenizer import tokenize
from genomeconv.pipelines import manifest, schema
from genomeconv.pipelines.variants import plan_variant, score_planned
from genomeconv.pipelines.options import VariantOptions
from helpers import assert_one_line_error, random_seq, run_cli, write_fasta

W = 41


def _canon(seq: str) -> str:
    """The model's alphabet: upper case, IUPAC ambiguity codes as N."""
    return "".join(b if b in "ACGTN" else "N" for b in seq.upper())


def reference_counts(seqs: list[str], order: int) -> list[Counter]:
    """(m+1)-mer counts, m = 0..order, of each sequence and its reverse complement."""
    counts = [Counter() for _ in range(order + 1)]
    for s in seqs:
        for strand in (_canon(s), reverse_complement(_canon(s))):
            for m in range(order + 1):
                counts[m].update(strand[i:i + m + 1] for i in range(len(strand) - m))
    return counts


def reference_loglik(seq: str, counts: list[Counter], order: int, a: float = 1.0) -> float:
    """sum over t = 1..L-1 of log p(x_t | the min(order, t) bases before it), in float64."""
    seq, total = _canon(seq), 0.0
    for t in range(1, len(seq)):
        m = min(order, t)
        ctx = seq[t - m:t]
        num = counts[m][ctx + seq[t]] + a
        den = sum(counts[m][ctx + y] for y in "ACGTN") + 5 * a
        total += math.log(num / den)
    return total


@pytest.fixture
def genome(rng) -> dict[str, str]:
    """Two records with soft-masked stretches and a few ambiguity codes."""
    a = random_seq(rng, 700)
    a = a[:100] + a[100:160].lower() + a[160:300] + "NNRY" + a[304:]
    return {"chrA": a, "chrB": random_seq(rng, 350, "ACGTACGTN")}


def test_fit_counts_both_strands_exactly(genome):
    order = 3
    model = KmerModel.fit(genome.values(), order)
    ref = reference_counts(list(genome.values()), order)
    for m in range(order + 1):
        for kmer, n in ref[m].items():
            code = 0
            for b in kmer:
                code = code * 5 + "ACGTN".index(b)
            assert model.counts[m][code] == n
        assert model.counts[m].sum() == sum(ref[m].values())


@pytest.mark.parametrize("order", [0, 1, 4])
def test_log_likelihoods_equal_float64_reference(genome, rng, order):
    model = KmerModel.fit(genome.values(), order, pseudocount=0.5)
    counts = reference_counts(list(genome.values()), order)
    seqs = [random_seq(rng, 30, "ACGTN") for _ in range(3)]
    loglik, hidden = model.log_likelihoods(torch.stack([tokenize(s) for s in seqs]))
    assert hidden is None and loglik.dtype == torch.float64 and loglik.shape == (3, 29)
    for s, row in zip(seqs, loglik.numpy()):
        assert row.sum() == pytest.approx(reference_loglik(s, counts, order, 0.5),
                                          rel=1e-12, abs=1e-12)
    for t in range(1, 6):  # each distribution sums to one, short contexts included
        probs = [math.exp(model.log_likelihoods(tokenize(seqs[0][:t] + b)[None])[0][0, -1])
                 for b in "ACGTN"]
        assert sum(probs) == pytest.approx(1.0, rel=1e-12)


def test_llr_of_score_planned_is_the_markov_loglik_difference(genome, rng, tmp_path):
    """The exactness test: llr_fwd, llr_rev, llr and p_ref/p_alt from the k-mer family equal the
    direct float64 Markov log-likelihoods of the ref and alt windows."""
    order = 4
    model = KmerModel.fit(genome.values(), order)
    counts = reference_counts(list(genome.values()), order)
    fasta = FastaFile(write_fasta(tmp_path / "ref.fa", genome))
    g = _canon(genome["chrA"])
    picks = [(90, "G"), (250, "T"), (3, "A"), (698, "C")]  # two near the contig ends
    variants = [Variant("chrA", p, genome["chrA"][p - 1], alt, None, "t", 0)
                for p, alt in picks if genome["chrA"][p - 1].upper() != alt]
    variants.append(Variant("chrA", 400, genome["chrA"][399:403], genome["chrA"][399], None, "t",
                            0))  # a deletion
    planned = [plan_variant(v, fasta, W, {}) for v in variants]
    rows = score_planned(model, planned, rc=True, site_probs=True)
    for pv, row in zip(planned, rows):
        assert row["status"] == "ok"
        ref, alt = pv.ref_seq, pv.alt_seq
        fwd = reference_loglik(alt, counts, order) - reference_loglik(ref, counts, order)
        rev = (reference_loglik(reverse_complement(alt), counts, order)
               - reference_loglik(reverse_complement(ref), counts, order))
        assert row["llr_fwd"] == pytest.approx(fwd, rel=1e-10, abs=1e-10)
        assert row["llr_rev"] == pytest.approx(rev, rel=1e-10, abs=1e-10)
        assert row["llr"] == pytest.approx((fwd + rev) / 2, rel=1e-10, abs=1e-10)
        assert row["emb_cosine"] is None and row["emb_l2"] is None
        assert ref == g[pv.window_start:pv.window_end].upper() or "N" in ref
        if pv.variant.kind == "snv" and pv.offset >= 1:
            t = pv.offset
            before = _canon(ref[max(0, t - order):t])
            den = sum(counts[len(before)][before + y] for y in "ACGTN") + 5
            assert row["p_ref"] == pytest.approx(
                (counts[len(before)][before + _canon(ref[t])] + 1) / den, rel=1e-12)
            assert row["p_alt"] == pytest.approx(
                (counts[len(before)][before + _canon(alt[t])] + 1) / den, rel=1e-12)


def test_saved_folder_round_trip_and_interface(genome, tmp_path):
    model = KmerModel.fit(genome.values(), 3, source={"fasta": "x.fa"})
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["family"] == "kmer" and meta["config"]["order"] == 3
    again = load(str(tmp_path / "m"))
    assert isinstance(again, KmerModel) and isinstance(again, LanguageModel)
    assert again.config_sha256 == model.config_sha256 and again.model_id == str(tmp_path / "m")
    assert not again.has_embeddings and again.d_model == 0
    ids = tokenize(random_seq(np.random.default_rng(3), 25))[None]
    assert torch.equal(again.log_likelihoods(ids)[0], model.log_likelihoods(ids)[0])
    with pytest.raises(NoEmbeddingsError, match="no embeddings"):
        again.hidden_states(ids)
    with pytest.raises(NoEmbeddingsError, match="embed needs embeddings"):
        again.require_embeddings("embed")


def test_broken_folders_are_one_line_errors(genome, tmp_path):
    from safetensors.torch import save_file

    model = KmerModel.fit(genome.values(), 2)
    model.save(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    meta = json.loads(config.read_text())
    for change, text in [({"order": 12}, "from 0 to 8"), ({"order": 3}, "counts.3 is missing"),
                         ({"pseudocount": 0}, "pseudocount")]:
        config.write_text(json.dumps({**meta, "config": {**meta["config"], **change}}))
        with pytest.raises(InputError, match=text):
            load(str(tmp_path / "m"))
    config.write_text(json.dumps(meta))
    state = model.state_tensors()
    state["counts.1"] = -state["counts.1"] - 1
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(InputError, match="negative counts"):
        load(str(tmp_path / "m"))
    with pytest.raises(InputError, match="special tokens"):
        model.log_likelihoods(torch.tensor([[7, 4, 8]]))


def test_score_variants_kmer_spec_on_ray(ray_local, genome, rng, tmp_path, monkeypatch):
    """--model kmer:K is fitted once on the FASTA (cached), reported as kmer:K, hashed in the
    manifest, and its llr equals the reference; the emb columns are null with the reason in the
    file metadata."""
    from genomeconv.pipelines.variants import score_variants

    monkeypatch.setenv("GENOMECONV_CACHE", str(tmp_path / "cache"))
    fasta = write_fasta(tmp_path / "ref.fa", genome)
    table = tmp_path / "v.tsv"
    picks = [("chrA", 50), ("chrA", 333), ("chrB", 120), ("chrB", 121)]
    alts = {p: "ACGT".replace(genome[c][p - 1].upper(), "")[p % 3] for c, p in picks}
    table.write_text("chrom\tpos\tref\talt\n" + "".join(
        f"{c}\t{p}\t{genome[c][p - 1].upper()}\t{alts[p]}\n" for c, p in picks))
    summary = score_variants(
        VariantOptions(
            variants=table,
            fasta=fasta,
            out=tmp_path / "out",
            model="kmer:3",
            window=W,
            site_probs=True,
            unit_alleles=2,
            num_workers=2,
        )
    )
    assert summary.tally["rows"] == 4 and summary.tally["statuses"] == {"ok": 4}
    counts = reference_counts(list(genome.values()), 3)
    out = pq.read_table(tmp_path / "out")
    for row in out.to_pylist():
        s, e = row["window_start"], row["window_end"]
        ref = genome[row["chrom"]][s:e]
        i = row["pos"] - 1 - s
        alt = ref[:i] + row["alt"] + ref[i + 1:]
        assert row["llr_fwd"] == pytest.approx(
            reference_loglik(alt, counts, 3) - reference_loglik(ref, counts, 3), rel=1e-10,
            abs=1e-10)
        assert row["model"] == "kmer:3" and row["emb_cosine"] is None and row["p_alt"] > 0
    meta = pq.read_schema(next((tmp_path / "out").glob("part-*.parquet"))).metadata
    assert meta[schema.KEY_MODEL] == b"kmer:3"
    assert set(json.loads(meta[schema.KEY_EMPTY_COLUMNS])) == {"emb_cosine", "emb_l2"}
    settings = json.loads((tmp_path / "out" / manifest.MANIFEST_FILE).read_text())["settings"]
    assert settings["model"] == "kmer:3" and len(settings["model_weights_sha256"]) == 64
    folders = list((tmp_path / "cache").glob("ref.fa.kmer3.*"))
    assert len(folders) == 1 and isinstance(load(str(folders[0])), KmerModel)
    again = score_variants(
        VariantOptions(
            variants=table,
            fasta=fasta,
            out=tmp_path / "out",
            model="kmer:3",
            window=W,
            site_probs=True,
        )
    )
    assert again.items_skipped == 4 and again.items_done == 0  # resumed: same manifest
    assert len(list((tmp_path / "cache").glob("ref.fa.kmer3.*"))) == 1  # fitted once


def test_pretrain_family_kmer_and_embed_refuses(tmp_path, genome):
    fasta = write_fasta(tmp_path / "ref.fa", genome)
    run = run_cli("pretrain", fasta, "--model", "kmer:2", "--out", tmp_path / "p")
    assert run.returncode == 0, run.stderr
    model = load(str(tmp_path / "p" / "model"))
    assert isinstance(model, KmerModel) and model.order == 2
    ref = reference_counts(list(genome.values()), 2)
    assert model.counts[2].sum() == sum(ref[2].values())
    for spec in ("kmer:4", str(tmp_path / "p" / "model")):
        assert_one_line_error(run_cli("embed", fasta, "--model", spec, "--out", tmp_path / "e"),
                              "embed needs embeddings")
    table = tmp_path / "v.tsv"
    table.write_text(f"chrom\tpos\tref\talt\nchrA\t5\t{genome['chrA'][4].upper()}\tN\n")
    assert_one_line_error(run_cli("score-variants", table, "--fasta", fasta, "--model", "kmer:x",
                                  "--out", tmp_path / "s"), "kmer:K")
