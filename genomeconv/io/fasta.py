"""Indexed FASTA access through pysam: plain, gzip or bgzip FASTA, and the sequences of
GenBank, EMBL and GFF3+FASTA files, with the .fai built on first use.

Sequences come back upper-cased (soft-masked bases are kept as bases). An index is used only if
it describes the file as it is now (`index_fits`: every record's header sits where the .fai puts
it, its first line has the .fai's width, and the file ends after the last record; a .gzi must
end at the file's last block), whatever the modification times say: `cp -p`, `rsync -a` and
`tar x` give a replaced FASTA its old mtime. Otherwise the index is built, next to the file when
its directory is writable, else in the user cache; before building, the file is checked line by
line so that a malformed line is reported with the file name and line number, and the index is
written atomically. Empty records (a header without bases) are left out of the index and listed
(`FastaFile.empty_records`); a FASTA without bases, or ending with an empty record (htslib cannot
index it), is an error saying so. Plain gzip cannot be indexed: it is recompressed once to a
cached bgzip copy (genomeconv.io.cache); errors about such a copy name the user's file. A bgzip
file without its end-of-file block (cut short) is refused before htslib can abort on it.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import os
import re
import uuid
import zlib
from pathlib import Path

from genomeconv.errors import InputError
from genomeconv.io import cache
from genomeconv.io.cache import compression
from genomeconv.io.regions import resolve_contig

# Bases and IUPAC ambiguity codes, both cases: everything the tokenizer accepts.
VALID_BASES = b"ACGTNRYSWKMBDHVacgtnryswkmbdhv"
_NOT_ACGT = str.maketrans("", "", "ACGTacgt")


# The 28-byte empty block that ends every complete BGZF file.
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
BGZIP_NAME = "sequence.fa.gz"  # the bgzip copy's name inside its cache entry


class FastaFormatError(InputError):
    """A FASTA file that cannot be read or indexed (message names the file, and line if known)."""


def validate_fasta(path: str | Path, *, source: str | Path | None = None) -> list[str]:
    """Scan a FASTA (plain or bgzip) and raise FastaFormatError at the first malformed line;
    return the names of its empty records (a header without bases), which htslib leaves out.

    Checks: a '>' header before any sequence, non-empty unique record names, only bases and IUPAC
    codes, one line width per record (only the last line may be shorter), no blank line inside
    a record, some bases, and no empty last record (htslib cannot index one). source: the user's
    file that `path` is a recompressed copy of (messages name it; its lines are the same).
    """
    opener = gzip.open if compression(path) != "none" else open
    where = source or path
    try:
        records, empty, last = _validate_lines(path, opener, where)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise FastaFormatError(f"truncated or corrupt compressed file ({exc})",
                               path=where) from None
    if not records:
        raise FastaFormatError("empty: no FASTA records ('>' header lines)", path=where)
    if len(empty) == records:
        raise FastaFormatError(f"empty: none of its {records} record(s) has any bases",
                               path=where)
    if empty and empty[-1] == last:
        raise FastaFormatError(f"the last record {last!r} is empty (no bases), and htslib "
                               "cannot index a FASTA that ends with an empty record; remove it",
                               path=where)
    return empty


def _validate_lines(path: str | Path, opener, where: str | Path
                    ) -> tuple[int, list[str], str | None]:
    """(records, names of the empty ones, name of the last) after checking every line."""
    names: set[bytes] = set()
    empty: list[str] = []
    name = width = short = blank = None
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.rstrip(b"\r\n")
            if line.startswith(b">"):
                fields = line[1:].split(maxsplit=1)
                if not fields:
                    raise FastaFormatError(f"{where}, line {lineno}: empty record name")
                if fields[0] in names:
                    raise FastaFormatError(
                        f"{where}, line {lineno}: duplicate record name {fields[0].decode()!r}")
                if name is not None and width is None:
                    empty.append(name.decode())
                name, width, short, blank = fields[0], None, None, None
                names.add(name)
                continue
            if not line.strip():
                blank = blank or lineno
                continue
            if name is None:
                raise FastaFormatError(f"{where}, line {lineno}: sequence before the first "
                                       "'>' header")
            bad = line.translate(None, VALID_BASES)
            if bad:
                col = line.index(bad[:1]) + 1
                raise FastaFormatError(f"{where}, line {lineno}, column {col}: invalid character "
                                       f"{chr(bad[0])!r} in record {name.decode()!r}")
            if blank is not None:
                raise FastaFormatError(f"{where}, line {blank}: blank line inside record "
                                       f"{name.decode()!r}")
            if short is not None:
                raise FastaFormatError(
                    f"{where}, line {short}: line shorter than the record's line width {width} "
                    f"but not the last line of record {name.decode()!r}")
            if width is None:
                width = len(line)
            elif len(line) > width:
                raise FastaFormatError(
                    f"{where}, line {lineno}: line of {len(line)} bases in record "
                    f"{name.decode()!r} whose line width is {width}")
            elif len(line) < width:
                short = lineno
    if name is not None and width is None:
        empty.append(name.decode())
    return len(names), empty, None if name is None else name.decode()


def ambiguous_fraction(seq: str) -> float:
    """The fraction of bases that are not A, C, G or T: N and the other IUPAC codes, each of
    which leaves the base unknown to the model."""
    return len(seq.translate(_NOT_ACGT)) / max(1, len(seq))


def _index(data: str, bgzf: bool, index_dir: str | Path | None,
           source: str) -> tuple[str, str | None, list[str]]:
    """(.fai, .gzi or None, empty record names) of `data`: the index in `index_dir` if given,
    else next to the file when it fits there or the folder is writable, else in a folder of the
    user cache keyed by the file's path; built (`build_index`) unless it fits (`index_fits`)."""
    folder = Path(index_dir) if index_dir is not None else Path(os.path.abspath(data)).parent
    fai, gzi = _index_names(folder, data, bgzf)
    empty = index_fits(data, fai, gzi)
    if empty is not None:
        return fai, gzi, empty
    if index_dir is None and not os.access(folder, os.W_OK):
        key = hashlib.sha256(os.path.abspath(data).encode()).hexdigest()[:16]
        return _index(data, bgzf, cache.cache_root() / "faidx" / key, source)
    folder.mkdir(parents=True, exist_ok=True)
    return fai, gzi, build_index(data, fai, gzi, source=source)


def _index_names(folder: Path, data: str, bgzf: bool) -> tuple[str, str | None]:
    base = str(folder / os.path.basename(data))
    return base + ".fai", (base + ".gzi" if bgzf else None)


# Between two records' bases: line ends, then header lines, the last one the next record's own
_GAP = re.compile(rb"^(?:\r?\n|>[^\n]*\n)*>[^\n]*\n$")
_GAP_LIMIT = 1 << 24  # header bytes between two records beyond which an index is not believed
_LINE_BREAKS = re.compile(rb"[\r\n>]")


def index_fits(data: str, fai: str, gzi: str | None) -> list[str] | None:
    """The names of the empty records between the indexed ones when the index files exist and
    describe `data` as it is now, else None: each record's header line ends where the .fai
    puts its bases, its first line has the .fai's line width, and only line ends follow the
    last record's bases (for bgzip, read through the .gzi, which must end at the file's last
    data block). One small read per record: cheap, and certain for a FASTA that validates."""
    if not os.path.exists(fai) or (gzi is not None and not os.path.exists(gzi)):
        return None
    try:
        entries = [line.split("\t") for line in Path(fai).read_text().splitlines()]
        with (_BgzfText(data, gzi) if gzi else _PlainText(data)) as text:
            return _fits(text, [(e[0], *map(int, e[1:5])) for e in entries])
    except (OSError, ValueError, IndexError, zlib.error):  # unreadable, or not this file's
        return None


def _fits(text: _PlainText, entries: list[tuple[str, int, int, int, int]]) -> list[str] | None:
    """`index_fits` over the .fai's (name, length, offset, line bases, line width) entries."""
    empty: list[str] = []
    end = 0  # where the previous record's bases end
    for name, length, offset, bases, width in entries:
        if not end <= offset <= end + _GAP_LIMIT or min(length, bases) < 1 or width <= bases:
            return None
        gap = text.read(end, offset)
        if not _GAP.match(gap) or not _first_line_fits(text, offset, length, bases, width):
            return None
        names = [(h.split() or [b""])[0].decode() for h in re.findall(rb">([^\n]*)\n", gap)]
        if names[-1] != name:
            return None
        empty += names[:-1]
        end = offset + length // bases * width + length % bases
    tail = text.size() - end
    return empty if 0 <= tail <= 4096 and not text.read(end, end + tail).strip() else None


def _first_line_fits(text: _PlainText, offset: int, length: int, bases: int,
                     width: int) -> bool:
    """Whether a record's first line holds the .fai's `bases` bases and a line end of
    `width - bases` bytes with bases after it, or (a one-line record) all `length` bases
    followed by a line end or the end of the file."""
    if length > bases:
        line = text.read(offset, offset + width + 1)
        return (len(line) == width + 1 and not _LINE_BREAKS.search(line[:bases])
                and line[bases:width] in (b"\n", b"\r\n") and not _LINE_BREAKS.match(line[width:]))
    line = text.read(offset, offset + length + 1)
    return (len(line) >= length and not _LINE_BREAKS.search(line[:length])
            and line[length:] in (b"", b"\n", b"\r"))


class _PlainText:
    """Byte ranges of an uncompressed file."""

    def __init__(self, path: str) -> None:
        self._fh = open(path, "rb")

    def read(self, start: int, stop: int) -> bytes:
        self._fh.seek(start)
        return self._fh.read(max(0, stop - start))

    def size(self) -> int:
        return os.fstat(self._fh.fileno()).st_size

    def __enter__(self) -> _PlainText:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


class _BgzfText(_PlainText):
    """Byte ranges of a bgzip file's uncompressed text through its .gzi (the compressed and
    uncompressed offsets of each block after the first); ValueError when a listed block is not
    a BGZF block or the last one is not followed by the end-of-file block."""

    def __init__(self, path: str, gzi: str) -> None:
        super().__init__(path)
        raw = Path(gzi).read_bytes()
        n = int.from_bytes(raw[:8], "little")
        if len(raw) != 8 + 16 * n:
            raise ValueError("not a .gzi")
        pairs = [int.from_bytes(raw[k:k + 8], "little") for k in range(8, len(raw), 8)]
        self._cstart, self._ustart = [0, *pairs[0::2]], [0, *pairs[1::2]]
        self._cached: tuple[int, bytes, int] = (-1, b"", 0)  # block, its text, where it ends

    def _block(self, k: int) -> tuple[bytes, int]:
        """Block k's text and the compressed offset where the block ends."""
        if self._cached[0] != k:
            self._fh.seek(self._cstart[k])
            head = self._fh.read(18)
            if head[:4] != b"\x1f\x8b\x08\x04" or head[12:14] != b"BC":
                raise ValueError("not a BGZF block")
            size = int.from_bytes(head[16:18], "little") + 1
            text = zlib.decompress(self._fh.read(size - 18)[:-8], -15)
            self._cached = (k, text, self._cstart[k] + size)
        return self._cached[1], self._cached[2]

    def read(self, start: int, stop: int) -> bytes:
        out = b""
        k = bisect.bisect_right(self._ustart, start) - 1
        while start < stop and k < len(self._ustart):
            block, _ = self._block(k)
            out += block[start - self._ustart[k]:stop - self._ustart[k]]
            start = self._ustart[k] + len(block)
            k += 1
        return out

    def size(self) -> int:
        last = len(self._cstart) - 1
        block, end = self._block(last)
        if end + len(BGZF_EOF) != super().size():
            raise ValueError("the .gzi's last block is not the file's last data block")
        return self._ustart[last] + len(block)


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


def build_index(path: str, fai: str, gzi: str | None, *,
                source: str | Path | None = None) -> list[str]:
    """Validate the FASTA and write its .fai (and .gzi) atomically: built under temporary names,
    read back through htslib, then renamed, so a failure leaves no unreadable index behind.
    Returns the names of its empty records; source: the user's file `path` was made from
    (errors name it)."""
    import pysam

    where = source or path
    empty = validate_fasta(path, source=source)
    tmp = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_fai, tmp_gzi = fai + tmp, (gzi + tmp if gzi else None)
    try:
        args = ["--fai-idx", tmp_fai] + (["--gzi-idx", tmp_gzi] if tmp_gzi else [])
        try:
            pysam.faidx(path, *args)
        except pysam.SamtoolsError as exc:
            raise FastaFormatError(f"cannot index: {exc}", path=where) from None
        try:
            with pysam.FastaFile(path, filepath_index=tmp_fai,
                                 filepath_index_compressed=tmp_gzi):
                pass
        except (OSError, ValueError):
            raise FastaFormatError(
                f"htslib cannot read back the index it built (longest record name: "
                f"{_longest_name(tmp_fai):,} characters; htslib reads names up to about 65,000)",
                path=where) from None
        if tmp_gzi:
            os.replace(tmp_gzi, gzi)
        os.replace(tmp_fai, fai)
    finally:
        for p in (tmp_fai, tmp_gzi):
            if p and os.path.exists(p):
                os.remove(p)
    return empty


def _longest_name(fai: str) -> int:
    with open(fai, "rb") as fh:
        return max((len(line.split(b"\t", 1)[0]) for line in fh), default=0)


def require_file(path: str | Path, what: str) -> None:
    """InputError naming `path` unless it is a file this process can open, saying why not: not
    found, a folder, a symlink loop, no permission..."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise InputError(f"{what} not found", path=path) from None
    except IsADirectoryError:
        raise InputError(f"is a folder, not a {what}", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read this {what} ({exc.strerror or exc})", path=path) from None


def _bgzip_copy(path: str) -> str:
    """The cached, indexed bgzip copy of a plain-gzip FASTA (made on first use)."""
    def build(folder: Path) -> None:
        dest = str(folder / BGZIP_NAME)
        cache.gzip_to_bgzip(path, dest)
        build_index(dest, dest + ".fai", dest + ".gzi", source=path)

    return str(cache.derived(path, "bgzip", build, describe="indexed bgzip copy") / BGZIP_NAME)


def readable_fasta(path: str | Path) -> str:
    """The file htslib reads for the FASTA `path`: the file itself (plain or bgzip), else the
    cached bgzip copy of a plain-gzip FASTA or the cached FASTA of a GenBank/EMBL/GFF3+FASTA file.
    InputError when the file is missing, unreadable or not a sequence file genomeconv reads."""
    from genomeconv.io import seqrecords

    path = str(path)
    require_file(path, "FASTA file")
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
        fai, gzi, empty = _index(data, bgzf, index_dir, self.path)
        self.empty_records: tuple[str, ...] = tuple(empty)  # headers without bases: not indexed
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
