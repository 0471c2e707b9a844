"""Megabase HyenaDNA inference in bounded memory, pooling and per-base log-likelihoods.

`hidden_states` gives the same numbers as `model(ids)` (within float32 rounding) without ever
holding a (B, L, 3 d) or (B, L, d_inner) tensor. Per layer it makes three passes:

1. along the sequence in chunks: LN1, the x1/v rows of in_proj, the causal short conv (shifted
   multiply-adds carrying the last `short_filter_order - 1` inputs across chunks), v' = x1 * v
   into one (B, d, L) buffer;
2. the long convolution, channel group by channel group, in place in that buffer (filter taps for
   `min(L, max_seq_len)` positions: a partial convolution past the trained length);
3. along the sequence in chunks again: the x0 rows of in_proj and their short conv (recomputed
   rather than stored), out_proj(x0 * y) and the MLP added to the float32 residual in place.

Memory is the float32 residual (B L d 4 bytes), the v' buffer (B L d bytes per element of the
compute dtype) and chunk-sized temporaries. `dtype=torch.bfloat16` runs the matmuls, the short
conv and the v' buffer in bfloat16 (LayerNorms, the residual stream and the filter stay float32);
it pays off only where bf16 matmuls are native (GPUs, CPUs with AVX512-BF16 or AMX): on an
AVX2-only CPU torch emulates them and they run several times slower than float32.
At L = 1 Mbp, d 256: ~2 GB of buffers; at 4 Mbp ~8 GB in float32, ~6 GB with bfloat16.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from genomeconv.kernels import SpectrumCache, fftconv

if TYPE_CHECKING:
    from genomeconv.models.hyena import Block, HyenaDNA

DEFAULT_CHUNK = 16384
GROUP_BYTES = 256 * 2**20  # working-set target for one channel group's long convolution
POOLINGS = ("mean", "max", "last")
NO_CACHE = SpectrumCache(max_bytes=0)  # filters are recomputed per call: caching only holds memory


def pool(hidden: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """(B, L, d) -> (B, d) by "mean", "max" or "last" over positions."""
    if pooling == "mean":
        return hidden.mean(dim=1)
    if pooling == "max":
        return hidden.amax(dim=1)
    if pooling == "last":
        return hidden[:, -1]
    raise ValueError(f"pooling must be one of {POOLINGS} (got {pooling!r})")


def token_loglik(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[targets]: logits (B, l, V), targets (B, l) -> (B, l) float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets[..., None].to(logp.device)).squeeze(-1)


def next_token_loglik(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """logits (B, L, V) -> log p(x_t | x_<t) for t = 1..L-1, (B, L-1) float32."""
    return token_loglik(logits[:, :-1], input_ids[:, 1:])


def _chunks(length: int, size: int):
    for start in range(0, length, size):
        yield slice(start, min(start + size, length))


def _norm(ln: torch.nn.LayerNorm, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """LayerNorm in the norm's own dtype (as the public code), result cast to `dtype`."""
    return ln(x.to(ln.weight.dtype)).to(dtype)


def _short_conv(x: torch.Tensor, carry: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv of one chunk x (B, l, C) given the previous K-1 inputs `carry`
    (B, K-1, C); weight (K, C) with weight[K-1] on the current position. Returns (y, carry)."""
    K, l = weight.shape[0], x.shape[1]
    full = torch.cat([carry, x], dim=1)
    y = torch.addcmul(bias, full[:, K - 1:], weight[K - 1])
    for j in range(K - 1):
        y.addcmul_(full[:, j:j + l], weight[j])
    return y, full[:, l:]


class _LayerWeights:
    """One block's weights in the compute dtype, split into the x0 and (x1, v) parts."""

    def __init__(self, block: "Block", dtype: torch.dtype):
        mixer, d = block.mixer, block.mixer.d_model
        cast = lambda t: None if t is None else t.detach().to(dtype)  # noqa: E731
        w_in, b_in = cast(mixer.in_proj.weight), cast(mixer.in_proj.bias)
        w_sf = cast(mixer.short_filter.weight)[:, 0].T.contiguous()  # (K, 3d)
        b_sf = cast(mixer.short_filter.bias)
        self.in0, self.in12 = (w_in[:d], b_in[:d]), (w_in[d:], b_in[d:])
        self.sf0, self.sf12 = (w_sf[:, :d], b_sf[:d]), (w_sf[:, d:], b_sf[d:])
        self.out = (cast(mixer.out_proj.weight), cast(mixer.out_proj.bias))
        self.fc1 = (cast(block.mlp.fc1.weight), cast(block.mlp.fc1.bias))
        self.fc2 = (cast(block.mlp.fc2.weight), cast(block.mlp.fc2.bias))


def _layer(block: "Block", residual: torch.Tensor, chunk: int, dtype: torch.dtype) -> None:
    """Apply one block to the float32 residual (B, L, d) in place, in bounded memory."""
    mixer, d = block.mixer, block.mixer.d_model
    B, L, _ = residual.shape
    w = _LayerWeights(block, dtype)
    K = mixer.short_filter.kernel_size[0]

    vbuf = torch.empty(B, d, L, dtype=dtype, device=residual.device)
    carry = torch.zeros(B, K - 1, 2 * d, dtype=dtype, device=residual.device)
    for s in _chunks(L, chunk):
        x12 = F.linear(_norm(block.norm1, residual[:, s], dtype), *w.in12)
        z, carry = _short_conv(x12, carry, *w.sf12)
        torch.mul(z[..., :d], z[..., d:], out=vbuf[:, :, s].transpose(1, 2))

    filt = mixer.filter_fn
    length = min(L, mixer.l_max)
    feats = filt.features(length)
    group = max(1, min(d, GROUP_BYTES // ((B * 2 * L + length) * 4)))
    for c in range(0, d, group):
        ch = slice(c, min(c + group, d))
        k = filt.filter(length, ch, feats)
        vbuf[:, ch] = fftconv(vbuf[:, ch].contiguous(), k, filt.bias[ch], cache=NO_CACHE)
    del feats

    carry = torch.zeros(B, K - 1, d, dtype=dtype, device=residual.device)
    for s in _chunks(L, chunk):
        r = residual[:, s]
        x0 = F.linear(_norm(block.norm1, r, dtype), *w.in0)
        x0, carry = _short_conv(x0, carry, *w.sf0)
        x0 *= vbuf[:, :, s].transpose(1, 2)
        r += F.linear(x0, *w.out).float()
        h = F.gelu(F.linear(_norm(block.norm2, r, dtype), *w.fc1), approximate="tanh")
        r += F.linear(h, *w.fc2).float()


@torch.no_grad()
def hidden_states(model: "HyenaDNA", ids: torch.Tensor, *, chunk_size: int | None = None,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Hidden states after ln_f, (B, L, d_model) float32, equal to `model(ids)` within float32
    rounding, in memory ~ B L d (4 + itemsize(dtype)) bytes plus chunk-sized temporaries.

    chunk_size: positions per pointwise chunk (default 16384); dtype: compute dtype of matmuls
    and the convolution input (default: the model's parameter dtype).
    """
    bb = model.backbone
    device = bb.ln_f.weight.device
    ids = ids.to(device)
    dtype = dtype or bb.ln_f.weight.dtype
    chunk = max(1, chunk_size or DEFAULT_CHUNK)
    B, L = ids.shape
    residual = torch.empty(B, L, model.d_model, dtype=torch.float32, device=device)
    for s in _chunks(L, chunk):
        residual[:, s] = bb.embeddings.word_embeddings(ids[:, s]).float()
    for block in bb.layers:
        _layer(block, residual, chunk, dtype)
    for s in _chunks(L, chunk):
        residual[:, s] = _norm(bb.ln_f, residual[:, s], torch.float32)
    return residual


@torch.no_grad()
def hidden_and_loglik(model: "HyenaDNA", ids: torch.Tensor, **options
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden (B, L, d), log p(x_t | x_<t) (B, L-1)); options as for `hidden_states`."""
    hidden = hidden_states(model, ids, **options)
    B, L, _ = hidden.shape
    chunk = max(1, options.get("chunk_size") or DEFAULT_CHUNK)
    ids = ids.to(hidden.device)
    loglik = torch.empty(B, max(L - 1, 0), dtype=torch.float32, device=hidden.device)
    for s in _chunks(L - 1, chunk):
        logits = model.lm_head(hidden[:, s].to(model.lm_head.weight.dtype))
        loglik[:, s] = token_loglik(logits, ids[:, s.start + 1:s.stop + 1])
    return hidden, loglik
