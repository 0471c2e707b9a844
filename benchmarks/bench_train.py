"""Training throughput (tokens/s) of one DeepSpeed step (forward, backward, AdamW) on this CPU.

Contenders: the bundled model's shape (d64 x 2) and HyenaDNA tiny-1k (d128 x 2), both at
L = 1024 with a batch of 4 windows, ZeRO-0 fp32 through `pipelines.train.build_engine`, with 1
and 2 torch threads; repeats alternate (harness.interleaved), so machine load hits all alike.
On a shared 2-core machine one thread per process is much faster (OpenMP spin waits), which is
why scripts/train_bundled_model.sh sets OMP_NUM_THREADS=1.

Usage: python benchmarks/bench_train.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import interleaved, print_table, write_result  # noqa: E402
from genomeconv.models import HyenaConfig, HyenaDNA  # noqa: E402
from genomeconv.pipelines import train as tr  # noqa: E402

SHAPES = {"d64x2": dict(d_model=64, n_layer=2, d_inner=256),
          "d128x2": dict(d_model=128, n_layer=2, d_inner=512)}
LENGTH, BATCH = 1024, 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tr.init_distributed()
    ds_config = tr.load_deepspeed_config("zero0_fp32", batch_size=BATCH, world_size=1)
    ids = torch.randint(7, 11, (BATCH, LENGTH))
    contenders = {}
    for shape, dims in SHAPES.items():
        model = HyenaDNA(HyenaConfig(max_seq_len=LENGTH, **dims))
        engine = tr.build_engine(tr.NextTokenLoss(model), ds_config, lr=1e-3, total_steps=100,
                                 warmup_steps=1)
        for threads in (1, 2):
            def step(engine=engine, threads=threads) -> None:
                torch.set_num_threads(threads)
                loss = engine(ids)
                engine.backward(loss)
                engine.step()
            contenders[f"{shape} threads={threads}"] = step
    results = interleaved(contenders, repeats=args.repeats)
    rows = [{"case": name, "median_s": r["median_s"],
             "tokens_per_s": BATCH * LENGTH / r["median_s"],
             "peak_extra_mb": r["peak_extra_bytes"] / 2**20} for name, r in results.items()]
    print_table(rows, ["case", "median_s", "tokens_per_s", "peak_extra_mb"])
    write_result("train", rows, length=LENGTH, batch=BATCH, deepspeed_config="zero0_fp32")


if __name__ == "__main__":
    main()
