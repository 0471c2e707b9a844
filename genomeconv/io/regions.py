"""Coordinates and strands: the one place genomeconv converts between conventions.

Internally an `Interval` is 0-based half-open (like BED); region strings are samtools style
(1-based, closed, commas allowed: ``chr1:1,000-2,000`` is ``Interval("chr1", 999, 2000)``).
Contig names are matched across conventions (``chr1`` <-> ``1``, ``chrM`` <-> ``MT`` <-> ``M``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from genomeconv.errors import InputError

STRANDS = ("+", "-")

_COMPLEMENT = str.maketrans(
    "ACGTUNRYSWKMBDHVacgtunryswkmbdhv",
    "TGCAANYRSWMKVHDBtgcaanyrswmkvhdb",
)
# chrom[:start[-[end]]]; a position is digits with optional thousands commas (no bare commas)
_REGION = re.compile(r"^(?P<chrom>.+?)(?::(?P<start>\d[\d,]*)(?:-(?P<end>\d[\d,]*)?)?)?$")
# What follows the last ':' of a mistyped range (",-,", "1-,"); digits alone may be part of a
# contig name (HLA-A*01:01:01:01).
_BAD_RANGE = re.compile(r"^[\d,-]*[,-][\d,-]*$")
_MITO = {"M", "MT"}


class NotFoundError(InputError, KeyError):
    """A name looked up in an input file and not found; the message names both (a KeyError as
    well, for callers that treat an unknown name as a lookup miss)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class UnknownContigError(NotFoundError):
    """A contig name that matches none of the available ones (names the contig and the file)."""


@dataclass(frozen=True)
class Interval:
    """A 0-based half-open interval on one strand; `end=None` means "to the end of the contig"."""

    chrom: str
    start: int
    end: int | None
    strand: str = "+"
    name: str | None = None

    def __post_init__(self) -> None:
        # Readers check strands and coordinates with the file's line before building one.
        assert self.strand in STRANDS, f"strand must be '+' or '-', got {self.strand!r}"
        assert self.start >= 0 and (self.end is None or self.end >= self.start), \
            f"invalid interval {self.chrom}:[{self.start}, {self.end})"

    @property
    def length(self) -> int:
        """Number of bases (the interval must be bounded)."""
        assert self.end is not None, f"interval on {self.chrom} has no end"
        return self.end - self.start


Span = tuple[int, int]  # 0-based half-open [start, end) on one contig


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Sorted, disjoint spans covering the same bases (overlapping or touching ones joined);
    empty spans dropped."""
    merged: list[list[int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def subtract_spans(spans: Iterable[Span], minus: Iterable[Span]) -> list[Span]:
    """The bases of `spans` not in `minus`, as sorted disjoint spans."""
    out: list[Span] = []
    cut = merge_spans(minus)
    for start, end in merge_spans(spans):
        for a, b in cut:
            if b <= start or a >= end:
                continue
            if a > start:
                out.append((start, a))
            start = max(start, b)
            if start >= end:
                break
        if start < end:
            out.append((start, end))
    return out


def parse_region(region: str) -> Interval:
    """Parse a samtools-style region (``chr1``, ``chr1:1000``, ``chr1:1,000-2,000``).

    Positions are 1-based and closed; the result is 0-based half-open (`end=None` when open).
    InputError naming the region when it is not of that form.
    """
    text = region.strip()
    match = _REGION.match(text)
    chrom = match["chrom"] if match is not None else ""
    head, _, tail = chrom.rpartition(":")
    if not chrom or chrom.startswith(":") or not tail or (head and _BAD_RANGE.match(tail)):
        raise InputError(f"invalid region {region!r}: expected CONTIG, CONTIG:START or "
                         "CONTIG:START-END with 1-based positions (e.g. chr1:1,000-2,000)")
    start_s, end_s = match["start"], match["end"]
    if start_s is None:
        return Interval(chrom, 0, None)
    start = int(start_s.replace(",", ""))
    if start < 1:
        raise InputError(f"invalid region {region!r}: positions are 1-based")
    end = int(end_s.replace(",", "")) if end_s else None
    if end is not None and end < start:
        raise InputError(f"invalid region {region!r}: end {end} < start {start}")
    return Interval(chrom, start - 1, end)


def format_region(interval: Interval) -> str:
    """Samtools-style string for an interval (1-based closed), e.g. ``chr1:1000-2000``."""
    if interval.end is None:
        return interval.chrom if interval.start == 0 else f"{interval.chrom}:{interval.start + 1}"
    return f"{interval.chrom}:{interval.start + 1}-{interval.end}"


def reverse_complement(seq: str) -> str:
    """Reverse complement, keeping case; IUPAC codes map to their complements, N to N."""
    return seq.translate(_COMPLEMENT)[::-1]


def _core(name: str) -> str:
    core = name[3:] if name[:3].lower() == "chr" else name
    return "MT" if core.upper() in _MITO else core


def resolve_contig(name: str, available: Collection[str], *, source: str | None = None) -> str:
    """The name in `available` that `name` refers to (exact, else chr1<->1, chrM<->MT<->M).

    Raises UnknownContigError naming the contig and `source` (the file the names came from).
    """
    if name in available:
        return name
    matches = [a for a in available if _core(a) == _core(name)]
    if len(matches) == 1:
        return matches[0]
    where = f" in {source}" if source else ""
    if matches:
        raise UnknownContigError(f"contig {name!r} is ambiguous{where}: matches {sorted(matches)}")
    shown = ", ".join(sorted(available)[:10]) + (", ..." if len(available) > 10 else "")
    raise UnknownContigError(f"unknown contig {name!r}{where} (available: {shown})")
