"""FastaFile over generated plain, bgzip and plain-gzip FASTA files (real pysam/htslib)."""

from __future__ import annotations

import gzip
import os

import pysam
import pytest

from genomeconv.io.fasta import FastaFile, FastaFormatError, compression
from genomeconv.io.regions import UnknownContigError
from fixtures import random_seq, write_fasta


@pytest.fixture
def records(rng):
    return {"chr1": random_seq(rng, 1234, "ACGTacgtN"), "chrM": random_seq(rng, 321, "ACGTacgtN")}


@pytest.mark.parametrize("packed", ["plain", "bgzip"])
def test_fetch_matches_source_and_builds_index(tmp_path, rng, records, packed):
    path = write_fasta(tmp_path / "g.fa", records, index=False)
    if packed == "bgzip":
        path = pysam.tabix_compress(path, path + ".gz") or path + ".gz"
    assert compression(path) == ("bgzf" if packed == "bgzip" else "none")
    assert not os.path.exists(path + ".fai")
    with FastaFile(path) as fa:
        assert os.path.exists(path + ".fai")
        assert fa.references == ("chr1", "chrM")
        assert fa.lengths == (1234, 321)
        for _ in range(20):
            s = int(rng.integers(0, 1234))
            e = int(rng.integers(s, 1235))
            assert fa.fetch("chr1", s, e) == records["chr1"][s:e].upper()
        assert fa.fetch("1", 0, 5) == records["chr1"][:5].upper()  # chr-prefix aliasing
        assert fa.fetch("MT") == records["chrM"].upper()  # whole record, soft-mask upper-cased
        assert fa.length("chrM") == 321


def test_fetch_padded_past_both_ends(tmp_path, records):
    with FastaFile(write_fasta(tmp_path / "g.fa", records, index=False)) as fa:
        seq, left, right = fa.fetch_padded("chrM", -5, 326)
        assert (left, right) == (5, 5)
        assert seq == "N" * 5 + records["chrM"].upper() + "N" * 5
        assert fa.fetch_padded("chrM", 400, 410) == ("N" * 10, 0, 10)
        assert fa.fetch_padded("chrM", -10, -2) == ("N" * 8, 8, 0)
        assert fa.fetch_padded("chrM", 10, 20) == (records["chrM"][10:20].upper(), 0, 0)
        with pytest.raises(ValueError, match="outside"):
            fa.fetch("chrM", 300, 400)


def test_unknown_contig_names_file(tmp_path, records):
    path = write_fasta(tmp_path / "g.fa", records, index=False)
    with FastaFile(path) as fa, pytest.raises(UnknownContigError, match="chr7.*g.fa"):
        fa.fetch("chr7", 0, 10)


def test_plain_gzip_error_gives_bgzip_command(tmp_path, records):
    path = str(tmp_path / "g.fa.gz")
    with gzip.open(path, "wt") as fh:
        fh.write(">chr1\n" + records["chr1"] + "\n")
    with pytest.raises(FastaFormatError) as err:
        FastaFile(path)
    msg = str(err.value)
    assert path in msg and f"gunzip -c {path} | bgzip -c > {tmp_path}/g.fa.bgz" in msg


@pytest.mark.parametrize("body, line, what", [
    (">a\nACGTACGT\nACG\nACGTACGT\n", 3, "shorter"),
    (">a\nACGTACGT\nACGTACGTAA\n", 3, "line width"),
    (">a\nACGTACGT\nAC-TACGT\n", 3, "invalid character '-'"),
    ("ACGT\n>a\nACGT\n", 1, "before the first"),
    (">a\nACGT\n\nACGT\n", 3, "blank line"),
    (">a\nACGT\n>a\nACGT\n", 3, "duplicate"),
    (">\nACGT\n", 1, "empty record name"),
])
def test_malformed_line_named_with_file_and_line(tmp_path, body, line, what):
    path = tmp_path / "bad.fa"
    path.write_text(body)
    with pytest.raises(FastaFormatError) as err:
        FastaFile(path)
    assert f"{path}, line {line}" in str(err.value) and what in str(err.value)


@pytest.mark.parametrize("packed", ["plain", "bgzip"])
def test_index_dir_keeps_source_untouched(tmp_path, records, packed):
    src = tmp_path / "src"
    src.mkdir()
    path = write_fasta(src / "g.fa", records, index=False)
    if packed == "bgzip":
        path = pysam.tabix_compress(path, path + ".gz") or path + ".gz"
    before = sorted(os.listdir(src))
    with FastaFile(path, index_dir=tmp_path / "idx") as fa:
        assert fa.fetch("chr1", 7, 70) == records["chr1"][7:70].upper()
    assert sorted(os.listdir(src)) == before
    built = sorted(os.listdir(tmp_path / "idx"))
    assert built == (["g.fa.gz.fai", "g.fa.gz.gzi"] if packed == "bgzip" else ["g.fa.fai"])
    with FastaFile(path, index_dir=tmp_path / "idx") as fa:  # reuses the built index
        assert fa.lengths == (1234, 321)
