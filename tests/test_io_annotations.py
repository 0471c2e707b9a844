"""Genes from generated GTF/GFF3 files and intervals from BED, with strands and 0-based ends."""

from __future__ import annotations

import gzip

import pysam
import pytest

from genomeconv.io.annotations import (AnnotationError, UnknownGeneError, read_bed, read_genes,
                                       select_genes)
from genomeconv.io.regions import Interval

GTF = (
    "#!genome-build test\n"
    'chr1\tsrc\tgene\t101\t500\t.\t+\t.\tgene_id "G1.3"; gene_name "ALPHA"; gene_type "x";\n'
    'chr1\tsrc\ttranscript\t101\t450\t.\t+\t.\tgene_id "G1.3"; transcript_id "T1";\n'
    'chr1\tsrc\texon\t101\t200\t.\t+\t.\tgene_id "G1.3"; transcript_id "T1";\n'
    'chr2\tsrc\texon\t1001\t1200\t.\t-\t.\tgene_id "G2"; gene_name "BETA"; transcript_id "T2";\n'
    'chr2\tsrc\texon\t1501\t1700\t.\t-\t.\tgene_id "G2"; gene_name "BETA"; transcript_id "T2";\n'
    'chr2\tsrc\tgene\t5\t9\t.\t-\t.\tgene_id "G3";\n'
)

GFF3 = (
    "##gff-version 3\n"
    "chr1\tsrc\tgene\t101\t500\t.\t+\t.\tID=gene:G1;Name=ALPHA;biotype=protein_coding\n"
    "chr1\tsrc\tmRNA\t101\t500\t.\t+\t.\tID=transcript:T1;Parent=gene:G1\n"
    "chr1\tsrc\tgene\t2001\t2600\t.\t-\t.\tID=G4;Name=GAMMA%3B1\n"
)


@pytest.mark.parametrize("packed", ["plain", "gzip", "bgzip"])
def test_gtf_genes_spans_strands_names(tmp_path, packed):
    path = tmp_path / "a.gtf"
    path.write_text(GTF)
    if packed == "gzip":
        path = tmp_path / "a.gtf.gz"
        with gzip.open(path, "wt") as fh:
            fh.write(GTF)
    elif packed == "bgzip":
        path = pysam.tabix_compress(str(tmp_path / "a.gtf"), str(tmp_path / "b.gtf.gz")) \
            or tmp_path / "b.gtf.gz"
    genes = {g.gene_id: g for g in read_genes(path)}
    assert list(genes) == ["G1.3", "G2", "G3"]
    assert genes["G1.3"].interval == Interval("chr1", 100, 500, "+", "ALPHA")
    assert genes["G1.3"].gene_name == "ALPHA"
    # no gene line: the span of the gene's features
    assert genes["G2"].interval == Interval("chr2", 1000, 1700, "-", "BETA")
    assert genes["G3"].gene_name is None and genes["G3"].interval.name == "G3"


def test_gff3_genes(tmp_path):
    path = tmp_path / "a.gff3"
    path.write_text(GFF3)
    genes = read_genes(path)
    assert [(g.gene_id, g.gene_name) for g in genes] == [("G1", "ALPHA"), ("G4", "GAMMA;1")]
    assert genes[1].interval == Interval("chr1", 2000, 2600, "-", "GAMMA;1")


def test_select_by_name_id_and_unversioned_id(tmp_path):
    path = tmp_path / "a.gtf"
    path.write_text(GTF)
    genes = read_genes(path)
    chosen = select_genes(genes, ["BETA", "G1", "G1.3"])
    assert [g.gene_id for g in chosen] == ["G2", "G1.3"]


def test_unknown_gene_error_names_gene_file_and_suggestion(tmp_path):
    path = tmp_path / "a.gtf"
    path.write_text(GTF)
    with pytest.raises(UnknownGeneError) as err:
        select_genes(read_genes(path), ["ALPHA", "BETTA"], source=str(path))
    msg = str(err.value)
    assert "'BETTA'" in msg and str(path) in msg and "BETA" in msg and "'ALPHA'" not in msg


def test_malformed_gtf_line(tmp_path):
    path = tmp_path / "bad.gtf"
    path.write_text(GTF + "chr1\tsrc\tgene\t10\n")
    with pytest.raises(AnnotationError, match=r"bad.gtf, line 8: expected 9"):
        read_genes(path)
    path.write_text('chr1\tsrc\tgene\tten\t20\t.\t+\t.\tgene_id "X";\n')
    with pytest.raises(AnnotationError, match="line 1: start/end"):
        read_genes(path)


def test_bed_zero_based_half_open_with_strand(tmp_path):
    path = tmp_path / "a.bed"
    path.write_text("track name=x\n# comment\nchr1\t0\t100\n"
                    "chr1\t50\t80\tfeat\t0\t-\nchr2\t5\t9\t.\t0\t.\n")
    assert read_bed(path) == [Interval("chr1", 0, 100), Interval("chr1", 50, 80, "-", "feat"),
                              Interval("chr2", 5, 9)]
    path.write_text("chr1\t0\t100\nchr1\t90\t80\n")
    with pytest.raises(AnnotationError, match="line 2"):
        read_bed(path)
