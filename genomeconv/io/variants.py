"""Variants from VCF/BCF (through pysam) or tables (Parquet/TSV/CSV), one row per ALT allele.

Conventions: `Variant.pos` is 1-based (VCF POS); REF/ALT are upper-cased. Multi-allelic records
are split into one `Variant` per ALT. Symbolic or missing ALTs (`<DEL>`, breakends, `*`, `.`) are
kept as rows (the scoring pipeline gives them a status) so that the number of rows always equals
the number of ALT alleles in the input. A malformed record raises `VariantFormatError` naming the
file and line (for BCF: the record number; for Parquet: the row number); nothing is dropped
silently.

Restriction by region or genes keeps a variant when its POS lies inside one of the intervals
(chr1/1 naming differences are resolved with `regions.resolve_contig`).
"""

from __future__ import annotations

import csv
import gzip
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genomeconv.errors import InputError
from genomeconv.io import cache
from genomeconv.io.annotations import select_genes
from genomeconv.io.regions import Interval, parse_region, resolve_contig
from genomeconv.io.seqrecords import genes_of

_BASES = re.compile(r"^[ACGTN]+$")
_VCF_SUFFIXES = (".vcf", ".vcf.gz", ".vcf.bgz", ".bcf")
_TABLE_COLUMNS = ("chrom", "pos", "ref", "alt")


class VariantFormatError(InputError):
    """A malformed variant record; the message names the file and the line or record."""


@dataclass(frozen=True)
class Variant:
    """One ALT allele of one input record."""

    chrom: str
    pos: int  # 1-based, as in VCF
    ref: str
    alt: str  # bases, or a symbolic/missing allele: "<DEL>", "*", "."
    id: str | None
    source: str  # the input file
    line: int  # line in a text file; record number in BCF; row number in Parquet

    @property
    def location(self) -> str:
        """Where the record came from, for messages: "calls.vcf.gz, line 17"."""
        return _location(self.source, self.line)

    @property
    def kind(self) -> str:
        """"snv", "mnv", "indel", "symbolic" (<...> or breakend), "star" (*) or "missing" (.)."""
        return allele_kind(self.ref, self.alt)


def allele_kind(ref: str, alt: str) -> str:
    """Classify an ALT allele against its REF (see `Variant.kind`)."""
    if alt == ".":
        return "missing"
    if alt == "*":
        return "star"
    if not _BASES.match(alt):
        return "symbolic"
    if len(ref) == len(alt):
        return "snv" if len(ref) == 1 else "mnv"
    return "indel"


def _location(source: str, line: int) -> str:
    unit = "record" if source.endswith(".bcf") else "row" if _is_parquet(source) else "line"
    return f"{source}, {unit} {line}"


def _is_parquet(path: str) -> bool:
    return path.endswith((".parquet", ".pq"))


def iter_variants(path: str | Path, *,
                  region: str | Interval | Sequence[str | Interval] | None = None,
                  genes: Iterable[str] | None = None, gtf: str | Path | None = None
                  ) -> Iterator[Variant]:
    """Yield one `Variant` per ALT allele of a VCF/BCF or a table, in file order.

    path: .vcf, .vcf.gz/.vcf.bgz (bgzip or plain gzip, index optional), .bcf, or a table
    (.parquet/.pq, .tsv/.txt[.gz], .csv[.gz]) with columns chrom, pos, ref, alt and optionally id
    (a leading '#' and upper case in column names are accepted; an alt cell may hold several
    comma-separated alleles). region (samtools style; or several) and genes (names or ids, looked
    up in gtf: a GTF/GFF3 or a GenBank/EMBL/GFF3+FASTA file) restrict the output to variants whose
    POS lies inside them; both may be given (union).
    """
    path = str(path)
    keep = _restriction(region, genes, gtf)
    if path.endswith(_VCF_SUFFIXES):
        records = _iter_vcf(path)
    elif _is_parquet(path):
        records = _iter_parquet(path)
    elif path.endswith((".tsv", ".tsv.gz", ".txt", ".txt.gz", ".csv", ".csv.gz")):
        records = _iter_delimited(path)
    else:
        raise InputError(f"{path}: unknown variant file type (expected .vcf, .vcf.gz, .bcf, "
                         ".parquet, .tsv or .csv)")
    for variant in records:
        if keep is None or keep(variant):
            yield variant


def _restriction(region: str | Interval | Sequence[str | Interval] | None,
                 genes: Iterable[str] | None, gtf: str | Path | None):
    """A predicate on variants for --region/--genes, or None when nothing restricts."""
    intervals: list[Interval] = []
    for r in [region] if isinstance(region, (str, Interval)) else region or ():
        intervals.append(parse_region(r) if isinstance(r, str) else r)
    if genes is not None:
        names = list(genes)
        if gtf is None:
            raise InputError("--genes needs --gtf, or a GenBank/EMBL/GFF3 reference (the "
                             "annotation the gene names come from)")
        intervals.extend(g.interval for g in select_genes(genes_of(gtf), names,
                                                          source=str(gtf)))
    if not intervals and genes is None:
        return None
    by_chrom: dict[str, list[tuple[int, float]]] = {}
    for iv in intervals:
        by_chrom.setdefault(iv.chrom, []).append((iv.start, math.inf if iv.end is None
                                                  else iv.end))
    spans: dict[str, list[tuple[int, float]]] = {}  # variant chrom -> spans under any naming

    def keep(v: Variant) -> bool:
        if v.chrom not in spans:
            spans[v.chrom] = [span for name, chrom_spans in by_chrom.items()
                              if _same_contig(name, v.chrom) for span in chrom_spans]
        return any(s <= v.pos - 1 < e for s, e in spans[v.chrom])

    return keep


def _same_contig(name: str, chrom: str) -> bool:
    """Whether two contig names denote the same sequence (chr1 <-> 1, MT <-> chrM)."""
    try:
        resolve_contig(name, [chrom])
    except KeyError:
        return False
    return True


def _split(chrom: str, pos: int, ref: str, alts: Iterable[str], vid: str | None, source: str,
           line: int) -> Iterator[Variant]:
    """Validate one record and yield a Variant per ALT allele."""
    where = _location(source, line)
    if not chrom:
        raise VariantFormatError(f"{where}: empty CHROM")
    if pos < 1:
        raise VariantFormatError(f"{where}: POS {pos} is not a 1-based position")
    ref = ref.upper()
    if not _BASES.match(ref):
        raise VariantFormatError(f"{where}: REF {ref!r} is not a string of A, C, G, T, N")
    for alt in alts:
        alt = alt.strip()
        if not alt:
            raise VariantFormatError(f"{where}: empty ALT allele")
        if alt[0] != "<" and "[" not in alt and "]" not in alt and alt not in ("*", "."):
            alt = alt.upper()
            if not _BASES.match(alt):
                raise VariantFormatError(f"{where}: ALT {alt!r} is not a base string, a "
                                         "symbolic allele, '*' or '.'")
        yield Variant(chrom, pos, ref, alt, vid or None, source, line)


def _vcf_header_lines(path: str) -> int:
    """Number of header lines of a text VCF (plain or bgzip), so records get their line number."""
    with open(path, "rb") as raw:
        magic = raw.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    n = 0
    with opener(path, "rt", errors="replace") as f:
        for line in f:
            if not line.startswith("#"):
                break
            n += 1
    return n


def _bgzip_vcf(path: str) -> str:
    """The file pysam reads for a VCF: itself, or for plain gzip (which htslib cannot open as
    VCF) its bgzip copy with a tabix index when sorted, made once in the cache
    (genomeconv.io.cache)."""
    import pysam

    if cache.compression(path) != "gzip":
        return path

    def build(folder: Path) -> None:
        cache.gzip_to_bgzip(path, folder / "variants.vcf.gz")
        try:
            pysam.tabix_index(str(folder / "variants.vcf.gz"), preset="vcf", force=True)
        except (OSError, pysam.utils.SamtoolsError):  # unsorted: read sequentially, unindexed
            pass

    return str(cache.derived(path, "bgzip", build, describe="bgzip copy") / "variants.vcf.gz")


def _iter_vcf(path: str) -> Iterator[Variant]:
    for rec, line in _vcf_records(path):
        alts = rec.alts if rec.alts is not None else (".",)
        yield from _split(rec.chrom, rec.pos, rec.ref or "", alts, rec.id, path, line)


def _vcf_records(path: str) -> Iterator[tuple[Any, int]]:
    """pysam's records of a VCF/BCF with their line (record) numbers; a malformed record raises
    VariantFormatError naming its line."""
    import pysam

    is_bcf = path.endswith(".bcf")
    first = 0 if is_bcf else _vcf_header_lines(path)
    readable = path if is_bcf else _bgzip_vcf(path)
    try:
        vf = pysam.VariantFile(readable)
    except (OSError, ValueError) as exc:
        raise VariantFormatError(f"{path}: cannot open as VCF/BCF ({exc})") from exc
    with vf:
        records = iter(vf)
        n = 0
        while True:
            n += 1
            try:
                rec = next(records)
            except StopIteration:
                return
            except (OSError, ValueError) as exc:
                raise VariantFormatError(
                    f"{_location(path, first + n)}: malformed VCF record ({exc})") from exc
            yield rec, first + n


def info_values(path: str | Path, field: str) -> dict[tuple[str, int, str, str], str | None]:
    """One INFO value per ALT allele of a VCF/BCF, keyed like its `Variant`s (chrom, pos, ref,
    alt); None where the record lacks the field.

    Number=A fields give the ALT's own value, Number=R the ALT's (not the REF's), other fields
    all values joined by ","; a Flag gives "yes" or None. `FIELD:SUB` takes the sub-field SUB of
    a pipe-delimited annotation (VEP's CSQ, snpEff's ANN: sub-field names from the header's
    "Format: ..." description) from the entries whose allele is the ALT (all entries when none
    names it), distinct values joined by ",".
    """
    import pysam

    path = str(path)
    name, _, sub = field.partition(":")

    try:
        with pysam.VariantFile(path if path.endswith(".bcf") else _bgzip_vcf(path)) as vf:
            header = {k: (v.number, v.type, v.description or "")
                      for k, v in vf.header.info.items()}
    except (OSError, ValueError) as exc:
        raise VariantFormatError(f"{path}: cannot open as VCF/BCF ({exc})") from exc
    if name not in header:
        raise InputError(f"no INFO field {name!r} in the header (fields: "
                         f"{', '.join(header) or 'none'})", path=path)
    number, kind, description = header[name]
    subfield = _subfield_index(path, name, sub, description) if sub else None
    values: dict[tuple[str, int, str, str], str | None] = {}
    for rec, line in _vcf_records(path):
        alts = rec.alts if rec.alts is not None else (".",)
        raw = rec.info.get(name) if name in rec.info else None
        for i, variant in enumerate(_split(rec.chrom, rec.pos, rec.ref or "", alts, rec.id,
                                           path, line)):
            key = (variant.chrom, variant.pos, variant.ref, variant.alt)
            values[key] = _info_value(raw, number, kind, i, variant.alt, subfield)
    return values


def _subfield_index(path: str, name: str, sub: str, description: str) -> int:
    """Index of sub-field `sub` in an annotation's "Format: A|B|C" header description."""
    fmt = description.split("Format:", 1)[1] if "Format:" in description else ""
    names = [n.strip().strip("'\"") for n in fmt.split("|")]
    if sub not in names:
        raise InputError(f"INFO {name} has no sub-field {sub!r} (its header lists: "
                         f"{', '.join(n for n in names if n) or 'no Format'})", path=path)
    return names.index(sub)


def _info_value(raw: Any, number: Any, kind: str, index: int, alt: str,
                subfield: int | None) -> str | None:
    """The value of one ALT (index `index`) from pysam's INFO value (see `info_values`)."""
    if raw is None:
        return None
    if kind == "Flag":
        return "yes" if raw else None
    if not isinstance(raw, tuple):
        raw = (raw,)
    if number in ("A", "R"):
        raw = raw[index + (number == "R"):][:1]
    if subfield is not None:
        entries = [str(v).split("|") for v in raw if v is not None]
        own = [e for e in entries if e[0] == alt] or entries
        raw = tuple(dict.fromkeys(e[subfield] for e in own if len(e) > subfield and e[subfield]))
    shown = [str(v) for v in raw if v is not None and v != "."]
    return ",".join(shown) if shown else None


def _column_map(names: list[str], path: str) -> dict[str, int]:
    """Map required/optional column names (case-insensitive, leading '#' allowed) to indices."""
    lowered = [n.strip().lstrip("#").lower() for n in names]
    missing = [c for c in _TABLE_COLUMNS if c not in lowered]
    if missing:
        raise VariantFormatError(f"{path}: missing column(s) {', '.join(missing)} "
                                 f"(found {', '.join(names)}; need chrom, pos, ref, alt[, id])")
    return {c: lowered.index(c) for c in (*_TABLE_COLUMNS, "id") if c in lowered}


def _table_row(cells: list, cols: dict[str, int], path: str, line: int) -> Iterator[Variant]:
    where = _location(path, line)
    try:
        chrom, pos, ref, alt = (cells[cols[c]] for c in _TABLE_COLUMNS)
        vid = cells[cols["id"]] if "id" in cols else None
    except IndexError:
        raise VariantFormatError(f"{where}: expected {len(cols)}+ columns, found "
                                 f"{len(cells)}") from None
    if chrom is None or pos is None or ref is None or alt is None:
        raise VariantFormatError(f"{where}: empty chrom, pos, ref or alt")
    try:
        pos = int(pos)
    except (TypeError, ValueError):
        raise VariantFormatError(f"{where}: pos {pos!r} is not an integer") from None
    vid = None if vid in (None, "", ".") else str(vid)
    yield from _split(str(chrom), pos, str(ref), str(alt).split(","), vid, path, line)


def _iter_delimited(path: str) -> Iterator[Variant]:
    delimiter = "," if path.endswith((".csv", ".csv.gz")) else "\t"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise VariantFormatError(f"{path}: empty file (expected a header line)") from None
        cols = _column_map(header, path)
        for cells in reader:
            if not cells or all(not c.strip() for c in cells):
                continue
            yield from _table_row(cells, cols, path, reader.line_num)


def _iter_parquet(path: str) -> Iterator[Variant]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    cols = _column_map(pf.schema_arrow.names, path)
    names = pf.schema_arrow.names
    wanted = [names[i] for i in cols.values()]
    index = {c: i for i, c in enumerate(cols)}
    row = 0
    for batch in pf.iter_batches(columns=wanted, batch_size=65536):
        columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        for cells in zip(*columns):
            row += 1
            yield from _table_row(list(cells), index, path, row)
