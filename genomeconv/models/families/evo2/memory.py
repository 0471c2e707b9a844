"""The peak memory of Evo 2 inference (inference.run), predicted term by term, so that a run
can be planned for a device before it starts: weights + the float32 residual stream + one
attention layer's keys and values + one piece's work + chunk buffers (README "Evo 2" compares
it with measured peaks)."""

from __future__ import annotations

import torch

import genomeconv.models.families.evo2.inference as inference
from genomeconv.models.families.evo2.model import Evo2


def weight_bytes(config, dtype: torch.dtype) -> int:
    """Bytes of a model's parameters and buffers held in `dtype`, the hcl poles and residues
    and the rotary inv_freq in float32 (at least), as `layouts.build` leaves them."""
    with torch.device("meta"):
        model = Evo2(config, init=False)
    total = 0
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        keep32 = name.endswith(("log_poles", "residues", "inv_freq"))
        size = torch.promote_types(dtype, torch.float32) if keep32 else dtype
        total += t.numel() * size.itemsize
    return total


def memory_estimate(config, *, batch: int, length: int, dtype: torch.dtype,
                    weights: int | None = None, piece: int | None = None,
                    chunk: int | None = None) -> dict[str, int]:
    """Predicted peak bytes of `run` (hidden states or log-likelihoods of the final norm) for
    (batch, length) inputs with matmuls in `dtype`: the terms of the formula in inference.py's
    docstring and their sum ("total"); a batch run in row groups (`rows_per_pass`) holds every
    row's output and one group's residual, pieces and keys and values. weights: the model's
    bytes (default weight_bytes(config, dtype))."""
    H, I = config.hidden_size, config.inner_mlp_size
    s = dtype.itemsize
    work = torch.promote_types(dtype, torch.float32).itemsize
    g = batch if piece else inference.rows_per_pass(config, batch, length)  # rows per pass
    n = piece or inference.piece_length(config, g, length)
    c = min(length, chunk or inference.DEFAULT_CHUNK)
    K = config.short_filter_length
    hist = max(config.hcm_filter_length, config.hcs_filter_length) - 1
    hyena = g * (work * 3 * H * n + max(s * 3 * H * (K - 1 + n), work * H * (hist + n)))
    chunks = c * (work * H + s * H + 2 * s * I) + c * (3 * H * s + 4 * H * work)
    attention = 2 * s * g * length * H + 4 * work * g * n * H
    terms = {"weights": weights if weights is not None else weight_bytes(config, dtype),
             "residual": 4 * (batch + (g if g < batch else 0)) * length * H,
             "hyena_piece": hyena if config.num_layers > len(config.attn_layer_idxs) else 0,
             "chunk": chunks,
             "attention_kv_and_piece": attention if config.attn_layer_idxs else 0,
             "hcl_group": 2 * inference.MODAL_GROUP_BYTES if config.hcl_layer_idxs else 0}
    terms["total"] = sum(terms.values())
    return terms
