"""Reads from BAM, CRAM and unaligned BAM through pysam, as coordinates that can be re-read.

`scan_reads` yields a `ReadRef` per selected record (primary alignments only by default, MAPQ and
length filters, optional region); a `ReadRef` carries no sequence, only where to find the record
again: the BGZF virtual offset for BAM, the alignment position for CRAM (which cannot seek).
`ReadFile.sequence(ref)` re-reads it in the orientation it was sequenced: a read aligned to the
reverse strand (strand '-') is the reverse complement of its stored SEQ.
The MAPQ filter applies to aligned records; unaligned records have no MAPQ and pass it.
CRAM input is read for its aligned records (unaligned records in a CRAM are not selected).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from genomeconv.errors import InputError
from genomeconv.io.regions import Interval, NotFoundError, parse_region, reverse_complement

SECONDARY_OR_SUPPLEMENTARY = 0x100 | 0x800
_MAX_SCAN = 100_000  # records read past a stored offset before giving up on finding a read
_WALK_BYTES = 1 << 17  # `sequences` reads on to a read this close (compressed), else seeks


@dataclass(frozen=True)
class ReadRef:
    """Where one read lives: name, flag, alignment (chrom None when unaligned) and file offset."""

    name: str
    flag: int
    chrom: str | None
    start: int
    end: int
    strand: str
    length: int
    offset: int | None


def _open(path: str | Path, reference: str | Path | None, *, indexed: bool = False):
    """Open a BAM/CRAM; with `indexed`, build a missing index first (when the folder allows)."""
    import pysam

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"read file not found: {path}")
    try:
        handle = pysam.AlignmentFile(path, check_sq=False,
                                     reference_filename=str(reference) if reference else None)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot open as reads ({exc})", path=path) from None
    if not (handle.is_bam or handle.is_cram):
        handle.close()
        raise InputError("not BAM or CRAM (convert SAM with: samtools view -b)", path=path)
    if indexed and not handle.has_index():
        handle.close()
        _build_index(path)
        return _open(path, reference)
    return handle


def _build_index(path: str) -> None:
    import pysam

    if not os.access(os.path.dirname(os.path.abspath(path)) or ".", os.W_OK):
        raise InputError(f"no index and its folder is read-only; run: samtools index {path}",
                         path=path)
    try:
        pysam.index(path)
    except pysam.SamtoolsError as exc:
        raise InputError(f"cannot index for a region query (is it coordinate-sorted and "
                         f"aligned?): {exc}", path=path) from None


def _ref(record, offset: int | None) -> ReadRef:
    aligned = not record.is_unmapped and record.reference_name is not None
    return ReadRef(
        name=record.query_name, flag=record.flag,
        chrom=record.reference_name if aligned else None,
        start=record.reference_start if aligned else 0,
        end=record.reference_end if aligned and record.reference_end is not None else 0,
        strand="-" if record.is_reverse else "+",
        length=record.query_length, offset=offset)


def scan_reads(path: str | Path, *, region: str | Interval | None = None, min_mapq: int = 0,
               min_length: int = 0, primary_only: bool = True,
               reference: str | Path | None = None) -> Iterator[ReadRef]:
    """Yield a ReadRef for every selected record, in file order.

    region: samtools-style string or Interval (needs an aligned, coordinate-sorted file; a
    missing index is built when the folder is writable). reference: FASTA for CRAM decoding.
    """
    handle = _open(path, reference, indexed=region is not None)
    seekable = handle.is_bam
    try:
        if region is not None:
            iv = parse_region(region) if isinstance(region, str) else region
            records = handle.fetch(iv.chrom, iv.start, iv.end)
        else:
            records = handle.fetch(until_eof=True)
        while True:
            offset = handle.tell() if seekable else None
            record = next(records, None)
            if record is None:
                break
            if primary_only and record.flag & SECONDARY_OR_SUPPLEMENTARY:
                continue
            if not record.query_sequence or record.query_length < min_length:
                continue
            if not record.is_unmapped and record.mapping_quality < min_mapq:
                continue
            if not seekable and record.is_unmapped:
                continue
            yield _ref(record, offset)
    finally:
        handle.close()


def _matches(record, ref: ReadRef) -> bool:
    """Whether a record is the read `ref` points at (name, flag, and position when aligned)."""
    return (record.query_name == ref.name and record.flag == ref.flag
            and (ref.chrom is None or record.reference_start == ref.start))


def _bases(record, ref: ReadRef) -> str:
    """A record's bases as sequenced (upper case; reverse-complemented when strand is '-')."""
    seq = record.query_sequence.upper()
    return reverse_complement(seq) if ref.strand == "-" else seq


class ReadFile:
    """An open BAM/CRAM/uBAM from which reads found by `scan_reads` are fetched again."""

    def __init__(self, path: str | Path, *, reference: str | Path | None = None) -> None:
        self.path = str(path)
        self._handle = _open(path, reference)
        if self._handle.is_cram:  # no seek in CRAM: reads are found again through the index
            self._handle.close()
            self._handle = _open(path, reference, indexed=True)

    def sequence(self, ref: ReadRef) -> str:
        """The read's bases as sequenced (upper case; reverse-complemented when strand is '-')."""
        return _bases(self._find(ref), ref)

    def sequences(self, refs: Sequence[ReadRef]) -> list[str]:
        """The bases of many reads (as `sequence`), in the order of `refs`. BAM records are
        visited in file order and read on from one to the next when they are near: a seek
        inflates a whole BGZF block again, ~100 times the cost of decoding the next record."""
        out = [""] * len(refs)
        records = None
        for k in sorted(range(len(refs)), key=lambda k: (refs[k].offset is None,
                                                         refs[k].offset or 0, refs[k].start)):
            ref, record = refs[k], None
            if ref.offset is not None:
                here = self._handle.tell()
                if (records is None or ref.offset < here
                        or (ref.offset >> 16) - (here >> 16) >= _WALK_BYTES):
                    self._handle.seek(ref.offset)
                    records = self._handle.fetch(until_eof=True)
                while self._handle.tell() < ref.offset and next(records, None) is not None:
                    pass
                found = next(records, None) if self._handle.tell() == ref.offset else None
                record = found if found is not None and _matches(found, ref) else None
            if record is None:  # not where it was: search as `sequence` does
                record, records = self._find(ref), None
            out[k] = _bases(record, ref)
        return out

    def _find(self, ref: ReadRef):
        if ref.offset is not None:
            self._handle.seek(ref.offset)
            records = self._handle.fetch(until_eof=True)
        else:
            records = self._handle.fetch(ref.chrom, ref.start, ref.start + 1)
        for _, record in zip(range(_MAX_SCAN), records):
            if _matches(record, ref):
                return record
        raise NotFoundError(f"read {ref.name!r} (flag {ref.flag}) not found again; was the "
                            "file changed since the run was planned?", path=self.path)

    def close(self) -> None:
        """Close the pysam handle."""
        self._handle.close()

    def __enter__(self) -> ReadFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
