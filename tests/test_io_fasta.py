"""FastaFile over generated plain, bgzip and plain-gzip FASTA files (real pysam/htslib): cached
bgzip copies, stale and unreadable indexes, truncated files."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pysam
import pytest

from genomeconv.errors import InputError
from genomeconv.io.fasta import FastaFile, FastaFormatError, compression
from genomeconv.io.regions import UnknownContigError
from helpers import random_seq, write_fasta


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test gets its own empty genomeconv cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("GENOMECONV_CACHE", str(path))
    monkeypatch.delenv("GENOMECONV_CACHE_NEXT_TO_INPUT", raising=False)
    return path


def write_gzip(path: Path, records: dict[str, str], width: int = 70) -> str:
    """A plain-gzip FASTA, as NCBI, Ensembl and UCSC ship them."""
    with gzip.open(path, "wt") as fh:
        for name, seq in records.items():
            fh.write(f">{name} downloaded\n")
            fh.writelines(seq[i:i + width] + "\n" for i in range(0, len(seq), width))
    return str(path)


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


def test_fetch_outside_the_record_is_an_error(tmp_path, records):
    with FastaFile(write_fasta(tmp_path / "g.fa", records, index=False)) as fa:
        with pytest.raises(ValueError, match="outside"):
            fa.fetch("chrM", 300, 400)


def test_unknown_contig_names_file(tmp_path, records):
    path = write_fasta(tmp_path / "g.fa", records, index=False)
    with FastaFile(path) as fa, pytest.raises(UnknownContigError, match="chr7.*g.fa"):
        fa.fetch("chr7", 0, 10)


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


def test_plain_gzip_converted_once_to_cached_bgzip(tmp_path, records, cache_dir, capfd):
    path = write_gzip(tmp_path / "genome.fna.gz", records)
    assert compression(path) == "gzip"
    with FastaFile(path) as fa:
        assert fa.references == ("chr1", "chrM")
        assert fa.fetch("chr1", 100, 900) == records["chr1"][100:900].upper()
        assert fa.fetch("chrM") == records["chrM"].upper()
    err = capfd.readouterr().err.strip().splitlines()
    (entry,) = os.listdir(cache_dir)
    assert err == [f"genomeconv: indexed bgzip copy of {path} written to {cache_dir / entry}"]
    assert sorted(os.listdir(cache_dir / entry)) == ["sequence.fa.gz", "sequence.fa.gz.fai",
                                                     "sequence.fa.gz.gzi"]
    assert compression(cache_dir / entry / "sequence.fa.gz") == "bgzf"
    assert sorted(os.listdir(tmp_path)) == ["cache", "genome.fna.gz"]  # input folder untouched
    with FastaFile(path) as fa:  # reused: no second conversion, no line
        assert fa.lengths == (1234, 321)
    assert capfd.readouterr().err == "" and os.listdir(cache_dir) == [entry]
    # the input changes: a new copy replaces the old one
    write_gzip(tmp_path / "genome.fna.gz", {"chrX": records["chrM"]})
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    with FastaFile(path) as fa:
        assert fa.references == ("chrX",) and fa.fetch("chrX") == records["chrM"].upper()
    (new_entry,) = os.listdir(cache_dir)
    assert new_entry != entry and "written to" in capfd.readouterr().err


def test_cache_next_to_input_when_asked(tmp_path, records, cache_dir, monkeypatch):
    monkeypatch.setenv("GENOMECONV_CACHE_NEXT_TO_INPUT", "1")
    path = write_gzip(tmp_path / "genome.fa.gz", records)
    with FastaFile(path) as fa:
        assert fa.fetch("chrM", 3, 30) == records["chrM"][3:30].upper()
    assert not cache_dir.exists()
    (entry,) = os.listdir(tmp_path / ".genomeconv-cache")
    assert entry.startswith("genome.fa.gz.bgzip.")


def test_killed_conversion_leaves_nothing_taken_for_complete(tmp_path, records, cache_dir):
    """A conversion SIGKILLed half-way through writing its bgzip copy; the next open converts
    again from scratch and reads the right bases."""
    path = write_gzip(tmp_path / "g.fa.gz", records)
    script = textwrap.dedent(f"""
        import os, signal
        from genomeconv.io import cache
        def half(src, dest):
            with open(dest, "wb") as fh:
                fh.write(open(src, "rb").read()[:100])
            os.kill(os.getpid(), signal.SIGKILL)
        cache.gzip_to_bgzip = half
        from genomeconv.io.fasta import FastaFile
        FastaFile({path!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=os.environ.copy(),
                          capture_output=True, text=True)
    assert proc.returncode == -9
    leftovers = os.listdir(cache_dir)
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-")
    with FastaFile(path) as fa:
        assert fa.fetch("chr1") == records["chr1"].upper()
    complete = [e for e in os.listdir(cache_dir) if not e.startswith(".tmp-")]
    assert len(complete) == 1


def test_truncated_plain_gzip_names_the_file(tmp_path, records, cache_dir):
    path = write_gzip(tmp_path / "g.fa.gz", records)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match=f"^{path}: truncated or corrupt gzip file"):
        FastaFile(path)
    assert not [e for e in os.listdir(cache_dir) if not e.startswith(".tmp-")]


@pytest.mark.parametrize("indexed_first", [False, True])
def test_truncated_bgzip_is_an_error_not_an_abort(tmp_path, records, indexed_first):
    """Cut short before or after its index was built: an InputError naming the file (htslib
    used to abort the process with 'Aborted.')."""
    plain = write_fasta(tmp_path / "g.fa", {"chr1": records["chr1"] * 40}, index=False)
    path = pysam.tabix_compress(plain, plain + ".gz") or plain + ".gz"
    if indexed_first:
        FastaFile(path).close()
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(FastaFormatError, match=f"^{path}: truncated bgzip file"):
        FastaFile(path)


@pytest.mark.parametrize("packed", ["plain", "bgzip"])
def test_index_older_than_replaced_fasta_is_rebuilt(tmp_path, rng, records, packed):
    path = write_fasta(tmp_path / "g.fa", records, index=False)
    if packed == "bgzip":
        path = pysam.tabix_compress(path, path + ".gz") or path + ".gz"
    FastaFile(path).close()
    longer = {"chr1": random_seq(rng, 5000, "ACGT"), "chr2": random_seq(rng, 700, "ACGT")}
    src = write_fasta(tmp_path / "new.fa", longer, width=50, index=False)
    if packed == "bgzip":
        src = pysam.tabix_compress(src, src + ".gz") or src + ".gz"
    os.replace(src, path)  # keeps the new file's own mtime: later than the old index
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path + ".fai").st_mtime_ns + 10**9))
    with FastaFile(path) as fa:
        assert fa.references == ("chr1", "chr2") and fa.lengths == (5000, 700)
        assert fa.fetch("chr1") == longer["chr1"]


def test_long_header_refused_without_leaving_an_index(tmp_path):
    path = tmp_path / "long.fa"
    path.write_text(">" + "x" * 70_000 + "\nACGTACGT\n")
    with pytest.raises(FastaFormatError, match=f"^{path}: htslib cannot read back.*70,000"):
        FastaFile(path)
    assert os.listdir(tmp_path) == ["long.fa"]


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="nope.fa: FASTA file not found"):
        FastaFile(tmp_path / "nope.fa")
