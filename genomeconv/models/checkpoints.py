"""Load and save HyenaDNA weights: the original release layout, the -hf layout, our own format.

- original: config.json (with a nested "layer" dict) + weights.ckpt, a Lightning checkpoint whose
  state_dict keys start with `model.backbone.` (gradient-checkpointed runs add `.mixer.layer.` /
  `.mlp.layer.`). The public files pickle omegaconf objects, so a plain `weights_only=True` load
  fails; we then load again with every non-torch global replaced by an inert placeholder class,
  so no code from the file runs (tensors are rebuilt only by torch's allowlisted functions).
  The residual risk is that of torch's restricted unpickler itself; prefer safetensors.
- -hf: config.json (flat) + model.safetensors with `hyena.backbone.*` and `lm_head.weight`
  (the shared Sin `freq` may be stored once or three times; the z/t buffers are stored too).
- genomeconv: config.json ({"format": "genomeconv-hyena", "config": ...}) + model.safetensors
  with our module names (freq stored once) + optional MODEL_CARD.md.

Hub ids ("owner/name") are downloaded with huggingface_hub (weights and config only); code
from a hub repository is never downloaded or run.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from genomeconv.models.hyena import HyenaConfig, HyenaDNA
from genomeconv.models.tokenizer import VOCAB

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLED_ID = "genomeconv/bundled"
FORMAT = "genomeconv-hyena"
FORMAT_VERSION = 1
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FREQ = re.compile(r"^(.*\.implicit_filter\.)(\d+)\.freq$")
_HUB_FILES = ["config.json", "model.safetensors", "weights.ckpt"]


class CheckpointDownloadError(OSError):
    """A hub id could not be downloaded (offline, unknown repository, no access)."""


class _Inert:
    """Stand-in for every non-torch global in a Lightning pickle: accepts anything, does nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        pass


# ---------------------------------------------------------------------------------- configs
def _config_from_hf(cfg: dict) -> HyenaConfig:
    return HyenaConfig(
        d_model=cfg["d_model"], n_layer=cfg["n_layer"],
        d_inner=cfg.get("d_inner") or 4 * cfg["d_model"], max_seq_len=cfg["max_seq_len"],
        vocab_size=cfg.get("vocab_size", 12),
        pad_vocab_size_multiple=cfg.get("pad_vocab_size_multiple", 8),
        emb_dim=cfg.get("emb_dim", 3), filter_order=cfg.get("filter_order", 64),
        short_filter_order=cfg.get("short_filter_order", 3),
        num_inner_mlps=cfg.get("num_inner_mlps", 2), hyena_order=cfg.get("hyena_order", 2),
        activation_freq=cfg.get("activation_freq", 10),
        layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-5))


def _config_from_original(cfg: dict) -> HyenaConfig:
    layer = cfg["layer"]
    return HyenaConfig(
        d_model=cfg["d_model"], n_layer=cfg["n_layer"],
        d_inner=cfg.get("d_inner") or 4 * cfg["d_model"], max_seq_len=layer["l_max"],
        vocab_size=cfg.get("vocab_size", 12),
        pad_vocab_size_multiple=cfg.get("pad_vocab_size_multiple", 8),
        emb_dim=layer.get("emb_dim", 3), filter_order=layer.get("filter_order", 64),
        num_inner_mlps=layer.get("num_inner_mlps", 2), hyena_order=layer.get("order", 2),
        activation_freq=layer.get("w", 1), modulate=layer.get("modulate", True),
        modulation_shift=layer.get("shift", 0.05),  # as served by the standalone/-hf code
        layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-5))


# ---------------------------------------------------------------------------------- weights
def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _read_lightning(path: Path) -> dict[str, torch.Tensor]:
    """state_dict of a Lightning weights.ckpt without running code from the file."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        try:
            with torch.serialization.safe_globals([(_Inert, name) for name in names]):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(f"{path}: refusing to unpickle this checkpoint ({exc}); "
                             "convert it to safetensors where it came from") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no 'state_dict' in this Lightning checkpoint")
    return state


def _rename_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if not key.startswith(("model.backbone.", "model.lm_head.")):
            continue  # task heads, optimizer-side extras
        key = key[len("model."):]
        key = key.replace(".mixer.layer.", ".mixer.").replace(".mlp.layer.", ".mlp.")
        out[key] = value
    return out


def _rename_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {(k[len("hyena."):] if k.startswith("hyena.") else k): v for k, v in state.items()}


def _normalize(state: dict[str, torch.Tensor], model: HyenaDNA) -> dict[str, torch.Tensor]:
    """Fill the shared Sin freq, drop z/t after checking them, tie a missing lm_head."""
    state = dict(state)
    freqs: dict[str, dict[int, torch.Tensor]] = {}
    for key in [k for k in state if _FREQ.match(k)]:
        prefix, idx = _FREQ.match(key).groups()
        freqs.setdefault(prefix, {})[int(idx)] = state.pop(key)
    for prefix, found in freqs.items():
        first = next(iter(found.values()))
        if any(not torch.equal(first, f) for f in found.values()):
            raise ValueError(f"{prefix}*.freq differ; HyenaDNA shares one Sin frequency vector")
        for idx, module in enumerate(model.get_submodule(prefix.rstrip("."))):
            if hasattr(module, "freq"):
                state[f"{prefix}{idx}.freq"] = first
    buffers = dict(model.named_buffers())
    for key in [k for k in state if k.endswith((".pos_emb.z", ".pos_emb.t"))]:
        stored, ours = state.pop(key), buffers.get(key)
        if ours is None or stored[:, :ours.shape[1]].shape != ours.shape or not torch.allclose(
                stored.float(), ours.float(), atol=1e-4):
            raise ValueError(f"{key} differs from the HyenaDNA positional features for this "
                             "config (trained positional features are not supported)")
    if "lm_head.weight" not in state and "backbone.embeddings.word_embeddings.weight" in state:
        state["lm_head.weight"] = state["backbone.embeddings.word_embeddings.weight"]
    return state


def _build(config: HyenaConfig, state: dict[str, torch.Tensor], model_id: str,
           device, dtype) -> HyenaDNA:
    model = HyenaDNA(config)
    model.load_state_dict(_normalize(state, model), strict=True)
    model.model_id = model_id
    model.eval()
    return model.to(device=device, dtype=dtype)


def _load_directory(directory: Path, model_id: str, device, dtype) -> HyenaDNA:
    """Detect the layout of a local checkpoint directory and load it."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found (a checkpoint directory holds "
                                "config.json and model.safetensors or weights.ckpt)")
    cfg = json.loads(config_path.read_text())
    if cfg.get("format") == FORMAT:
        if cfg.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{config_path}: format_version {cfg.get('format_version')} "
                             f"is not supported (expected {FORMAT_VERSION})")
        return _build(HyenaConfig.from_dict(cfg["config"]),
                      _read_safetensors(directory / "model.safetensors"), model_id, device, dtype)
    if (directory / "model.safetensors").is_file():
        state = _rename_hf(_read_safetensors(directory / "model.safetensors"))
        return _build(_config_from_hf(cfg), state, model_id, device, dtype)
    if (directory / "weights.ckpt").is_file():
        state = _rename_original(_read_lightning(directory / "weights.ckpt"))
        return _build(_config_from_original(cfg), state, model_id, device, dtype)
    raise FileNotFoundError(f"{directory}: neither model.safetensors nor weights.ckpt found")


def _download(repo_id: str) -> Path:
    """Weights and config of a hub repository (never its code) through huggingface_hub."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except Exception as exc:  # offline, unknown repository, no access: one clear message
        raise CheckpointDownloadError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{exc}). If this machine is offline, download it elsewhere, e.g. "
            f"`hf download {repo_id} config.json model.safetensors weights.ckpt "
            f"--local-dir ./{repo_id.split('/')[-1]}`, copy the directory here and load it by "
            f"path: load('./{repo_id.split('/')[-1]}')") from exc


def checkpoint_dir(path_or_hub_id: str | Path | None = None) -> tuple[Path, str]:
    """(the local folder `load` reads, the model id it reports) for the bundled model (None or
    "bundled"), a local directory or a hub id ("owner/name", downloaded once); run manifests
    hash the weight files of this folder."""
    if path_or_hub_id is None or path_or_hub_id == "bundled":
        if not (BUNDLED_DIR / "config.json").is_file():
            raise FileNotFoundError(f"the bundled model is missing: {BUNDLED_DIR} has no "
                                    "config.json (reinstall genomeconv or pass a checkpoint path)")
        return BUNDLED_DIR, BUNDLED_ID
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{path}: pass the checkpoint directory, not a file")
        return path, str(path_or_hub_id)
    if isinstance(path_or_hub_id, str) and _HUB_ID.match(path_or_hub_id):
        return _download(path_or_hub_id), path_or_hub_id
    raise FileNotFoundError(f"{path_or_hub_id}: no such checkpoint directory (nor a hub id "
                            "of the form owner/name)")


def load(path_or_hub_id: str | Path | None = None, *, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None) -> HyenaDNA:
    """A HyenaDNA model in eval mode from the bundled model (None or "bundled"), a local
    directory (original, -hf or genomeconv layout) or a hub id ("owner/name")."""
    directory, model_id = checkpoint_dir(path_or_hub_id)
    return _load_directory(directory, model_id, device, dtype)


def save(model: HyenaDNA, directory: str | Path, *, card: str | None = None) -> None:
    """Write config.json + model.safetensors (+ MODEL_CARD.md) in the genomeconv format."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        match = _FREQ.match(key)
        if match and match.group(1) in seen:
            continue  # the shared Sin freq: stored once
        if match:
            seen.add(match.group(1))
        state[key] = tensor.detach().to("cpu").contiguous()
    save_file(state, str(directory / "model.safetensors"))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_dict(),
            "config_sha256": model.config_sha256,
            "tokenizer": {"vocab": VOCAB, "uppercase": True, "iupac_to": "N",
                          "padding_side": "left"}}
    (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    if card is not None:
        (directory / "MODEL_CARD.md").write_text(card)
