"""Evo 2 (StripedHyena 2; Brixi et al., 2025): the modules, named as in the released checkpoints,
and the autograd forward pass (training); inference runs the bounded-memory path of
inference.py on the same parameters.

Module and parameter names are the release's (`embedding_layer`, `blocks.{i}.pre_norm`,
`.projections`, `.filter.{short_filter_weight, h, D, log_poles, residues}`, `.out_filter_dense`,
`.inner_mha_cls.{Wqkv, out_proj, rotary_emb.inv_freq}`, `.post_norm`, `.mlp.{l1, l2, l3}`,
`norm`), and so are shapes and the attention `Wqkv` row order (head, q/k/v, head_dim), so a
release state dict loads as it is (layouts.py) and `layer=` names a module as evo2's embedding
recipes do.

The computation, as vortex computes it (checked against it in tests/test_models_evo2.py):
- hyena block: u += out_filter_dense(filter(projections(pre_norm(u)))), then
  u += mlp(post_norm(u)). filter: a depthwise cross-correlation of the 3H projections with
  `short_filter_length` taps (the last tap on the current position), de-interleaved into
  x2, x1, v (channels 0::3, 1::3, 2::3), then y = x2 * (h * (x1 v) + D x1 v) with h an hcs
  filter (cross-correlation, no D), an hcm filter (causal convolution, h[0] on the current
  position) shared by H / groups channels each, or the hcl modal filter
  h[c, t] = sum_s residues[c, s] exp(log_poles[c, s] t) of each channel;
- attention block: u += out_proj(causal softmax attention of rotary q, k (rotate halves over
  the head dim, positions divided by rotary_emb_scaling_factor) and v), then the MLP;
- mlp: l3(act(l1 z) * l2 z), act the exact GELU (or SiLU) in layer 0 only
  (evo2_style_activations), the identity elsewhere; RMSNorm scale * x / (|x| / sqrt(H) + eps);
- embedding and unembedding tied; logits = norm(u) @ embedding_layer.weight^T.
The residual stream is float32 here (vortex keeps it in the weights' dtype).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import genomeconv.models.families.evo2.inference as inference
from genomeconv.errors import InputError
from genomeconv.models.base import LanguageModel, Suffixes
from genomeconv.models.families.evo2.config import Evo2Config
from genomeconv.models.families.evo2.layers import AttentionBlock, HyenaBlock, RMSNorm
from genomeconv.models.families.evo2.tokenizer import tokenize_rows

# Matmul multiply-adds per base that make one unit of `work_per_base`: 12 d^2 per layer over
# d x layers for HyenaDNA at the bundled model's d = 64 (runtime.UNIT_WORK is sized by it).
MACS_PER_WORK = 768
VARIANT_WINDOW = 8192  # the Evo 2 paper's variant-effect window (BRCA1 and others)
CARD = Path(__file__).resolve().with_name("MODEL_CARD.md")  # where genomeconv departs from vortex


class Evo2(nn.Module, LanguageModel):
    """An Evo 2 language model; `model(ids, layer=)` is the autograd forward (training), the
    LanguageModel methods run inference.py in bounded memory."""

    family = "evo2"
    has_embeddings = True

    def __init__(self, config: Evo2Config, *, init: bool = True):
        super().__init__()
        self.config = config
        self.model_id = "untrained"
        self.embedding_layer = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(
            (AttentionBlock if config.kind(i) == "attn" else HyenaBlock)(config, i)
            for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.eps)
        if init:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Random weights for tests, benchmarks and training from scratch: N(0, std) matmul
        weights and embedding (output matmuls scaled by 1/sqrt(2 layers)), zero biases and D,
        unit norms; short filters U(+-1/sqrt(taps)); hcl poles exp(log_poles) in
        (e^-1, 1 - 1e-4) (decay over 1 to 10^4 positions) with residues scaled to unit gain."""
        out_std = std / math.sqrt(2 * self.config.num_layers)
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("scale",):
                p.fill_(1.0)
            elif leaf in ("bias", "D", "short_filter_bias"):
                p.zero_()
            elif leaf in ("short_filter_weight", "h"):
                bound = p.shape[-1] ** -0.5
                p.uniform_(-bound, bound)
            elif leaf == "log_poles":
                p.copy_(-torch.exp(torch.empty_like(p).uniform_(math.log(1e-4), 0.0)))
            elif leaf == "residues":
                poles = self.get_parameter(name.replace("residues", "log_poles"))[..., 0]
                p.normal_(0.0, p.shape[-1] ** -0.5).mul_(-torch.expm1(poles))
            else:
                p.normal_(0.0, out_std if name.endswith(("l3.weight", "out_filter_dense.weight",
                                                         "out_proj.weight")) else std)

    # --- the LanguageModel interface ---------------------------------------------------------

    def tokenize(self, seqs: Sequence[str]) -> torch.Tensor:
        return tokenize_rows(seqs)

    @property
    def layers(self) -> tuple[str, ...]:
        """Module outputs `hidden_states(layer=)` returns, named as in the releases: the
        embedding, each block's output ("blocks.12") and, inside it, pre_norm, post_norm, mlp,
        mlp.l1 / l2 / l3, and projections, filter, out_filter_dense (hyena blocks) or
        inner_mha_cls, inner_mha_cls.out_proj (attention blocks); "norm", the final norm."""
        names = ["embedding_layer"]
        for i, block in enumerate(self.blocks):
            inner = (("inner_mha_cls", "inner_mha_cls.out_proj") if block.kind == "attn" else
                     ("projections", "filter", "out_filter_dense"))
            names += [f"blocks.{i}", *(f"blocks.{i}.{n}" for n in (
                "pre_norm", *inner, "post_norm", "mlp", "mlp.l1", "mlp.l2", "mlp.l3"))]
        return (*names, "norm")

    def layer_width(self, layer: str | None = None) -> int:
        self.check_layer(layer)
        if layer is not None and layer.endswith((".mlp.l1", ".mlp.l2")):
            return self.config.inner_mlp_size
        if layer is not None and layer.endswith(".projections"):
            return 3 * self.config.hidden_size
        return self.config.hidden_size

    @property
    def d_model(self) -> int:
        return self.config.hidden_size

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seqlen

    @property
    def variant_window(self) -> int:
        """8,192 bp (at most max_seqlen): the window of the Evo 2 paper's variant scoring."""
        return min(VARIANT_WINDOW, self.config.max_seqlen)

    @property
    def work_per_base(self) -> int:
        """Matmul multiply-adds per base (projections, out, MLP) / MACS_PER_WORK."""
        c = self.config
        macs = c.num_layers * c.hidden_size * (4 * c.hidden_size + 3 * c.inner_mlp_size)
        return max(1, macs // MACS_PER_WORK)

    @property
    def config_sha256(self) -> str:
        return self.config.sha256

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}

    def hidden_states(self, ids: torch.Tensor, *, layer: str | None = None,
                      chunk_size: int | None = None, dtype: torch.dtype | None = None
                      ) -> torch.Tensor:
        self.check_layer(layer)
        return inference.run(self, ids, layer=layer, chunk_size=chunk_size, dtype=dtype).hidden

    def log_likelihoods(self, ids: torch.Tensor, *, with_hidden: bool = False,
                        chunk_size: int | None = None, dtype: torch.dtype | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = inference.run(self, ids, chunk_size=chunk_size, dtype=dtype).hidden
        loglik = inference.next_token_loglik(self, hidden, ids, chunk_size=chunk_size,
                                             dtype=dtype)
        return loglik, hidden if with_hidden else None

    def log_likelihoods_shared(self, ids: torch.Tensor, parent: torch.Tensor,
                               start: torch.Tensor, *, pooled: bool = False,
                               chunk_size: int | None = None, dtype: torch.dtype | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Shared rows from one position before their start on: the full rows' pass captures
        every block's state there (attention keys and values, filter tails, modal states) and
        each shared row continues from its parent's (inference.run(start=)), so an ALT window
        costs its suffix plus attention over the prefix's keys."""
        ids = ids.to(self.embedding_layer.weight.device)
        plan = Suffixes.plan(ids, parent, start, 1)
        opts = {"chunk_size": chunk_size, "dtype": dtype}
        firsts = sorted(set(plan.first.tolist()))
        full_ids = ids[plan.full]
        run = inference.run(self, full_ids, capture_at=[p for p in firsts if p > 0] or None,
                            **opts)
        loglik = inference.next_token_loglik(self, run.hidden, full_ids, **opts)
        L, S = plan.L, len(plan.rows)
        packed = loglik.new_zeros(S, max(plan.width - 1, 0))
        packed_hidden = run.hidden.new_zeros(S, plan.width, self.d_model) if pooled else None
        for p in firsts:  # rows continuing from the same position run together
            sel = (plan.first == p).nonzero()[:, 0]
            suffix = ids[plan.rows[sel], p:]
            states = [s.clone(plan.parent[sel]) for s in run.states[p]] if p else None
            hidden = inference.run(self, suffix, start=states, **opts).hidden
            packed[sel, :L - p - 1] = inference.next_token_loglik(self, hidden, suffix, **opts)
            if pooled:
                packed_hidden[sel, :L - p] = hidden
        return (plan.loglik(loglik, packed),
                plan.pooled(run.hidden, packed_hidden) if pooled else None)

    def base_log_probs(self, ids: torch.Tensor, *, chunk_size: int | None = None,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
        hidden = inference.run(self, ids, chunk_size=chunk_size, dtype=dtype).hidden
        return inference.base_log_probs(self, hidden, chunk_size=chunk_size, dtype=dtype)

    def save(self, directory, *, card: str | None = None,
             extra: dict[str, Any] | None = None) -> None:
        """config.json + model.safetensors (release names) + MODEL_CARD.md: `card`, else the
        family's card (what genomeconv computes differently from the official code)."""
        super().save(directory, card=CARD.read_text() if card is None else card, extra=extra)

    def freeze(self, blocks: int) -> None:
        if blocks > self.config.num_layers:
            raise InputError(f"--freeze {blocks}: {self.model_id} has {self.config.num_layers} "
                             "blocks")
        self.embedding_layer.requires_grad_(False)
        for block in self.blocks[:blocks]:
            block.requires_grad_(False)

    def checkpoint_activations(self) -> None:
        import functools
        import types

        from torch.utils.checkpoint import checkpoint

        for block in self.blocks:
            bound = types.MethodType(type(block).forward, block)
            block.forward = functools.partial(checkpoint, bound, use_reentrant=False)

    # --- the autograd forward ------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """ids (B, L) -> the final norm's output (B, L, H) float32, or the output of the module
        named `layer` (as `hidden_states`), with autograd: the training path."""
        self.check_layer(layer)
        u = self.embedding_layer(input_ids).float()
        if layer == "embedding_layer":
            return u
        stop = self.config.num_layers if layer in (None, "norm") else int(layer.split(".")[1])
        captured: list[torch.Tensor] = []
        handle = None
        if layer is not None and layer.count(".") > 1:  # a module inside block `stop`
            handle = self.get_submodule(layer).register_forward_hook(
                lambda _m, _i, out: captured.append(out))
        try:
            for block in self.blocks[:stop + 1]:
                u = block(u)
        finally:
            if handle is not None:
                handle.remove()
        if captured:
            return captured[0].float()
        if layer is not None and layer != "norm":
            return u
        return self.norm(u.to(self.norm.scale.dtype)).float()

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> next-token logits (B, L, vocab) with autograd (tied unembedding)."""
        w = self.embedding_layer.weight
        return self(input_ids).to(w.dtype) @ w.T
