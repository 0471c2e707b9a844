"""HyenaDNA (Nguyen et al., 2023): config and modules, matching the public architecture exactly.

Module names follow the public checkpoints (`backbone.embeddings.word_embeddings`,
`backbone.layers.{i}.mixer.{in_proj,short_filter,filter_fn,out_proj}`, `norm1`, `norm2`,
`mlp.fc1/fc2`, `backbone.ln_f`, `lm_head`), so loading is a key rename (see layouts.py).

Inputs longer than `max_seq_len`: the implicit filter is only defined on `max_seq_len` positions,
so the long convolution becomes a *partial* convolution with `max_seq_len` taps (as FlashFFTConv
ran HyenaDNA at 4M). The official code cannot take such inputs at all.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genomeconv.errors import InputError
from genomeconv.kernels import fftconv
import genomeconv.models.inference as inference
from genomeconv.models.base import LanguageModel, Suffixes, config_sha256, pool
from genomeconv.models.tokenizer import VOCAB, tokenize, tokenize_rows

# The filter MLP's Sin layers share one frequency vector: stored once per filter as the first
# Sin's `freq`, expanded to every Sin when loading (layouts.py).
SHARED_FREQ = re.compile(r"^(.*\.implicit_filter\.)(\d+)\.freq$")


@dataclass(frozen=True)
class HyenaConfig:
    """Shape of a HyenaDNA model (defaults: the public tiny-1k shape)."""

    d_model: int = 128
    n_layer: int = 2
    d_inner: int = 512
    max_seq_len: int = 1026
    vocab_size: int = 12
    pad_vocab_size_multiple: int = 8
    emb_dim: int = 5
    filter_order: int = 64
    short_filter_order: int = 3
    num_inner_mlps: int = 2
    hyena_order: int = 2
    activation_freq: float = 10.0
    layer_norm_epsilon: float = 1e-5
    modulate: bool = True
    modulation_shift: float = 0.05

    def __post_init__(self) -> None:
        if self.hyena_order != 2:
            raise InputError(f"only hyena_order 2 is supported (got {self.hyena_order})")
        if self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise InputError(f"emb_dim must be odd and >= 3 (got {self.emb_dim})")
        if self.short_filter_order < 1 or min(self.d_model, self.n_layer, self.d_inner,
                                               self.max_seq_len) < 1:
            raise InputError("sizes must be positive")

    @property
    def padded_vocab_size(self) -> int:
        """Embedding rows: vocab_size rounded up to pad_vocab_size_multiple (12 -> 16)."""
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HyenaConfig":
        """Inverse of `to_dict`; unknown keys raise InputError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown HyenaConfig keys: {unknown}")
        return cls(**data)

    @property
    def sha256(self) -> str:
        """Stable hash of the config (sorted-key JSON)."""
        return config_sha256(self.to_dict())


FEATURE_CHUNK = 1 << 15  # positions per chunk of the filter features in inference


class Sin(nn.Module):
    """sin(freq * x), one frequency per filter channel (shared by the filter MLP's layers)."""

    def __init__(self, dim: int, w: float):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class PositionalEmbedding(nn.Module):
    """z = [t, cos(f w), -sin(f w)] over max_seq_len positions (computed, not stored)."""

    def __init__(self, emb_dim: int, seq_len: int):
        super().__init__()
        t = torch.linspace(0, 1, seq_len)[None, :, None]
        bands = (emb_dim - 1) // 2
        w = 2 * math.pi * torch.linspace(0, seq_len - 1, seq_len)[None, :, None] / seq_len
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        z = torch.cat([t, torch.cos(f * w), -torch.sin(f * w)], dim=-1)
        self.register_buffer("z", z, persistent=False)
        self.register_buffer("t", t, persistent=False)


class ExponentialModulation(nn.Module):
    """Window exp(-t |delta_c|) + shift applied to each filter channel c."""

    def __init__(self, d_model: int, shift: float, modulate: bool = True,
                 fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5, target: float = 1e-2):
        super().__init__()
        self.modulate = modulate
        self.shift = shift
        deltas = torch.linspace(math.log(target) / slow_decay_pct,
                                math.log(target) / fast_decay_pct, d_model)[None, None]
        self.register_buffer("deltas", deltas)


class HyenaFilter(nn.Module):
    """Implicit long filter: Linear-Sin MLP over positional features, times a decay window."""

    def __init__(self, cfg: HyenaConfig):
        super().__init__()
        d, order = cfg.d_model, cfg.filter_order
        self.bias = nn.Parameter(torch.randn(d))
        self.pos_emb = PositionalEmbedding(cfg.emb_dim, cfg.max_seq_len)
        act = Sin(order, cfg.activation_freq)
        layers: list[nn.Module] = [nn.Linear(cfg.emb_dim, order), act]
        for _ in range(cfg.num_inner_mlps):
            layers += [nn.Linear(order, order), act]
        layers.append(nn.Linear(order, d, bias=False))
        self.implicit_filter = nn.Sequential(*layers)
        self.modulation = ExponentialModulation(d, cfg.modulation_shift, cfg.modulate)

    def features(self, length: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Features (length, filter_order) before the last Linear, shared by all channels.
        Without autograd, `out` ((>= length, filter_order)) takes them, computed over position
        chunks with Sin in place (no full-length temporaries)."""
        z = self.pos_emb.z[0, :length].to(self.implicit_filter[0].weight.dtype)
        if out is None or torch.is_grad_enabled():
            return self.implicit_filter[:-1](z)
        for start in range(0, length, FEATURE_CHUNK):
            h = z[start:start + FEATURE_CHUNK]
            for layer in self.implicit_filter[:-1]:
                h = layer(h) if isinstance(layer, nn.Linear) else h.mul_(layer.freq).sin_()
            out[start:start + len(h)] = h
        return out[:length]

    def filter(self, length: int, channels: slice = slice(None),
               features: torch.Tensor | None = None, *, out: torch.Tensor | None = None,
               scratch: torch.Tensor | None = None) -> torch.Tensor:
        """Filter taps k (channels, length); pass `features` to reuse them across channel groups.
        Without autograd, `out` and `scratch` ((channels, length) each) hold the taps and the
        decay window instead of fresh tensors."""
        h = self.features(length) if features is None else features
        weight = self.implicit_filter[-1].weight[channels]
        grad = torch.is_grad_enabled() and (weight.requires_grad or h.requires_grad)
        k = weight @ h.T if grad else torch.mm(weight, h.T, out=out)
        if self.modulation.modulate:  # the window holds no parameters: built in place
            t = self.pos_emb.t[0, :length, 0]
            rate = self.modulation.deltas[0, 0, channels, None].abs()
            window = torch.mul(t[None, :], -rate, out=None if grad else scratch)
            window.exp_().add_(self.modulation.shift)
            k = k * window if grad else k.mul_(window)
        return k


class HyenaOperator(nn.Module):
    """Order-2 Hyena: in_proj, short causal conv, x0 * (k * (x1 * v) + D * x1 * v), out_proj."""

    def __init__(self, cfg: HyenaConfig):
        super().__init__()
        d = cfg.d_model
        self.d_model = d
        self.l_max = cfg.max_seq_len
        self.in_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)
        w = cfg.short_filter_order
        self.short_filter = nn.Conv1d(3 * d, 3 * d, w, padding=w - 1, groups=3 * d)
        self.filter_fn = HyenaFilter(cfg)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        L = u.shape[1]
        z = self.short_filter(self.in_proj(u).transpose(1, 2))[..., :L]
        x0, x1, v = z.split(self.d_model, dim=1)
        k = self.filter_fn.filter(min(L, self.l_max))
        y = fftconv(v, k, self.filter_fn.bias, pregate=x1, postgate=x0,
                    cache=inference.NO_CACHE)
        return self.out_proj(y.transpose(1, 2))


class Mlp(nn.Module):
    """fc1 -> GELU (tanh approximation) -> fc2."""

    def __init__(self, d_model: int, d_inner: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner)
        self.fc2 = nn.Linear(d_inner, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm block on a float32 residual: x += Hyena(LN1(x)); x += MLP(LN2(x))."""

    def __init__(self, cfg: HyenaConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)
        self.mixer = HyenaOperator(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)
        self.mlp = Mlp(cfg.d_model, cfg.d_inner)

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        dtype = self.norm1.weight.dtype
        residual = residual + self.mixer(self.norm1(residual.to(dtype))).float()
        return residual + self.mlp(self.norm2(residual.to(dtype))).float()


class Embeddings(nn.Module):
    """Token embedding only (HyenaDNA has no positional embedding)."""

    def __init__(self, cfg: HyenaConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)


class Backbone(nn.Module):
    """Embeddings, n_layer blocks, final LayerNorm."""

    def __init__(self, cfg: HyenaConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)


class HyenaDNA(nn.Module, LanguageModel):
    """HyenaDNA language model; `model(ids)` returns the hidden states after ln_f (autograd);
    the `LanguageModel` methods run the bounded-memory path of models/inference.py."""

    family = "hyena"
    has_embeddings = True

    def __init__(self, config: HyenaConfig):
        super().__init__()
        self.config = config
        self.model_id = "untrained"
        self.backbone = Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self, std: float = 0.02) -> None:
        """The public initialisation: N(0, 0.02) Linear/Embedding weights, zero biases,
        out_proj/fc2 scaled by 1/sqrt(2 n_layer)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for block in self.backbone.layers:
            for w in (block.mixer.out_proj.weight, block.mlp.fc2.weight):
                nn.init.normal_(w, std=std / math.sqrt(2 * self.config.n_layer))

    def tokenize(self, seqs: Sequence[str]) -> torch.Tensor:
        return tokenize_rows(seqs)

    @property
    def layers(self) -> tuple[str, ...]:
        """Each block's output ("backbone.layers.{i}", the residual stream after it) and the
        final norm's ("backbone.ln_f"), as the public checkpoints name the modules."""
        return (*(f"backbone.layers.{i}" for i in range(self.config.n_layer)), "backbone.ln_f")

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    @property
    def receptive_field(self) -> int:
        """Per block, the long convolution looks max_seq_len - 1 positions back (a partial
        convolution past the trained length) and the short convolution short_filter_order - 1
        more; the prediction of a position reads the hidden state one before it (+1)."""
        c = self.config
        return c.n_layer * (c.max_seq_len - 1 + c.short_filter_order - 1) + 1

    @property
    def work_per_base(self) -> int:
        return self.config.d_model * self.config.n_layer

    @property
    def config_sha256(self) -> str:
        return self.config.sha256

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The state dict on CPU with each filter's shared Sin freq stored once."""
        state, seen = {}, set()
        for key, tensor in self.state_dict().items():
            match = SHARED_FREQ.match(key)
            if match and match.group(1) in seen:
                continue
            if match:
                seen.add(match.group(1))
            state[key] = tensor.detach().to("cpu").contiguous()
        return state

    def forward(self, input_ids: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """ids (B, L) -> hidden states (B, L, d_model) after ln_f (float32 residual stream), or
        of the named `layer` (as `hidden_states`), with autograd: the training path."""
        bb = self.backbone
        blocks = self._blocks(layer)
        residual = bb.embeddings.word_embeddings(input_ids).float()
        for block in bb.layers[:blocks]:
            residual = block(residual)
        return residual if blocks is not None else bb.ln_f(residual.to(bb.ln_f.weight.dtype))

    def _blocks(self, layer: str | None) -> int | None:
        """How many blocks a layer name runs (None: all, then the final norm)."""
        self.check_layer(layer)
        return None if layer in (None, "backbone.ln_f") else int(layer.rsplit(".", 1)[1]) + 1

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> next-token logits (B, L, padded_vocab_size)."""
        return self.lm_head(self(input_ids))

    def autograd_log_likelihoods(self, input_ids: torch.Tensor) -> torch.Tensor:
        """log p(x_t | x_<t) for t = 1..L-1, shape (B, L-1), float32, through the autograd
        forward (the pretraining loss); `log_likelihoods` is the bounded-memory, no-grad form."""
        return inference.next_token_loglik(self.logits(input_ids), input_ids)

    def hidden_states(self, ids: torch.Tensor, *, layer: str | None = None,
                      chunk_size: int | None = None, dtype: torch.dtype | None = None
                      ) -> torch.Tensor:
        return inference.hidden_states(self, ids, chunk_size=chunk_size, dtype=dtype,
                                       blocks=self._blocks(layer))

    def log_likelihoods(self, ids: torch.Tensor, *, with_hidden: bool = False,
                        chunk_size: int | None = None, dtype: torch.dtype | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden, loglik = inference.hidden_and_loglik(self, ids, chunk_size=chunk_size,
                                                     dtype=dtype)
        return loglik, hidden if with_hidden else None

    def log_likelihoods_shared(self, ids: torch.Tensor, parent: torch.Tensor,
                               start: torch.Tensor, *, pooled: bool = False,
                               chunk_size: int | None = None, dtype: torch.dtype | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Shared rows from their start on (inference.shared_prefix_loglik): what they read
        before it is the short convolution's short_filter_order - 1 inputs."""
        ids = ids.to(self.backbone.ln_f.weight.device)  # the plan's index tensors beside it
        plan = Suffixes.plan(ids, parent, start, self.config.short_filter_order - 1)
        return inference.shared_prefix_loglik(self, ids, plan, pooled=pooled,
                                              chunk_size=chunk_size, dtype=dtype)

    def base_log_probs(self, ids: torch.Tensor, *, chunk_size: int | None = None,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
        return inference.base_log_probs(self, ids, chunk_size=chunk_size, dtype=dtype)

    @torch.no_grad()
    def embed(self, seq_or_ids: str | bytes | torch.Tensor, pooling: str = "mean",
              **inference_options) -> torch.Tensor:
        """Pooled embedding: (d_model,) for a string or 1-D ids, (B, d_model) for (B, L) ids.

        Runs the bounded-memory path (`inference.hidden_states`, options passed through).
        """
        ids = tokenize(seq_or_ids) if isinstance(seq_or_ids, (str, bytes)) else seq_or_ids
        single = ids.dim() == 1
        ids = ids[None] if single else ids
        pooled = pool(self.hidden_states(ids, **inference_options), pooling)
        return pooled[0] if single else pooled

    def freeze(self, blocks: int) -> None:
        if blocks > self.config.n_layer:
            raise InputError(f"--freeze {blocks}: {self.model_id} has {self.config.n_layer} "
                             "blocks")
        self.backbone.embeddings.requires_grad_(False)
        for block in self.backbone.layers[:blocks]:
            block.requires_grad_(False)

    def checkpoint_activations(self) -> None:
        import functools
        import types

        from torch.utils.checkpoint import checkpoint

        for block in self.backbone.layers:
            bound = types.MethodType(type(block).forward, block)
            block.forward = functools.partial(checkpoint, bound, use_reentrant=False)

    def save(self, directory, *, card: str | None = None,
             extra: dict[str, Any] | None = None) -> None:
        """Write config.json + model.safetensors (+ MODEL_CARD.md when `card` is given), with
        the tokenizer's vocabulary recorded in config.json."""
        tokenizer = {"vocab": VOCAB, "uppercase": True, "iupac_to": "N", "padding_side": "left"}
        super().save(directory, card=card, extra={"tokenizer": tokenizer, **(extra or {})})
