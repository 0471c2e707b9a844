"""Reads from generated BAM, unaligned BAM and CRAM files: filters, regions, re-reading."""

from __future__ import annotations

import pysam
import pytest

from genomeconv.io.reads import ReadFile, scan_reads
from genomeconv.io.regions import reverse_complement
from helpers import random_seq


@pytest.fixture
def genome(tmp_path, rng):
    ref = random_seq(rng, 3000)
    fa = tmp_path / "ref.fa"
    fa.write_text(">c1\n" + ref + "\n")
    pysam.faidx(str(fa))
    return ref, fa


def make_reads(rng, ref: str) -> list[dict]:
    """Aligned records with known flags, MAPQs and lengths (sorted by position)."""
    reads = []
    for i, start in enumerate(sorted(rng.integers(0, 2700, size=40))):
        length = int(rng.integers(20, 250))
        length = min(length, len(ref) - int(start))
        flag = [0, 16, 256, 2048, 0, 16][i % 6]
        reads.append(dict(name=f"r{i}", start=int(start), length=length, flag=flag,
                          mapq=int(rng.integers(0, 61)),
                          seq=ref[int(start):int(start) + length]))
    return reads


def write_aligned(path, reads, ref_fa=None) -> str:
    header = {"HD": {"VN": "1.6", "SO": "coordinate"}, "SQ": [{"SN": "c1", "LN": 3000}]}
    mode = "wc" if str(path).endswith(".cram") else "wb"
    kwargs = {"reference_filename": str(ref_fa)} if ref_fa else {}
    with pysam.AlignmentFile(str(path), mode, header=header, **kwargs) as out:
        for r in reads:
            seg = pysam.AlignedSegment(out.header)
            seg.query_name, seg.flag, seg.reference_id = r["name"], r["flag"], 0
            seg.reference_start, seg.mapping_quality = r["start"], r["mapq"]
            seg.query_sequence = r["seq"]
            seg.cigartuples = [(0, r["length"])]
            seg.query_qualities = pysam.qualitystring_to_array("I" * r["length"])
            out.write(seg)
    return str(path)


def expected(reads, *, min_mapq=0, min_length=0, lo=0, hi=10**9):
    return [r for r in reads if not r["flag"] & 0x900 and r["mapq"] >= min_mapq
            and r["length"] >= min_length and r["start"] < hi and r["start"] + r["length"] > lo]


def as_sequenced(r) -> str:
    return reverse_complement(r["seq"]) if r["flag"] & 16 else r["seq"]


@pytest.mark.parametrize("fmt", ["bam", "cram"])
def test_primary_filters_and_reread(tmp_path, rng, genome, fmt):
    ref, fa = genome
    reads = make_reads(rng, ref)
    path = write_aligned(tmp_path / f"a.{fmt}", reads, fa if fmt == "cram" else None)
    kw = {"reference": fa} if fmt == "cram" else {}
    found = list(scan_reads(path, min_mapq=20, min_length=60, **kw))
    want = expected(reads, min_mapq=20, min_length=60)
    assert [(f.name, f.flag, f.start, f.length) for f in found] == \
        [(r["name"], r["flag"], r["start"], r["length"]) for r in want]
    assert all(f.strand == ("-" if f.flag & 16 else "+") and f.chrom == "c1" for f in found)
    by_name = {r["name"]: r for r in reads}
    with ReadFile(path, **kw) as rf:
        for f in reversed(found):  # out of file order: every read must be found again
            assert rf.sequence(f) == as_sequenced(by_name[f.name])
        assert rf.sequences(found[::-1]) == [as_sequenced(by_name[f.name]) for f in found[::-1]]
    all_reads = list(scan_reads(path, primary_only=False, **kw))
    assert len(all_reads) == len(reads)


def test_region_builds_index(tmp_path, rng, genome):
    ref, _ = genome
    reads = make_reads(rng, ref)
    path = write_aligned(tmp_path / "a.bam", reads)
    found = list(scan_reads(path, region="c1:1,001-1,500"))
    assert [f.name for f in found] == [r["name"] for r in expected(reads, lo=1000, hi=1500)]
    with ReadFile(path) as rf:
        for f in found:
            r = next(r for r in reads if r["name"] == f.name)
            assert rf.sequence(f) == as_sequenced(r)


def test_unaligned_bam_pairs(tmp_path, rng):
    header = {"HD": {"VN": "1.6", "SO": "unknown"}}
    seqs = {}
    with pysam.AlignmentFile(str(tmp_path / "u.bam"), "wb", header=header) as out:
        for i in range(30):
            for flag in (77, 141):  # read 1 and read 2 of an unaligned pair: same name
                seg = pysam.AlignedSegment(out.header)
                seg.query_name, seg.flag = f"p{i}", flag
                seq = random_seq(rng, int(rng.integers(30, 90)))
                seg.query_sequence = seqs[(f"p{i}", flag)] = seq
                out.write(seg)
    found = list(scan_reads(tmp_path / "u.bam", min_mapq=60, min_length=50))
    assert sorted((f.name, f.flag) for f in found) == \
        sorted(k for k, s in seqs.items() if len(s) >= 50)
    assert all(f.chrom is None and f.strand == "+" for f in found)
    with ReadFile(tmp_path / "u.bam") as rf:
        for f in found[::-1]:
            assert rf.sequence(f) == seqs[(f.name, f.flag)]


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.bam"):
        list(scan_reads(tmp_path / "nope.bam"))
    (tmp_path / "x.bam").write_text("not a bam")
    with pytest.raises(ValueError, match="x.bam"):
        list(scan_reads(tmp_path / "x.bam"))
