"""`genomeconv track` against direct computations: the plain PyTorch forward of the model (not the
bounded-memory path the pipeline runs) on the same windows, measures recomputed in float64
numpy; bigWig read back with pyBigWig; resume by position over sequences of runs; real Ray."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genomeconv.errors import InputError
from genomeconv.io.regions import merge_spans, reverse_complement, subtract_spans
from genomeconv.models import load
from genomeconv.models.tokenizer import tokenize
from genomeconv.models.families.kmer import KmerModel
from genomeconv.pipelines import schema
from genomeconv.pipelines.track import track
from genomeconv.pipelines.options import TrackOptions
from helpers import assert_one_line_error, random_seq, run_cli, save_tiny_model, write_fasta

MAX_LEN = 32  # the tiny model's max_seq_len: receptive field 2 (31 + 2) + 1 = 67


@pytest.fixture(scope="module")
def sharp_model(tmp_path_factory):
    """A tiny random HyenaDNA whose LM head is scaled up, so that its next-base distributions
    differ clearly from position to position (a freshly initialized head is nearly uniform)."""
    path = tmp_path_factory.mktemp("track_model") / "m"
    save_tiny_model(path, seed=3, max_seq_len=MAX_LEN)
    model = load(str(path))
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def genome(tmp_path_factory):
    """Two contigs with soft-masked stretches and N / IUPAC bases."""
    rng = np.random.default_rng(7)
    c1 = list(random_seq(rng, 700))
    for k in (0, 5, 333, 334, 699):
        c1[k] = "N"
    c1[100] = "R"
    c1[200:260] = [b.lower() for b in c1[200:260]]
    c2 = random_seq(rng, 150)
    records = {"c2": c2, "c1": "".join(c1)}  # not in name order: bigWig sorts them
    path = write_fasta(tmp_path_factory.mktemp("track_genome") / "g.fa", records)
    return str(path), records


def direct_logp(model, seq: str) -> np.ndarray:
    """log p(A, C, G, T) at indices 1..len-1 of `seq` from the plain forward, float64."""
    with torch.no_grad():
        logits = model.logits(tokenize(seq)[None])[0, :-1].double()
    return torch.log_softmax(logits, dim=-1)[:, [7, 8, 9, 10]].numpy()


def measures(lp: np.ndarray | None, base: str) -> dict[str, float] | None:
    """The six measures of one strand at one position, from its four log-probabilities."""
    if lp is None or base.upper() not in "ACGT":
        return None
    r = lp["ACGT".index(base.upper())]
    q = np.exp(lp) / np.exp(lp).sum()
    out = {"logp_ref": r, "entropy": float(-(q * np.log(q)).sum())}
    out.update({f"llr_site_{b}": lp[k] - r for k, b in enumerate("ACGT")})
    return out


def expected_rows(model, seq: str, windows, positions: range | None = None
                  ) -> dict[int, dict[str, float | None]]:
    """Expected measure columns per position (default: all of `seq`): `windows(p)` gives
    ((fwd start, fwd end), (rev start, rev end)) of the windows that score p (0-based,
    half-open, plus strand)."""
    rows = {}
    cache: dict[tuple[str, int, int], np.ndarray] = {}

    def logp(strand: str, a: int, b: int) -> np.ndarray:
        if (strand, a, b) not in cache:
            s = seq[a:b] if strand == "+" else reverse_complement(seq[a:b])
            lp = direct_logp(model, s)
            cache[strand, a, b] = lp if strand == "+" else lp[:, [3, 2, 1, 0]]
        return cache[strand, a, b]

    for p in positions if positions is not None else range(len(seq)):
        (fa, fb), (ra, rb) = windows(p)
        t, i = p - fa, rb - 1 - p
        f = measures(logp("+", fa, fb)[t - 1] if t >= 1 else None, seq[p])
        r = measures(logp("-", ra, rb)[i - 1] if i >= 1 else None, seq[p])
        row: dict[str, float | None] = {}
        for m in schema.TRACK_MEASURES:
            a = f[m] if f else None
            b = r[m] if r else None
            row[m + "_fwd"], row[m + "_rev"] = a, b
            row[m] = (a + b) / 2 if a is not None and b is not None else (a if b is None else b)
        row["context_fwd"], row["context_rev"] = t, i
        rows[p] = row
    return rows


def read_track(out) -> dict:
    table = pq.read_table(out / "track").sort_by([("chrom", "ascending"),
                                                  ("position", "ascending")])
    return {"table": table, **{c: table.column(c).to_pylist() for c in table.column_names}}


def assert_matches(got: dict, chrom: str, expected: dict[int, dict], atol: float) -> None:
    rows = [k for k, c in enumerate(got["chrom"]) if c == chrom]
    assert [got["position"][k] for k in rows] == sorted(expected)
    for k in rows:
        want = expected[got["position"][k]]
        for name, value in want.items():
            have = got[name][k]
            if value is None:
                assert have is None, (name, got["position"][k])
            else:
                assert have == pytest.approx(value, abs=atol), (name, got["position"][k])


@pytest.fixture(scope="module")
def whole(ray_local, tmp_path_factory, sharp_model, genome):
    """The whole genome at the default context, in pieces of 64 positions, 3 pieces a unit,
    chunks of 23 positions in the model's bounded-memory path."""
    out = tmp_path_factory.mktemp("track_whole") / "t"
    summary = track(
        TrackOptions(
            fasta=genome[0],
            out=out,
            model=sharp_model,
            piece_bp=64,
            unit_bp=192,
            bigwig="all",
            chunk_size=23,
        )
    )
    return out, summary


def test_track_equals_one_pass_over_the_contig(whole, sharp_model, genome):
    """Default context (the receptive field): every value equals the plain forward over the
    whole contig, each strand, whatever the pieces (64 positions), units (3 pieces) and
    chunks (23 positions)."""
    fasta, records = genome
    out, summary = whole
    assert summary.facts["context"] == load(sharp_model).receptive_field == 67
    assert summary.facts["pieces"] == 11 + 3 and summary.units > 1
    got = read_track(out)
    model = load(sharp_model)
    for chrom, seq in records.items():
        n = len(seq)
        expected = expected_rows(model, seq, lambda p: ((0, n), (0, n)))
        for row in expected.values():  # bases seen in the piece's windows, not the contig's
            del row["context_fwd"], row["context_rev"]
        assert_matches(got, chrom, expected, atol=2e-5)
    c1 = [k for k, c in enumerate(got["chrom"]) if c == "c1"]
    assert "".join(got["ref"][k] for k in c1) == records["c1"].upper()
    assert got["logp_ref"][c1[100]] is None and got["entropy_rev"][c1[333]] is None  # R, N
    assert [got["context_fwd"][k] for k in c1[60:70]] == list(range(60, 70))
    assert [got["context_fwd"][k] for k in (c1[64], c1[128], c1[191])] == [64, 67, 67 + 63]
    assert not any(got["nonfinite"])
    meta = pq.read_schema(next((out / "track").glob("part-*.parquet"))).metadata
    assert json.loads(meta[b"genomeconv.track"]) == {
        "context": 67, "receptive_field": 67, "piece_bp": 64, "one_pass_values": True,
        "strands": "both", "log": "natural"}
    assert meta[b"genomeconv.kind"] == b"track"


def test_context_below_the_receptive_field_scores_each_piece_from_its_window(
        ray_local, tmp_path, sharp_model, genome):
    """--context 9 --piece-bp 50: a position in piece [a, b) is predicted from [a - 9, b) on the
    forward strand and from the reverse complement of [a, b + 9) on the reverse strand."""
    fasta, records = genome
    out = tmp_path / "t"
    track(
        TrackOptions(
            fasta=fasta,
            out=out,
            model=sharp_model,
            context=9,
            piece_bp=50,
            regions=["c1:121-480"],
            bigwig="none",
        )
    )
    seq, n = records["c1"], len(records["c1"])

    def windows(p):
        a = max(120, p // 50 * 50)
        b = min(480, (p // 50 + 1) * 50)
        return (max(0, a - 9), b), (a, min(n, b + 9))

    rows = expected_rows(load(sharp_model), seq, windows, range(120, 480))
    assert_matches(read_track(out), "c1", rows, atol=2e-5)
    assert not list((out / "bigwig").glob("*.bw"))


def test_forward_strand_only(ray_local, tmp_path, sharp_model, genome):
    fasta, records = genome
    out = tmp_path / "t"
    track(
        TrackOptions(
            fasta=fasta, out=out, model=sharp_model, strands="fwd", regions=["c2"], bigwig="all"
        )
    )
    got = read_track(out)
    assert all(v is None for v in got["context_rev"] + got["logp_ref_rev"] + got["entropy_rev"])
    assert got["logp_ref"][1:] == got["logp_ref_fwd"][1:] and got["logp_ref"][0] is None
    assert sorted(p.name for p in (out / "bigwig").glob("*.bw")) == sorted(
        f"{c}.bw" for c in schema.track_columns(("", "_fwd")))


def test_bigwig_holds_the_parquet_values(whole, genome):
    import pyBigWig

    fasta, records = genome
    out, _ = whole
    got = read_track(out)
    files = sorted(p.name for p in (out / "bigwig").glob("*.bw"))
    assert files == sorted(f"{c}.bw" for c in schema.track_columns())
    for column in ("logp_ref", "entropy", "llr_site_G", "entropy_rev"):
        bw = pyBigWig.open(str(out / "bigwig" / f"{column}.bw"))
        assert bw.isBigWig() and bw.chroms() == {c: len(s) for c, s in records.items()}
        assert list(bw.chroms()) == ["c1", "c2"]  # name order, as UCSC's lookups need
        for chrom, seq in records.items():
            values = np.array(bw.values(chrom, 0, len(seq)))
            want = np.array([v if v is not None else np.nan for c, v in
                             zip(got["chrom"], got[column]) if c == chrom], dtype=np.float32)
            assert np.array_equal(np.isnan(values), np.isnan(want))
            assert np.array_equal(values[~np.isnan(values)].astype(np.float32),
                                  want[~np.isnan(want)])
            starts = [s for s, _, _ in bw.intervals(chrom)]
            assert starts == sorted(starts) and all(e - s == 1 for s, e, _ in bw.intervals(chrom))
        bw.close()
    assert np.isnan(pyBigWig.open(str(out / "bigwig" / "logp_ref.bw")).values("c1", 333, 335)).all()


def test_kmer_track_is_the_markov_model(ray_local, tmp_path, genome):
    fasta, records = genome
    out = tmp_path / "t"
    summary = track(
        TrackOptions(fasta=fasta, out=out, model="kmer:3", strands="fwd", bigwig="none")
    )
    assert summary.facts["context"] == 3
    kmer = KmerModel.fit(list(records.values()), 3)
    got = read_track(out)
    seq = records["c2"]
    loglik, _ = kmer.log_likelihoods(tokenize(seq)[None])
    have = [v for c, v in zip(got["chrom"], got["logp_ref_fwd"]) if c == "c2"]
    assert have[0] is None
    np.testing.assert_allclose(have[1:], loglik[0].numpy().astype(np.float32), rtol=0, atol=0)


def test_rerun_writes_every_position_once(whole, tmp_path, sharp_model, genome):
    """A region, then the whole genome, then a damaged part: each position exactly once, the
    values those of one run; another --context is refused."""
    fasta, records = genome
    out = tmp_path / "t"
    first = track(
        TrackOptions(
            fasta=fasta,
            out=out,
            model=sharp_model,
            regions=["c1:101-300", "c1:250-420"],
            piece_bp=64,
        )
    )
    assert first.items == 320
    rest = track(TrackOptions(fasta=fasta, out=out, model=sharp_model, piece_bp=64, unit_bp=128))
    assert rest.items_skipped == 320 and rest.items_done == 850 - 320
    got = read_track(out)
    keys = list(zip(got["chrom"], got["position"]))
    assert len(keys) == len(set(keys)) == 850
    ref = read_track(whole[0])  # the same genome in one run
    np.testing.assert_allclose(np.array(got["logp_ref"], dtype=float),
                               np.array(ref["logp_ref"], dtype=float), atol=2e-5)
    part = sorted((out / "track").glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:200])  # cut short
    again = track(TrackOptions(fasta=fasta, out=out, model=sharp_model, piece_bp=64))
    assert 0 < again.items_done < 850
    got = read_track(out)
    assert len(set(zip(got["chrom"], got["position"]))) == len(got["position"]) == 850
    assert list((out / "track").glob(".damaged-*"))
    with pytest.raises(InputError, match="context"):
        track(TrackOptions(fasta=fasta, out=out, model=sharp_model, context=10))


def test_query_and_cli(ray_local, tmp_path, sharp_model, genome):
    from typer.testing import CliRunner

    from genomeconv.cli import app

    fasta, _ = genome
    out = tmp_path / "t"
    done = CliRunner().invoke(app, ["track", fasta, "--model", sharp_model, "--region",
                                    "c2:1-80", "--bigwig", "none", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "80 positions" in done.output
    q = CliRunner().invoke(app, ["query", str(out), "--region", "c2:11-20", "--format", "csv"])
    assert q.exit_code == 0, q.output
    lines = q.output.strip().splitlines()
    assert len(lines) == 11 and "logp_ref" in lines[0]
    assert_one_line_error(run_cli("track", fasta, "--model", sharp_model, "--region",
                                  "c2:100-200", "--out", tmp_path / "x"), "c2", "150")
    assert_one_line_error(run_cli("track", fasta, "--strands", "up", "--out", tmp_path / "y"),
                          "--strands")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=6),
       st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=6))
def test_span_arithmetic_matches_sets(a, b):
    bases = lambda spans: {x for s, e in spans for x in range(s, e)}  # noqa: E731
    merged = merge_spans(a)
    assert bases(merged) == bases(a)
    assert all(e1 < s2 for (_, e1), (s2, _) in zip(merged, merged[1:]))
    rest = subtract_spans(a, b)
    assert bases(rest) == bases(a) - bases(b)
    assert rest == merge_spans(rest)


def test_plot_track_draws_the_pipeline_output(whole, genome, tmp_path):
    """End to end: the real track output through `genomeconv plot track` (the figure's line
    data equal the Parquet rows; nulls are gaps) and the CLI writes the PNG."""
    from typer.testing import CliRunner

    from genomeconv.cli import app
    from genomeconv.plots.track import track_figure

    out, _ = whole
    got = read_track(out)
    fig = track_figure([out], "c1:321-400", measures=["logp_ref", "llr_site_C"], strand="both")
    for ax in fig.axes:
        for line in ax.get_lines():
            xy = line.get_xydata()
            np.testing.assert_array_equal(xy[:, 0], np.arange(321, 401))
            want = [v if v is not None else np.nan for c, p, v in
                    zip(got["chrom"], got["position"], got[line.get_gid()])
                    if c == "c1" and 320 <= p < 400]
            np.testing.assert_array_equal(xy[:, 1], np.array(want, dtype=np.float32))
            assert np.isnan(xy[333 - 320:335 - 320, 1]).all()  # the N bases
    png = tmp_path / "track.png"
    done = CliRunner().invoke(app, ["plot", "track", str(out), "--region", "c1:1-700", "-o",
                                    str(png)])
    assert done.exit_code == 0, done.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_model_that_outputs_nan_stops_the_run_or_marks_every_row(ray_local, tmp_path, genome):
    """track checked for infinity only: a NaN model exited 0 with every measure null,
    nonfinite = false even with --keep-nonfinite, and empty bigWigs (issue 30)."""
    from typer.testing import CliRunner

    from genomeconv.cli import app
    from genomeconv.models import HyenaConfig, HyenaDNA

    torch.manual_seed(1)
    model = HyenaDNA(HyenaConfig(d_model=16, n_layer=2, d_inner=32, max_seq_len=MAX_LEN))
    with torch.no_grad():  # finite weights (load() refuses NaN ones) whose output overflows
        model.backbone.ln_f.weight[3] = 3e38
        model.backbone.ln_f.bias[3] = 3e38
    model.save(tmp_path / "nan")
    fasta, _ = genome
    out = tmp_path / "t"
    args = ["track", fasta, "--model", str(tmp_path / "nan"), "--region", "c2:1-60", "--out",
            str(out)]
    stopped = CliRunner().invoke(app, args)
    assert stopped.exit_code == 2, stopped.output
    assert "non-finite" in stopped.output and "c2:" in stopped.output
    assert not list((out / "track").glob("part-*"))
    kept = CliRunner().invoke(app, args + ["--keep-nonfinite"])  # resumes: no --overwrite
    assert kept.exit_code == 0, kept.output
    rows = read_track(out)
    assert len(rows["position"]) == 60 and all(rows["nonfinite"])
    assert all(v is not None and not np.isfinite(v) for v in rows["logp_ref"])
    assert not list((out / "bigwig").glob("*.bw"))  # nothing finite: no empty bigWig
    assert "bigwig/logp_ref.bw not written" in kept.output


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (root only, as CI runs; `resize(kib)` remounts it larger), unmounted
    afterwards. As root a failed mount fails the test: only a non-root run skips."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                   capture_output=True, check=True)

    def resize(kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(mount)], check=True)

    yield mount, resize
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_one_line_and_leaves_only_whole_parts(ray_local, small_disk, sharp_model,
                                                             genome, tmp_path):
    """A full disk gave a 135-line Ray traceback (issue 30): now one line naming the part, only
    whole parts are left, and a rerun with room resumes (then the bigWigs, checked first:
    libBigWig aborts the process on a full disk)."""
    from typer.testing import CliRunner

    from genomeconv.cli import app

    disk, resize = small_disk
    fasta, records = genome
    out = disk / "t"
    args = ["track", fasta, "--model", sharp_model, "--out", str(out), "--unit-bp", "100"]
    full = CliRunner().invoke(app, args)
    assert full.exit_code == 2, full.output
    (line,) = [x for x in full.output.splitlines() if x.startswith("error:")]
    assert f"{out / 'track'}/part-" in line and "No space left on device" in line
    assert "Traceback" not in full.output
    parts = sorted((out / "track").glob("part-*.parquet"))
    assert parts and not list((out / "track").glob(".tmp-*"))
    done = sum(pq.read_table(p).num_rows for p in parts)  # each part whole and readable
    resize(300)  # room for the parts, not for the bigWigs
    no_bigwigs = CliRunner().invoke(app, args)
    assert no_bigwigs.exit_code == 2, no_bigwigs.output
    assert f"error: {out / 'bigwig'}: the bigWigs need about" in no_bigwigs.output
    assert set(parts) < set((out / "track").glob("part-*.parquet"))  # resumed: kept, added
    assert len(read_track(out)["position"]) == 850 and 0 < done < 850
    resize(4096)
    rerun = CliRunner().invoke(app, args)
    assert rerun.exit_code == 0, rerun.output
    assert "850 positions (850 already done)" in rerun.output
    rows = read_track(out)
    assert len(rows["position"]) == 850 == len(set(zip(rows["chrom"], rows["position"])))
    assert sorted(p.name for p in (out / "bigwig").glob("*.bw")) == sorted(
        f"{c}.bw" for c in schema.track_columns(("",)))
