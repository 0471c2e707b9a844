"""Evo 2's modules (vortex's StripedHyena 2 blocks), named as in the released checkpoints, with
their autograd forward passes (training; model.py assembles them, inference.py runs the same
parameters in bounded memory). What each computes: see model.py's docstring."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genomeconv.kernels import fftconv
from genomeconv.models.families.evo2.config import Evo2Config

MLP_ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu}


class RMSNorm(nn.Module):
    """scale * x / (|x|_2 / sqrt(H) + eps), as vortex (the eps outside the root)."""

    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.norm(2, dim=-1, keepdim=True) * x.shape[-1] ** -0.5 + self.eps
        return self.scale * (x / norm)


class GatedMLP(nn.Module):
    """l3(act(l1 z) * l2 z), no biases; act only in layer 0 with evo2_style_activations."""

    def __init__(self, cfg: Evo2Config, layer: int):
        super().__init__()
        H, inner = cfg.hidden_size, cfg.inner_mlp_size
        self.l1 = nn.Linear(H, inner, bias=False)
        self.l2 = nn.Linear(H, inner, bias=False)
        self.l3 = nn.Linear(inner, H, bias=False)
        self.activation = (cfg.mlp_activation if layer == 0 or not cfg.evo2_style_activations
                           else None)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.activation is None else MLP_ACTIVATIONS[self.activation](x)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.l3(self.act(self.l1(z)) * self.l2(z))


class HyenaFilter(nn.Module):
    """The hyena operator after the projections (vortex's HyenaCascade): short featurizer
    filter, de-interleave, and the hcs, hcm or hcl filter with its gates (module docstring)."""

    def __init__(self, cfg: Evo2Config, kind: str):
        super().__init__()
        H, K = cfg.hidden_size, cfg.short_filter_length
        self.kind, self.cfg = kind, cfg
        self.short_filter_weight = nn.Parameter(torch.empty(3 * H, 1, K))
        self.short_filter_bias = nn.Parameter(torch.zeros(3 * H)) if cfg.short_filter_bias \
            else None
        if kind == "hcl":
            self.log_poles = nn.Parameter(torch.empty(H, cfg.state_size, 1))
            self.residues = nn.Parameter(torch.empty(H, cfg.state_size))
        else:
            groups = cfg.hcm_filter_groups if kind == "hcm" else cfg.hcs_filter_groups
            taps = cfg.hcm_filter_length if kind == "hcm" else cfg.hcs_filter_length
            self.h = nn.Parameter(torch.empty(groups, 1, taps))
        self.D = nn.Parameter(torch.zeros(H)) if kind != "hcs" else None

    def taps(self) -> torch.Tensor:
        """The hcs/hcm filter per channel (H, taps): channel c uses group c // (H / groups)."""
        return self.h[:, 0].repeat_interleave(self.cfg.hidden_size // self.h.shape[0], 0)

    def modal_filter(self, length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The hcl filter h[c, t] = sum_s residues[c, s] exp(log_poles[c, s] t), t < length
        (H, length), generated in `dtype` (float32 as the official code, or float64)."""
        t = torch.arange(length, device=self.residues.device, dtype=dtype)
        powers = torch.exp(self.log_poles.to(dtype) * t)  # (H, S, length)
        return (self.residues.to(dtype)[..., None] * powers).sum(1)

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x2, x1, v) from the filtered projections (B, 3H, L): channels 0::3, 1::3, 2::3 with
        `interleave` (the releases), else thirds."""
        H = self.cfg.hidden_size
        x2, x1, v = ((z[:, 0::3], z[:, 1::3], z[:, 2::3]) if self.cfg.interleave
                     else (z[:, :H], z[:, H:2 * H], z[:, 2 * H:]))
        return (x1, x2, v) if self.cfg.hyena_flip_x1x2 else (x2, x1, v)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Projections (B, L, 3H) -> gated filter output (B, L, H)."""
        L, K = z.shape[1], self.short_filter_weight.shape[-1]
        w = self.short_filter_weight
        zc = F.conv1d(z.transpose(1, 2), w.to(z.dtype), self.short_filter_bias, padding=K - 1,
                      groups=w.shape[0])[..., :L]
        x2, x1, v = self.split(zc)
        if self.kind == "hcs":
            k = self.taps()
            y = F.conv1d(x1 * v, k[:, None].to(z.dtype), padding=k.shape[-1] - 1,
                         groups=k.shape[0])[..., :L] * x2
        else:
            k = self.taps() if self.kind == "hcm" else self.modal_filter(L)
            y = fftconv(v, k, self.D, pregate=x1, postgate=x2)
        return y.transpose(1, 2)


class HyenaBlock(nn.Module):
    """vortex's ParallelGatedConvBlock: pre_norm, projections, filter, out_filter_dense,
    post_norm, mlp."""

    def __init__(self, cfg: Evo2Config, layer: int):
        super().__init__()
        H = cfg.hidden_size
        self.kind = cfg.kind(layer)
        self.pre_norm, self.post_norm = RMSNorm(H, cfg.eps), RMSNorm(H, cfg.eps)
        self.projections = nn.Linear(H, 3 * H, bias=cfg.qkv_proj_bias)
        self.filter = HyenaFilter(cfg, self.kind)
        self.out_filter_dense = nn.Linear(H, H, bias=cfg.hyena_out_proj_bias)
        self.mlp = GatedMLP(cfg, layer)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        dtype = self.projections.weight.dtype
        z = self.out_filter_dense(self.filter(self.projections(self.pre_norm(u.to(dtype)))))
        u = u + z.float()
        return u + self.mlp(self.post_norm(u.to(dtype))).float()


class RotaryEmbedding(nn.Module):
    """Holds `inv_freq` (head_dim / 2), a buffer of the release state dicts."""

    def __init__(self, cfg: Evo2Config):
        super().__init__()
        hd = cfg.head_dim
        inv = 1.0 / cfg.rotary_emb_base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        self.register_buffer("inv_freq", inv)
        self.scaling = cfg.rotary_emb_scaling_factor

    def cos_sin(self, start: int, stop: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (stop - start, head_dim / 2) float32 of positions start..stop - 1 divided
        by the scaling factor (the interpolated rotary of the 1 Mbp configs)."""
        t = torch.arange(start, stop, device=device, dtype=torch.float32) / self.scaling
        freqs = torch.outer(t, self.inv_freq.float())
        return freqs.cos(), freqs.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, rotate halves: x (..., L, head_dim), cos/sin (L, head_dim / 2); computed
    in float32, returned in x's dtype."""
    half = cos.shape[-1]
    x0, x1 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).to(x.dtype)


class Attention(nn.Module):
    """vortex's MHA as the releases use it: Wqkv (rows (head, q/k/v, head_dim) with
    column_split), rotary q and k, causal softmax attention scaled by 1/sqrt(head_dim),
    out_proj."""

    def __init__(self, cfg: Evo2Config):
        super().__init__()
        H = cfg.hidden_size
        self.heads, self.head_dim, self.column_split = (cfg.num_attention_heads, cfg.head_dim,
                                                        cfg.column_split)
        self.Wqkv = nn.Linear(H, 3 * H, bias=cfg.qkv_proj_bias)
        self.out_proj = nn.Linear(H, H, bias=cfg.mha_out_proj_bias)
        self.rotary_emb = RotaryEmbedding(cfg)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, heads, L, head_dim) from the Wqkv output (B, L, 3H), before rotary."""
        B, L, _ = x.shape
        shape = (B, L, self.heads, 3, self.head_dim) if self.column_split else (
            B, L, 3, self.heads, self.head_dim)
        parts = x.view(shape).unbind(3 if self.column_split else 2)
        return tuple(p.transpose(1, 2) for p in parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, H = x.shape
        q, k, v = self.qkv(self.Wqkv(x))
        cos, sin = self.rotary_emb.cos_sin(0, L, x.device)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           scale=1.0 / math.sqrt(self.head_dim))
        return self.out_proj(o.transpose(1, 2).reshape(B, L, H))


class AttentionBlock(nn.Module):
    """vortex's AttentionBlock: pre_norm, inner_mha_cls, post_norm, mlp."""

    kind = "attn"

    def __init__(self, cfg: Evo2Config, layer: int):
        super().__init__()
        self.pre_norm, self.post_norm = RMSNorm(cfg.hidden_size, cfg.eps), RMSNorm(
            cfg.hidden_size, cfg.eps)
        self.inner_mha_cls = Attention(cfg)
        self.mlp = GatedMLP(cfg, layer)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        dtype = self.inner_mha_cls.Wqkv.weight.dtype
        u = u + self.inner_mha_cls(self.pre_norm(u.to(dtype))).float()
        return u + self.mlp(self.post_norm(u.to(dtype))).float()
