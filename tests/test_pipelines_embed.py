"""`genomeconv embed` end to end on real local Ray, real pysam files and a tiny random HyenaDNA.

References are computed independently: sequences are cut from the generated strings (not read
back through genomeconv.io) and embedded with the model's plain forward (`model(ids)`).
"""

from __future__ import annotations

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
from genomeconv.models import HyenaConfig, HyenaDNA, load, tokenize
from genomeconv.pipelines import schema
from genomeconv.pipelines.embed import embed
from fixtures import random_seq

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
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("model") / "tiny"
    HyenaDNA(HyenaConfig(d_model=16, n_layer=2, d_inner=32, max_seq_len=512)).save(path)
    return str(path)


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


def reference_hidden(model, seq: str) -> np.ndarray:
    with torch.no_grad():
        return model(tokenize(seq.upper())[None])[0].double().numpy()


def read_dataset(folder: Path):
    files = sorted(folder.glob("part-*.parquet"))
    assert files and not list(folder.glob(".tmp-*"))
    return files, pq.read_table(folder).to_pylist()


def test_embed_genes_bed_region_per_base(ray_local, tiny_model, genome, tmp_path):
    out = tmp_path / "out"
    recs = genome["records"]
    summary = embed(genome["fasta"], out, gtf=genome["gtf"], bed=genome["bed"],
                    regions=["chr1:1,001-1,200"], model=tiny_model, per_base=True,
                    batch_size=2, unit_bp=1500, command="genomeconv embed test")
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

    again = embed(genome["fasta"], out, gtf=genome["gtf"], bed=genome["bed"],
                  regions=["chr1:1,001-1,200"], model=tiny_model, per_base=True, batch_size=2,
                  unit_bp=1500)
    assert again.units_skipped == again.units == 4 and again.items_done == 0
    assert sorted(files) == read_dataset(out / "embeddings")[0]


def test_cli_reads_max_pooling_float16_per_base(ray_local, tiny_model, tmp_path, rng):
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
        "--address", ray_local.get_runtime_context().gcs_address])
    assert result.exit_code == 0, result.output
    assert "4 items" in result.output and str(out / "embeddings") in result.output
    _, rows = read_dataset(out / "embeddings")
    model = load(tiny_model)
    assert sorted(r["read_name"] for r in rows) == ["read1", "read2", "read3", "read4"]
    pb_table = pq.read_table(out / "per_base")
    assert pb_table.schema.field("embedding").type == schema.per_base_schema(16, "float16") \
        .field("embedding").type
    per_base = pb_table.to_pandas()
    for r in rows:
        assert r["chrom"] is None and r["strand"] == "+" and r["pooling"] == "max"
        hidden = reference_hidden(model, seqs[r["read_name"]])
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

    summary = embed(fasta, out, model=str(model_dir), batch_size=1, unit_bp=8000)
    assert summary.units == 16 and summary.units_skipped == len(written)
    assert summary.items_done == 16 - len(written)
    _, rows = read_dataset(parts)
    assert sorted(r["seq_name"] for r in rows) == sorted(f"c{i}" for i in range(16))
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())  # not recomputed


@pytest.mark.parametrize("case", ["unknown_gene", "plain_gzip", "malformed", "unknown_contig"])
def test_bad_inputs_give_clear_errors(tiny_model, genome, tmp_path, case):
    import gzip

    args = ["embed", genome["fasta"], "--model", tiny_model, "--out", str(tmp_path / "o")]
    if case == "unknown_gene":
        args += ["--gtf", genome["gtf"], "--genes", "PLUS,NOPE"]
        want = ["unknown gene", "'NOPE'", genome["gtf"]]
    elif case == "plain_gzip":
        path = tmp_path / "p.fa.gz"
        with gzip.open(path, "wt") as fh:
            fh.write(">c\nACGT\n")
        args[1] = str(path)
        want = [str(path), "plain gzip", f"gunzip -c {path} | bgzip -c > {tmp_path}/p.fa.bgz"]
    elif case == "malformed":
        path = tmp_path / "m.fa"
        path.write_text(">c\nACGTACGT\nACGT ACG\n")
        args[1] = str(path)
        want = [f"{path}, line 3", "invalid character ' '"]
    else:
        args += ["--region", "chrZ:1-10"]
        want = ["unknown contig 'chrZ'", genome["fasta"]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for text in want:
        assert text in result.output
    assert not (tmp_path / "o").exists()
