"""Genes from GTF/GFF3 and intervals from BED, as 0-based half-open `Interval`s with strand.

GTF and GFF3 are 1-based closed; BED is 0-based half-open (kept as is). A gene spans its `gene`
feature; annotations without gene lines (some GTFs list only transcripts and exons) get the span
of all features sharing a gene_id. Plain text, gzip and bgzip files are read alike; a GFF3 file's
##FASTA section is left to genomeconv.io.seqrecords. `read_features` keeps features whole (a
CDS in several lines is one multi-part Feature) for `embed --features`.
"""

from __future__ import annotations

import difflib
import gzip
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from genomeconv.errors import InputError
from genomeconv.io.regions import Interval, NotFoundError


class AnnotationError(InputError):
    """A malformed annotation line (the message names the file and the line)."""


class UnknownGeneError(NotFoundError):
    """Requested genes absent from an annotation file (names them, the file and close matches)."""


@dataclass(frozen=True)
class Gene:
    """A gene's span on the reference (0-based half-open, with strand) and its identifiers.

    aliases: other names it may be asked for by (protein_id of its CDS, GFF3 ID...)."""

    interval: Interval
    gene_id: str
    gene_name: str | None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Feature:
    """One annotated feature (a CDS, a gene, a tRNA...), possibly in several parts (join).

    parts: (start, end, strand) 0-based half-open, in biological order (5' to 3' of the feature),
    so the spliced sequence is the concatenation of each part, reverse-complemented where its
    strand is '-'. strand: '-' when every part is on the minus strand, else '+'.
    """

    chrom: str
    type: str
    parts: tuple[tuple[int, int, str], ...]
    strand: str
    feature_id: str | None = None
    gene: str | None = None
    locus_tag: str | None = None
    protein_id: str | None = None

    @property
    def start(self) -> int:
        """Lowest position of any part."""
        return min(p[0] for p in self.parts)

    @property
    def end(self) -> int:
        """End of the highest part (the span is [start, end), strand included)."""
        return max(p[1] for p in self.parts)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name it can be selected by: gene, locus_tag, protein_id, ID."""
        found = (self.gene, self.locus_tag, self.protein_id, self.feature_id)
        return tuple(dict.fromkeys(n for n in found if n))

    @property
    def label(self) -> str:
        """Its name in outputs: gene name, else locus_tag, protein_id, ID, else its span."""
        return self.names[0] if self.names else f"{self.chrom}:{self.start + 1}-{self.end}"


def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Non-comment lines with their numbers; a GFF3 file stops at its ##FASTA section."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rt") if gz else open(path)) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if line.startswith("##FASTA"):
                return
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


@dataclass(frozen=True)
class _Row:
    """One GTF/GFF3 line, 0-based half-open."""

    lineno: int
    chrom: str
    feature: str
    start: int
    end: int
    strand: str
    gff3: bool
    attrs: dict[str, str]


def _rows(path: str | Path) -> Iterator[_Row]:
    """The checked feature lines of a GTF or GFF3 file (format from the attribute syntax)."""
    for lineno, line in _lines(path):
        cols = line.split("\t")
        if len(cols) != 9:
            raise AnnotationError(f"{path}, line {lineno}: expected 9 tab-separated columns, "
                                  f"found {len(cols)}")
        chrom, _, feature, start, end, _, strand, _, attr_text = cols
        gff3 = "=" in attr_text.split(";")[0]
        try:
            lo, hi = int(start) - 1, int(end)
        except ValueError:
            raise AnnotationError(f"{path}, line {lineno}: start/end must be integers") from None
        if strand not in ("+", "-", ".") or lo < 0 or hi <= lo:
            raise AnnotationError(f"{path}, line {lineno}: invalid coordinates or strand")
        yield _Row(lineno, chrom, feature, lo, hi, strand, gff3, _attributes(attr_text, gff3))


def read_genes(path: str | Path) -> list[Gene]:
    """All genes of a GTF or GFF3 file (format from the attribute syntax), in file order."""
    def spans() -> Iterator[tuple]:
        for r in _rows(path):
            gene_id = r.attrs.get("gene_id") or (r.attrs.get("ID") if r.feature == "gene"
                                                 else None)
            if gene_id is None:
                continue
            name = r.attrs.get("gene_name") or (r.attrs.get("Name") if r.feature == "gene"
                                                else None)
            aliases = tuple(a for a in (r.attrs.get("protein_id"),) if a)
            yield (gene_id.removeprefix("gene:"), name, aliases, r.feature, r.chrom, r.start,
                   r.end, r.strand)

    return genes_from_spans(spans())


def genes_from_spans(spans: Iterable[tuple]) -> list[Gene]:
    """Genes from (gene_id, name, aliases, feature type, chrom, start, end, strand) tuples: a
    gene spans its `gene` feature if it has one, else all of its features; in first-seen order."""
    declared: dict[str, tuple[str, int, int, str]] = {}
    merged: dict[str, list] = {}
    names: dict[str, str] = {}
    aliases: dict[str, dict[str, None]] = {}
    for gene_id, name, also, feature, chrom, lo, hi, strand in spans:
        if name:
            names.setdefault(gene_id, name)
        aliases.setdefault(gene_id, {}).update(dict.fromkeys(also))
        if feature == "gene":
            declared[gene_id] = (chrom, lo, hi, strand)
        span = merged.setdefault(gene_id, [chrom, lo, hi, strand])
        span[1], span[2] = min(span[1], lo), max(span[2], hi)
    genes = []
    for gene_id, span in merged.items():
        chrom, lo, hi, strand = declared.get(gene_id, span)
        name = names.get(gene_id)
        genes.append(Gene(Interval(chrom, lo, hi, "-" if strand == "-" else "+",
                                   name or gene_id), gene_id, name,
                          tuple(a for a in aliases[gene_id] if a not in (gene_id, name))))
    return genes


def genes_from_features(features: Iterable[Feature]) -> list[Gene]:
    """Genes of a GenBank/EMBL-style feature table: features sharing a locus_tag (else a gene
    name) form one gene, named by its gene name; protein_ids become aliases."""
    def spans() -> Iterator[tuple]:
        for f in features:
            gene_id = f.locus_tag or f.gene
            if gene_id is None or f.type == "source":
                continue
            aliases = tuple(a for a in (f.protein_id, f.feature_id) if a)
            yield gene_id, f.gene, aliases, f.type, f.chrom, f.start, f.end, f.strand

    return genes_from_spans(spans())


def read_features(path: str | Path) -> list[Feature]:
    """Every feature of a GTF or GFF3 file, the lines of one feature (same type and GFF3 ID, or
    GTF transcript_id) joined into one multi-part Feature, in file order."""
    grouped: dict[tuple, list[_Row]] = {}
    for r in _rows(path):
        key_id = r.attrs.get("ID") if r.gff3 else (r.attrs.get("transcript_id")
                                                   or r.attrs.get("gene_id"))
        key = (r.feature, r.chrom, key_id) if key_id else (r.feature, r.chrom, r.lineno)
        grouped.setdefault(key, []).append(r)
    features = []
    for (_, _, key_id), rows in grouped.items():
        first = rows[0]
        minus = all(r.strand == "-" for r in rows)
        ordered = sorted(rows, key=lambda r: r.start, reverse=minus)
        a = first.attrs
        gene = a.get("gene_name") or a.get("gene") or (a.get("Name") if first.gff3 else None)
        features.append(Feature(
            first.chrom, first.feature,
            tuple((r.start, r.end, "-" if r.strand == "-" else "+") for r in ordered),
            "-" if minus else "+", feature_id=key_id if isinstance(key_id, str) else None,
            gene=gene, locus_tag=a.get("locus_tag") or (None if first.gff3 else a.get("gene_id")),
            protein_id=a.get("protein_id")))
    return features


def select_features(features: Iterable[Feature], types: Collection[str],
                    wanted: Collection[str] | None = None, *, source: str = "") -> list[Feature]:
    """Features of the given types (case-insensitive), optionally only those named in `wanted`
    (gene, locus_tag, protein_id or ID); errors name unknown types and names."""
    features = list(features)
    available = {f.type.lower(): f.type for f in features}
    where = f" in {source}" if source else ""
    unknown = [t for t in types if t.lower() not in available]
    if unknown:
        raise InputError(f"no feature of type {', '.join(map(repr, unknown))}{where} (types "
                         f"present: {', '.join(sorted(available.values())) or 'none'})")
    lowered = {t.lower() for t in types}
    chosen = [f for f in features if f.type.lower() in lowered]
    if wanted:
        named = {n for f in chosen for n in f.names}
        missing = [w for w in wanted if w not in named]
        if missing:
            hints = {m: difflib.get_close_matches(m, list(named), n=3) for m in missing}
            shown = "; ".join(f"{m!r}" + (f" (did you mean {', '.join(h)}?)" if h else "")
                              for m, h in hints.items())
            raise UnknownGeneError(f"no {'/'.join(types)} feature named {shown}{where}")
        chosen = [f for f in chosen if set(f.names) & set(wanted)]
    return chosen


def select_genes(genes: list[Gene], wanted: Collection[str], *, source: str = "") -> list[Gene]:
    """Genes whose gene_name, gene_id (with or without version) or alias is in `wanted`, in the
    order asked; UnknownGeneError lists any that match nothing."""
    index: dict[str, list[Gene]] = {}
    for gene in genes:
        keys = {gene.gene_id, gene.gene_id.split(".")[0], gene.gene_name, *gene.aliases}
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
