"""Variant scoring throughput (variants/s) at 1 kbp, 32 kbp and 1 Mbp windows on this machine,
with and without shared reference windows.

"shared": three ALTs at each position (all SNVs of a base), so the three variants share one
reference window (4 forward windows + 4 reverse-complement windows per 3 variants).
"distinct": one ALT per position, so every variant needs its own reference window (2 + 2 windows
per variant). Both run the same code (plan_variant + score_planned, no Ray) on a random genome with
a randomly initialised model of the stated shape; the contenders alternate repeat by repeat
(harness.interleaved), so machine load hits both alike: read the shared/distinct ratio first.

Shapes: 1 kbp and 32 kbp use the HyenaDNA tiny-1k (d128 x 2) and small-32k (d256 x 4) shapes;
1 Mbp uses a small model (d 32 x 2 layers, max_seq_len 1,048,578), because the large-1m shape
(d256 x 8) does not fit this shared 2-core machine's time budget. For the same reason 32 kbp and
1 Mbp use one position per contender (3 shared ALTs vs 1 variant); per-variant cost is flat, so
variants/s does not depend on the count.

Usage: python benchmarks/bench_variants.py [--quick] [--cases 1kbp,32kbp,1Mbp]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pysam
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import interleaved, print_table, write_result  # noqa: E402
from genomeconv.io.fasta import FastaFile  # noqa: E402
from genomeconv.io.variants import Variant  # noqa: E402
from genomeconv.models import HyenaConfig, HyenaDNA  # noqa: E402
from genomeconv.pipelines.variants import plan_variant, score_planned  # noqa: E402

CASES = [  # name, window, model shape, positions (shared, distinct), batch size, repeats
    ("1kbp", 1024, dict(d_model=128, n_layer=2, d_inner=512, max_seq_len=1026), (4, 12), 16, 2),
    ("32kbp", 32768, dict(d_model=256, n_layer=4, d_inner=1024, max_seq_len=32770), (1, 1), 2,
     1),
    ("1Mbp", 1 << 20, dict(d_model=32, n_layer=2, d_inner=128, max_seq_len=(1 << 20) + 2),
     (1, 1), 1, 1),
]


def make_variants(genome: str, positions: list[int], shared: bool) -> list[Variant]:
    """Three SNVs per position (shared) or one SNV per position (distinct)."""
    out = []
    for p in positions:
        ref = genome[p - 1]
        alts = [b for b in "ACGT" if b != ref]
        for alt in alts if shared else alts[:1]:
            out.append(Variant("chr1", p, ref, alt, None, "bench", 0))
    return out


def run_case(name: str, window: int, shape: dict, n_pos: tuple[int, int], batch: int,
             repeats: int, tmp: Path, rng: np.random.Generator) -> list[dict]:
    torch.manual_seed(0)
    model = HyenaDNA(HyenaConfig(**shape)).eval()
    genome_len = window + 5 * max(n_pos) + 10
    genome = "".join(rng.choice(list("ACGT"), size=genome_len))
    fa = tmp / f"{name}.fa"
    fa.write_text(">chr1\n" + "\n".join(genome[i:i + 80] for i in range(0, genome_len, 80)) + "\n")
    pysam.faidx(str(fa))
    fasta = FastaFile(str(fa))
    base = window // 2 + 1
    sets = {
        "shared": make_variants(genome, [base + 5 * i for i in range(n_pos[0])], True),
        "distinct": make_variants(genome, [base + 5 * i for i in range(n_pos[1])], False),
    }

    def contender(variants):
        def run():
            planned = [plan_variant(v, fasta, window, {}) for v in variants]
            rows = score_planned(model, planned, batch_size=batch)
            assert all(r["status"] == "ok" for r in rows)
        return run

    if repeats == 1:  # no full warm-up round: warm the one-time costs (filter spectra, pages)
        p = base + 5 * max(n_pos)
        contender([Variant("chr1", p, genome[p - 1], genome[p - 1], None, "bench", 0)])()
    timings = interleaved({k: contender(v) for k, v in sets.items()}, repeats=repeats,
                          warmup=1 if repeats > 1 else 0)
    rows = []
    for k, t in timings.items():
        n = len(sets[k])
        rows.append({"window": name, "variants": k, "n_variants": n,
                     "model": f"d{shape['d_model']}x{shape['n_layer']}",
                     "median_s": t["median_s"], "variants_per_s": n / t["median_s"],
                     "peak_extra_mib": t["peak_extra_bytes"] / 2**20, "repeats": t["repeats"]})
    rows[0]["shared_speedup"] = rows[0]["variants_per_s"] / rows[1]["variants_per_s"]
    fasta.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 kbp and 32 kbp only, 1 repeat")
    parser.add_argument("--cases", default="1kbp,32kbp,1Mbp", help="comma-separated windows")
    args = parser.parse_args()
    wanted = args.cases.split(",")
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, window, shape, n_pos, batch, repeats in CASES:
            if name not in wanted or (args.quick and name == "1Mbp"):
                continue
            repeats = 1 if args.quick else repeats
            rows += run_case(name, window, shape, n_pos, batch, repeats, Path(tmp), rng)
            print_table(rows, ["window", "variants", "n_variants", "model", "median_s",
                               "variants_per_s", "shared_speedup", "peak_extra_mib", "repeats"])
    suffix = "" if len(wanted) == len(CASES) else "_" + "_".join(wanted)
    write_result("bench_variants" + suffix, rows, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
