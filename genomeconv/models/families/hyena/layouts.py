"""HyenaDNA's checkpoint layouts: the original release (config.json with a nested "layer" dict
+ weights.ckpt, a Lightning checkpoint) and the -hf layout (flat config.json +
model.safetensors), and genomeconv's own folders of the "hyena" family.

- original: state_dict keys start with `model.backbone.` (gradient-checkpointed runs add
  `.mixer.layer.` / `.mlp.layer.`); the public files pickle omegaconf objects, which
  `weights.load_torch_file(inert_unknown=True)` replaces by inert placeholders.
- -hf: `hyena.backbone.*` and `lm_head.weight` (the shared Sin `freq` may be stored once or three
  times; the z/t buffers are stored too and checked against ours).
- genomeconv: our module names, freq stored once.

Every config value is checked for type, range and finiteness before a module is built, and
weights that disagree with the config are one InputError naming the file.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from genomeconv.errors import InputError
from genomeconv.models.families.hyena.model import SHARED_FREQ, HyenaConfig, HyenaDNA
from genomeconv.models.weights import few as _few
from genomeconv.models.weights import load_torch_file, read_json, read_safetensors

# Bounds that catch mistyped config values before a model is allocated from them.
_MIN_VALUE = {"num_inner_mlps": 0}  # other int fields: >= 1
MAX_SEQ_LEN = 2 ** 24  # longer filters than any published HyenaDNA (1M) by 16x


def _config(values: dict, path: Path) -> HyenaConfig:
    """A HyenaConfig from config values, each checked for type, range and finiteness first
    (a NaN or a string there would otherwise build a model that writes NaN or fails deep
    inside torch)."""
    hints = typing.get_type_hints(HyenaConfig)
    known = {f.name for f in fields(HyenaConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown config keys {unknown} (known: {sorted(known)})", path=path)
    for name, value in values.items():
        _check_value(name, value, hints[name], path)
    if values.get("max_seq_len", 1) > MAX_SEQ_LEN:
        raise InputError(f"max_seq_len {values['max_seq_len']} is larger than {MAX_SEQ_LEN}: "
                         "a mistyped value?", path=path)
    try:
        return HyenaConfig(**values)
    except (ValueError, TypeError) as exc:
        raise InputError(str(exc), path=path) from None


def _check_value(name: str, value: Any, kind: type, path: Path) -> None:
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        wanted = {bool: "true or false", int: "an integer"}.get(kind, "a number")
        raise InputError(f"config value {name} = {value!r} is not {wanted}", path=path)
    if kind is float and not math.isfinite(value):
        raise InputError(f"config value {name} = {value!r} is not finite", path=path)
    if kind is int and value < _MIN_VALUE.get(name, 1):
        raise InputError(f"config value {name} = {value} must be >= {_MIN_VALUE.get(name, 1)}",
                         path=path)
    if name == "layer_norm_epsilon" and not value > 0:
        raise InputError(f"config value {name} = {value} must be > 0", path=path)


def _required(cfg: dict, key: str, path: Path) -> Any:
    if key not in cfg:
        raise InputError(f"no {key!r} in the config", path=path)
    return cfg[key]


def _config_from_hf(cfg: dict, path: Path) -> HyenaConfig:
    d_model = _required(cfg, "d_model", path)
    return _config(dict(
        d_model=d_model, n_layer=_required(cfg, "n_layer", path),
        d_inner=cfg.get("d_inner") or _times4(d_model),
        max_seq_len=_required(cfg, "max_seq_len", path),
        vocab_size=cfg.get("vocab_size", 12),
        pad_vocab_size_multiple=cfg.get("pad_vocab_size_multiple", 8),
        emb_dim=cfg.get("emb_dim", 3), filter_order=cfg.get("filter_order", 64),
        short_filter_order=cfg.get("short_filter_order", 3),
        num_inner_mlps=cfg.get("num_inner_mlps", 2), hyena_order=cfg.get("hyena_order", 2),
        activation_freq=cfg.get("activation_freq", 10),
        layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-5)), path)


def _times4(d_model: Any) -> Any:
    """The default d_inner; a mistyped d_model is passed on for `_config` to name."""
    return 4 * d_model if isinstance(d_model, int) and not isinstance(d_model, bool) else d_model


def _config_from_original(cfg: dict, path: Path) -> HyenaConfig:
    layer = _required(cfg, "layer", path)
    if not isinstance(layer, dict):
        raise InputError(f"config value layer = {layer!r} is not an object", path=path)
    d_model = _required(cfg, "d_model", path)
    return _config(dict(
        d_model=d_model, n_layer=_required(cfg, "n_layer", path),
        d_inner=cfg.get("d_inner") or _times4(d_model),
        max_seq_len=_required(layer, "l_max", path),
        vocab_size=cfg.get("vocab_size", 12),
        pad_vocab_size_multiple=cfg.get("pad_vocab_size_multiple", 8),
        emb_dim=layer.get("emb_dim", 3), filter_order=layer.get("filter_order", 64),
        num_inner_mlps=layer.get("num_inner_mlps", 2), hyena_order=layer.get("order", 2),
        activation_freq=layer.get("w", 1), modulate=layer.get("modulate", True),
        modulation_shift=layer.get("shift", 0.05),  # as served by the standalone/-hf code
        layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-5)), path)


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
    for key in [k for k in state if SHARED_FREQ.match(k)]:
        prefix, idx = SHARED_FREQ.match(key).groups()
        freqs.setdefault(prefix, {})[int(idx)] = state.pop(key)
    for prefix, found in freqs.items():
        first = next(iter(found.values()))
        if any(not torch.equal(first, f) for f in found.values()):
            raise InputError(f"{prefix}*.freq differ; HyenaDNA shares one Sin frequency vector")
        for idx, module in enumerate(model.get_submodule(prefix.rstrip("."))):
            if hasattr(module, "freq"):
                state[f"{prefix}{idx}.freq"] = first
    buffers = dict(model.named_buffers())
    for key in [k for k in state if k.endswith((".pos_emb.z", ".pos_emb.t"))]:
        stored, ours = state.pop(key), buffers.get(key)
        if ours is None or stored[:, :ours.shape[1]].shape != ours.shape or not torch.allclose(
                stored.float(), ours.float(), atol=1e-4):
            raise InputError(f"{key} differs from the HyenaDNA positional features for this "
                             "config (trained positional features are not supported)")
    if "lm_head.weight" not in state and "backbone.embeddings.word_embeddings.weight" in state:
        state["lm_head.weight"] = state["backbone.embeddings.word_embeddings.weight"]
    return state


def _check_shapes(config: HyenaConfig, state: dict[str, torch.Tensor], weights: Path) -> None:
    """d_model and n_layer of the config against the weights, before a model is allocated."""
    embedding = state.get("backbone.embeddings.word_embeddings.weight")
    if embedding is not None and embedding.ndim == 2 and embedding.shape[1] != config.d_model:
        raise InputError(f"the config says d_model {config.d_model} but the weights have "
                         f"{embedding.shape[1]}", path=weights)
    layers = {int(m.group(1)) for k in state if (m := re.match(r"backbone\.layers\.(\d+)\.", k))}
    if layers and max(layers) + 1 != config.n_layer:
        raise InputError(f"the config says n_layer {config.n_layer} but the weights have "
                         f"{max(layers) + 1} layers", path=weights)


def _check_keys(state: dict[str, torch.Tensor], model: HyenaDNA, weights: Path) -> None:
    """Missing, unexpected or misshapen tensors (a few named), and non-finite weights."""
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors ({_few(unexpected)})")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in ours.items()
             if k in state and state[k].shape != v.shape]
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape ({_few(wrong)})")
    if problems:
        raise InputError("weights do not match the config: " + "; ".join(problems), path=weights)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise InputError(f"{len(bad)} tensors hold NaN or inf ({_few(bad)}): a broken model",
                         path=weights)


def _build(config: HyenaConfig, state: dict[str, torch.Tensor], model_id: str,
           device, dtype, weights: Path) -> HyenaDNA:
    _check_shapes(config, state, weights)
    model = HyenaDNA(config)
    state = _normalize(state, model)
    _check_keys(state, model, weights)
    model.load_state_dict(state, strict=True)
    model.model_id = model_id
    model.eval()
    return model.to(device=device, dtype=dtype)


def _read_lightning(path: Path) -> dict[str, torch.Tensor]:
    """state_dict of a Lightning weights.ckpt without running code from the file (its omegaconf
    objects become inert placeholders: models/weights.py)."""
    ckpt = load_torch_file(path, inert_unknown=True)
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        held = type(ckpt).__name__ if not isinstance(ckpt, dict) else (
            f"a dict with {', '.join(map(repr, list(ckpt)[:5]))}")
        raise InputError(f"not a Lightning checkpoint: no 'state_dict' of tensors (it holds "
                         f"{held})", path=path)
    return state


def load_saved(values: dict, state: dict[str, torch.Tensor], directory: Path, model_id: str,
               device, dtype) -> HyenaDNA:
    """The "hyena" family's loader for genomeconv folders: config values checked, then the
    weights."""
    config = _config(values, directory / "config.json")
    return _build(config, state, model_id, device, dtype, directory / "model.safetensors")


def is_hf(directory: Path) -> bool:
    """A -hf folder: config.json + model.safetensors, config.json naming no family."""
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def load_hf(directory: Path, model_id: str, device, dtype) -> HyenaDNA:
    """A -hf folder."""
    weights = directory / "model.safetensors"
    config = _config_from_hf(read_json(directory / "config.json"), directory / "config.json")
    return _build(config, _rename_hf(read_safetensors(weights)), model_id, device, dtype,
                  weights)


def is_original(directory: Path) -> bool:
    """The original release: config.json + weights.ckpt."""
    return (directory / "config.json").is_file() and (directory / "weights.ckpt").is_file()


def load_original(directory: Path, model_id: str, device, dtype) -> HyenaDNA:
    """An original-release folder."""
    weights = directory / "weights.ckpt"
    config = _config_from_original(read_json(directory / "config.json"), directory / "config.json")
    return _build(config, _rename_original(_read_lightning(weights)), model_id, device, dtype,
                  weights)
