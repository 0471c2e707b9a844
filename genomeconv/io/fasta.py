"""Indexed FASTA access through pysam: plain or bgzip, the .fai built on first use.

Sequences come back upper-cased (soft-masked bases are kept as bases). A missing index is built
next to the file when its directory is writable, else in the user cache; before building, the file
is checked line by line so that a malformed line is reported with the file name and line number.
Plain gzip cannot be indexed: opening it fails with the exact command that converts it to bgzip.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path

from genomeconv.io.regions import resolve_contig

# Bases and IUPAC ambiguity codes, both cases: everything the tokenizer accepts.
VALID_BASES = b"ACGTNRYSWKMBDHVacgtnryswkmbdhv"


class FastaFormatError(ValueError):
    """A FASTA file that cannot be read or indexed (message names the file, and line if known)."""


def compression(path: str | Path) -> str:
    """'bgzf', 'gzip' (plain, not indexable) or 'none', from the file's first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(18)
    if head[:2] != b"\x1f\x8b":
        return "none"
    has_extra = len(head) >= 14 and head[3] & 4
    return "bgzf" if has_extra and head[12:14] == b"BC" else "gzip"


def bgzip_command(path: str | Path) -> str:
    """The shell command that turns a plain-gzip FASTA into an indexable bgzip one."""
    src = str(path)
    stem = src[:-3] if src.endswith(".gz") else src
    return f"gunzip -c {shlex.quote(src)} | bgzip -c > {shlex.quote(stem + '.bgz')}"


def validate_fasta(path: str | Path) -> None:
    """Scan a FASTA (plain or bgzip) and raise FastaFormatError at the first malformed line.

    Checks: a '>' header before any sequence, non-empty unique record names, only bases and IUPAC
    codes, one line width per record (only the last line may be shorter), no blank line inside
    a record.
    """
    import gzip

    opener = gzip.open if compression(path) != "none" else open
    names: set[bytes] = set()
    name = width = short = blank = None
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.rstrip(b"\r\n")
            if line.startswith(b">"):
                fields = line[1:].split(maxsplit=1)
                if not fields:
                    raise FastaFormatError(f"{path}, line {lineno}: empty record name")
                if fields[0] in names:
                    raise FastaFormatError(
                        f"{path}, line {lineno}: duplicate record name {fields[0].decode()!r}")
                name, width, short, blank = fields[0], None, None, None
                names.add(name)
                continue
            if not line.strip():
                blank = blank or lineno
                continue
            if name is None:
                raise FastaFormatError(f"{path}, line {lineno}: sequence before the first "
                                       "'>' header")
            bad = line.translate(None, VALID_BASES)
            if bad:
                col = line.index(bad[:1]) + 1
                raise FastaFormatError(f"{path}, line {lineno}, column {col}: invalid character "
                                       f"{chr(bad[0])!r} in record {name.decode()!r}")
            if blank is not None:
                raise FastaFormatError(f"{path}, line {blank}: blank line inside record "
                                       f"{name.decode()!r}")
            if short is not None:
                raise FastaFormatError(
                    f"{path}, line {short}: line shorter than the record's line width {width} "
                    f"but not the last line of record {name.decode()!r}")
            if width is None:
                width = len(line)
            elif len(line) > width:
                raise FastaFormatError(
                    f"{path}, line {lineno}: line of {len(line)} bases in record "
                    f"{name.decode()!r} whose line width is {width}")
            elif len(line) < width:
                short = lineno


def _index_paths(path: str, bgzf: bool, index_dir: str | Path | None) -> tuple[str, str | None]:
    """Where the .fai (and .gzi) live: `index_dir` if given; else next to the file when present
    or writable; else a per-file folder in the user cache."""
    if index_dir is None:
        fai, gzi = path + ".fai", (path + ".gzi" if bgzf else None)
        if os.path.exists(fai) and (gzi is None or os.path.exists(gzi)):
            return fai, gzi
        if os.access(os.path.dirname(os.path.abspath(path)) or ".", os.W_OK):
            return fai, gzi
        stat = os.stat(path)
        key = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode()
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        index_dir = cache / "genomeconv" / "faidx" / hashlib.sha256(key).hexdigest()[:16]
    Path(index_dir).mkdir(parents=True, exist_ok=True)
    base = str(Path(index_dir) / os.path.basename(path))
    return base + ".fai", (base + ".gzi" if bgzf else None)


class FastaFile:
    """Random access to an indexed FASTA; coordinates 0-based half-open, sequences upper-case."""

    def __init__(self, path: str | Path, *, index_dir: str | Path | None = None) -> None:
        """Open `path`; its index is read from (or built in) `index_dir`, default: see module."""
        import pysam

        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"FASTA file not found: {self.path}")
        kind = compression(self.path)
        if kind == "gzip":
            raise FastaFormatError(
                f"{self.path} is plain gzip, which cannot be indexed for random access; convert "
                f"it to bgzip with:\n  {bgzip_command(self.path)}")
        fai, gzi = _index_paths(self.path, kind == "bgzf", index_dir)
        if not os.path.exists(fai) or (gzi is not None and not os.path.exists(gzi)):
            validate_fasta(self.path)
            args = ["--fai-idx", fai] + (["--gzi-idx", gzi] if gzi else [])
            try:
                pysam.faidx(self.path, *args)
            except pysam.SamtoolsError as exc:
                raise FastaFormatError(f"cannot index {self.path}: {exc}") from None
        try:
            self._fa = pysam.FastaFile(self.path, filepath_index=fai,
                                       filepath_index_compressed=gzi)
        except (OSError, ValueError) as exc:
            raise FastaFormatError(f"cannot open FASTA {self.path}: {exc}") from None
        self._lengths = dict(zip(self._fa.references, self._fa.lengths))

    @property
    def references(self) -> tuple[str, ...]:
        """Record names, in file order."""
        return tuple(self._fa.references)

    @property
    def lengths(self) -> tuple[int, ...]:
        """Record lengths, in file order."""
        return tuple(self._fa.lengths)

    def resolve(self, chrom: str) -> str:
        """This file's name for `chrom` (chr1 <-> 1, chrM <-> MT); UnknownContigError if none."""
        return resolve_contig(chrom, self._lengths, source=self.path)

    def length(self, chrom: str) -> int:
        """Length of one record (name resolved as in `resolve`)."""
        return self._lengths[self.resolve(chrom)]

    def fetch(self, chrom: str, start: int = 0, end: int | None = None) -> str:
        """Upper-cased sequence of [start, end) on `chrom`; the range must lie inside the record."""
        contig = self.resolve(chrom)
        size = self._lengths[contig]
        end = size if end is None else end
        if not 0 <= start <= end <= size:
            raise ValueError(f"{contig}:[{start}, {end}) lies outside the record "
                             f"(length {size}) in {self.path}")
        return self._fa.fetch(contig, start, end).upper()

    def fetch_padded(self, chrom: str, start: int, end: int) -> tuple[str, int, int]:
        """Sequence of [start, end), padded with N where it runs past either end of the record.

        Returns (sequence, n_pad_left, n_pad_right); len(sequence) == end - start.
        """
        if end < start:
            raise ValueError(f"end {end} < start {start}")
        size = self.length(chrom)
        left = min(max(0, -start), end - start)
        right = min(max(0, end - size), end - start - left)
        inner = self.fetch(chrom, start + left, end - right) if end - right > start + left else ""
        return "N" * left + inner + "N" * right, left, right

    def close(self) -> None:
        """Close the underlying pysam handle."""
        self._fa.close()

    def __enter__(self) -> FastaFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
