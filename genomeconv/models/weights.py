"""A model folder's files read without running code from them, for every family's loader:
safetensors, config.json, and torch pickle files (what `torch.save` writes: Lightning's
weights.ckpt, Evo 2's .pt).

`load_torch_file` is the one way genomeconv opens such a file: torch's restricted unpickler
(`torch.load(weights_only=True)`) rebuilds tensors, plain containers and the globals a caller
allows by name, and refuses anything else; optionally every other global is replaced by an inert
placeholder instead (the public HyenaDNA checkpoints pickle omegaconf objects that nobody needs).
A checkpoint split into byte shards (Evo 2's `NAME.pt.part0`, `.part1`, ...) is read through one
joined stream, never copied to disk.
Whatever goes wrong (a missing, truncated or non-torch file, a refused global such as os.system,
a pickle opcode the restricted unpickler lacks) is one InputError naming the file; torch's own
warnings about the file are not printed. The residual risk is that of torch's restricted
unpickler itself; prefer safetensors.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from genomeconv.errors import InputError

NAMED = 3  # tensors named in a missing/unexpected-keys message

_REFUSAL = re.compile(r"WeightsUnpickler error:\s*([^\n]+)|(Trying to load [^\n]+)")


class _Inert:
    """Stand-in for a global the file names that is not allowed: accepts anything, does
    nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        pass


def load_torch_file(path: str | Path | Sequence[Path], *, allowed_globals: Sequence[Any] = (),
                    inert_unknown: bool = False) -> Any:
    """The object a torch.save file holds, loaded on the CPU with no code from it run.

    path: the file (memory-mapped: tensors are read from the page cache as they are used), or
    its byte shards in order (`NAME.pt.part0`, `.part1`, ...: read as one stream, never joined
    on disk). allowed_globals: classes or functions (or (object, "module.name") pairs) the file
    may name besides torch's own, as for torch.serialization.safe_globals. inert_unknown: every
    other global becomes an inert `_Inert` instead of a refusal (one zip-format file only: a
    legacy file's globals cannot be listed without unpickling it). InputError naming the file
    for anything that cannot be loaded so.
    """
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    name = paths[0] if len(paths) == 1 else Path(f"{paths[0]} (+{len(paths) - 1} shards)")
    for p in paths:
        if not p.is_file():
            raise InputError("file not found", path=p)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed_globals)):
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" on stderr
            try:
                return _load(paths)
            except pickle.UnpicklingError:
                if not (inert_unknown and len(paths) == 1 and zipfile.is_zipfile(paths[0])):
                    raise
                names = torch.serialization.get_unsafe_globals_in_checkpoint(paths[0])
            with torch.serialization.safe_globals([(_Inert, n) for n in names]):
                return _load(paths)
    except Exception as exc:  # whatever torch raises on a file it refuses or cannot parse
        raise InputError(_reason(exc, paths[0]), path=name) from None


def _load(paths: list[Path]) -> Any:
    """torch.load(weights_only=True) of one file (memory-mapped when it is a zip-format file,
    which mmap needs) or of byte shards joined."""
    if len(paths) == 1:
        mmap = zipfile.is_zipfile(paths[0])
        return torch.load(paths[0], map_location="cpu", weights_only=True, mmap=mmap)
    with io.BufferedReader(_JoinedFile(paths), buffer_size=1 << 20) as stream:
        return torch.load(stream, map_location="cpu", weights_only=True)


class _JoinedFile(io.RawIOBase):
    """Byte shards read as one seekable file (torch.load reads a zip through it)."""

    def __init__(self, paths: Sequence[Path]):
        super().__init__()
        self.files = [open(p, "rb") for p in paths]
        self.starts, total = [], 0
        for f in self.files:
            self.starts.append(total)
            total += f.seek(0, io.SEEK_END)
        self.total, self.pos = total, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.total}[whence] + offset
        return self.pos

    def readinto(self, buffer) -> int:
        view, done = memoryview(buffer).cast("B"), 0
        for f, start in zip(self.files, self.starts):
            size = f.seek(0, io.SEEK_END)
            if done < len(view) and start <= self.pos < start + size:
                f.seek(self.pos - start)
                got = f.readinto(view[done:done + min(len(view) - done, start + size - self.pos)])
                done, self.pos = done + got, self.pos + got
        return done

    def close(self) -> None:
        for f in self.files:
            f.close()
        super().close()


def _reason(exc: Exception, path: Path) -> str:
    """One line on why torch could not load the file safely, and what to do."""
    text = " ".join(str(exc).split())
    if isinstance(exc, pickle.UnpicklingError):
        found = _REFUSAL.search(str(exc))  # torch's reason among paragraphs of advice
        reason = (found[1] or found[2]).split(". ")[0].rstrip(".") if found else text[:200]
        kind = "zip-format" if zipfile.is_zipfile(path) else "legacy-format (not zip)"
        return (f"refusing to unpickle this {kind} file ({reason}), and no code from it ran; "
                "convert it to safetensors where it came from")
    why = "empty file" if path.stat().st_size == 0 else f"{type(exc).__name__}: {text[:200]}"
    return f"unreadable checkpoint ({why}); copy or download it again"


class ModelNotFoundError(InputError, FileNotFoundError):
    """No model folder (or no config/weights in it) where the user pointed."""


def few(names: list[str]) -> str:
    """The first NAMED names, comma-separated, with "..." when there are more."""
    return ", ".join(names[:NAMED]) + (", ..." if len(names) > NAMED else "")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU."""
    if not path.is_file():
        raise ModelNotFoundError("not found (a genomeconv model folder holds config.json and "
                                 "model.safetensors)", path=path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise InputError(f"unreadable safetensors file ({' '.join(str(exc).split())}); "
                         "copy or download it again", path=path) from None


def read_json(path: Path) -> dict:
    """A model folder's config.json: one JSON object (InputError naming the file and line)."""
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg})", path=path, line=exc.lineno) from None
    except UnicodeDecodeError:
        raise InputError("not a text file", path=path) from None
    if not isinstance(cfg, dict):
        raise InputError("a model config.json holds one JSON object", path=path)
    return cfg
