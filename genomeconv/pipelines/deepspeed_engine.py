"""DeepSpeed plumbing shared by pretraining and fine-tuning: process group, config, engine,
the optimizer-step loop, checkpoint resume, export, and the Ray Train runner.

Processes. One process on CPU (gloo; DS_ACCELERATOR=cpu) when started plainly; N processes
under `torchrun --nproc-per-node N` or the `deepspeed` launcher (RANK/WORLD_SIZE from the
launcher); N Ray Train workers (`ray.train.torch.TorchTrainer`, `run_on_ray`) when an address is
given. The global batch is fixed by `batch_size`: each optimizer step sees exactly the same
examples whatever the number of processes and the DeepSpeed config's gradient accumulation,
split as rows [(m * world + rank) * micro, ...) for micro-step m (`optimizer_step`), so runs with
different process counts follow the same loss curve.

DeepSpeed config: a JSON file shipped in genomeconv/data/deepspeed/ (by name, e.g. "zero2_bf16"),
or any JSON file by path. genomeconv sets `train_batch_size` and
`train_micro_batch_size_per_gpu` from `batch_size`, the world size and the file's
`gradient_accumulation_steps`; the file chooses ZeRO stage, bf16, clipping and offload. An
`activation_checkpointing` section turns on recomputation of each block of the model in the
backward pass (LanguageModel.checkpoint_activations). The optimizer is torch AdamW (no
DeepSpeed op compilation), with a linear warm-up and cosine decay of the learning rate.
"""

from __future__ import annotations

import functools
import json
import math
import os
import socket
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genomeconv.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "data" / "deepspeed"  # package data
WEIGHT_DECAY = 0.01


def on_cuda(device: str | None) -> bool:
    """Whether training runs on CUDA: --device, else whether this machine has it."""
    return str(device).startswith("cuda") if device is not None else torch.cuda.is_available()


def init_distributed(device: str | None = None) -> tuple[int, int]:
    """Join (or start, as a 1-process group) the process group on `device` (--device; None:
    CUDA when present); returns (rank, world_size)."""
    import torch.distributed as dist

    if not on_cuda(device):
        os.environ["DS_ACCELERATOR"] = "cpu"  # read when deepspeed is first imported
    if not dist.is_initialized():
        for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                           "MASTER_ADDR": "127.0.0.1"}.items():
            os.environ.setdefault(key, value)
        if "MASTER_PORT" not in os.environ:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    import deepspeed

    if not on_cuda(device):
        skip_shared_memory_op()
    deepspeed.init_distributed(dist_backend="nccl" if on_cuda(device) else "gloo")
    return dist.get_rank(), dist.get_world_size()


def skip_shared_memory_op() -> None:
    """Keep DeepSpeed's CPU backend from compiling its shared-memory all-reduce: a C++ op built
    with the system compiler on first use (minutes on two cores; no compiler, no training) that
    only DeepSpeed's inference all-reduce calls, while training all-reduces through gloo.
    DeepSpeed builds an op only when its table of compatible ops says so."""
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible["deepspeed_shm_comm"] = False


def world_size(world: int | None = None) -> int:
    """`world` when given, else the launcher's WORLD_SIZE, else 1."""
    return world if world is not None else int(os.environ.get("WORLD_SIZE", "1"))


def load_deepspeed_config(name_or_path: str | Path, *, batch_size: int, world_size: int,
                          dtype: str | None = None) -> dict[str, Any]:
    """The config file with batch sizes filled in for a global batch of `batch_size`, and
    with `dtype` (--dtype) its mixed precision: bfloat16 or float16 turn on DeepSpeed's bf16 or
    fp16, float32 turns both off (None: the file's choice)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise InputError(f"--deepspeed-config {name_or_path!r} not found (a JSON path, or one "
                         f"of: {known})")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not a JSON DeepSpeed config ({exc})", path=path) from None
    gas = cfg.get("gradient_accumulation_steps", 1) if isinstance(cfg, dict) else None
    if not isinstance(gas, int) or isinstance(gas, bool) or gas < 1:
        raise InputError("a DeepSpeed config is a JSON object whose gradient_accumulation_steps "
                         "(default 1) is an integer >= 1", path=path)
    if batch_size % (gas * world_size):
        raise InputError(f"--batch-size {batch_size} is not a multiple of gradient accumulation "
                         f"{gas} x {world_size} processes")
    cfg.update(train_batch_size=batch_size, gradient_accumulation_steps=gas,
               train_micro_batch_size_per_gpu=batch_size // (gas * world_size))
    if dtype is not None:
        for key, name in (("bf16", "bfloat16"), ("fp16", "float16")):
            cfg[key] = {**cfg.get(key, {}), "enabled": dtype == name}
    return cfg


def lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up to 1 over warmup_steps, then cosine decay to 0.1 at total_steps."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def build_engine(module: nn.Module, ds_config: dict[str, Any], *, lr: float, total_steps: int,
                 warmup_steps: int) -> Any:
    """deepspeed.initialize with torch AdamW over the trainable parameters and the LR schedule;
    `module.model` is the backbone (a models.LanguageModel, whose blocks activation
    checkpointing wraps)."""
    import deepspeed

    if "activation_checkpointing" in ds_config:
        module.model.checkpoint_activations()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=WEIGHT_DECAY)
    schedule = functools.partial(torch.optim.lr_scheduler.LambdaLR,
                                 lr_lambda=lr_lambda(total_steps, warmup_steps))
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer,
                                           lr_scheduler=schedule, config=ds_config)
    return engine


def micro_rows(batch_rows: int, micro: int, m: int, rank: int, world: int) -> slice:
    """Rows of the global batch that micro-step `m` of process `rank` trains on."""
    start = (m * world + rank) * micro
    assert start + micro <= batch_rows, "batch rows do not cover the global batch"
    return slice(start, start + micro)


def optimizer_step(engine: Any, batch_rows: int, loss_of: Callable[[slice], torch.Tensor],
                   rank: int, world: int) -> float:
    """One optimizer step over a global batch of `batch_rows` rows: this process's share of
    each micro-step (`loss_of(rows)` -> loss), backward, step; returns the mean loss over all
    processes."""
    micro = engine.train_micro_batch_size_per_gpu()
    losses = []
    for m in range(engine.gradient_accumulation_steps()):
        loss = loss_of(micro_rows(batch_rows, micro, m, rank, world))
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return mean_over_ranks(float(np.mean(losses)))


def mean_over_ranks(value: float) -> float:
    """The mean of `value` over every process of the group."""
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def resume_state(engine: Any, ckpt_dir: Path, resume: bool) -> dict[str, Any] | None:
    """Load the latest checkpoint of `ckpt_dir` when resuming and one exists; its client state."""
    if not (resume and (ckpt_dir / "latest").is_file()):
        return None
    _, client = engine.load_checkpoint(str(ckpt_dir), load_module_strict=True)
    return client


def _gathered(engine: Any) -> Any:
    """Context in which ZeRO-3 partitioned parameters are whole on every rank."""
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(engine.module.parameters()))
    return nullcontext()


def export_model(engine: Any, directory: Path, *, card: str | None = None,
                 head_meta: dict[str, Any] | None = None) -> None:
    """Write the trained backbone (`engine.module.model`, a models.LanguageModel) through its
    `save` from rank 0 (float32, whatever dtype DeepSpeed trained it in), and the head of a
    VariantClassifier when `head_meta` is given."""
    import torch.distributed as dist

    from genomeconv.models.heads import save_head

    with _gathered(engine):
        if dist.get_rank() == 0:
            engine.module.model.save(directory, card=card)
            if head_meta is not None:
                save_head(engine.module.head, head_meta, directory)
    dist.barrier()


def run_on_ray(fn: Callable[..., dict[str, Any]], check: Callable[..., None], args: tuple, *,
               out: str | Path, address: str | None, num_workers: int) -> dict[str, Any]:
    """Run pretrain/finetune (`fn(*args)`, writing to `out`) as `num_workers` Ray Train workers
    (TorchTrainer sets up the process group that DeepSpeed then joins); returns the summary
    that rank 0 wrote to OUT/summary.json (OUT must be on storage every worker can reach).
    `check(*args, world=num_workers)` runs here first: a worker's error would be a Ray
    traceback."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from genomeconv.pipelines.runtime import connect

    check(*args, world=num_workers)
    connect(address)
    cuda = on_cuda(args[0].device)
    out = Path(out).resolve()

    def loop(config: dict[str, Any]) -> None:
        fn(*config["args"], log=lambda line: None)

    trainer = TorchTrainer(
        loop, train_loop_config={"args": args},
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers,
                                               use_gpu=cuda),
        torch_config=TorchConfig(backend="nccl" if cuda else "gloo"),
        run_config=ray.train.RunConfig(storage_path=str(out / "ray"), name="genomeconv-train"))
    trainer.fit()
    return json.loads((out / "summary.json").read_text())
