"""The SNVs of in-silico saturation mutagenesis: every position of some regions of a FASTA, each
with its three alternative bases, as `io.variants.Variant`s (`score-variants --saturate`).

Choices (the variants are then scored by the unchanged score-variants path, so they come out
exactly as the same SNVs listed in a VCF would):
- Regions are samtools style (io/regions.py: ``chr1:1,000-2,000`` 1-based closed; ``chr1`` the
  whole contig, ``chr1:1000`` from 1000 to its end); contig names resolve as elsewhere (chr1 <->
  1) and rows carry the FASTA's name, so `chrom` and `contig` are equal. Several regions may be
  given; overlapping ones are merged, so each position is mutated once. An unknown contig, a
  malformed region or one past the contig end is an InputError naming the region and the FASTA.
- The reference base is the FASTA's base upper-cased (soft-masked lowercase bases count as
  bases). Positions whose base is N or another IUPAC code have no single reference base and are
  skipped; `note` says how many (never silently).
- Per position the ALTs are A, C, G, T without the reference base, in that order; `id` is null,
  `source` the region string and `line` 0 (generated, no input line). Rows are keyed
  (chrom, pos, ref, alt) like every variant row; the work units and their order depend only on
  those keys (runtime.plan_units sorts item ids), so a VCF holding the same SNVs gives the same
  units, batches and bit-identical scores.
- A `Saturation` is counted before it is expanded (`len`, `positions`): a run can be refused
  for its size without building millions of Variant objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from genomeconv.errors import InputError
from genomeconv.io.fasta import FastaFile
from genomeconv.io.regions import Interval, format_region, parse_region
from genomeconv.io.variants import Variant

BASES = "ACGT"


@dataclass(frozen=True)
class SaturatedInterval:
    """One merged stretch to mutate: [start, end) 0-based on the FASTA's contig, its bases."""

    contig: str
    start: int
    end: int
    bases: str  # upper-case reference bases of [start, end)
    label: str  # the region(s) as given, for Variant.source


class Saturation:
    """Every SNV of some regions of a FASTA, counted up front and expanded lazily (iteration
    yields Variants position by position, ALTs in A, C, G, T order)."""

    def __init__(self, intervals: Sequence[SaturatedInterval]) -> None:
        self.intervals = list(intervals)
        self.positions = sum(sum(iv.bases.count(b) for b in BASES) for iv in self.intervals)
        self.skipped = sum(iv.end - iv.start for iv in self.intervals) - self.positions

    @classmethod
    def from_regions(cls, regions: Sequence[str], fasta: str | Path) -> Saturation:
        """Resolve and merge samtools-style `regions` against `fasta`; InputError (one line, naming
        the region and the FASTA) for a malformed region, an unknown contig or one past its end."""
        if not regions:
            raise InputError("--saturate needs a region (samtools style, e.g. chr1:1,000-2,000)")
        spans: dict[str, list[tuple[int, int, str]]] = {}
        with FastaFile(fasta) as fa:
            for text in regions:
                try:
                    region = parse_region(text)
                except InputError as exc:
                    raise InputError(f"--saturate: {exc}") from None
                try:
                    contig = fa.resolve(region.chrom)
                except KeyError as exc:  # UnknownContigError names the contig and the FASTA
                    raise InputError(f"--saturate {text}: {exc}") from None
                size = fa.length(contig)
                end = size if region.end is None else region.end
                if end > size or region.start >= size:
                    raise InputError(f"--saturate {text}: runs past the end of {contig} "
                                     f"({size:,} bp)", path=fasta)
                spans.setdefault(contig, []).append((region.start, end, text))
            intervals = [SaturatedInterval(contig, s, e, fa.fetch(contig, s, e), label)
                         for contig, parts in spans.items()
                         for s, e, label in _merge(parts)]
        return cls(intervals)

    def __len__(self) -> int:
        """Number of SNVs (three per scorable position)."""
        return 3 * self.positions

    def __iter__(self) -> Iterator[Variant]:
        for iv in self.intervals:
            for offset, ref in enumerate(iv.bases):
                if ref in BASES:
                    for alt in BASES:
                        if alt != ref:
                            yield Variant(iv.contig, iv.start + offset + 1, ref, alt, None,
                                          iv.label, 0)

    def describe(self) -> str:
        """The merged regions, samtools style, for messages."""
        return ", ".join(format_region(Interval(iv.contig, iv.start, iv.end))
                         for iv in self.intervals)

    @property
    def note(self) -> str | None:
        """One line naming the positions skipped for an ambiguous reference base, or None."""
        if not self.skipped:
            return None
        first = next(f"{iv.contig}:{iv.start + k + 1}" for iv in self.intervals
                     for k, b in enumerate(iv.bases) if b not in BASES)
        return (f"--saturate: {self.skipped:,} of {self.skipped + self.positions:,} positions "
                f"skipped, their reference base being N or another IUPAC code (the first at "
                f"{first})")


def _merge(parts: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Union of [start, end) spans on one contig, sorted; a merged span's label joins its
    regions' labels."""
    merged: list[tuple[int, int, str]] = []
    for start, end, label in sorted(parts):
        if merged and start <= merged[-1][1]:
            s, e, text = merged[-1]
            merged[-1] = (s, max(e, end), f"{text},{label}")
        else:
            merged.append((start, end, label))
    return merged
