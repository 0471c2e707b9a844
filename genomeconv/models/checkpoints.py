"""Load models: resolve what the user named (the bundled model, a folder, a hub id) to a local
folder, and dispatch it to the family that reads it.

A folder in genomeconv's own layout names its family in config.json ("family"; folders written
before families existed are HyenaDNA's); any other folder is offered to each family's release
layouts in turn (HyenaDNA's original and -hf layouts, Evo 2's config.yml + .pt). The families
live in `models/families/`, one module each, imported here once (`families`): each registers
itself (models/base.py), so this module names none of them.

Hub ids ("owner/name") are downloaded with huggingface_hub (weights and config only: the files
the family that knows the id asks for, else the generic HyenaDNA layout files); code from a hub
repository is never downloaded or run. A string is a local path, never a hub id, when it starts
with ./, ../, / or ~, or its first component exists here.

Every problem with a model folder is one InputError line naming the file (the families check
config values, tensor names, shapes and finiteness before a module is built).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import torch

import genomeconv.models.families as families_package
from genomeconv.errors import InputError
from genomeconv.models.base import FAMILIES, FORMAT_VERSION, Family, LanguageModel, family_loader
from genomeconv.models.weights import ModelNotFoundError, read_json, read_safetensors

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLED_ID = "genomeconv/bundled"
# The hub's rule for owner and repository names: letters, digits, '-', '_', '.', at most 96,
# not starting or ending with '-' or '.', no '--' or '..' ("x/.." is a path, not a repository).
_HUB_NAME = r"(?!.*(?:--|\.\.))\w(?:[\w.-]{0,94}\w)?"
_HUB_ID = re.compile(rf"^{_HUB_NAME}/{_HUB_NAME}$")
_HUB_FILES = ["config.json", "model.safetensors", "weights.ckpt"]
_LOCAL_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")


class CheckpointDownloadError(InputError, OSError):
    """A hub id could not be downloaded (offline, unknown repository, no access)."""


def families() -> dict[str, Family]:
    """Every registered family, each module under models/families imported once (importing it
    registers it)."""
    for info in pkgutil.iter_modules(families_package.__path__):
        importlib.import_module(f"genomeconv.models.families.{info.name}")
    return FAMILIES


def _load_directory(directory: Path, model_id: str, device, dtype) -> LanguageModel:
    """Load a local folder: genomeconv's own layout by its family, else a release layout."""
    config_path = directory / "config.json"
    cfg = read_json(config_path) if config_path.is_file() else {}
    known = families()
    family = cfg.get("family", "hyena" if cfg.get("format") == "genomeconv-hyena" else None)
    if family is not None:
        if cfg.get("format_version") != FORMAT_VERSION:
            raise InputError(f"format_version {cfg.get('format_version')} is not supported "
                             f"(expected {FORMAT_VERSION})", path=config_path)
        values = cfg.get("config")
        if not isinstance(values, dict):
            raise InputError("no 'config' object", path=config_path)
        loader = family_loader(family, config_path)
        return loader(values, read_safetensors(directory / "model.safetensors"), directory,
                      model_id, device, dtype)
    layouts = [layout for fam in known.values() for layout in fam.layouts]
    for layout in layouts:
        if layout.detect(directory):
            return layout.load(directory, model_id, device, dtype)
    what = "; ".join(["config.json + model.safetensors (genomeconv)"]
                     + [layout.describe for layout in layouts])
    raise ModelNotFoundError(f"no model files found (a model folder holds one of: {what})",
                             path=directory)


def _hub_files(repo_id: str) -> list[str]:
    """The files of a hub repository to download: those the family that knows the id asks for,
    else the HyenaDNA layouts' (config.json, model.safetensors, weights.ckpt)."""
    for fam in families().values():
        if repo_id in fam.hub_files:
            return list(fam.hub_files[repo_id])
    return _HUB_FILES


def _download(repo_id: str) -> Path:
    """Weights and config of a hub repository (never its code) through huggingface_hub."""
    from huggingface_hub import snapshot_download

    files = _hub_files(repo_id)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=files))
    except Exception as exc:  # offline, unknown repository, no access: one clear message
        reason = " ".join(str(exc).split())[:200]
        include = " ".join(f"'{f}'" if "*" in f else f for f in files)
        raise CheckpointDownloadError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{reason}). If this machine is offline, download it elsewhere, e.g. "
            f"`hf download {repo_id} --include {include} "
            f"--local-dir ./{repo_id.split('/')[-1]}`, copy the directory here and load it by "
            f"path: load('./{repo_id.split('/')[-1]}')") from exc


def checkpoint_dir(path_or_hub_id: str | Path | None = None) -> tuple[Path, str]:
    """(the local folder `load` reads, the model id it reports) for the bundled model (None or
    "bundled"), a local directory or a hub id ("owner/name", downloaded once); run manifests
    hash the weight files of this folder."""
    if path_or_hub_id is None or path_or_hub_id == "bundled":
        if not (BUNDLED_DIR / "config.json").is_file():
            raise ModelNotFoundError(f"the bundled model is missing: {BUNDLED_DIR} has no "
                                     "config.json (reinstall genomeconv or pass a checkpoint "
                                     "path)")
        return BUNDLED_DIR, BUNDLED_ID
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError("pass the model folder, not a file", path=path)
        return path, str(path_or_hub_id)
    if is_hub_id(path_or_hub_id):
        return _download(str(path_or_hub_id)), str(path_or_hub_id)
    raise ModelNotFoundError("no such model folder" + (
        "" if isinstance(path_or_hub_id, Path) or "/" not in path_or_hub_id else
        " (and not a hub id: those are owner/name, each of letters, digits, '-', '_' and '.', "
        "not starting or ending with '-' or '.', with no '--' or '..', and neither starts "
        "with ./, ../, / or ~ nor has a first component that exists here)"), path=path)


def is_hub_id(name: str | Path) -> bool:
    """Whether `name` means a hub repository rather than a local path: owner/name in form, not
    starting with ./, ../, / or ~, and its first component ("owner") not present here."""
    if not isinstance(name, str) or name.startswith(_LOCAL_PREFIXES):
        return False
    return bool(_HUB_ID.match(name)) and not Path(name.split("/", 1)[0]).exists()


def load(path_or_hub_id: str | Path | None = None, *, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None, model_id: str | None = None) -> LanguageModel:
    """A model in eval mode from the bundled model (None or "bundled"), a local directory
    (HyenaDNA's original or -hf layout, or a genomeconv folder of any family) or a hub id
    ("owner/name"). model_id: the id outputs report (default: what was passed)."""
    directory, default_id = checkpoint_dir(path_or_hub_id)
    return _load_directory(directory, model_id or default_id, device, dtype)


def save(model: LanguageModel, directory: str | Path, *, card: str | None = None) -> None:
    """Write `model` as a genomeconv folder (LanguageModel.save)."""
    model.save(directory, card=card)
