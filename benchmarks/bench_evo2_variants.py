"""Evo 2 variant scoring, the 1B shape (evo2-1b-8k.yml, random weights) at the Evo 2 paper's
window of 8,192 bp, both strands: genomeconv's score-variants computation (score_planned: REF
windows once, each ALT window continued from its REF window's captured state at the variant)
against the official recipe (two full forwards per variant per strand: REF and ALT, vortex on
the CPU through tests/evo2_official.py), in the same run and dtype.

The recipe runs 4 full 8,192-bp forwards per SNV, all of one shape, so its time is 4 x SNVs x
one forward of the official code, timed here (median of --official-repeats, after a warmup);
genomeconv's is the real score_planned call over the SNVs, timed end to end. Two variant sets:
`distinct` (every SNV at its own position: per SNV and strand one REF window + the ALT suffix,
half a window: operation count 2 / 1.5 = 1.33x before any per-forward speed) and `sites` (three
ALTs per position, as saturation mutagenesis: 12 windows against 2 x (1 + 3 x 0.5) = 5, 2.4x).
On this 2-core CPU one 1B forward of 8,192 bp takes about a minute in bfloat16, so the default
is 4 distinct SNVs and 2 sites (6 SNVs); --snvs / --sites scale it (48 SNVs: --snvs 48).

    python benchmarks/bench_evo2_variants.py [--dtype bf16] [--snvs 4] [--sites 2]

`--groups`: in this process, two (REF, ALT from the centre) pairs through
Evo2.log_likelihoods_shared together, in row groups of whole windows (`rows_per_pass`, as
set) against every row in pieces (rows_per_pass returning the batch), alternating
(results/bench_evo2_row_groups.json; design figure "evo2_row_groups").

    python benchmarks/bench_evo2_variants.py --groups [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.bench_evo2 import DTYPES, GIB, release_values, spawn  # noqa: E402
from benchmarks.harness import PeakRSS, print_table, write_result  # noqa: E402
from genomeconv.pipelines.runtime import native_half  # noqa: E402
from helpers import write_fasta  # noqa: E402

WINDOW = 8192


def variants(genome: str, snvs: int, sites: int, seed: int) -> dict[str, list]:
    """(pos, ref, alt) sets: `snvs` SNVs at distinct positions and `sites` positions with
    their three ALTs, all at least a window from the ends."""
    rng = np.random.default_rng(seed)
    where = rng.choice(np.arange(WINDOW, len(genome) - WINDOW), size=snvs + sites,
                       replace=False)
    one = [(int(p), genome[p - 1], "ACGT".replace(genome[p - 1], "")[int(rng.integers(3))])
           for p in where[:snvs]]
    three = [(int(p), genome[p - 1], a) for p in where[snvs:]
             for a in "ACGT".replace(genome[p - 1], "")]
    return {"distinct": one, "sites": three}


def one_b(dtype: torch.dtype):
    """genomeconv's Evo 2 of the 1B shape, random weights (seed 0), matmuls in `dtype`."""
    import gc

    from genomeconv.models.families.evo2 import Evo2, Evo2Config, layouts

    torch.manual_seed(0)
    config = Evo2Config.from_release(release_values("a"))
    state = Evo2(config).state_tensors()
    model = layouts.build(config, state, "bench", None, None if dtype == torch.float32 else dtype,
                          Path("random"))
    del state
    gc.collect()
    return model


def ours(spec: dict) -> dict:
    """genomeconv's score_planned over each variant set, in this process (a fresh one)."""
    from genomeconv.io.fasta import FastaFile
    from genomeconv.io.variants import Variant
    from genomeconv.pipelines.variants import plan_variant, score_planned

    model = one_b(DTYPES[spec["dtype"]])
    fasta = FastaFile(spec["fasta"])
    out = {}
    model.log_likelihoods(model.tokenize(["ACGT" * 128]))  # warmup
    for name, found in spec["sets"].items():
        planned = [plan_variant(Variant("c", p, r, a, None, "bench", 0), fasta, WINDOW, {})
                   for p, r, a in found]
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            rows = score_planned(model, planned, site_probs=False)
            seconds = time.perf_counter() - t0
        out[name] = {"seconds": seconds, "snvs": len(found), "peak_rss_gb": mem.peak / GIB,
                     "llr": [r["llr"] for r in rows]}
    return out


def row_groups(dtype: torch.dtype, repeats: int) -> list[dict]:
    """Seconds per (REF, ALT suffix) pair of two pairs run together, in row groups against in
    pieces (module docstring), alternating `repeats` times."""
    from benchmarks.bench_evo2 import dna
    from genomeconv.models.families.evo2 import inference

    model = one_b(dtype)
    model.log_likelihoods(dna(512, seed=1))  # warmup
    refs = torch.cat([dna(WINDOW, seed=s) for s in (1, 2)])
    alts = refs.clone()
    alts[:, WINDOW // 2] = torch.where(alts[:, WINDOW // 2] == 65, 67, 65)
    args = (torch.cat([refs, alts]), torch.tensor([-1, -1, 0, 1]),
            torch.tensor([0, 0, WINDOW // 2, WINDOW // 2]))
    grouped, whole = inference.rows_per_pass, lambda config, batch, length: batch
    seconds: dict[str, list[float]] = {"row groups": [], "pieces": []}
    try:
        for _ in range(repeats):
            for name, rule in (("row groups", grouped), ("pieces", whole)):
                inference.rows_per_pass = rule
                t0 = time.perf_counter()
                model.log_likelihoods_shared(*args)
                seconds[name].append((time.perf_counter() - t0) / 2)
    finally:
        inference.rows_per_pass = grouped
    return [{"how": name, "window": WINDOW, "pairs": 2, "seconds_per_pair": statistics.median(t),
             "repeat_seconds_per_pair": t} for name, t in seconds.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--snvs", type=int, default=4)
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--official-repeats", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--name", default="bench_evo2_variants")
    ap.add_argument("--groups", action="store_true", help="row groups against pieces instead")
    ap.add_argument("--repeats", type=int, default=1, help="--groups: alternations")
    args = ap.parse_args()
    if args.groups:
        load = os.getloadavg()
        rows = row_groups(DTYPES[args.dtype], args.repeats)
        rows[1]["groups_speedup"] = rows[1]["seconds_per_pair"] / rows[0]["seconds_per_pair"]
        print_table(rows, ["how", "window", "pairs", "seconds_per_pair", "groups_speedup"])
        write_result("bench_evo2_row_groups", rows, threads=torch.get_num_threads(),
                     dtype=args.dtype, load_average_at_start=load,
                     load_average_at_end=os.getloadavg())
        return
    if args.worker:
        print(json.dumps(ours(json.loads(args.worker))))
        return
    import subprocess
    import tempfile

    load = os.getloadavg()
    rng = np.random.default_rng(0)
    genome = "".join(rng.choice(list("ACGT"), size=3 * WINDOW * max(2, args.snvs + args.sites)))
    sets = variants(genome, args.snvs, args.sites, seed=1)
    official = spawn({"part": "a", "impl": "official", "dtype": args.dtype, "length": WINDOW,
                      "repeats": args.official_repeats}, args.timeout)
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"dtype": args.dtype, "sets": sets, "fasta": write_fasta(Path(tmp) / "g.fa",
                                                                        {"c": genome})}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                               json.dumps(spec)], capture_output=True, text=True,
                              timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines or "seconds" not in official:
        raise SystemExit(f"failed: {official} {proc.stderr[-2000:]}")
    mine = json.loads(lines[-1])
    per_forward = official["seconds"]
    rows = []
    for name, result in mine.items():
        recipe = 4 * result["snvs"] * per_forward
        windows = {"distinct": 2 * 1.5, "sites": 2 * (1 + 3 * 0.5) / 3}[name]
        rows.append({"set": name, "dtype": args.dtype, "snvs": result["snvs"],
                     "official_forward_s": per_forward, "official_recipe_s": recipe,
                     "official_snvs_per_s": result["snvs"] / recipe,
                     "genomeconv_s": result["seconds"],
                     "genomeconv_snvs_per_s": result["snvs"] / result["seconds"],
                     "speedup": recipe / result["seconds"],
                     "operation_count_bound": 4 / windows,
                     "genomeconv_peak_rss_gb": result["peak_rss_gb"],
                     "official_peak_rss_gb": official.get("peak_rss_gb"),
                     "llr": result["llr"]})
    print_table(rows, ["set", "dtype", "snvs", "official_forward_s", "official_recipe_s",
                       "genomeconv_s", "official_snvs_per_s", "genomeconv_snvs_per_s",
                       "speedup", "operation_count_bound"])
    write_result(args.name, rows, threads=torch.get_num_threads(),
                 native_bf16=native_half("bfloat16"), load_average_at_start=load,
                 load_average_at_end=os.getloadavg(), official=official)


if __name__ == "__main__":
    main()
