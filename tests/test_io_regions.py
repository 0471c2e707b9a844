"""Region strings, intervals, reverse complement and contig-name matching."""

from __future__ import annotations

import pytest

from genomeconv.errors import InputError

from genomeconv.io.regions import (Interval, UnknownContigError, format_region, parse_region,
                                   resolve_contig, reverse_complement)


def test_parse_region_samtools_style_with_commas():
    iv = parse_region("chr1:1,000-2,000")
    assert iv == Interval("chr1", 999, 2000)
    assert iv.length == 1001  # 1-based closed: both ends included
    assert format_region(iv) == "chr1:1000-2000"
    assert parse_region(format_region(iv)) == iv


def test_parse_region_open_forms():
    assert parse_region("chrX") == Interval("chrX", 0, None)
    assert parse_region("2:500") == Interval("2", 499, None)
    assert parse_region("2:500-") == Interval("2", 499, None)
    assert parse_region("HLA-A*01:01:1-10") == Interval("HLA-A*01:01", 0, 10)
    assert format_region(Interval("2", 499, None)) == "2:500"
    assert format_region(Interval("2", 0, None)) == "2"


@pytest.mark.parametrize("bad", ["", "chr1:0-10", "chr1:20-10", ":", "chr1:",
                                 "NC_001416.1:,-,", "chr1:1-,", "chr1:-5", "chr1:,"])
def test_parse_region_rejects_bad(bad):
    """One InputError naming the region, never int()'s "invalid literal" (issue 30)."""
    with pytest.raises(InputError, match="invalid region") as info:
        parse_region(bad)
    assert repr(bad) in str(info.value) and "literal" not in str(info.value)


def test_interval_asserts_its_invariants():
    """Readers check coordinates with the file's line first: a bad Interval is a bug."""
    with pytest.raises(AssertionError):
        Interval("c", 10, 5)
    with pytest.raises(AssertionError):
        Interval("c", 0, 5, strand=".")
    with pytest.raises(AssertionError):
        _ = Interval("c", 3, None).length


def test_reverse_complement_against_pairing_rules(rng):
    pairs = dict(zip("ACGTNRYSWKMBDHV", "TGCANYRSWMKVHDB"))
    seq = "".join(rng.choice(list("ACGTNRYSWKMBDHVacgtn"), size=500))
    expected = "".join(pairs[c.upper()].lower() if c.islower() else pairs[c]
                       for c in reversed(seq))
    assert reverse_complement(seq) == expected
    assert reverse_complement(reverse_complement(seq)) == seq


def test_resolve_contig_aliases():
    assert resolve_contig("chr1", ["1", "2", "MT"]) == "1"
    assert resolve_contig("1", ["chr1", "chr2", "chrM"]) == "chr1"
    assert resolve_contig("chrM", ["1", "MT"]) == "MT"
    assert resolve_contig("MT", ["chr1", "chrM"]) == "chrM"
    assert resolve_contig("M", ["chr1", "chrMT"]) == "chrMT"
    assert resolve_contig("chr1", ["chr1", "1"]) == "chr1"  # exact wins


def test_unknown_contig_names_contig_and_file():
    with pytest.raises(UnknownContigError) as err:
        resolve_contig("chr9", ["chr1", "chr2"], source="genome.fa")
    assert isinstance(err.value, KeyError)
    assert "chr9" in str(err.value) and "genome.fa" in str(err.value)
