"""Evo 2's checkpoint layouts: the release (a folder with `config.yml` in the evo2 package's
format and one `*.pt` torch state dict or its byte shards `NAME.pt.part0`, `.part1`, ...), the
hub's (the same without config.yml: `evo2_7b.pt` or its shards, read with the packaged config
of that published name) and genomeconv's own folders of the "evo2" family (safetensors).

Release state dicts are read with torch's restricted unpickler allowing `io.BytesIO` only (the
Transformer Engine `_extra_state` entries of the FP8 layers; dropped unread), memory-mapped for
a single file. Keys, shapes and the attention Wqkv row order are the release's (model.py). Two
leftovers of the conversion from the training code, which vortex skips too, are dropped after a
shape check: `unembed.weight` (the embedding is tied) and `blocks.{i}.mixer.mixer.filter.t`
(a position index). Any other missing, extra or misshapen tensor, or a non-finite one, is one
InputError naming it, before a module is built.

Dtypes: the weights keep the file's dtype (dtype=None; the releases store bfloat16) or take
`dtype`, except the hcl poles and residues, which stay at least float32 as in the official
loader (to_bfloat16_except_pr_lc).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import torch

from genomeconv.errors import InputError
from genomeconv.models.families.evo2.config import (HUB_CONFIGS, Evo2Config, published_config,
                                                   read_release_config)
from genomeconv.models.families.evo2.model import Evo2
from genomeconv.models.weights import ModelNotFoundError, few, load_torch_file

RELEASE_CONFIG = "config.yml"
# the published checkpoints by file stem (the hub stores `{stem}.pt` or its shards)
PUBLISHED = {repo.split("/")[1]: config for repo, config in HUB_CONFIGS.items()}
HUB_FILES = {repo: (f"{repo.split('/')[1]}.pt", f"{repo.split('/')[1]}.pt.part*")
             for repo in HUB_CONFIGS}
_LEFTOVER = re.compile(r"^(unembed\.weight|blocks\.\d+\.mixer\.mixer\.filter\.t)$")
_SHARD = re.compile(r"^(.+\.pt)\.part(\d+)$")
FLOAT32_PARAMS = (".filter.log_poles", ".filter.residues")


def weight_files(directory: Path) -> list[Path]:
    """The release weights in a folder: its one `*.pt`, else the shards of one `NAME.pt`
    (part0, part1, ... with no gap); [] when there are none."""
    whole = sorted(p for p in directory.glob("*.pt") if p.is_file())
    if len(whole) > 1:
        raise InputError(f"several .pt files ({', '.join(p.name for p in whole)}): an Evo 2 "
                         "folder holds one checkpoint", path=directory)
    if whole:
        return whole
    shards: dict[str, dict[int, Path]] = {}
    for p in directory.iterdir():
        match = _SHARD.match(p.name)
        if match and p.is_file():
            shards.setdefault(match.group(1), {})[int(match.group(2))] = p
    if len(shards) > 1:
        raise InputError(f"shards of several checkpoints ({', '.join(sorted(shards))})",
                         path=directory)
    if not shards:
        return []
    (name, parts), = shards.items()
    missing = [i for i in range(max(parts) + 1) if i not in parts]
    if missing:
        raise InputError(f"{name}.part{missing[0]} is missing (shards are joined in order from "
                         "part0)", path=directory)
    return [parts[i] for i in range(len(parts))]


def _stem(files: list[Path]) -> str:
    return _SHARD.sub(r"\1", files[0].name)[:-len(".pt")]


def is_release(directory: Path) -> bool:
    """A folder with a NAME.pt or its shards (load_release says what else it needs)."""
    try:
        return bool(weight_files(directory))
    except InputError:
        return True  # several checkpoints: load_release names them


def load_release(directory: Path, model_id: str, device: Any, dtype: Any) -> Evo2:
    """A release or hub folder (module docstring)."""
    files = weight_files(directory)
    if not files:
        raise ModelNotFoundError("no NAME.pt or NAME.pt.part0 in this Evo 2 folder",
                                 path=directory)
    config_path = directory / RELEASE_CONFIG
    if config_path.is_file():
        config = read_release_config(config_path)
    elif _stem(files) in PUBLISHED:
        config = published_config(PUBLISHED[_stem(files)])
    else:
        raise ModelNotFoundError(f"no {RELEASE_CONFIG} beside {files[0].name}, and "
                                 f"{_stem(files)!r} is no published Evo 2 checkpoint "
                                 f"({', '.join(PUBLISHED)})", path=directory)
    state = load_torch_file(files, allowed_globals=(io.BytesIO,))
    return build(config, release_state(state, config, files[0]), model_id, device, dtype,
                 files[0])


def release_state(state: Any, config: Evo2Config, path: Path) -> dict[str, torch.Tensor]:
    """A release state dict without its `_extra_state` entries and conversion leftovers (their
    shapes checked); anything but a flat mapping of tensors is refused."""
    if not isinstance(state, dict):
        raise InputError(f"the checkpoint holds a {type(state).__name__}, not an Evo 2 state "
                         "dict", path=path)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if isinstance(key, str) and key.endswith("._extra_state"):
            continue
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{key!r} holds a {type(value).__name__}, not a tensor", path=path)
        if isinstance(key, str) and _LEFTOVER.match(key):
            if key == "unembed.weight" and tuple(value.shape) != (config.vocab_size,
                                                                  config.hidden_size):
                raise InputError(f"unembed.weight {tuple(value.shape)} is not (vocab_size, "
                                 f"hidden_size) = ({config.vocab_size}, {config.hidden_size})",
                                 path=path)
            continue
        tensors[key] = value
    return tensors


def build(config: Evo2Config, state: dict[str, torch.Tensor], model_id: str, device: Any,
          dtype: Any, path: Path) -> Evo2:
    """An Evo2 holding `state` (checked against the config first; module docstring)."""
    with torch.device("meta"):
        model = Evo2(config, init=False)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{len(names)} {what} ({few(names)})" for names, what in (
        (missing, "missing tensors"), (unexpected, "unexpected tensors"),
        (wrong, "tensors of the wrong shape")) if names]
    if problems:
        raise InputError(f"weights do not match the config ({config.model_name or 'Evo 2'}, "
                         f"{config.num_layers} layers, hidden {config.hidden_size}): "
                         + "; ".join(problems), path=path)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise InputError(f"{len(bad)} tensors hold NaN or inf ({few(bad)}): a broken model",
                         path=path)
    model.load_state_dict(state, assign=True)
    for name, p in model.named_parameters():
        wanted = dtype or p.dtype
        if name.endswith(FLOAT32_PARAMS):
            wanted = torch.promote_types(wanted, torch.float32)
        p.data = p.data.to(device=device, dtype=wanted)
    for b in model.buffers():
        b.data = b.data.to(device=device, dtype=torch.float32)  # rotary inv_freq
    model.model_id = model_id
    return model.eval()


def load_saved(values: dict, state: dict[str, torch.Tensor], directory: Path, model_id: str,
               device: Any, dtype: Any) -> Evo2:
    """The "evo2" family's loader for genomeconv folders (config.json + model.safetensors)."""
    config = Evo2Config.from_dict(values, directory / "config.json")
    return build(config, state, model_id, device, dtype, directory / "model.safetensors")
