"""Saturation mutagenesis throughput (SNVs/s): `score-variants --saturate` over 1 kbp (3,000 SNVs)
of the bundled lambda sample with the bundled model, next to score-variants on the same SNVs
given as a VCF, and an exact-equality check of the two outputs.

Both contenders run the real pipeline (pipelines.variants.score_variants: local Ray, one worker,
the default window and batch, both strands, Parquet written with --overwrite each repeat) and
alternate repeat by repeat (harness.interleaved), so background load hits both alike. The
saturation run includes its run-time estimate (one timed forward in the driver); the estimate is
also reported next to the measured time. Peak memory is the driver's (Ray workers are other
processes). The max abs difference of every score column between the two outputs must be 0 (and
every other column equal); the script exits non-zero otherwise.

`--before TREE` (results/<name>_shared.json) compares checkouts instead (TREE: e.g.
`git worktree add /tmp/before 354ac8b`): the same saturation run by TREE (variant-centred
windows), by this checkout with centred windows and with `shared_windows`
(`--shared-windows`), each run in a process of its own importing its checkout's genomeconv
(harness.run_in_tree), alternating repeat by repeat; Ray's start and a first small run are
outside the timings (a checkout that keeps its model workers between runs, runtime.map_units,
times its run on the first run's workers). The max abs differences of the centred outputs of
the two checkouts are recorded (kernel rounding, ~1e-5 on llr; the 1e-5 equality of suffix-only
and full windows within one checkout is a test); shared windows score other windows.

Usage: python benchmarks/bench_saturate.py [--bp 1000] [--repeats 3] [--name saturate_1kbp]
       python benchmarks/bench_saturate.py --before /tmp/before [--repeats 2]
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

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("BENCH_TREE") or str(ROOT))  # harness.tree_root

from benchmarks.harness import interleaved, print_table, write_result  # noqa: E402
from genomeconv.io.fasta import FastaFile  # noqa: E402
from genomeconv.io.saturation import Saturation  # noqa: E402
from genomeconv.models import load  # noqa: E402
from genomeconv.pipelines.variants import (KEY_COLUMNS, SCORE_COLUMNS,  # noqa: E402
                                           check_run_time, default_window)
from variants_api import score_variants  # noqa: E402  (this folder's: see variants_api)

SAMPLE = Path(__file__).resolve().parent.parent / "genomeconv" / "data" / "sample" / "lambda.fa.gz"
START = 20_001  # 1-based first position of the region, mid-genome (windows centred)


def write_vcf(path: Path, saturation: Saturation, contigs: dict[str, int]) -> Path:
    """The saturation's SNVs as a text VCF (the comparison input)."""
    lines = ["##fileformat=VCFv4.2"]
    lines += [f"##contig=<ID={c},length={n}>" for c, n in contigs.items()]
    lines.append("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO")
    lines += [f"{v.chrom}\t{v.pos}\t.\t{v.ref}\t{v.alt}\t.\t.\t." for v in saturation]
    path.write_text("\n".join(lines) + "\n")
    return path


def compare(a: Path, b: Path) -> dict:
    """Rows matched by key: max abs difference of each score column, other columns equal."""
    def keyed(folder: Path) -> dict[tuple, dict]:
        return {tuple(r[k] for k in KEY_COLUMNS): r for r in pq.read_table(folder).to_pylist()}

    ra, rb = keyed(a), keyed(b)
    assert ra.keys() == rb.keys(), "the two runs wrote different keys"
    diff = 0.0
    for key, x in ra.items():
        y = rb[key]
        for c in SCORE_COLUMNS:
            if (x[c] is None) != (y[c] is None):
                diff = math.inf
            elif x[c] is not None:
                diff = max(diff, abs(x[c] - y[c]))
        others = [c for c in x if c not in SCORE_COLUMNS]
        assert all(x[c] == y[c] for c in others), f"{key}: non-score columns differ"
    return {"rows": len(ra), "max_abs_diff": diff}


def child_run(region: str, shared: str, out: str) -> dict:
    """In the checkout under test: the saturation of `region` after a warm-up run (shared:
    "shared" for shared windows, an option only the newer checkout has)."""
    from genomeconv.pipelines import runtime

    runtime.connect()
    options = {"shared_windows": True} if shared == "shared" else {}
    contig = region.split(":")[0]
    score_variants(Saturation.from_regions([f"{contig}:1-4"], SAMPLE), SAMPLE,
                   Path(out).with_suffix(".warm"), **options)
    t0 = time.perf_counter()
    score_variants(Saturation.from_regions([region], SAMPLE), SAMPLE, out,
                   **options)
    return {"seconds": time.perf_counter() - t0}


def compare_checkouts(before: Path, region: str, snvs: int, repeats: int, name: str) -> None:
    """The --before comparison (module docstring)."""
    from benchmarks.harness import run_in_tree

    runs = {"before": (before, "centred"), "after": (ROOT, "centred"),
            "after_shared": (ROOT, "shared")}
    load_start = os.getloadavg()
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            for key, (tree, mode) in runs.items():
                got = run_in_tree(__file__, tree, ["--child", region, mode, Path(tmp) / key])
                seconds[key].append(got["seconds"])
        a, b = (pq.read_table(Path(tmp) / k).to_pylist() for k in ("after", "before"))
        key = lambda r: tuple(r[c] for c in KEY_COLUMNS)  # noqa: E731
        b = {key(r): r for r in b}
        equality = {c: max(abs(r[c] - b[key(r)][c]) for r in a) for c in
                    ("llr", "llr_fwd", "llr_rev", "emb_cosine", "emb_l2")}
    base = statistics.median(seconds["before"])
    rows = [{"run": k, "checkout": str(runs[k][0]), "windows": runs[k][1], "snvs": snvs,
             "median_s": statistics.median(t), "min_s": min(t),
             "snvs_per_s": snvs / statistics.median(t),
             "speedup": base / statistics.median(t), "repeats": repeats}
            for k, t in seconds.items()]
    print_table(rows, ["run", "windows", "snvs", "median_s", "min_s", "snvs_per_s", "speedup"])
    print("max abs differences after - before (centred):", equality)
    write_result(f"{name}_shared", rows, region=region, equality=equality,
                 load_average={"start": load_start, "end": os.getloadavg()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bp", type=int, default=1000, help="region length (3 SNVs per bp)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="saturate_1kbp", help="results/<name>.json")
    parser.add_argument("--before", type=Path, help="compare with this checkout instead")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # one run_in_tree run
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_run(*args.child)))
        return
    with FastaFile(SAMPLE) as fa:
        contig, size = fa.references[0], fa.lengths[0]
    region = f"{contig}:{START}-{START + args.bp - 1}"
    saturation = Saturation.from_regions([region], SAMPLE)
    if args.before:
        return compare_checkouts(args.before, region, len(saturation), args.repeats, args.name)
    probe = load(None)
    window = default_window(probe)
    with FastaFile(SAMPLE) as fa:
        estimate_s = check_run_time(probe, saturation, fa, window=window, passes=2,
                                    batch_size=None, num_workers=1, dtype=None,
                                    max_hours=math.inf)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        vcf = write_vcf(tmp_path / "same.vcf", saturation, {contig: size})
        outs = {"saturate": tmp_path / "sat", "vcf": tmp_path / "vcf"}
        inputs = {"saturate": saturation, "vcf": vcf}

        def contender(name: str):
            return lambda: score_variants(inputs[name], SAMPLE, outs[name])

        # Ray's start and first imports, outside the timings
        score_variants(Saturation.from_regions([f"{contig}:1-4"], SAMPLE), SAMPLE,
                       tmp_path / "warm")
        timings = interleaved({k: contender(k) for k in inputs}, repeats=args.repeats, warmup=0)
        check = compare(outs["saturate"], outs["vcf"])
    load_after = os.getloadavg()
    rows = []
    for name, t in timings.items():
        rows.append({"input": name, "snvs": len(saturation), "window": window,
                     "median_s": t["median_s"], "min_s": t["min_s"],
                     "snvs_per_s": len(saturation) / t["median_s"],
                     "driver_peak_extra_mib": t["peak_extra_bytes"] / 2**20,
                     "repeats": t["repeats"]})
    rows[0]["estimate_s"] = estimate_s
    print(f"region {region} ({len(saturation):,} SNVs), bundled model, window {window}, "
          f"1 worker; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print_table(rows, ["input", "snvs", "median_s", "min_s", "snvs_per_s", "estimate_s",
                       "driver_peak_extra_mib", "repeats"])
    print(f"outputs: {check['rows']} rows, max abs difference {check['max_abs_diff']:g}")
    write_result(args.name, rows, region=region, equality=check,
                 load_average={"before": load_before, "after": load_after})
    if check["max_abs_diff"] != 0:
        sys.exit(f"the two outputs differ (max abs difference {check['max_abs_diff']:g})")


if __name__ == "__main__":
    main()
