"""Indexed FASTA access through pysam: plain, gzip or bgzip FASTA, and the sequences of
GenBank, EMBL and GFF3+FASTA files, with the .fai built on first use.

Sequences come back upper-cased (soft-masked bases are kept as bases). A missing index, or one
older than its FASTA, is built next to the file when its directory is writable, else in the user
cache; before building, the file is checked line by line so that a malformed line is reported
with the file name and line number, and the index is written atomically. Plain gzip cannot be
indexed: it is recompressed once to a cached bgzip copy (genomeconv.io.cache). A bgzip file
without its end-of-file block (cut short) is refused before htslib can abort on it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import uuid
import zlib
from pathlib import Path

from genomeconv.errors import InputError
from genomeconv.io import cache
from genomeconv.io.cache import compression
from genomeconv.io.regions import resolve_contig

# Bases and IUPAC ambiguity codes, both cases: everything the tokenizer accepts.
VALID_BASES = b"ACGTNRYSWKMBDHVacgtnryswkmbdhv"


# The 28-byte empty block that ends every complete BGZF file.
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
BGZIP_NAME = "sequence.fa.gz"  # the bgzip copy's name inside its cache entry


class FastaFormatError(InputError):
    """A FASTA file that cannot be read or indexed (message names the file, and line if known)."""


def validate_fasta(path: str | Path) -> None:
    """Scan a FASTA (plain or bgzip) and raise FastaFormatError at the first malformed line.

    Checks: a '>' header before any sequence, non-empty unique record names, only bases and IUPAC
    codes, one line width per record (only the last line may be shorter), no blank line inside
    a record.
    """
    opener = gzip.open if compression(path) != "none" else open
    try:
        _validate_lines(path, opener)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise FastaFormatError(f"truncated or corrupt compressed file ({exc})",
                               path=path) from None


def _validate_lines(path: str | Path, opener) -> None:
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
    """Where the .fai (and .gzi) live: `index_dir` if given; else next to the file when they are
    there and current, or when the folder is writable; else a folder in the user cache keyed by
    the file's path, size and mtime."""
    if index_dir is None:
        fai, gzi = path + ".fai", (path + ".gzi" if bgzf else None)
        if _current(path, fai, gzi) or os.access(os.path.dirname(os.path.abspath(path)) or ".",
                                                 os.W_OK):
            return fai, gzi
        size, mtime = cache.fingerprint(path)
        key = f"{os.path.abspath(path)}|{size}|{mtime}".encode()
        index_dir = cache.cache_root() / "faidx" / hashlib.sha256(key).hexdigest()[:16]
    Path(index_dir).mkdir(parents=True, exist_ok=True)
    base = str(Path(index_dir) / os.path.basename(path))
    return base + ".fai", (base + ".gzi" if bgzf else None)


def _current(path: str, fai: str, gzi: str | None) -> bool:
    """Whether the index files exist and are no older than the data (an index older than its
    FASTA may describe a file since replaced: reading through it returns the wrong bases)."""
    data = os.stat(path).st_mtime_ns
    return all(os.path.exists(p) and os.stat(p).st_mtime_ns >= data
               for p in (fai, gzi) if p is not None)


def check_bgzf_eof(path: str | Path) -> None:
    """Raise FastaFormatError unless a bgzip file ends with the BGZF end-of-file block: without it
    the file was cut short, and htslib would abort the process on reaching the cut."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - len(BGZF_EOF)))
        tail = fh.read()
    if tail != BGZF_EOF:
        raise FastaFormatError("truncated bgzip file (no BGZF end-of-file block); download or "
                               "compress it again", path=path)


def build_index(path: str, fai: str, gzi: str | None) -> None:
    """Validate the FASTA and write its .fai (and .gzi) atomically: built under temporary names,
    read back through htslib, then renamed, so a failure leaves no unreadable index behind."""
    import pysam

    validate_fasta(path)
    tmp = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_fai, tmp_gzi = fai + tmp, (gzi + tmp if gzi else None)
    try:
        args = ["--fai-idx", tmp_fai] + (["--gzi-idx", tmp_gzi] if tmp_gzi else [])
        try:
            pysam.faidx(path, *args)
        except pysam.SamtoolsError as exc:
            raise FastaFormatError(f"cannot index: {exc}", path=path) from None
        try:
            with pysam.FastaFile(path, filepath_index=tmp_fai,
                                 filepath_index_compressed=tmp_gzi):
                pass
        except (OSError, ValueError):
            raise FastaFormatError(
                f"htslib cannot read back the index it built (longest record name: "
                f"{_longest_name(tmp_fai):,} characters; htslib reads names up to about 65,000)",
                path=path) from None
        if tmp_gzi:
            os.replace(tmp_gzi, gzi)
        os.replace(tmp_fai, fai)
    finally:
        for p in (tmp_fai, tmp_gzi):
            if p and os.path.exists(p):
                os.remove(p)


def _longest_name(fai: str) -> int:
    with open(fai, "rb") as fh:
        return max((len(line.split(b"\t", 1)[0]) for line in fh), default=0)


def _bgzip_copy(path: str) -> str:
    """The cached, indexed bgzip copy of a plain-gzip FASTA (made on first use)."""
    def build(folder: Path) -> None:
        dest = str(folder / BGZIP_NAME)
        cache.gzip_to_bgzip(path, dest)
        build_index(dest, dest + ".fai", dest + ".gzi")

    return str(cache.derived(path, "bgzip", build, describe="indexed bgzip copy") / BGZIP_NAME)


def readable_fasta(path: str | Path) -> str:
    """The file htslib reads for the FASTA `path`: the file itself (plain or bgzip), else the
    cached bgzip copy of a plain-gzip FASTA or the cached FASTA of a GenBank/EMBL/GFF3+FASTA file.
    InputError when the file is missing or not a sequence file genomeconv reads."""
    from genomeconv.io import seqrecords

    path = str(path)
    if not os.path.isfile(path):
        raise InputError("FASTA file not found", path=path)
    if seqrecords.record_format(path) is not None:
        return seqrecords.sequence_fasta(path)
    if compression(path) == "gzip":
        return _bgzip_copy(path)
    return path


class FastaFile:
    """Random access to an indexed FASTA; coordinates 0-based half-open, sequences upper-case.

    The one opener every pipeline uses: it takes plain, gzip or bgzip FASTA and GenBank, EMBL or
    GFF3 with a ##FASTA section (see `readable_fasta`), and builds or rebuilds the index."""

    def __init__(self, path: str | Path, *, index_dir: str | Path | None = None) -> None:
        """Open `path`; its index is read from (or built in) `index_dir`, default: see module."""
        import pysam

        self.path = str(path)
        data = readable_fasta(self.path)
        bgzf = compression(data) == "bgzf"
        if bgzf:
            check_bgzf_eof(data)
        fai, gzi = _index_paths(data, bgzf, index_dir)
        if not _current(data, fai, gzi):
            build_index(data, fai, gzi)
        try:
            self._fa = pysam.FastaFile(data, filepath_index=fai, filepath_index_compressed=gzi)
        except (OSError, ValueError) as exc:
            raise FastaFormatError(f"cannot open as FASTA ({exc})", path=self.path) from None
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
            raise InputError(f"{contig}:[{start}, {end}) lies outside the record (length "
                             f"{size})", path=self.path)
        return self._fa.fetch(contig, start, end).upper()

    def close(self) -> None:
        """Close the underlying pysam handle."""
        self._fa.close()

    def __enter__(self) -> FastaFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
