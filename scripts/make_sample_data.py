"""Write the bundled sample data: genomeconv/data/sample/lambda.fa.gz (+ .fai, .gzi) and
lambda.gtf, from the phage lambda genome in ../shared/data (NC_001416.1, 48,502 bp).

The FASTA is the genome with its header shortened to the accession (`>NC_001416.1`), wrapped
at 70 columns and bgzip-compressed (pysam.tabix_compress), then faidx-indexed.
The GTF holds the longest open reading frames of the genome, found here (not copied from an
annotation): on both strands and all three frames, an ORF runs from an ATG to the first in-frame
stop (TAA, TAG, TGA), stop included; ORFs are ranked by length and taken greedily when they do
not overlap an already chosen one, until N_GENES are chosen (at least MIN_ORF_BP each). Each is
written as a `gene` line (1-based closed, source `orf_scan`) with gene_id lambda_orfNN and
gene_name ORFNN, numbered by genome position.

Usage: python scripts/make_sample_data.py [--source ../shared/data/lambda_virus.fa]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pysam

from genomeconv.io.regions import reverse_complement

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "genomeconv" / "data" / "sample"
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "lambda_virus.fa"
ACCESSION = "NC_001416.1"
N_GENES = 8
MIN_ORF_BP = 900
STOP = re.compile(r"(?=(TAA|TAG|TGA))")


def read_single_fasta(path: Path) -> str:
    """The sequence of a one-record FASTA, upper case."""
    lines = path.read_text().split("\n")
    if not lines[0].startswith(">") or any(line.startswith(">") for line in lines[1:]):
        raise ValueError(f"{path}: expected exactly one record")
    return "".join(lines[1:]).strip().upper()


def orfs_on(seq: str) -> list[tuple[int, int]]:
    """ORFs (ATG .. stop) on the forward strand of `seq`, as 0-based half-open (start, end)."""
    found = []
    for frame in range(3):
        start = None
        for i in range(frame, len(seq) - 2, 3):
            codon = seq[i:i + 3]
            if start is None and codon == "ATG":
                start = i
            elif start is not None and codon in ("TAA", "TAG", "TGA"):
                found.append((start, i + 3))
                start = None
    return found


def longest_orfs(seq: str) -> list[tuple[int, int, str]]:
    """The N_GENES longest non-overlapping ORFs on both strands, by position."""
    n = len(seq)
    candidates = [(s, e, "+") for s, e in orfs_on(seq)]
    candidates += [(n - e, n - s, "-") for s, e in orfs_on(reverse_complement(seq))]
    candidates = [c for c in candidates if c[1] - c[0] >= MIN_ORF_BP]
    chosen: list[tuple[int, int, str]] = []
    for s, e, strand in sorted(candidates, key=lambda c: (c[0] - c[1], c[0])):
        if all(e <= cs or s >= ce for cs, ce, _ in chosen):
            chosen.append((s, e, strand))
        if len(chosen) == N_GENES:
            break
    return sorted(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    args = parser.parse_args()
    seq = read_single_fasta(args.source)
    SAMPLE.mkdir(parents=True, exist_ok=True)
    plain = SAMPLE / "lambda.fa"
    plain.write_text(f">{ACCESSION}\n" + "".join(seq[i:i + 70] + "\n"
                                               for i in range(0, len(seq), 70)))
    bgz = SAMPLE / "lambda.fa.gz"
    for stale in (bgz, Path(f"{bgz}.fai"), Path(f"{bgz}.gzi")):
        stale.unlink(missing_ok=True)
    pysam.tabix_compress(str(plain), str(bgz), force=True)
    plain.unlink()
    pysam.faidx(str(bgz))
    with open(SAMPLE / "lambda.gtf", "w") as gtf:
        for k, (s, e, strand) in enumerate(longest_orfs(seq), 1):
            gtf.write(f'{ACCESSION}\torf_scan\tgene\t{s + 1}\t{e}\t.\t{strand}\t.\t'
                      f'gene_id "lambda_orf{k:02d}"; gene_name "ORF{k:02d}"; '
                      f'gene_biotype "orf";\n')
    print(f"wrote {bgz} ({len(seq):,} bp) and {SAMPLE / 'lambda.gtf'}")


if __name__ == "__main__":
    main()
