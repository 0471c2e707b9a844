"""What makes an output folder trustworthy: its run manifest, one writer at a time, and
per-key completion checked part by part.

- Manifest (OUT/_genomeconv_manifest.json): the settings that change values (output kind, model
  id, sha256 of the model's weight files and config, pooling, window, strands, dtype, device
  type...) and fingerprints of the inputs values depend on (path, size, content sha256; files over
  FULL_HASH_BYTES are hashed on their first and last MiB and compared by mtime too). Which items
  are asked for is not part of it: another selection only adds or skips keys. A rerun whose
  manifest is equal resumes; one that differs is refused naming each differing field (or, with
  --overwrite, the old outputs are removed first). Written atomically (temp file + rename).
- Lock (OUT/.genomeconv.lock): `fcntl.flock` held by the driver for the whole run, the file
  holding its pid, host, command and run id. A second run is refused at once; a lock file whose
  flock is free but whose text names a holder was left by a run that died: reported as stale and
  taken over. A clean end empties the file.
- Commits: workers rename a finished part into place under OUT/.genomeconv.commit's flock, and only
  while the lock file still names their run. A new driver writes its run id under the same flock,
  so a worker orphaned by a killed driver either commits before the new run reads the finished
  keys (and is counted) or never (and its rows are recomputed): no key can land twice.
- Parts: a part counts only if it opens, its footer reads, its key columns have its footer's row
  count and no nulls, and its metadata names this manifest; anything else is moved aside as
  `.damaged-<ns>-<name>` (hidden from queries) with a note, and its items are computed again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genomeconv.errors import GenomeconvError, InputError, writing
from genomeconv.pipelines import schema

MANIFEST_FILE = "_genomeconv_manifest.json"  # "_": readers of the folder (pyarrow) skip it
LOCK_FILE = ".genomeconv.lock"
COMMIT_LOCK_FILE = ".genomeconv.commit"
PART_GLOB = "part-*.parquet"
TEMP_GLOB = ".tmp-*"
DAMAGED_PREFIX = ".damaged-"
FULL_HASH_BYTES = 64 << 20  # inputs up to this size are hashed whole
SAMPLE_BYTES = 1 << 20  # larger ones: their first and last MiB (and their mtime is compared)
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt")
WEIGHT_SHARD = re.compile(r".+\.pt\.part\d+$")  # Evo 2's byte shards of a .pt (NAME.pt.part0, ...)
MANIFEST_FORMAT = "genomeconv-manifest"


def note(message: str) -> None:
    """One line on stderr about something the user should know but that is not an error."""
    print(f"genomeconv: {message}", file=sys.stderr, flush=True)


# --- fingerprints ------------------------------------------------------------------------------


def _sha256_file(path: Path, h: Any = None) -> Any:
    h = h or hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """path (absolute), size, mtime_ns and a content hash: `sha256` of the whole file up to
    FULL_HASH_BYTES, else `sha256_head_tail` of its first and last SAMPLE_BYTES."""
    p = Path(path).resolve()
    st = p.stat()
    fp: dict[str, Any] = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if st.st_size <= FULL_HASH_BYTES:
        fp["sha256"] = _sha256_file(p).hexdigest()
    else:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            h.update(fh.read(SAMPLE_BYTES))
            fh.seek(-SAMPLE_BYTES, os.SEEK_END)
            h.update(fh.read(SAMPLE_BYTES))
        fp["sha256_head_tail"] = h.hexdigest()
    return fp


def _identity_fields(fp: dict[str, Any]) -> dict[str, Any]:
    """The fields of a fingerprint that must match: a whole-file hash makes mtime irrelevant."""
    keys = ("path", "size", "sha256") if "sha256" in fp else (
        "path", "size", "sha256_head_tail", "mtime_ns")
    return {k: fp.get(k) for k in keys}


def model_fingerprint(model: str | Path | None, config_sha256: str) -> dict[str, Any]:
    """The model's id, the sha256 of its folder's weight files (names and bytes, head included)
    and its config hash: the same id with other weights is another model."""
    from genomeconv.models.checkpoints import checkpoint_dir

    directory, model_id = checkpoint_dir(model)
    if Path(model_id).exists():
        model_id = str(Path(model_id).resolve())
    h = hashlib.sha256()
    for f in sorted(directory.iterdir()):
        if f.is_file() and (f.suffix in WEIGHT_SUFFIXES or WEIGHT_SHARD.match(f.name)):
            h.update(f.name.encode() + b"\0")
            _sha256_file(f, h)
    return {"model": model_id, "model_weights_sha256": h.hexdigest(),
            "model_config_sha256": config_sha256}


# --- the manifest ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A run's settings that change values and the fingerprints of the inputs they depend on."""

    kind: str
    settings: dict[str, Any]
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> fingerprint

    def identity(self) -> dict[str, Any]:
        """The compared fields, flattened: kind, schema version, settings, inputs' identities."""
        flat: dict[str, Any] = {"kind": self.kind, "schema_version": schema.SCHEMA_VERSION}
        flat.update(self.settings)
        for role, fp in sorted(self.inputs.items()):
            for key, value in _identity_fields(fp).items():
                flat[f"{role}.{key}"] = value
        return flat

    @property
    def sha256(self) -> str:
        """Hash of `identity()`: written into every part's metadata."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self, command: str) -> str:
        """The manifest file's text (what and when are recorded too, but not compared)."""
        import genomeconv

        return json.dumps({
            "format": MANIFEST_FORMAT, "kind": self.kind, "sha256": self.sha256,
            "settings": self.settings, "inputs": self.inputs,
            "schema_version": schema.SCHEMA_VERSION, "genomeconv_version": genomeconv.__version__,
            "command": command, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }, indent=2, sort_keys=True) + "\n"

    @classmethod
    def read(cls, path: Path) -> tuple[Manifest, dict[str, Any]]:
        """The manifest in `path` and its raw JSON (for the schema version it was written with)."""
        try:
            raw = json.loads(path.read_text())
            manifest = cls(raw["kind"], raw["settings"], raw.get("inputs", {}))
            why = None if raw.get("format") == MANIFEST_FORMAT else f"format {raw.get('format')!r}"
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        if why is not None:
            raise InputError(f"unreadable run manifest ({why}); pass --overwrite to start "
                             "afresh or use another --out", path=path)
        return manifest, raw


def differences(old: Manifest, new: Manifest, *, old_schema: str | None = None) -> list[str]:
    """'field: OLD (in the folder) vs NEW (this run)' for each compared field that differs."""
    a, b = old.identity(), new.identity()
    if old_schema is not None:
        a["schema_version"] = old_schema
    return [f"{key}: {a.get(key)!r} (in the folder) vs {b.get(key)!r} (this run)"
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with writing(path), open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- one writer per folder ---------------------------------------------------------------------


@dataclass(frozen=True)
class RunToken:
    """What a worker needs to commit parts into a folder for one run (small and picklable)."""

    folder: str
    run_id: str

    def commit(self, tmp: Path, final: Path) -> None:
        """Rename `tmp` to `final` if this run still owns the folder; else delete `tmp` and
        raise (the driver died and a newer run took over: its rows will be computed there)."""
        folder = Path(self.folder)
        with open(folder / COMMIT_LOCK_FILE, "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            if _holder(folder / LOCK_FILE).get("run_id") != self.run_id:
                tmp.unlink(missing_ok=True)
                raise GenomeconvError(f"{folder}: this run no longer holds the folder's lock; "
                                      f"{final.name} was not written")
            os.replace(tmp, final)


def _holder(lock_path: Path) -> dict[str, Any]:
    """The JSON a lock file holds ({} when empty, missing or unreadable)."""
    try:
        text = lock_path.read_text()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}: {holder.get('command', '?')}")


class FolderLock:
    """The one-writer lock of an output folder (see the module docstring)."""

    def __init__(self, folder: str | Path, command: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.command = command
        self.run_id = uuid.uuid4().hex
        self._fh: Any = None

    def acquire(self) -> RunToken:
        """Take the lock or raise InputError naming its holder; report a stale lock taken over."""
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            holder = _describe(_holder(self.path))
            raise InputError(f"another genomeconv run is writing here ({holder}); wait for it "
                             "to finish or pass another --out", path=self.folder) from None
        stale = _holder(self.path)
        if stale:
            note(f"{self.folder}: taking over a stale lock left by a run that is gone "
                 f"({_describe(stale)})")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_id": self.run_id}
        with writing(self.path), open(self.folder / COMMIT_LOCK_FILE, "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # orphaned workers' commits finish first
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(holder) + "\n")
            fh.flush()
        self._fh = fh
        return RunToken(str(self.folder), self.run_id)

    def release(self) -> None:
        """Empty the lock file (a clean end) and release the lock."""
        if self._fh is None:
            return
        with open(self.folder / COMMIT_LOCK_FILE, "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            self._fh.seek(0)
            self._fh.truncate()
            self._fh.flush()
        self._fh.close()  # closing releases the flock
        self._fh = None


# --- parts -------------------------------------------------------------------------------------


def read_part_keys(path: Path, manifest_sha256: str,
                   columns: Sequence[str]) -> tuple[Any, str | None]:
    """(the part's key columns as a pyarrow Table, None) when the part counts, else (None, why):
    it must open, its footer read, its metadata name this manifest, its key columns hold its
    footer's row count and no nulls. columns=() checks the file without reading rows."""
    import pyarrow.parquet as pq

    try:
        if path.stat().st_size == 0:
            return None, "it is empty (zero bytes)"
        pf = pq.ParquetFile(path)
        meta = pf.schema_arrow.metadata or {}
        if meta.get(schema.KEY_MANIFEST) != manifest_sha256.encode():
            return None, "it was not written under this folder's manifest"
        keys = pf.read(columns=list(columns)) if columns else None
    except Exception as exc:  # a damaged file raises whatever pyarrow finds wrong
        return None, f"it cannot be read ({type(exc).__name__}: {str(exc)[:200]})"
    if keys is not None:
        if keys.num_rows != pf.metadata.num_rows:
            return None, f"it holds {keys.num_rows} keys for {pf.metadata.num_rows} rows"
        if any(keys.column(c).null_count for c in columns):
            return None, "it has rows without keys"
    return (keys if keys is not None else pf.metadata.num_rows), None


def move_aside(path: Path, why: str) -> Path:
    """Rename a part that does not count to a hidden `.damaged-*` name and say so."""
    target = path.with_name(f"{DAMAGED_PREFIX}{time.time_ns()}-{path.name}")
    os.replace(path, target)
    note(f"{path}: not counted as done because {why}; moved aside to {target.name} "
         "(its items are computed again)")
    return target


# --- a run -------------------------------------------------------------------------------------


@dataclass
class Run:
    """An open run: the folder is locked, its manifest matches, stray temporary files are gone."""

    folder: Path
    manifest: Manifest
    token: RunToken


# What --overwrite removes in OUT and in each folder directly under it (embeddings/, per_base/,
# track/, bigwig/: whichever job wrote them): parts, temporary and moved-aside files, bigWigs.
OUTPUT_GLOBS = (PART_GLOB, TEMP_GLOB, f"{DAMAGED_PREFIX}*", "*.bw")


def _outputs(folder: Path) -> list[Path]:
    """Every output file of any genomeconv job in `folder` (OUTPUT_GLOBS)."""
    dirs = [folder, *(d for d in folder.iterdir() if d.is_dir())]
    return [p for d in dirs for pattern in OUTPUT_GLOBS for p in d.glob(pattern) if p.is_file()]


@contextlib.contextmanager
def open_run(folder: str | Path, manifest: Manifest, *, part_dirs: Sequence[str | Path],
             command: str, overwrite: bool = False) -> Iterator[Run]:
    """Lock `folder`, check (or write) its manifest, and yield the Run; the lock is released when
    the block ends, however it ends.

    part_dirs: the folders holding this kind's parts (`folder` itself or subfolders of it),
    cleared of a killed run's temporary files. With `overwrite`, once the lock is held, every
    genomeconv output in the folder is removed first, whichever job wrote it (`OUTPUT_GLOBS`),
    and the manifest.
    Refused (InputError): a folder whose manifest differs, or that holds parts without one.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError("--out must be a folder, not a file", path=folder)
    folder.mkdir(parents=True, exist_ok=True)
    dirs = [Path(d) for d in part_dirs]
    lock = FolderLock(folder, command)
    token = lock.acquire()
    try:
        path = folder / MANIFEST_FILE
        parts = sorted(folder.rglob(PART_GLOB))  # any kind's: embed's sit in subfolders
        if overwrite:
            removed = _outputs(folder)
            for p in removed:
                p.unlink()
            path.unlink(missing_ok=True)
            count = sum(p.name.startswith("part-") for p in removed)
            note(f"{folder}: --overwrite removed {count} earlier part(s)")
        elif path.exists():
            old, raw = Manifest.read(path)
            diffs = differences(old, manifest, old_schema=raw.get("schema_version"))
            if diffs and parts:
                raise InputError(
                    "holds outputs of another run whose settings or inputs differ: "
                    + "; ".join(diffs) + ". Rerun with the same settings to resume, pass "
                    "--overwrite to replace them, or use another --out", path=folder)
        elif parts:
            raise InputError(f"holds {len(parts)} part(s) but no {MANIFEST_FILE} (written by an "
                             "older genomeconv or by hand); pass --overwrite to replace them or "
                             "use another --out", path=folder)
        write_atomic(path, manifest.to_json(command))
        for d in dirs:  # temporary files of a killed run, whose workers can no longer commit
            for tmp in d.glob(TEMP_GLOB) if d.is_dir() else ():
                tmp.unlink(missing_ok=True)
        yield Run(folder, manifest, token)
    finally:
        lock.release()
