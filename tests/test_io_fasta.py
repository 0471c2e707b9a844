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


@pytest.mark.parametrize("packed", ["plain", "bgzip"])
def test_a_fasta_replaced_with_an_older_mtime_is_read_through_a_new_index(tmp_path, rng, packed):
    """`cp -p`, `rsync -a` and `tar x` give the new file its old mtime, older than the index:
    a 6,000-bp record was read as 3,000 bp through the old index (issue 30)."""
    def fasta(name: str, records: dict[str, str]) -> str:
        path = write_fasta(tmp_path / name, records, index=False)
        return pysam.tabix_compress(path, path + ".gz") or path + ".gz" if packed == "bgzip" \
            else path

    first, new = {"c1": random_seq(rng, 3000)}, {"c1": random_seq(rng, 6000)}
    path, replacement = fasta("g.fa", first), fasta("new.fa", new)
    FastaFile(path).close()  # indexed
    os.utime(replacement, ns=(0, 0))  # made long ago
    subprocess.run(["cp", "-p", replacement, path], check=True)
    assert os.stat(path).st_mtime_ns < os.stat(path + ".fai").st_mtime_ns
    with FastaFile(path) as fa:
        assert fa.lengths == (6000,) and fa.fetch("c1") == new["c1"]
    # the same name and size, another layout: 6,001 bases in lines of 61 (6,100 bytes)
    same = {"c1": random_seq(rng, 6001)}
    other = write_fasta(tmp_path / "same.fa", same, width=61, index=False)
    if packed == "bgzip":
        other = pysam.tabix_compress(other, other + ".gz") or other + ".gz"
    else:
        assert os.path.getsize(other) == os.path.getsize(path)
    os.utime(other, ns=(0, 0))
    subprocess.run(["cp", "-p", other, path], check=True)
    with FastaFile(path) as fa:
        assert fa.lengths == (6001,) and fa.fetch("c1") == same["c1"]


def test_a_current_index_is_used_as_it_is(tmp_path, records):
    """Checking an index reads a few bytes per record: it is not rebuilt (not even touched)."""
    path = write_fasta(tmp_path / "g.fa", records)  # indexed by samtools
    before = os.stat(path + ".fai").st_mtime_ns
    os.utime(path, ns=(before + 10**9, before + 10**9))  # newer than its index: still current
    with FastaFile(path) as fa:
        assert fa.lengths == (1234, 321) and fa.empty_records == ()
    assert os.stat(path + ".fai").st_mtime_ns == before


def test_empty_records_are_listed_and_noted(tmp_path, rng, capfd):
    """htslib leaves an empty record out of its index: it was dropped silently (issue 30)."""
    from genomeconv.pipelines import preflight

    seq = random_seq(rng, 150)
    path = tmp_path / "g.fa"
    path.write_text(f">a\n{seq[:100]}\n>b empty\n>c\n{seq[100:]}\n>d\n\n>e\n{seq[:7]}\n")
    for _ in range(2):  # built, then checked as current: the same list both times
        with FastaFile(path) as fa:
            assert fa.references == ("a", "c", "e") and fa.empty_records == ("b", "d")
            assert fa.fetch("c") == seq[100:]
    capfd.readouterr()
    preflight.check_fasta(path)
    assert capfd.readouterr().err.splitlines() == [
        f"genomeconv: {path}: record '{name}' is empty (no bases); it is left out"
        for name in ("b", "d")]


@pytest.mark.parametrize("body, what", [
    ("", "empty: no FASTA records"),
    ("\n\n", "empty: no FASTA records"),
    (">a\n>b\n", "empty: none of its 2 record(s) has any bases"),
    (">a\nACGT\n>b\n", "the last record 'b' is empty"),
])
@pytest.mark.parametrize("packed", ["plain", "gzip"])
def test_an_empty_file_or_last_record_says_empty_naming_the_file(tmp_path, body, what, packed):
    """samtools said "Could not build fai index <a temporary path>" (issue 30)."""
    path = tmp_path / "e.fa"
    path.write_text(body)
    if packed == "gzip":  # recompressed to a bgzip copy in the cache: the error names the input
        path = tmp_path / "e.fa.gz"
        with gzip.open(path, "wt") as fh:
            fh.write(body)
    with pytest.raises(FastaFormatError) as err:
        FastaFile(path)
    assert str(err.value).startswith(f"{path}: ") and what in str(err.value)
    assert "fai" not in str(err.value) and "cache" not in str(err.value)


def test_errors_in_a_converted_copy_name_the_users_file(tmp_path):
    """A plain-gzip FASTA is read through a bgzip copy in the cache, a GFF3 file through its
    FASTA there: their errors named the copy (issue 30)."""
    gz = tmp_path / "bad.fa.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(">a\nACGT\nACXT\n")
    with pytest.raises(FastaFormatError, match=f"^{gz}, line 3, column 3: invalid character"):
        FastaFile(gz)
    gff = tmp_path / "dup.gff3"
    gff.write_text("##gff-version 3\n##FASTA\n>a\nACGT\n>a\nACGT\n")
    with pytest.raises(InputError, match=f"^{gff}, record a: a second record of this name"):
        FastaFile(gff)


def test_a_symlink_loop_or_a_folder_is_named_as_such(tmp_path):
    """A symlink loop read as "FASTA file not found" (or an OSError traceback in a command)."""
    loop = tmp_path / "loop.fa"
    os.symlink(tmp_path / "other.fa", loop)
    os.symlink(loop, tmp_path / "other.fa")
    with pytest.raises(InputError, match=f"^{loop}: cannot read this FASTA file \\(Too many "
                                         "levels of symbolic links\\)"):
        FastaFile(loop)
    with pytest.raises(InputError, match=f"^{tmp_path}: is a folder, not a FASTA file"):
        FastaFile(tmp_path)
