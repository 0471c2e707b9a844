"""The DeepSpeed configs shipped in genomeconv/data/deepspeed/: parsed by DeepSpeed's own config
parser once genomeconv has filled in the batch sizes, and each one trains a tiny HyenaDNA for a few
steps on CPU (ZeRO 0-3, bf16, CPU offload, gradient accumulation with activation checkpointing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pysam
import pytest
import torch

from genomeconv.errors import InputError
from genomeconv.models import load
from genomeconv.pipelines import deepspeed_engine as ds
from genomeconv.pipelines import train as tr

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIGS = sorted(p.stem for p in ds.CONFIG_DIR.glob("*.json"))


def test_the_expected_configs_exist():
    assert {"zero0_fp32", "zero1_fp32", "zero2_bf16", "zero3_fp32", "zero3_offload",
            "long_seq_bf16_ckpt"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_parses_with_deepspeed(name):
    from deepspeed.runtime.config import DeepSpeedConfig

    ds.init_distributed()
    raw = json.loads((ds.CONFIG_DIR / f"{name}.json").read_text())
    gas = raw.get("gradient_accumulation_steps", 1)
    cfg = ds.load_deepspeed_config(name, batch_size=8 * gas, world_size=1)
    parsed = DeepSpeedConfig(cfg)
    assert parsed.train_batch_size == 8 * gas
    assert parsed.gradient_accumulation_steps == gas
    assert parsed.train_micro_batch_size_per_gpu == 8
    assert parsed.zero_optimization_stage == raw["zero_optimization"]["stage"]
    assert parsed.bfloat16_config.enabled == ("bf16" in name)
    if name.startswith("zero"):
        assert parsed.zero_optimization_stage == int(name[4])
    if "offload" in name:
        assert parsed.zero_config.offload_optimizer.device == "cpu"
    if "ckpt" in name:
        assert "activation_checkpointing" in raw and gas > 1


def test_batch_must_split_over_processes_and_accumulation():
    with pytest.raises(ValueError, match="not a multiple"):
        ds.load_deepspeed_config("long_seq_bf16_ckpt", batch_size=6, world_size=1)
    with pytest.raises(InputError, match="zero0_fp32"):
        ds.load_deepspeed_config("no_such_config", batch_size=8, world_size=1)


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> Path:
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("ds_genome") / "g.fa"
    seq = "".join(rng.choice(list("ACGT"), size=3000))
    path.write_text(">r1\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n")
    pysam.faidx(str(path))
    return path


@pytest.mark.parametrize("name", [c for c in CONFIGS if c != "zero0_fp32"])
def test_config_trains_a_tiny_model(name, genome, tmp_path):
    opts = tr.PretrainOptions(
        fasta=genome,
        out=tmp_path,
        d_model=16,
        n_layer=2,
        seq_len=32,
        steps=2,
        batch_size=4,
        lr=1e-3,
        val_windows=2,
        val_fraction=0.1,
        eval_every=2,
        save_every=2,
        deepspeed_config=name,
    )
    summary = tr.pretrain(opts, log=lambda line: None)
    assert all(math.isfinite(r["train_loss"]) for r in summary["history"])
    assert math.isfinite(summary["val_nll"])
    model = load(tmp_path / "model")  # exported whole (ZeRO-3 gathered) and in float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert (tmp_path / "checkpoints" / "step2").is_dir()
