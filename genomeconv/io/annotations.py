"""Genes from GTF/GFF3 and intervals from BED, as 0-based half-open `Interval`s with strand.

GTF and GFF3 are 1-based closed; BED is 0-based half-open (kept as is). A gene spans its `gene`
feature; annotations without gene lines (some GTFs list only transcripts and exons) get the span
of all features sharing a gene_id. Plain text, gzip and bgzip files are read alike.
"""

from __future__ import annotations

import difflib
import gzip
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from genomeconv.io.regions import Interval, NotFoundError


class AnnotationError(ValueError):
    """A malformed annotation line (the message names the file and the line)."""


class UnknownGeneError(NotFoundError):
    """Requested genes absent from an annotation file (names them, the file and close matches)."""


@dataclass(frozen=True)
class Gene:
    """A gene's span on the reference (0-based half-open, with strand) and its identifiers."""

    interval: Interval
    gene_id: str
    gene_name: str | None


def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rt") if gz else open(path)) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if line and not line.startswith(("#", "track", "browser")):
                yield lineno, line


def _attributes(text: str, gff3: bool) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for part in text.strip().strip(";").split(";"):
        part = part.strip()
        if not part:
            continue
        if gff3:
            key, _, value = part.partition("=")
            attrs[key] = unquote(value)
        else:
            key, _, value = part.partition(" ")
            attrs[key] = value.strip().strip('"')
    return attrs


def read_genes(path: str | Path) -> list[Gene]:
    """All genes of a GTF or GFF3 file (format from the attribute syntax), in file order."""
    declared: dict[str, tuple[str, int, int, str]] = {}
    merged: dict[str, list] = {}
    names: dict[str, str] = {}
    for lineno, line in _lines(path):
        cols = line.split("\t")
        if len(cols) != 9:
            raise AnnotationError(f"{path}, line {lineno}: expected 9 tab-separated columns, "
                                  f"found {len(cols)}")
        chrom, _, feature, start, end, _, strand, _, attr_text = cols
        gff3 = "=" in attr_text.split(";")[0]
        attrs = _attributes(attr_text, gff3)
        gene_id = attrs.get("gene_id") or (attrs.get("ID") if feature == "gene" else None)
        if gene_id is None:
            continue
        gene_id = gene_id.removeprefix("gene:")
        try:
            lo, hi = int(start) - 1, int(end)
        except ValueError:
            raise AnnotationError(f"{path}, line {lineno}: start/end must be integers") from None
        if strand not in ("+", "-", ".") or lo < 0 or hi <= lo:
            raise AnnotationError(f"{path}, line {lineno}: invalid coordinates or strand")
        name = attrs.get("gene_name") or (attrs.get("Name") if feature == "gene" else None)
        if name:
            names.setdefault(gene_id, name)
        if feature == "gene":
            declared[gene_id] = (chrom, lo, hi, strand)
        span = merged.setdefault(gene_id, [chrom, lo, hi, strand])
        span[1], span[2] = min(span[1], lo), max(span[2], hi)
    genes = []
    for gene_id, span in merged.items():
        chrom, lo, hi, strand = declared.get(gene_id, span)
        name = names.get(gene_id)
        genes.append(Gene(Interval(chrom, lo, hi, "-" if strand == "-" else "+",
                                   name or gene_id), gene_id, name))
    return genes


def select_genes(genes: list[Gene], wanted: Collection[str], *, source: str = "") -> list[Gene]:
    """Genes whose gene_name or gene_id (with or without version) is in `wanted`, in the
    order asked; UnknownGeneError lists any that match nothing."""
    index: dict[str, list[Gene]] = {}
    for gene in genes:
        keys = {gene.gene_id, gene.gene_id.split(".")[0], gene.gene_name}
        for key in keys - {None}:
            index.setdefault(key, []).append(gene)
    missing = [w for w in wanted if w not in index]
    if missing:
        hints = {m: difflib.get_close_matches(m, list(index), n=3) for m in missing}
        shown = "; ".join(f"{m!r}" + (f" (did you mean {', '.join(h)}?)" if h else "")
                          for m, h in hints.items())
        where = f" in {source}" if source else ""
        raise UnknownGeneError(f"unknown gene(s){where}: {shown}")
    chosen: dict[str, Gene] = {}
    for w in wanted:
        for gene in index[w]:
            chosen.setdefault(gene.gene_id, gene)
    return list(chosen.values())


def read_bed(path: str | Path) -> list[Interval]:
    """BED intervals (0-based half-open); column 4 is the name, column 6 the strand ('.' = +)."""
    out = []
    for lineno, line in _lines(path):
        cols = line.split("\t") if "\t" in line else line.split()
        if len(cols) < 3:
            raise AnnotationError(f"{path}, line {lineno}: BED needs chrom, start and end")
        try:
            start, end = int(cols[1]), int(cols[2])
        except ValueError:
            raise AnnotationError(f"{path}, line {lineno}: start/end must be integers") from None
        strand = cols[5] if len(cols) > 5 else "."
        if strand not in ("+", "-", ".") or start < 0 or end <= start:
            raise AnnotationError(f"{path}, line {lineno}: invalid interval or strand")
        name = cols[3] if len(cols) > 3 and cols[3] not in ("", ".") else None
        out.append(Interval(cols[0], start, end, "-" if strand == "-" else "+", name))
    return out
