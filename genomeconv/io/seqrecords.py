"""GenBank, EMBL and GFF3-with-##FASTA files as a reference and an annotation at once.

Such a file is converted once (cached by genomeconv.io.cache while its size and mtime are
unchanged) into a plain FASTA (`sequence.fa`, records named by their accession.version, as in
NCBI FASTA and VCF files) and a feature table (`features.json`), which then go through the same
FASTA and annotation code as a FASTA + GTF would. GenBank and EMBL are read with Biopython's SeqIO
(plain or gzip); GFF3 annotation lines with genomeconv.io.annotations. Compound locations
(join(...)) keep their parts in biological order, so a spliced sequence is their concatenation.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from genomeconv.errors import InputError
from genomeconv.io import cache
from genomeconv.io.annotations import Feature, Gene, genes_from_features, read_features, read_genes

FORMATS = ("genbank", "embl", "gff3")
SEQUENCE_NAME, FEATURES_NAME = "sequence.fa", "features.json"
FASTA_WIDTH = 60
_BASES = set("ACGTNRYSWKMBDHV")


def _open_text(path: str | Path):
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt") if gz else open(path)


def record_format(path: str | Path) -> str | None:
    """'genbank', 'embl' or 'gff3' from the first line (plain or gzip), else None (FASTA or an
    annotation without sequence are not record files)."""
    try:
        with _open_text(path) as fh:
            first = next((line for line in fh if line.strip()), "")
    except (OSError, EOFError, UnicodeDecodeError):
        return None
    if first.startswith("LOCUS "):
        return "genbank"
    if first.startswith("ID   "):
        return "embl"
    if first.startswith("##gff-version 3"):
        return "gff3"
    return None


def is_record_file(path: str | Path) -> bool:
    """Whether `path` is a GenBank, EMBL or GFF3 file (sequence and annotation in one)."""
    return record_format(path) is not None


def converted(path: str | Path) -> Path:
    """The cache folder holding `path`'s sequence.fa and features.json (built on first use)."""
    fmt = record_format(path)
    if fmt is None:
        raise InputError("not a GenBank, EMBL or GFF3 file", path=path)
    return cache.derived(path, "records", lambda folder: _convert(path, fmt, folder),
                         describe=f"FASTA and feature table ({fmt})")


def sequence_fasta(path: str | Path) -> str:
    """The plain FASTA of a record file's sequences (cached conversion)."""
    return str(converted(path) / SEQUENCE_NAME)


def record_features(path: str | Path) -> list[Feature]:
    """Every feature of a GenBank/EMBL file, in file order (from the cached feature table)."""
    rows = json.loads((converted(path) / FEATURES_NAME).read_text())
    return [Feature(**{**r, "parts": tuple(tuple(p) for p in r["parts"])}) for r in rows]


def features_of(path: str | Path) -> list[Feature]:
    """Features of an annotation source: a GenBank/EMBL file, or a GTF/GFF3 file (with or
    without a ##FASTA section, which needs no conversion to be read as an annotation)."""
    if record_format(path) in ("genbank", "embl"):
        return record_features(path)
    return read_features(path)


def genes_of(path: str | Path) -> list[Gene]:
    """Genes of an annotation source. GenBank/EMBL, and GFF3 whose features carry locus_tags
    (Prokka, Bakta): features grouped by locus_tag, else gene name; other GFF3 and GTF: by
    gene_id/ID (annotations.read_genes)."""
    fmt = record_format(path)
    if fmt in ("genbank", "embl"):
        return genes_from_features(record_features(path))
    if fmt == "gff3":
        features = read_features(path)
        if any(f.locus_tag for f in features):
            return genes_from_features(features)
    return read_genes(path)


def _convert(path: str | Path, fmt: str, folder: Path) -> None:
    """Write sequence.fa and features.json for one record file into `folder`."""
    features: list[Feature] = []
    with open(folder / SEQUENCE_NAME, "w") as out:
        if fmt == "gff3":  # its annotation lines are read directly (features_of, genes_of)
            records = _gff3_sequences(path)
        else:
            records = _seqio_records(path, fmt, features)
        names: set[str] = set()
        for name, seq in records:
            bad = set(seq) - _BASES
            if bad:
                raise InputError(f"invalid sequence character(s) {''.join(sorted(bad))!r}",
                                 path=path, record=name)
            if name in names:
                raise InputError("a second record of this name", path=path, record=name)
            if not seq:
                raise InputError("the record has no bases", path=path, record=name)
            names.add(name)
            out.write(f">{name}\n")
            out.writelines(seq[i:i + FASTA_WIDTH] + "\n" for i in range(0, len(seq),
                                                                         FASTA_WIDTH))
    if not names:
        raise InputError(f"no sequence found in this {fmt} file"
                         + (" (a GFF3 file needs a ##FASTA section)" if fmt == "gff3" else ""),
                         path=path)
    (folder / FEATURES_NAME).write_text(json.dumps([asdict(f) for f in features]))


def _seqio_records(path: str | Path, fmt: str, features: list[Feature]
                   ) -> Iterator[tuple[str, str]]:
    """(name, upper-case sequence) of each GenBank/EMBL record; appends its features."""
    from Bio import SeqIO
    from Bio.Seq import UndefinedSequenceError

    with _open_text(path) as fh:
        parsed = SeqIO.parse(fh, fmt)
        index = 0
        while True:
            index += 1
            try:
                rec = next(parsed)
            except StopIteration:
                return
            except (ValueError, EOFError, OSError) as exc:
                raise InputError(f"cannot parse record {index} as {fmt} ({exc})",
                                 path=path) from None
            try:
                seq = str(rec.seq).upper()
            except UndefinedSequenceError:
                raise InputError("the record has no sequence (a CONTIG or annotation-only "
                                 "entry); download the full record with its sequence",
                                 path=path, record=rec.id) from None
            features.extend(_feature(rec.id, f) for f in rec.features)
            yield rec.id, seq


def _feature(record: str, feature: Any) -> Feature:
    """A Biopython SeqFeature as a Feature (parts in biological order, as SeqIO lists them)."""
    parts = tuple((int(p.start), int(p.end), "-" if p.strand == -1 else "+")
                  for p in feature.location.parts)
    q = feature.qualifiers

    def first(key: str) -> str | None:
        return q[key][0] if q.get(key) else None

    return Feature(record, feature.type, parts,
                   "-" if all(p[2] == "-" for p in parts) else "+", feature_id=feature.id
                   if feature.id not in (None, "<unknown id>") else None, gene=first("gene"),
                   locus_tag=first("locus_tag"), protein_id=first("protein_id"))


def _gff3_sequences(path: str | Path) -> Iterator[tuple[str, str]]:
    """(name, upper-case sequence) of each record in a GFF3 file's ##FASTA section."""
    from Bio import SeqIO

    with _open_text(path) as fh:
        for line in fh:
            if line.startswith("##FASTA"):
                break
        else:
            return
        for rec in SeqIO.parse(fh, "fasta"):
            yield rec.id, str(rec.seq).upper()
