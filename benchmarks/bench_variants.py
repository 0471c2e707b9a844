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

`--lambda --before TREE` (results/bench_variants_lambda.json): the issue-28 figures, this
checkout against another (TREE: e.g. `git worktree add /tmp/before 354ac8b`), each run in a
process of its own importing its checkout's genomeconv (harness.run_in_tree), the two
alternating repeat by repeat:
- SNVs/s of the real pipeline (score_variants: local Ray, 1 worker, the default window 1,024 and
  batch, both strands) on every SNV of 1,000 positions of lambda (../shared/data), given as a
  VCF, with the bundled model; Ray's start and a first small run are outside the timing, as in
  a session that runs one job after another (a checkout that keeps its model workers between
  runs, runtime.map_units, then starts none); "cold": the same run again on fresh workers
  (release_workers; a checkout without it measures that in its one run), as a one-off
  `genomeconv score-variants` pays past Ray's start; the max abs difference of every score
  column between the two checkouts' outputs;
- tokens/s of the bundled model's forward (inference.hidden_and_loglik, 2 threads) on 128
  windows of 1,024 tokens against one input of 131,072, alternated 15 times (median: a call
  takes half a second, and single calls here vary by 15%), in two processes per checkout (their
  mean; processes here differ by up to 15% too), alternating, before any Ray run (Ray's
  processes outlive a run's process by a few seconds).

Usage: python benchmarks/bench_variants.py [--quick] [--cases 1kbp,32kbp,1Mbp]
       python benchmarks/bench_variants.py --lambda --before /tmp/before [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pysam
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("BENCH_TREE") or str(ROOT))  # harness.tree_root

from benchmarks.harness import interleaved, print_table, write_result  # noqa: E402
from genomeconv.io.fasta import FastaFile  # noqa: E402
from genomeconv.io.variants import Variant  # noqa: E402
from genomeconv.models import HyenaConfig, HyenaDNA  # noqa: E402
from genomeconv.pipelines.variants import plan_variant, score_planned  # noqa: E402
from variants_api import score_variants  # noqa: E402  (this folder's: see variants_api)

DATA = Path(os.environ.get("GENOMECONV_DATA") or next(
    (p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()),
    Path("../shared/data")))
LAMBDA = DATA / "lambda_virus.fa"
LAMBDA_START, LAMBDA_POSITIONS = 20_001, 1000  # 1-based first position (mid-genome), count
SCORES = ("llr", "llr_fwd", "llr_rev", "emb_cosine", "emb_l2")
SHAPES = {"128x1024": (128, 1024), "1x131072": (1, 131_072)}

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


def write_snvs(path: Path, first: int, count: int) -> int:
    """Every SNV of `count` positions of lambda from 1-based `first`, as a text VCF."""
    with FastaFile(str(LAMBDA)) as fa:
        contig, size = fa.references[0], fa.lengths[0]
        bases = fa.fetch(contig, first - 1, first - 1 + count).upper()
    lines = ["##fileformat=VCFv4.2", f"##contig=<ID={contig},length={size}>",
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    lines += [f"{contig}\t{first + k}\t.\t{b}\t{a}\t.\t.\t." for k, b in enumerate(bases)
              for a in "ACGT" if b in "ACGT" and a != b]
    path.write_text("\n".join(lines) + "\n")
    return len(lines) - 3


def child_snvs(vcf: str, warm: str, out: str) -> dict:
    """In the checkout under test: score_variants on `vcf` after a warm-up run on `warm`
    ("seconds"), then again on fresh workers where the checkout keeps them between runs
    ("cold_seconds"; else the same run)."""
    from genomeconv.pipelines import runtime

    runtime.connect()
    score_variants(warm, LAMBDA, Path(out).with_suffix(".warm"))
    t0 = time.perf_counter()
    score_variants(vcf, LAMBDA, out)
    seconds = time.perf_counter() - t0
    if not hasattr(runtime, "release_workers"):
        return {"seconds": seconds, "cold_seconds": seconds}
    runtime.release_workers()
    t0 = time.perf_counter()
    score_variants(vcf, LAMBDA, Path(out).with_suffix(".cold"))
    return {"seconds": seconds, "cold_seconds": time.perf_counter() - t0}


def child_tokens() -> dict:
    """In the checkout under test: tokens/s of the bundled model's forward per shape."""
    from genomeconv.models import load
    from genomeconv.models.inference import hidden_and_loglik

    torch.set_num_threads(2)
    model = load(None)
    ids = torch.from_numpy(np.random.default_rng(0).integers(7, 11, size=(128, 1024)))
    inputs = {name: ids.reshape(shape) for name, shape in SHAPES.items()}
    hidden_and_loglik(model, inputs["128x1024"][:8])  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in inputs}
    for _ in range(15):
        for name, x in inputs.items():
            t0 = time.perf_counter()
            hidden_and_loglik(model, x)
            seconds[name].append(time.perf_counter() - t0)
    return {name: ids.numel() / statistics.median(t) for name, t in seconds.items()}


def max_differences(a: Path, b: Path) -> dict[str, float]:
    """Rows matched by (chrom, pos, ref, alt): the max abs difference of each score column."""
    import pyarrow.parquet as pq

    def keyed(folder: Path) -> dict[tuple, dict]:
        return {(r["chrom"], r["pos"], r["ref"], r["alt"]): r
                for r in pq.read_table(folder).to_pylist()}

    ra, rb = keyed(a), keyed(b)
    assert ra.keys() == rb.keys(), "the two runs wrote different keys"
    return {c: max((abs(ra[k][c] - rb[k][c]) if ra[k][c] is not None else
                    (0.0 if rb[k][c] is None else math.inf)) for k in ra) for c in SCORES}


def run_lambda(before: Path, repeats: int) -> None:
    """The --lambda figures (module docstring), written to results/bench_variants_lambda.json."""
    from benchmarks.harness import run_in_tree

    trees = {"before": before, "after": ROOT}
    load_start = os.getloadavg()
    seconds: dict[str, list[float]] = {name: [] for name in trees}
    cold: dict[str, list[float]] = {name: [] for name in trees}
    runs = [(name, run_in_tree(__file__, tree, ["--child", "tokens"]))
            for _ in range(2) for name, tree in trees.items()]
    tokens = {name: {shape: statistics.median(got[shape] for n, got in runs if n == name)
                     for shape in SHAPES} for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        vcf, warm = Path(tmp) / "snvs.vcf", Path(tmp) / "warm.vcf"
        n = write_snvs(vcf, LAMBDA_START, LAMBDA_POSITIONS)
        write_snvs(warm, 1, 2)
        for _ in range(repeats):
            for name, tree in trees.items():
                got = run_in_tree(__file__, tree, ["--child", "snvs", vcf, warm,
                                                   Path(tmp) / name])
                seconds[name].append(got["seconds"])
                cold[name].append(got["cold_seconds"])
        equality = max_differences(Path(tmp) / "before", Path(tmp) / "after")
    rows = []
    for name in trees:
        t, tc = statistics.median(seconds[name]), statistics.median(cold[name])
        rows.append({"checkout": name, "snvs": n, "median_s": t, "min_s": min(seconds[name]),
                     "snvs_per_s": n / t, "cold_median_s": tc, "cold_snvs_per_s": n / tc,
                     "repeats": repeats,
                     **{f"tokens_per_s_{k}": v for k, v in tokens[name].items()},
                     "tokens_ratio_128x1024": tokens[name]["128x1024"] / tokens[name][
                         "1x131072"]})
    rows[1]["speedup"] = rows[1]["snvs_per_s"] / rows[0]["snvs_per_s"]
    rows[1]["cold_speedup"] = rows[1]["cold_snvs_per_s"] / rows[0]["cold_snvs_per_s"]
    print_table(rows, ["checkout", "snvs", "median_s", "min_s", "snvs_per_s", "speedup",
                       "cold_snvs_per_s", "cold_speedup",
                       "tokens_per_s_128x1024", "tokens_per_s_1x131072",
                       "tokens_ratio_128x1024"])
    print("max abs differences after - before:", equality)
    write_result("bench_variants_lambda", rows, before=str(before), equality=equality,
                 region=f"lambda {LAMBDA_START}-{LAMBDA_START + LAMBDA_POSITIONS - 1}",
                 load_average={"start": load_start, "end": os.getloadavg()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 kbp and 32 kbp only, 1 repeat")
    parser.add_argument("--cases", default="1kbp,32kbp,1Mbp", help="comma-separated windows")
    parser.add_argument("--lambda", dest="lambda_", action="store_true",
                        help="the issue-28 figures against --before (module docstring)")
    parser.add_argument("--before", type=Path, help="the checkout to compare with")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # one run_in_tree run
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        print(json.dumps(child_snvs(*rest) if kind == "snvs" else child_tokens()))
        return
    if args.lambda_:
        return run_lambda(args.before, args.repeats)
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
