"""Monarch path (genomeconv.kernels.monarch) against the FFT path on CPU, float32, same run.

Usage: python -m benchmarks.bench_monarch [--lengths 12,16,20] [--H 256] [--B 1] [--repeats 3]
Rows: L, the Monarch plan, median seconds of each path (interleaved repeats), the ratio
monarch / fft and peak extra memory. Writes benchmarks/results/bench_monarch.json.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.harness import interleaved, print_table, write_result
from genomeconv.kernels import fftconv, monarch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="12,16,20", help="log2 of L, comma separated")
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for e in (int(v) for v in args.lengths.split(",")):
        L = 1 << e
        g = torch.Generator().manual_seed(e)
        u = torch.randn(args.B, args.H, L, generator=g)
        k = torch.randn(args.H, L, generator=g) / L**0.5
        D = torch.randn(args.H, generator=g)
        p = monarch.choose_p(2 * L - 1)
        plan = monarch.plan_for(2 * L - 1, p)
        with torch.no_grad():
            res = interleaved({
                "monarch": lambda: monarch.monarch_conv(u, k, D),
                "fft": lambda: fftconv(u, k, D, method="fft"),
            }, repeats=args.repeats, warmup=1 if e < 18 else 0)
        rows.append({
            "L": L, "plan": "x".join(map(str, plan.radices)),
            "monarch_s": res["monarch"]["median_s"], "fft_s": res["fft"]["median_s"],
            "monarch/fft": res["monarch"]["median_s"] / res["fft"]["median_s"],
            "monarch_peak_MiB": res["monarch"]["peak_extra_bytes"] / 2**20,
            "fft_peak_MiB": res["fft"]["peak_extra_bytes"] / 2**20,
        })
        print_table(rows[-1:], list(rows[-1]))
    print_table(rows, list(rows[0]))
    write_result("bench_monarch", rows, H=args.H, B=args.B, dtype="float32",
                 threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
