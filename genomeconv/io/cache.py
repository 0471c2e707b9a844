"""Derived copies of input files (a bgzip copy of a plain-gzip FASTA, the FASTA and feature table of
a GenBank file...), made once and reused while the input is unchanged.

Where: GENOMECONV_CACHE if set, else ``$XDG_CACHE_HOME/genomeconv`` (default
``~/.cache/genomeconv``); with GENOMECONV_CACHE_NEXT_TO_INPUT=1, a ``.genomeconv-cache`` folder
next to the input instead. Each entry is a folder named for the input's name, absolute path, size
and mtime, so an edited or replaced input gets a new entry (the old one is removed). An entry is
built in a temporary folder and renamed into place only when complete, so a conversion killed
half-way leaves nothing that a later run takes for finished.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path

from genomeconv.errors import InputError

CACHE_ENV = "GENOMECONV_CACHE"
NEXT_TO_INPUT_ENV = "GENOMECONV_CACHE_NEXT_TO_INPUT"
STALE_TEMP_S = 24 * 3600  # temporary folders older than this belong to killed conversions


def cache_root(source: str | Path | None = None) -> Path:
    """The cache folder for derived copies of `source` (see the module doc for the order)."""
    if source is not None and os.environ.get(NEXT_TO_INPUT_ENV, "") not in ("", "0"):
        return Path(source).resolve().parent / ".genomeconv-cache"
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "genomeconv"


def fingerprint(path: str | Path) -> tuple[int, int]:
    """(size, mtime in ns): what must stay the same for a derived copy to stay valid."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _entry_names(source: Path, kind: str) -> tuple[str, str]:
    """(prefix shared by every version of this input, name of its current version)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", source.name)[:80]
    where = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    size, mtime = fingerprint(source)
    version = hashlib.sha256(f"{size}|{mtime}".encode()).hexdigest()[:12]
    prefix = f"{stem}.{kind}.{where}-"
    return prefix, prefix + version


def derived(source: str | Path, kind: str, build: Callable[[Path], None], *,
            describe: str) -> Path:
    """The entry folder holding `build`'s outputs for `source` as it is now, built if missing.

    build(folder) writes the files into an empty temporary folder; it is renamed into place when
    build returns and the input did not change meanwhile. `describe` names the conversion in the
    one line printed on stderr when an entry is made ("bgzip copy", ...).
    """
    source = Path(source).resolve()
    root = cache_root(source)
    prefix, name = _entry_names(source, kind)
    entry = root / name
    if entry.is_dir():
        return entry
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        raise InputError(f"cannot write the {describe} to the cache folder {root} ({exc}); set "
                         f"{CACHE_ENV} to a writable folder", path=source) from None
    before = fingerprint(source)
    try:
        build(tmp)
        if fingerprint(source) != before:
            raise InputError("the file changed while it was being converted; run again",
                             path=source)
        try:
            os.rename(tmp, entry)
        except OSError:  # another process published the same entry first: use theirs
            if not entry.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_old(root, prefix, keep=entry.name)
    print(f"genomeconv: {describe} of {source} written to {entry}", file=sys.stderr)
    return entry


def compression(path: str | Path) -> str:
    """'bgzf', 'gzip' (plain, not indexable) or 'none', from the file's first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(18)
    if head[:2] != b"\x1f\x8b":
        return "none"
    has_extra = len(head) >= 14 and head[3] & 4
    return "bgzf" if has_extra and head[12:14] == b"BC" else "gzip"


def gzip_to_bgzip(src: str | Path, dest: str | Path) -> None:
    """Recompress a plain-gzip file as bgzip, which htslib can index (InputError naming `src`
    when it is truncated or corrupt)."""
    import pysam.libcbgzf

    try:
        with gzip.open(src, "rb") as fin, pysam.libcbgzf.BGZFile(str(dest), "wb") as fout:
            while chunk := fin.read(1 << 22):
                fout.write(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"truncated or corrupt gzip file ({exc})", path=src) from None


def _remove_old(root: Path, prefix: str, keep: str) -> None:
    """Drop earlier versions of the same input and temporary folders of killed conversions."""
    now = time.time()
    for path in root.iterdir():
        if path.name == keep:
            continue
        try:
            stale_tmp = path.name.startswith(".tmp-") and now - path.stat().st_mtime > STALE_TEMP_S
        except FileNotFoundError:  # removed by another process meanwhile
            continue
        if path.name.startswith(prefix) or stale_tmp:
            shutil.rmtree(path, ignore_errors=True)
