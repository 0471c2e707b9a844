"""`genomeconv embed` end to end on real local Ray, real pysam files and a tiny random HyenaDNA.

References are computed independently: sequences are cut from the generated strings (not read
back through genomeconv.io) and embedded with the model's plain forward (`model(ids)`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pysam
import pytest
import torch
from typer.testing import CliRunner

from genomeconv.cli import app
from genomeconv.errors import InputError
from genomeconv.models import HyenaConfig, HyenaDNA, load
from genomeconv.models.tokenizer import tokenize
from genomeconv.pipelines import runtime, schema
from genomeconv.pipelines.embed import embed
from genomeconv.pipelines.options import EmbedOptions
from helpers import random_seq, save_tiny_model

IUPAC_RC = dict(zip("ACGTN", "TGCAN"))


def rc(seq: str) -> str:
    return "".join(IUPAC_RC[c] for c in reversed(seq.upper()))


def write_bgzip_fasta(path: Path, records: dict[str, str], width: int = 60) -> str:
    plain = path.with_suffix("")
    with open(plain, "w") as fh:
        for name, seq in records.items():
            fh.write(f">{name}\n" + "".join(seq[i:i + width] + "\n"
                                             for i in range(0, len(seq), width)))
    pysam.tabix_compress(str(plain), str(path), force=True)
    plain.unlink()
    return str(path)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", seed=7, max_seq_len=512)


@pytest.fixture(scope="module")
def genome(tmp_path_factory):
    rng = np.random.default_rng(2024)
    work = tmp_path_factory.mktemp("genome")
    chr1 = list(random_seq(rng, 3000))
    for i in range(600, 900):  # a soft-masked repeat
        chr1[i] = chr1[i].lower()
    chr2 = np.array(list(random_seq(rng, 1500)))
    chr2[rng.random(1500) < 0.45] = "N"  # N-rich
    chr2[200:400] = "N"
    records = {"chr1": "".join(chr1), "chr2": "".join(chr2)}
    fasta = write_bgzip_fasta(work / "g.fa.gz", records)
    gtf = work / "g.gtf"
    gtf.write_text(  # GTF names contigs without "chr": resolved against the FASTA
        '1\tt\tgene\t101\t1300\t.\t+\t.\tgene_id "G1"; gene_name "PLUS";\n'
        '1\tt\tgene\t501\t2100\t.\t-\t.\tgene_id "G2"; gene_name "MINUS";\n'
        '2\tt\tgene\t51\t700\t.\t-\t.\tgene_id "G3";\n')
    bed = work / "g.bed"
    bed.write_text("chr1\t2500\t2900\tb1\t0\t-\nchr2\t0\t1500\n")
    return {"records": records, "fasta": fasta, "gtf": str(gtf), "bed": str(bed)}


def reference_hidden(model, seq: str, layer: str | None = None) -> np.ndarray:
    with torch.no_grad():
        return model(tokenize(seq.upper())[None], layer=layer)[0].double().numpy()


def read_dataset(folder: Path):
    files = sorted(folder.glob("part-*.parquet"))
    assert files and not list(folder.glob(".tmp-*"))
    return files, pq.read_table(folder).to_pylist()


def test_embed_genes_bed_region_per_base(ray_local, tiny_model, genome, tmp_path):
    out = tmp_path / "out"
    recs = genome["records"]
    summary = embed(
        EmbedOptions(
            fasta=genome["fasta"],
            out=out,
            gtf=genome["gtf"],
            bed=genome["bed"],
            regions=["chr1:1,001-1,200"],
            model=tiny_model,
            per_base=True,
            batch_size=2,
            unit_bp=1500,
            command="genomeconv embed test",
        )
    )
    expected = {  # seq_name -> (chrom, start, end, strand, gene_id, gene_name)
        "PLUS": ("chr1", 100, 1300, "+", "G1", "PLUS"),
        "MINUS": ("chr1", 500, 2100, "-", "G2", "MINUS"),
        "G3": ("chr2", 50, 700, "-", "G3", None),
        "b1": ("chr1", 2500, 2900, "-", None, None),
        "chr2:1-1500": ("chr2", 0, 1500, "+", None, None),
        "chr1:1,001-1,200": ("chr1", 1000, 1200, "+", None, None),
    }
    assert summary.items == summary.items_done == len(expected) and summary.units == 4
    files, rows = read_dataset(out / "embeddings")
    model = load(tiny_model)
    table = pq.read_table(files[0])
    assert table.schema.remove_metadata() == schema.embeddings_schema(16)
    meta = table.schema.metadata
    assert meta[schema.KEY_MODEL] == tiny_model.encode()
    assert meta[schema.KEY_MODEL_SHA] == model.config_sha256.encode()
    assert meta[schema.KEY_COMMAND] == b"genomeconv embed test"
    assert meta[schema.KEY_KIND] == b"embeddings" and schema.KEY_VERSION in meta
    assert sorted(r["seq_name"] for r in rows) == sorted(expected)
    assert len({r["item_id"] for r in rows}) == len(rows)
    per_base = pq.read_table(out / "per_base").to_pandas()
    assert pq.read_schema(next((out / "per_base").glob("part-*"))).metadata[schema.KEY_KIND] \
        == b"per_base"
    for r in rows:
        chrom, start, end, strand, gene_id, gene_name = expected[r["seq_name"]]
        assert (r["chrom"], r["start"], r["end"], r["strand"]) == (chrom, start, end, strand)
        assert (r["gene_id"], r["gene_name"], r["read_name"]) == (gene_id, gene_name, None)
        fwd = recs[chrom][start:end]
        seq = rc(fwd) if strand == "-" else fwd.upper()
        assert r["length"] == end - start and r["pooling"] == "mean"
        assert r["n_fraction"] == pytest.approx(seq.count("N") / len(seq), abs=1e-6)
        hidden = reference_hidden(model, seq)  # minus strand: the reverse complement, directly
        np.testing.assert_allclose(r["embedding"], hidden.mean(0), rtol=1e-4, atol=1e-5)
        rows_pb = per_base[per_base.item_id == r["item_id"]].sort_values("position")
        positions = np.arange(start, end)
        assert (rows_pb.position.to_numpy() == positions).all()
        got = np.stack(rows_pb.embedding.to_numpy())
        # reference position p is offset p - start (plus strand) or end - 1 - p (minus strand)
        offsets = positions - start if strand == "+" else end - 1 - positions
        np.testing.assert_allclose(got, hidden[offsets], rtol=1e-4, atol=1e-5)
    # soft-masked bases embed as their upper-case selves; an N-rich item is embedded as is
    assert 0.45 < next(r for r in rows if r["seq_name"] == "chr2:1-1500")["n_fraction"] < 0.7

    again = embed(
        EmbedOptions(
            fasta=genome["fasta"],
            out=out,
            gtf=genome["gtf"],
            bed=genome["bed"],
            regions=["chr1:1,001-1,200"],
            model=tiny_model,
            per_base=True,
            batch_size=2,
            unit_bp=1500,
        )
    )
    assert again.items_skipped == again.items == 6 and again.units == again.items_done == 0
    assert sorted(files) == read_dataset(out / "embeddings")[0]


def test_cli_reads_max_pooling_float16_per_base_of_a_layer(ray_local, tiny_model, tmp_path,
                                                           rng):
    """Reads of an unaligned BAM, max pooling and float16 per-base rows of the first block's
    output (--layer): recorded in the manifest and each file's metadata."""
    layer = "backbone.layers.0"
    seqs = {}
    with pysam.AlignmentFile(str(tmp_path / "u.bam"), "wb",
                             header={"HD": {"VN": "1.6", "SO": "unknown"}}) as bam:
        for i in range(5):
            seg = pysam.AlignedSegment(bam.header)
            seg.query_name, seg.flag = f"read{i}", 4
            seg.query_sequence = seqs[f"read{i}"] = random_seq(rng, 60 + 70 * i)
            bam.write(seg)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "embed", str(tmp_path / "u.bam"), "--model", tiny_model, "--out", str(out),
        "--pooling", "max", "--min-length", "100", "--per-base", "--per-base-dtype", "float16",
        "--layer", layer, "--address", ray_local.get_runtime_context().gcs_address])
    assert result.exit_code == 0, result.output
    assert "4 items" in result.output and str(out / "embeddings") in result.output
    _, rows = read_dataset(out / "embeddings")
    model = load(tiny_model)
    assert sorted(r["read_name"] for r in rows) == ["read1", "read2", "read3", "read4"]
    pb_table = pq.read_table(out / "per_base")
    assert pb_table.schema.field("embedding").type == schema.per_base_schema(16, "float16") \
        .field("embedding").type
    for kind in ("embeddings", "per_base"):
        assert pq.read_schema(next((out / kind).glob("part-*"))).metadata[schema.KEY_LAYER] \
            == layer.encode()
    settings = json.loads((out / "_genomeconv_manifest.json").read_text())["settings"]
    assert settings["layer"] == layer
    per_base = pb_table.to_pandas()
    for r in rows:
        assert r["chrom"] is None and r["strand"] == "+" and r["pooling"] == "max"
        hidden = reference_hidden(model, seqs[r["read_name"]], layer)
        np.testing.assert_allclose(r["embedding"], hidden.max(0), rtol=1e-4, atol=1e-5)
        pb = per_base[per_base.item_id == r["item_id"]].sort_values("position")
        assert (pb.position.to_numpy() == np.arange(len(seqs[r["read_name"]]))).all()
        np.testing.assert_allclose(np.stack(pb.embedding.to_numpy()).astype(np.float64),
                                   hidden, rtol=2e-3, atol=2e-3)  # float16 storage


def _parent(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return 0


def _worker_pids() -> list[int]:
    """PIDs of this test run's EmbedActor workers: processes Ray names after the actor class,
    started by the raylet that this test process started (worker -> raylet -> us)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (b"EmbedActor" in (entry / "cmdline").read_bytes()
                        and _parent(_parent(int(entry.name))) == os.getpid()):
                    pids.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return pids


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_resume_after_killed_worker_and_driver(ray_local, tmp_path):
    rng = np.random.default_rng(99)
    torch.manual_seed(3)
    model_dir = tmp_path / "model"
    HyenaDNA(HyenaConfig(d_model=48, n_layer=3, d_inner=96, max_seq_len=2048)).save(model_dir)
    fasta = write_bgzip_fasta(tmp_path / "g.fa.gz",
                              {f"c{i}": random_seq(rng, 8000) for i in range(16)})
    out = tmp_path / "out"
    parts = out / "embeddings"
    cmd = [sys.executable, "-m", "genomeconv.cli", "embed", fasta, "--model", str(model_dir),
           "--out", str(out), "--batch-size", "1", "--unit-bp", "8000",
           "--address", ray_local.get_runtime_context().gcs_address]
    runtime.release_workers()  # earlier tests' kept actors: only the job's are counted below
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = _wait(lambda: sorted(parts.glob("part-*.parquet")), 120, "the first part")
        before = set(_worker_pids())
        assert before, "no EmbedActor process found"
        for pid in before:
            os.kill(pid, signal.SIGKILL)  # a worker dies mid-run; its units are retried
        _wait(lambda: len(list(parts.glob("part-*.parquet"))) > len(first) + 1, 120,
              "progress after the worker was killed")
        driver.send_signal(signal.SIGKILL)  # then the driver dies
        driver.wait(30)
        # Ray kills the dead driver's actors only once it notices: one may still finish a unit
        _wait(lambda: not _worker_pids(), 60, "the killed job's workers to exit")
    finally:
        if driver.poll() is None:
            driver.kill()
    written = {p: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}
    assert 0 < len(written) < 16, "the run was not interrupted mid-way"

    summary = embed(
        EmbedOptions(fasta=fasta, out=out, model=str(model_dir), batch_size=1, unit_bp=8000)
    )
    assert summary.items_skipped == len(written) and summary.items_done == 16 - len(written)
    _, rows = read_dataset(parts)
    assert sorted(r["seq_name"] for r in rows) == sorted(f"c{i}" for i in range(16))
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())  # not recomputed


@pytest.mark.parametrize("case", ["unknown_gene", "truncated_gzip", "malformed",
                                  "unknown_contig", "unknown_layer"])
def test_bad_inputs_give_clear_errors(tiny_model, genome, tmp_path, case):
    import gzip

    args = ["embed", genome["fasta"], "--model", tiny_model, "--out", str(tmp_path / "o")]
    if case == "unknown_gene":
        args += ["--gtf", genome["gtf"], "--genes", "PLUS,NOPE"]
        want = ["unknown gene", "'NOPE'", genome["gtf"]]
    elif case == "truncated_gzip":  # plain gzip is read (tests/test_io_seqrecords.py)
        path = tmp_path / "p.fa.gz"
        with gzip.open(path, "wt") as fh:
            fh.write(">c\nACGT\n")
        path.write_bytes(path.read_bytes()[:-6])
        args[1] = str(path)
        want = [str(path), "truncated or corrupt gzip file"]
    elif case == "malformed":
        path = tmp_path / "m.fa"
        path.write_text(">c\nACGTACGT\nACGT ACG\n")
        args[1] = str(path)
        want = [f"{path}, line 3", "invalid character ' '"]
    elif case == "unknown_contig":
        args += ["--region", "chrZ:1-10"]
        want = ["unknown contig 'chrZ'", genome["fasta"]]
    else:
        args += ["--layer", "layers.0"]
        want = ["--layer 'layers.0'", "valid: backbone.layers.N (N 0-1), backbone.ln_f"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for text in want:
        assert text in result.output
    assert not (tmp_path / "o").exists()


def _bed(path: Path, intervals: list[tuple[str, int, int, str]]) -> str:
    path.write_text("".join(f"{c}\t{s}\t{e}\tb{i}\t0\t{st}\n"
                            for i, (c, s, e, st) in enumerate(intervals)))
    return str(path)


LOCK_HOLDER = """
import sys, time
from genomeconv.pipelines.manifest import FolderLock
lock = FolderLock(sys.argv[1], "genomeconv embed (the other run)")
lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_reruns_resume_by_key_refuse_other_settings_and_overwrite(ray_local, genome, tmp_path,
                                                                 capsys):
    """Subset then superset with another --batch-size, a damaged and an empty part, a stale lock
    and a stray temporary file: every item once with the right values; then another pooling,
    per-base setting, model or model weights is refused naming the difference, a concurrent run
    is refused at once, and --overwrite starts afresh."""
    torch.manual_seed(11)
    model_dir = tmp_path / "model"
    model = HyenaDNA(HyenaConfig(d_model=16, n_layer=2, d_inner=32, max_seq_len=512))
    model.save(model_dir)
    rng = np.random.default_rng(5)
    intervals = []
    for i in range(9):
        chrom = "chr1" if i % 3 else "chr2"
        start = int(rng.integers(0, 1300))
        intervals.append((chrom, start, start + int(rng.integers(30, 150)), "-+"[i % 2]))
    full = _bed(tmp_path / "full.bed", intervals)
    subset = _bed(tmp_path / "subset.bed", intervals[:5])
    out = tmp_path / "out"
    first = embed(
        EmbedOptions(
            fasta=genome["fasta"],
            out=out,
            bed=subset,
            model=str(model_dir),
            batch_size=2,
            unit_bp=180,
        )
    )  # units of 1, 2 and 2 items
    assert (first.items, first.items_skipped, first.items_done, first.units) == (5, 0, 5, 3)
    parts = sorted((out / "embeddings").glob("part-*.parquet"))
    rows_in = {p: pq.read_table(p).num_rows for p in parts}
    damaged = [p for p in parts if rows_in[p] == 2][:2]
    damaged[0].write_bytes(b"")  # e.g. a disk that filled up
    damaged[1].write_bytes(damaged[1].read_bytes()[:200])  # a cut file
    (out / "embeddings" / ".tmp-x-1-dead").write_bytes(b"partial")
    (out / ".genomeconv.lock").write_text(json.dumps({"pid": 2**22 + 7, "host": "gone",
                                                      "command": "genomeconv embed (killed)"}))
    capsys.readouterr()
    second = embed(
        EmbedOptions(fasta=genome["fasta"], out=out, bed=full, model=str(model_dir), batch_size=3)
    )
    err = capsys.readouterr().err
    assert "taking over a stale lock" in err and "genomeconv embed (killed)" in err
    assert err.count("not counted as done because") == 2 and "zero bytes" in err
    assert (second.items, second.items_skipped, second.items_done) == (9, 1, 8)
    _, rows = read_dataset(out / "embeddings")
    assert sorted(r["seq_name"] for r in rows) == [f"b{i}" for i in range(9)]  # each once
    for r in rows:
        chrom, start, end, strand = intervals[int(r["seq_name"][1:])]
        fwd = genome["records"][chrom][start:end]
        hidden = reference_hidden(model, rc(fwd) if strand == "-" else fwd.upper())
        np.testing.assert_allclose(r["embedding"], hidden.mean(0), rtol=1e-4, atol=1e-5)
        assert r["nonfinite"] is False
    assert len(list((out / "embeddings").glob(".damaged-*"))) == 2
    assert (out / ".genomeconv.lock").read_text() == ""

    def refused(**changes) -> str:
        args = {"bed": full, "model": str(model_dir), "batch_size": 4, **changes}
        with pytest.raises(InputError) as exc:
            embed(EmbedOptions(fasta=genome["fasta"], out=out, **args))
        return str(exc.value)

    assert "pooling: 'mean' (in the folder) vs 'max' (this run)" in refused(pooling="max")
    assert "per_base: False (in the folder) vs True (this run)" in refused(per_base=True)
    other = tmp_path / "other"
    HyenaDNA(HyenaConfig(d_model=16, n_layer=1, d_inner=32, max_seq_len=512)).save(other)
    text = refused(model=str(other))
    assert f"model: '{model_dir}' (in the folder) vs '{other}' (this run)" in text
    assert "model_config_sha256" in text
    with torch.no_grad():
        model.backbone.ln_f.bias.add_(0.5)  # new weights, same config, same folder
    model.save(model_dir)
    text = refused()
    assert "model_weights_sha256: " in text and "model:" not in text.replace("model_", "")
    before = sorted(p.name for p in (out / "embeddings").glob("part-*"))
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = CliRunner().invoke(app, ["embed", genome["fasta"], "--bed", full, "--model",
                                          str(model_dir), "--out", str(out), "--overwrite"])
        assert result.exit_code == 2, result.output
        assert f"pid {holder.pid}" in result.output and "(the other run)" in result.output
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in (out / "embeddings").glob("part-*")) == before  # untouched
    fresh = embed(
        EmbedOptions(
            fasta=genome["fasta"],
            out=out,
            bed=full,
            model=str(model_dir),
            batch_size=4,
            pooling="max",
            overwrite=True,
        )
    )
    assert (fresh.items_skipped, fresh.items_done) == (0, 9)
    files, rows = read_dataset(out / "embeddings")
    assert len(rows) == 9 and {r["pooling"] for r in rows} == {"max"}
    assert not list((out / "embeddings").glob(".damaged-*")) and len(files) == fresh.units


def test_nonfinite_model_stops_the_run_or_marks_rows(ray_local, genome, tmp_path):
    torch.manual_seed(1)
    model = HyenaDNA(HyenaConfig(d_model=16, n_layer=2, d_inner=32, max_seq_len=512))
    with torch.no_grad():
        # A broken model with finite weights (load() refuses NaN weights): feature 3 overflows.
        model.backbone.ln_f.weight[3] = 3e38
        model.backbone.ln_f.bias[3] = 3e38
    model.save(tmp_path / "nan")
    args = ["embed", genome["fasta"], "--region", "chr1:11-90", "--model", str(tmp_path / "nan"),
            "--out", str(tmp_path / "o"), "--address", ray_local.get_runtime_context().gcs_address]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "non-finite" in result.output and "'chr1:11-90' (chr1:11-90 +" in result.output
    assert "--keep-nonfinite" in result.output and "Traceback" not in result.output
    assert not list((tmp_path / "o" / "embeddings").glob("part-*"))
    result = CliRunner().invoke(app, args + ["--keep-nonfinite"])  # resumes: no --overwrite
    assert result.exit_code == 0, result.output
    _, rows = read_dataset(tmp_path / "o" / "embeddings")
    assert (
        len(rows) == 1 and rows[0]["nonfinite"] is True and not np.isfinite(rows[0]["embedding"][3])
    )


def test_iupac_codes_count_in_n_fraction(tiny_model, tmp_path, rng):
    """n_fraction is the share of bases the model cannot know (N and the other IUPAC codes): a
    record with 2% IUPAC codes read 0.0 (issue 30). The worker's own path, without Ray."""
    from helpers import open_actor, worker_setup, write_fasta
    from genomeconv.pipelines.embed import EmbedActor, WorkerConfig, plan_fasta_items

    seq = np.array(list(random_seq(rng, 1000)))
    seq[5 + rng.choice(995, 20, replace=False)] = list("RYSWKMBDHV" * 2)  # 2% IUPAC codes
    seq[:5] = "N"
    fasta = write_fasta(tmp_path / "g.fa", {"c": "".join(seq)})
    items = plan_fasta_items(fasta)
    actor = open_actor(EmbedActor, worker_setup(tiny_model, tmp_path / "o"),
                       WorkerConfig(fasta=fasta, reads=None))
    actor.run_unit("u", items)
    (row,) = pq.read_table(tmp_path / "o" / "embeddings" / "part-u.parquet").to_pylist()
    assert row["n_fraction"] == pytest.approx(25 / 1000)
