"""Variant input: VCF (plain, bgzip + tabix, BCF) and tables, one row per ALT, clear errors.

Fixtures are generated here: VCF text written directly (helpers.write_vcf), bgzipped and indexed
with pysam, and a BCF written with pysam.VariantFile.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pysam
import pytest

from genomeconv.errors import InputError
from genomeconv.io.variants import Variant, VariantFormatError, iter_variants
from helpers import VCF_HEADER_LINES, bgzip_and_index, write_vcf


def write_bcf(vcf: Path, bcf: Path) -> Path:
    """Convert a VCF to BCF through pysam.VariantFile."""
    with pysam.VariantFile(str(vcf)) as src, pysam.VariantFile(str(bcf), "wb",
                                                               header=src.header) as dst:
        for rec in src:
            dst.write(rec)
    return bcf


RECORDS = [
    ("chr1", 5, "rs1", "A", "C"),
    ("chr1", 17, ".", "ACG", "A,AT,<DEL>"),  # multi-allelic: deletion, SNV+ins, symbolic
    ("chr1", 40, "rs3", "g", "t"),  # lower case is upper-cased
    ("chr2", 3, "rs4", "T", "*"),
    ("chr2", 9, ".", "C", "."),
]
EXPECTED = [
    ("chr1", 5, "A", "C", "rs1"),
    ("chr1", 17, "ACG", "A", None),
    ("chr1", 17, "ACG", "AT", None),
    ("chr1", 17, "ACG", "<DEL>", None),
    ("chr1", 40, "G", "T", "rs3"),
    ("chr2", 3, "T", "*", "rs4"),
    ("chr2", 9, "C", ".", None),
]


def keys(variants: list[Variant]) -> list[tuple]:
    return [(v.chrom, v.pos, v.ref, v.alt, v.id) for v in variants]


@pytest.fixture
def vcf(tmp_path: Path) -> Path:
    return write_vcf(tmp_path / "calls.vcf", {"chr1": 100, "chr2": 50}, RECORDS)


def test_vcf_plain_bgzip_and_bcf_give_one_row_per_alt(vcf, tmp_path):
    plain = list(iter_variants(vcf))
    assert keys(plain) == EXPECTED
    assert [v.line for v in plain] == [VCF_HEADER_LINES + i for i in (1, 2, 2, 2, 3, 4, 5)]
    assert plain[1].location == f"{vcf}, line {VCF_HEADER_LINES + 2}"
    assert [v.kind for v in plain] == ["snv", "indel", "indel", "symbolic", "snv", "star",
                                       "missing"]
    gz = bgzip_and_index(vcf)
    assert Path(str(gz) + ".tbi").exists()
    assert keys(list(iter_variants(gz))) == EXPECTED
    assert [v.line for v in iter_variants(gz)] == [v.line for v in plain]
    bcf = write_bcf(vcf, tmp_path / "calls.bcf")
    from_bcf = list(iter_variants(bcf))
    assert keys(from_bcf) == EXPECTED
    assert from_bcf[-1].location == f"{bcf}, record 5"


def test_plain_gzip_vcf_read_through_a_cached_bgzip_copy(vcf, tmp_path, monkeypatch, capfd):
    """htslib cannot open a plain-gzip VCF; it is recompressed once, lines still count from the
    original, and a region restricts it like any other VCF."""
    import gzip

    monkeypatch.setenv("GENOMECONV_CACHE", str(tmp_path / "cache"))
    gz = tmp_path / "calls.vcf.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(vcf.read_bytes())
    found = list(iter_variants(gz))
    assert keys(found) == EXPECTED
    assert found[-1].location == f"{gz}, line {VCF_HEADER_LINES + 5}"
    assert "bgzip copy of" in capfd.readouterr().err
    assert keys(list(iter_variants(gz, region="chr1:10-40"))) == EXPECTED[1:5]
    assert capfd.readouterr().err == ""  # the copy is reused
    data = gz.read_bytes()
    cut = tmp_path / "cut.vcf.gz"
    cut.write_bytes(data[:len(data) - 20])
    with pytest.raises(InputError, match=f"^{cut}: truncated or corrupt gzip file"):
        list(iter_variants(cut))


def test_tables_parquet_tsv_csv(tmp_path):
    rows = [(c, p, r, a, i) for c, p, i, r, a in RECORDS]
    expected = [(c, p, r, a, None if i == "." else i) for c, p, r, a, i in EXPECTED]
    tsv = tmp_path / "v.tsv"
    csv_path = tmp_path / "v.csv"
    for path, delim in ((tsv, "\t"), (csv_path, ",")):
        with open(path, "w", newline="") as f:
            w = csv.writer(f, delimiter=delim)
            w.writerow(["#CHROM", "POS", "REF", "ALT", "ID"])
            w.writerows(rows)
        got = list(iter_variants(path))
        assert keys(got) == expected
        assert got[1].line == 3 and got[-1].line == 6  # header is line 1
    parquet = tmp_path / "v.parquet"
    pq.write_table(pa.table({"chrom": [r[0] for r in rows], "pos": [r[1] for r in rows],
                             "ref": [r[2] for r in rows], "alt": [r[3] for r in rows]}), parquet)
    got = list(iter_variants(parquet))
    assert keys(got) == [(c, p, r, a, None) for c, p, r, a, _ in expected]
    assert got[-1].location == f"{parquet}, row 5"


@pytest.mark.parametrize("bad, message", [
    (("chr1", "x", ".", "A", "C"), "malformed VCF record"),
    (("chr1", 7, ".", "AXG", "C"), "REF 'AXG'"),
    (("chr1", 7, ".", "A", "CQ"), "ALT 'CQ'"),
])
def test_malformed_vcf_record_names_file_and_line(tmp_path, bad, message):
    path = write_vcf(tmp_path / "bad.vcf", {"chr1": 100, "chr2": 50},
                     [RECORDS[0], RECORDS[2], bad, RECORDS[3]])
    with pytest.raises(VariantFormatError, match=message) as err:
        list(iter_variants(path))
    assert f"{path}, line {VCF_HEADER_LINES + 3}" in str(err.value)


def test_malformed_table_rows_name_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("chrom\tpos\tref\talt\nchr1\t5\tA\tC\nchr1\tfive\tA\tC\n")
    with pytest.raises(VariantFormatError, match=rf"{path}, line 3: pos 'five'"):
        list(iter_variants(path))
    path.write_text("chrom\tposition\tref\talt\nchr1\t5\tA\tC\n")
    with pytest.raises(VariantFormatError, match="missing column.*pos"):
        list(iter_variants(path))
    with pytest.raises(ValueError, match="unknown variant file type"):
        list(iter_variants(tmp_path / "v.json"))


def test_region_and_genes_restrict_with_contig_renaming(vcf, tmp_path):
    # the VCF says chr1; the region and the GTF say 1 (Ensembl naming)
    got = keys(list(iter_variants(vcf, region="1:10-40")))
    assert got == [e for e in EXPECTED if e[0] == "chr1" and 10 <= e[1] <= 40]
    gtf = tmp_path / "genes.gtf"
    gtf.write_text(
        '1\ttest\tgene\t1\t10\t.\t+\t.\tgene_id "G1"; gene_name "ONE";\n'
        '2\ttest\tgene\t2\t30\t.\t-\t.\tgene_id "G2"; gene_name "TWO";\n')
    got = keys(list(iter_variants(vcf, genes=["TWO"], gtf=gtf)))
    assert got == [e for e in EXPECTED if e[0] == "chr2"]
    got = keys(list(iter_variants(vcf, region="chr1:40", genes=["ONE"], gtf=gtf)))
    assert got == [EXPECTED[0], EXPECTED[4]]
    with pytest.raises(ValueError, match="--gtf"):
        list(iter_variants(vcf, genes=["ONE"]))
    with pytest.raises(KeyError, match="unknown gene.*'THREE'"):
        list(iter_variants(vcf, genes=["THREE"], gtf=gtf))
