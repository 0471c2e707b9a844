"""Tiny random Evo 2 models for the tests: release-style config values (evo2's YAML keys) with the
layer patterns of the published models at small widths, and random weights that exercise every
parameter (random D and biases, non-trivial embeddings so that logits vary)."""

from __future__ import annotations

from typing import Any

import torch

from genomeconv.models.families.evo2 import Evo2, Evo2Config

ONE_B = dict(attn_layer_idxs=[3, 10, 17, 24], hcl_layer_idxs=[2, 6, 9, 13, 16, 20, 23],
             hcm_layer_idxs=[1, 5, 8, 12, 15, 19, 22], hcs_layer_idxs=[0, 4, 7, 11, 14, 18, 21],
             num_layers=25)
SEVEN_B = dict(attn_layer_idxs=[3, 10, 17, 24, 31],
               hcl_layer_idxs=[2, 6, 9, 13, 16, 20, 23, 27, 30],
               hcm_layer_idxs=[1, 5, 8, 12, 15, 19, 22, 26, 29],
               hcs_layer_idxs=[0, 4, 7, 11, 14, 18, 21, 25, 28], num_layers=32)


def release_values(hidden: int, heads: int, groups: int, **changes: Any) -> dict[str, Any]:
    """Config values as the evo2 package's YAML files have them (the 1B file's switches)."""
    values = dict(
        model_name="test", vocab_size=512, hidden_size=hidden, num_filters=hidden,
        hcm_filter_length=128, hcl_filter_groups=hidden, hcm_filter_groups=groups,
        hcs_filter_groups=groups, hcs_filter_length=7, short_filter_length=3,
        num_attention_heads=heads, short_filter_bias=False, mlp_init_method="torch.nn.init.zeros_",
        mlp_output_init_method="torch.nn.init.zeros_", eps=1e-6, state_size=16,
        rotary_emb_base=10000, make_vocab_size_divisible_by=8, inner_size_multiple_of=16,
        log_intermediate_values=False, proj_groups=1, hyena_filter_groups=1,
        column_split_hyena=False, column_split=True, interleave=True,
        evo2_style_activations=True, model_parallel_size=1, pipe_parallel_size=1,
        tie_embeddings=True, mha_out_proj_bias=True, hyena_out_proj_bias=True,
        hyena_flip_x1x2=False, qkv_proj_bias=False, use_fp8_input_projections=True,
        max_seqlen=8192, max_batch_size=1, final_norm=True, use_flash_attn=True,
        use_flash_rmsnorm=False, use_flash_depthwise=False, use_flashfft=False,
        use_laughing_hyena=False, inference_mode=True, tokenizer_type="CharLevelTokenizer",
        prefill_style="fft", mlp_activation="gelu", print_activations=False)
    values.update(changes)
    return values


# every block type, with the optional biases on; the 1B pattern; the 7B-1M pattern
# (interpolated rotary); widths keep the published channels per filter group (15, 16)
CONFIGS = {
    "types": release_values(48, 4, 6, num_layers=6, hcs_layer_idxs=[0], hcm_layer_idxs=[1, 5],
                            hcl_layer_idxs=[2, 4], attn_layer_idxs=[3], state_size=8,
                            short_filter_bias=True, qkv_proj_bias=True),
    "1b": release_values(60, 15, 4, inner_mlp_size=160, **ONE_B),
    "7b-1m": release_values(64, 4, 4, inner_mlp_size=176, rotary_emb_scaling_factor=128,
                            use_interpolated_rotary_pos_emb=True, max_seqlen=1048576,
                            **SEVEN_B),
}


def random_model(values: dict[str, Any], seed: int = 0) -> Evo2:
    """An Evo2 for `values` with random weights (eval mode, float32)."""
    torch.manual_seed(seed)
    model = Evo2(Evo2Config.from_release(values)).eval()
    with torch.no_grad():
        model.embedding_layer.weight.normal_(0.0, 1.0)
        for name, p in model.named_parameters():
            if name.endswith((".D", ".bias", "short_filter_bias")):
                p.normal_(0.0, 0.2)
            elif name.endswith("scale"):
                p.uniform_(0.5, 1.5)
    return model


def dna_ids(length: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    """Random A/C/G/T byte ids (B, length)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.tensor([65, 67, 71, 84])[torch.randint(0, 4, (batch, length), generator=gen)]


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref| (both as float64)."""
    ref = ref.double()
    return ((ours.double() - ref).abs().max() / ref.abs().max()).item()
