"""Reading a model folder's files (weights, config.json) without running code from them, for
every family's loader.

safetensors is read as is. Torch pickles (HyenaDNA's Lightning `weights.ckpt`, Evo 2's `.pt`)
go through torch's restricted unpickler (`weights_only=True`); globals a public format forces
on us are replaced by an inert placeholder class, so no code from the file runs (tensors are
rebuilt only by torch's allowlisted functions). The residual risk is that of torch's restricted
unpickler itself; prefer safetensors. Every problem is one InputError naming the file.
"""

from __future__ import annotations

import json
import pickle
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
