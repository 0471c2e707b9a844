"""The Evo 2 (StripedHyena 2) configuration: the keys of the evo2 package's YAML configs that
define the model, checked, and the published configs of the hub checkpoints.

A release config (`config.yml`, keys as in evo2's `configs/evo2-*.yml`) has three kinds of keys:
- those that define the model (`Evo2Config` fields; inner_mlp_size may be derived the way vortex
  derives it, from inner_size_multiple_of and model_parallel_size);
- those that must hold the one value every release has (tie_embeddings, final_norm, ...):
  another value is a model this family does not compute, refused in one line;
- switches of vortex's kernels, devices, dtypes and logging (use_flash_attn, prefill_style,
  use_fp8_input_projections, ...), which change how it computes, not what: ignored.
Any other key is refused, naming it: a key that changed the math would otherwise be dropped.

The published configs ship in `configs/` (values of the evo2 0.6.0 package); `HUB_CONFIGS` maps
each hub repository to its config, as the evo2 package's CONFIG_MAP does.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from genomeconv.errors import InputError
from genomeconv.models.base import config_sha256

HUB_CONFIGS = {
    "arcinstitute/evo2_1b_base": "evo2-1b-8k.yml",
    "arcinstitute/evo2_7b_base": "evo2-7b-8k.yml",
    "arcinstitute/evo2_7b": "evo2-7b-1m.yml",
    "arcinstitute/evo2_7b_262k": "evo2-7b-262k.yml",
    "arcinstitute/evo2_20b": "evo2-20b-1m.yml",
    "arcinstitute/evo2_40b_base": "evo2-40b-8k.yml",
    "arcinstitute/evo2_40b": "evo2-40b-1m.yml",
}
# Keys that must hold this value (what every release has); other values are other models.
FIXED = {"tie_embeddings": True, "final_norm": True, "column_split_hyena": False,
         "proj_groups": 1, "smeared_gqa": False, "long_fir_threshold": None}
# Keys that select vortex's kernels, devices, dtypes, parallelism or logging: not the math.
IGNORED = frozenset({
    "num_filters", "hcl_filter_groups", "hyena_filter_groups", "make_vocab_size_divisible_by",
    "log_intermediate_values", "pipe_parallel_size", "max_batch_size", "use_flash_attn",
    "use_flash_rmsnorm", "use_flash_depthwise", "use_flashfft", "use_laughing_hyena",
    "inference_mode", "tokenizer_type", "prefill_style", "print_activations",
    "use_fp8_input_projections", "use_fp8_linears", "mlp_init_method", "mlp_output_init_method",
    "use_hcs_kernel", "use_hcm_kernel", "use_hcl_kernel", "compile", "low_mem_mode",
    "params_dtype", "hyena_block_dtype", "attn_block_dtype", "mlp_dtype", "depthwise_dtype",
    "padding_idx", "ground_truth_activations_path", "seqlen", "process_group"})
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
ACTIVATIONS = ("gelu", "silu")
MAX_SEQLEN = 1 << 26  # 64x the longest release context: a larger value is a typo


@dataclass(frozen=True)
class Evo2Config:
    """Shape and options of a StripedHyena 2 model (defaults: those of every release).

    Layer i is a hyena block with a short explicit filter (hcs: `hcs_filter_length` taps, no D),
    a medium one (hcm: `hcm_filter_length` taps and D) or a long modal one (hcl: per channel,
    `state_size` real poles and residues, and D), or an attention block (attn)."""

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    attn_layer_idxs: tuple[int, ...]
    hcl_layer_idxs: tuple[int, ...]
    hcm_layer_idxs: tuple[int, ...]
    hcs_layer_idxs: tuple[int, ...]
    inner_mlp_size: int
    max_seqlen: int
    vocab_size: int = 512
    hcm_filter_length: int = 128
    hcm_filter_groups: int = 1
    hcs_filter_length: int = 7
    hcs_filter_groups: int = 1
    short_filter_length: int = 3
    short_filter_bias: bool = False
    state_size: int = 16
    eps: float = 1e-6
    rotary_emb_base: float = 10000.0
    rotary_emb_scaling_factor: float = 1.0  # positions divided by it (interpolated rotary)
    qkv_proj_bias: bool = False
    mha_out_proj_bias: bool = True
    hyena_out_proj_bias: bool = True
    evo2_style_activations: bool = True  # the MLP activation in layer 0 only
    mlp_activation: str = "gelu"
    interleave: bool = True  # projections ordered (x2, x1, v) per channel
    column_split: bool = True  # attention Wqkv rows ordered (head, q/k/v, head_dim)
    hyena_flip_x1x2: bool = False
    model_name: str = ""

    def __post_init__(self) -> None:
        kinds = self.attn_layer_idxs + self.hcl_layer_idxs + self.hcm_layer_idxs \
            + self.hcs_layer_idxs
        if sorted(kinds) != list(range(self.num_layers)):
            raise ValueError(f"the attn/hcl/hcm/hcs layer indices must name each of the "
                             f"{self.num_layers} layers once (got {sorted(kinds)})")
        H = self.hidden_size
        for name in ("hidden_size", "num_layers", "num_attention_heads", "inner_mlp_size",
                     "vocab_size", "hcm_filter_length", "hcs_filter_length",
                     "short_filter_length", "state_size", "max_seqlen"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if H % self.num_attention_heads or (H // self.num_attention_heads) % 2:
            raise ValueError(f"hidden_size {H} must split into num_attention_heads "
                             f"{self.num_attention_heads} heads of an even size")
        for name in ("hcm_filter_groups", "hcs_filter_groups"):
            groups = getattr(self, name)
            if groups < 1 or H % groups:
                raise ValueError(f"{name} {groups} must divide hidden_size {H}")
        if self.mlp_activation not in ACTIVATIONS:
            raise ValueError(f"mlp_activation must be one of {ACTIVATIONS} "
                             f"(got {self.mlp_activation!r})")
        if not (self.eps > 0 and self.rotary_emb_base > 0 and self.rotary_emb_scaling_factor > 0):
            raise ValueError("eps, rotary_emb_base and rotary_emb_scaling_factor must be > 0")
        if self.max_seqlen > MAX_SEQLEN:
            raise ValueError(f"max_seqlen {self.max_seqlen} is larger than {MAX_SEQLEN}: a typo?")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def kind(self, layer: int) -> str:
        """"attn", "hcl", "hcm" or "hcs"."""
        for kind in ("attn", "hcl", "hcm", "hcs"):
            if layer in getattr(self, f"{kind}_layer_idxs"):
                return kind
        raise IndexError(f"no layer {layer}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values of every field (index tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def sha256(self) -> str:
        return config_sha256(self.to_dict())

    @classmethod
    def from_dict(cls, values: dict[str, Any], path: Path | None = None) -> "Evo2Config":
        """From `to_dict`'s values (genomeconv folders): types checked, unknown keys refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown Evo 2 config keys {unknown}", path=path)
        return _build(values, path)

    @classmethod
    def from_release(cls, values: Any, path: Path | None = None) -> "Evo2Config":
        """From a release config's values (evo2's YAML keys, see the module docstring)."""
        if not isinstance(values, dict):
            raise InputError("an Evo 2 config.yml holds one mapping of keys", path=path)
        known = {f.name for f in fields(cls)}
        derived = {"use_interpolated_rotary_pos_emb", "inner_size_multiple_of",
                   "model_parallel_size"}
        unknown = sorted(set(values) - known - derived - set(FIXED) - IGNORED)
        if unknown:
            raise InputError(f"unknown Evo 2 config keys {unknown}: genomeconv does not know "
                             "what they change", path=path)
        for key, wanted in FIXED.items():
            if values.get(key, wanted) != wanted:
                raise InputError(f"config value {key} = {values[key]!r}: genomeconv computes "
                                 f"Evo 2 models with {key} = {wanted!r} only", path=path)
        picked = {k: v for k, v in values.items() if k in known}
        if not values.get("use_interpolated_rotary_pos_emb", False):
            picked.pop("rotary_emb_scaling_factor", None)  # vortex ignores it then
        if "inner_mlp_size" not in picked:
            picked["inner_mlp_size"] = _inner_size(values, path)
        picked.setdefault("max_seqlen", 8192)  # vortex's default
        return _build(picked, path)


def _inner_size(values: dict[str, Any], path: Path | None) -> Any:
    """vortex's default MLP width: int(2 H 4/3) rounded up to inner_size_multiple_of times
    model_parallel_size."""
    H = values.get("hidden_size")
    multiple = values.get("inner_size_multiple_of", 64)
    parallel = values.get("model_parallel_size", 1)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
               for v in (H, multiple, parallel)):
        raise InputError("hidden_size, inner_size_multiple_of and model_parallel_size must be "
                         "positive integers", path=path)
    step = multiple * parallel
    return step * -(-int(2 * H * 4 / 3) // step)


def _build(values: dict[str, Any], path: Path | None) -> Evo2Config:
    """Evo2Config(**values) after a type check of each value (one InputError naming it)."""
    kinds = {f.name: f.type for f in fields(Evo2Config)}
    clean: dict[str, Any] = {}
    for name, value in values.items():
        kind = kinds[name]
        if kind == "tuple[int, ...]":
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value)
            value = tuple(value) if ok else value
        elif kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, str)
        if not ok:
            raise InputError(f"config value {name} = {value!r} is not {_WANTED[kind]}", path=path)
        clean[name] = value
    missing = [f.name for f in fields(Evo2Config) if f.default is MISSING and f.name not in clean]
    if missing:
        raise InputError(f"the Evo 2 config has no {', '.join(missing)}", path=path)
    try:
        return Evo2Config(**clean)
    except ValueError as exc:
        raise InputError(str(exc), path=path) from None


_WANTED = {"tuple[int, ...]": "a list of integers", "bool": "true or false",
           "int": "an integer", "float": "a finite number", "str": "a string"}


def read_release_config(path: Path) -> Evo2Config:
    """A config.yml in evo2's format (yaml.safe_load: plain values only)."""
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise InputError(f"not valid YAML ({getattr(exc, 'problem', None) or exc})", path=path,
                         line=None if line is None else line + 1) from None
    except UnicodeDecodeError:
        raise InputError("not a text file", path=path) from None
    return Evo2Config.from_release(values, path)


def published_config(name: str) -> Evo2Config:
    """One of the packaged published configs, by file name ("evo2-7b-1m.yml")."""
    path = CONFIG_DIR / name
    return Evo2Config.from_release(yaml.safe_load(path.read_text()), path)
