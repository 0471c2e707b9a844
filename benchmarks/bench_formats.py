"""What reading a downloaded genome costs: plain gzip and GenBank through `FastaFile`.

Input: the Klebsiella pneumoniae MGH 78578 assembly (../shared/data, 5.69 Mbp in 6 records, plain
gzip as NCBI serves it) and a GenBank file of the same records written once by Biopython (one
`gene` + `CDS` pair per 1,000 bp, so the feature table is not empty). Contenders, alternated
repeat by repeat (harness.interleaved) so background load hits all alike:
- manual_bgzip: the old advice done in-process, `gunzip -c | bgzip -c` (htslib BGZF writer) and
  `samtools faidx` (pysam), no checks: the baseline;
- gzip_first: `FastaFile(x.fna.gz)` into an empty cache: recompression, the line-by-line FASTA
  check, the index built to temporary names, read back and renamed;
- gzip_reuse: the same open when the cached copy exists (what every later run pays);
- genbank_first / genbank_reuse: `FastaFile(x.gbk)`: Biopython parse, FASTA + feature table,
  index; then the reuse.

Usage: python benchmarks/bench_formats.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pysam
import pysam.libcbgzf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import interleaved, print_table, write_result  # noqa: E402
from genomeconv.io.fasta import FastaFile  # noqa: E402

DATA = next((p / "shared" / "data" for p in Path(__file__).resolve().parents  # main or worktree
             if (p / "shared" / "data").is_dir()), Path("shared/data"))
SOURCE = DATA / "klebsiella_pneumoniae_MGH78578.fna.gz"
FEATURE_EVERY = 1_000


def write_genbank(src: Path, dest: Path) -> None:
    """The assembly as GenBank, with a gene and a CDS every FEATURE_EVERY bases."""
    from Bio import SeqIO
    from Bio.SeqFeature import SeqFeature, SimpleLocation

    records = []
    with gzip.open(src, "rt") as fh:
        for rec in SeqIO.parse(fh, "fasta"):
            rec.annotations["molecule_type"] = "DNA"
            for i, start in enumerate(range(0, len(rec) - 900, FEATURE_EVERY)):
                tag = {"locus_tag": [f"{rec.id}_{i:05d}"]}
                loc = SimpleLocation(start, start + 900, 1 if i % 2 else -1)
                rec.features += [SeqFeature(loc, type="gene", qualifiers=tag),
                                 SeqFeature(loc, type="CDS", qualifiers=tag)]
            records.append(rec)
    SeqIO.write(records, dest, "genbank")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_formats_"))
    try:
        fna = work / SOURCE.name
        shutil.copy(SOURCE, fna)
        gbk = work / "genome.gbk"
        write_genbank(SOURCE, gbk)
        cache = work / "cache"
        os.environ["GENOMECONV_CACHE"] = str(cache)

        def manual() -> None:
            dest = work / "manual.fa.gz"
            with gzip.open(fna, "rb") as fin, pysam.libcbgzf.BGZFile(str(dest), "wb") as fout:
                while chunk := fin.read(1 << 22):
                    fout.write(chunk)
            pysam.faidx(str(dest))

        def first(path: Path):
            def run() -> None:
                shutil.rmtree(cache, ignore_errors=True)
                FastaFile(path).close()
            return run

        def reuse(path: Path):
            def run() -> None:
                FastaFile(path).close()
            return run

        contenders = {"manual_bgzip": manual, "gzip_first": first(fna), "gzip_reuse": reuse(fna),
                      "genbank_first": first(gbk), "genbank_reuse": reuse(gbk)}
        results = interleaved(contenders, repeats=args.repeats)
        base = results["manual_bgzip"]["median_s"]
        rows = [{"contender": name, "median_s": r["median_s"], "min_s": r["min_s"],
                 "vs_manual": r["median_s"] / base,
                 "peak_extra_MiB": r["peak_extra_bytes"] / 2**20, "repeats": r["repeats"]}
                for name, r in results.items()]
        print_table(rows, ["contender", "median_s", "min_s", "vs_manual", "peak_extra_MiB",
                           "repeats"])
        write_result("bench_formats", rows, input=str(SOURCE), input_bytes=SOURCE.stat().st_size,
                     genbank_bytes=gbk.stat().st_size, bp=5_694_894)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
