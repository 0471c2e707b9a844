"""Reading a model folder's files (weights, config.json) without running code from them, for
every family's loader.

safetensors is read as is. Torch pickles (HyenaDNA's Lightning `weights.ckpt`, Evo 2's `.pt`)
go through torch's restricted unpickler (`weights_only=True`); globals a public format forces
on us are replaced by an inert placeholder class (`read_torch_pickle`), or are allowed by name
where the format needs a harmless type (`read_torch_parts`: Evo 2's `io.BytesIO` entries), so
no code from the file runs (tensors are rebuilt only by torch's allowlisted functions). A
checkpoint split into byte shards (`NAME.pt.part0`, `.part1`, ...) is read through one joined
stream, never copied to disk. The residual risk is that of torch's restricted unpickler
itself; prefer safetensors. Every problem is one InputError naming the file.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from genomeconv.errors import InputError

NAMED = 3  # tensors named in a missing/unexpected-keys message


class ModelNotFoundError(InputError, FileNotFoundError):
    """No model folder (or no config/weights in it) where the user pointed."""


class _Inert:
    """Stand-in for every non-torch global in a checkpoint pickle: accepts anything, does
    nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        pass


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


def read_torch_pickle(path: Path, *, inert_globals: bool = False) -> object:
    """A torch.save file loaded with weights_only=True; with `inert_globals`, a second try in
    which every global the restricted unpickler refuses becomes `_Inert` (Lightning checkpoints
    pickle omegaconf objects next to the tensors)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as exc:  # not a torch zip file: truncated, corrupt
        raise InputError(f"unreadable checkpoint ({' '.join(str(exc).split())})",
                         path=path) from None
    except pickle.UnpicklingError as exc:
        if not inert_globals:
            raise InputError(f"refusing to unpickle this checkpoint ({' '.join(str(exc).split())})"
                             "; convert it to safetensors where it came from", path=path) from None
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    try:
        with torch.serialization.safe_globals([(_Inert, name) for name in names]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"refusing to unpickle this checkpoint ({exc}); convert it to "
                         "safetensors where it came from", path=path) from None


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


def read_torch_parts(paths: Sequence[Path], *, allow: Sequence[type] = ()) -> object:
    """A torch.save file, or its byte shards joined in order, loaded with weights_only=True
    allowing only the types in `allow` beyond torch's own; a single file is memory-mapped
    (tensors are read from the page cache as they are used)."""
    path = paths[0] if len(paths) == 1 else Path(f"{paths[0]} (+{len(paths) - 1} shards)")
    try:
        with torch.serialization.safe_globals(list(allow)):
            if len(paths) == 1:
                return torch.load(paths[0], map_location="cpu", weights_only=True, mmap=True)
            with io.BufferedReader(_JoinedFile(paths), buffer_size=1 << 20) as stream:
                return torch.load(stream, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = " ".join(str(exc).split())[:300]
        raise InputError(f"refusing to unpickle this checkpoint ({reason}); convert it to "
                         "safetensors where it came from", path=path) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # truncated, corrupt, not a zip
        raise InputError(f"unreadable checkpoint ({' '.join(str(exc).split())[:300]})",
                         path=path) from None


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
