"""The official Evo 2 implementation (`vtx`: vortex's StripedHyena, Apache-2.0) on the CPU, as
the test-only reference that genomeconv's Evo 2 family is checked against (tests and
benchmarks/bench_evo2.py; never a runtime path).

vortex is written for CUDA; three things keep it from running here, and each is replaced by
the same computation, so its math is unchanged:
- `vortex.ops.embedding.rotary.apply_rotary` is a Triton kernel (and importing `vortex.ops`
  needs flash-attn's CUDA extension): the stub below computes what the kernel computes (cos and
  sin as given, in their dtype; x0 cos - x1 sin, x0 sin + x1 cos in float32; stored in x's
  dtype, rotating halves);
- `torch.cuda.device(cpu)` raises: it is a null context for CPU devices while vortex runs;
- `vortex.logging` opens `activations_debug.log` in the working directory on import: it is
  imported from a temporary directory.
The configs set `use_flash_attn: False`, vortex's own switch to its SelfAttention (torch's
scaled_dot_product_attention, the same causal softmax attention as flash-attn computes).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import types
from collections.abc import Iterator
from typing import Any

import torch

_REAL_CUDA_DEVICE = torch.cuda.device


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  seqlen_offsets: int = 0, cu_seqlens=None, max_seqlen=None,
                  interleaved: bool = False, inplace: bool = False,
                  conjugate: bool = False) -> torch.Tensor:
    """The Triton `rotary_kernel`'s computation for x (batch, seqlen, heads, headdim), rotate
    halves, integer offsets (what vortex's forward passes)."""
    if cu_seqlens is not None or interleaved or not isinstance(seqlen_offsets, int):
        raise NotImplementedError("the CPU stub covers vortex's forward pass only")
    seqlen, half = x.shape[1], cos.shape[1]
    c = cos[seqlen_offsets:seqlen_offsets + seqlen, None, :].float()
    s = sin[seqlen_offsets:seqlen_offsets + seqlen, None, :].float()
    s = -s if conjugate else s
    x0, x1 = x[..., :half].float(), x[..., half:2 * half].float()
    o0, o1 = x0 * c - x1 * s, x0 * s + x1 * c
    out = x if inplace else x.clone()
    out[..., :half] = o0.to(x.dtype)
    out[..., half:2 * half] = o1.to(x.dtype)
    return out


class _CpuTolerantDevice:
    """torch.cuda.device that is a null context for CPU devices (and None)."""

    def __new__(cls, device: Any):
        target = torch.device(device) if isinstance(device, (str, torch.device)) else None
        if device is None or (target is not None and target.type == "cpu"):
            return contextlib.nullcontext()
        return _REAL_CUDA_DEVICE(device)


@contextlib.contextmanager
def cpu_patches() -> Iterator[None]:
    """torch.cuda.device tolerant of CPU devices while vortex code runs."""
    torch.cuda.device = _CpuTolerantDevice
    try:
        yield
    finally:
        torch.cuda.device = _REAL_CUDA_DEVICE


def import_vortex() -> types.ModuleType:
    """vortex.model.model, imported once with the stubs in place."""
    if "vortex.model.model" in sys.modules:
        return sys.modules["vortex.model.model"]
    rotary = types.ModuleType("vortex.ops.embedding.rotary")
    rotary.apply_rotary = _apply_rotary
    sys.modules["vortex.ops.embedding.rotary"] = rotary
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            import vortex.logging  # noqa: F401  (opens its log file here, in tmp)
            import vortex.model.model as model
        finally:
            os.chdir(here)
    import logging

    logging.getLogger("StripedHyena").setLevel(logging.ERROR)
    return model


def official_config(values: dict[str, Any]) -> Any:
    """A vortex config (dotdict) from Evo 2 YAML values, switched to the CPU-capable paths."""
    from vortex.model.utils import dotdict

    import_vortex()
    return dotdict({**values, "use_flash_attn": False, "use_flashfft": False,
                    "use_fp8_input_projections": False, "use_flash_depthwise": False,
                    "use_flash_rmsnorm": False, "params_dtype": torch.float32,
                    "hyena_block_dtype": torch.float32, "attn_block_dtype": torch.float32,
                    "mlp_dtype": torch.float32})


def build(values: dict[str, Any], state: dict[str, torch.Tensor], *,
          bf16: bool = False) -> torch.nn.Module:
    """The official StripedHyena for `values`, loaded from a release-layout state dict the way
    vortex loads a checkpoint (custom_load_state_dict: Wqkv rows reordered), in float32, or with
    `bf16` as vortex's load_checkpoint leaves it (to_bfloat16_except_pr_lc: bf16 everywhere but
    the poles and residues)."""
    model_module = import_vortex()
    with cpu_patches(), torch.device("cpu"):
        model = model_module.StripedHyena(official_config(values))
        model.float()
        model.custom_load_state_dict(dict(state))
        if bf16:
            model.to_bfloat16_except_pr_lc()
            for name, p in model.named_parameters():  # its TE-free projections: bf16 as well
                if "projections" in name:
                    p.data = p.data.to(torch.bfloat16)
    return model.eval()


@torch.no_grad()
def forward(model: torch.nn.Module, ids: torch.Tensor,
            layers: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits (B, L, vocab), {layer: output of that module}) as evo2's Evo2.forward reads them
    (forward hooks, first element of tuple outputs)."""
    captured: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_, __, output):
            captured[name] = (output[0] if isinstance(output, tuple) else output).detach()
        return record

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in layers]
    try:
        with cpu_patches():
            logits, _ = model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return logits, captured
