"""`genomeconv track` over a whole bacterial chromosome next to `embed --per-base` on the same
bases.

Both run through their pipelines (local Ray, one worker, the bundled model, float32) on the
Klebsiella pneumoniae MGH 78578 chromosome (CP000647.1, 5,315,120 bp) from ../shared/data,
interleaved repeat by repeat: track scores both strands at the default context (the model's
receptive field) and writes the Parquet track plus the six strand-mean bigWigs; embed writes one
per-base embedding row per base. Also each at 1 Mbp of the same chromosome, to show how the
worker's peak memory grows with the contig: embed holds the whole item's hidden states, track
one piece's windows. Prints a table; writes benchmarks/results/track_<tag>.json.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_embed import SOURCE, bgzip_copy  # noqa: E402
from benchmarks.harness import interleaved, print_table, write_result  # noqa: E402
from genomeconv.pipelines import runtime  # noqa: E402
from genomeconv.pipelines.embed import embed  # noqa: E402
from genomeconv.pipelines.options import EmbedOptions, TrackOptions  # noqa: E402
from genomeconv.pipelines.track import track  # noqa: E402

CHROM = "CP000647.1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--small-bp", type=int, default=1_000_000,
                        help="the shorter region (memory against length)")
    parser.add_argument("--tag", default="klebsiella")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    os.environ.setdefault("RAY_worker_niceness", "0")
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench_track_"))
    counter = itertools.count()
    summaries: dict[str, list] = {}
    try:
        fasta = bgzip_copy(SOURCE, tmp / "kp.fa.gz")
        runtime.connect(num_cpus=cores, temp_dir=str(tmp / "ray"))
        regions = {"chrom": [CHROM], "1Mbp": [f"{CHROM}:1-{args.small_bp:,}"]}

        def contender(name: str, run, region: list[str]):
            def go() -> None:
                out = tmp / f"out{next(counter)}"
                summary = run(fasta, out, regions=region)
                size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
                summaries.setdefault(name, []).append((summary, size))
                shutil.rmtree(out)
            return go

        contenders = {}
        for label, region in regions.items():
            contenders[f"embed_per_base_{label}"] = contender(
                f"embed_per_base_{label}",
                lambda f, o, regions: embed(EmbedOptions(fasta=Path(f), out=o,
                                                         regions=tuple(regions), per_base=True)),
                region)
            contenders[f"track_{label}"] = contender(
                f"track_{label}", lambda f, o, regions: track(
                    TrackOptions(fasta=Path(f), out=o, regions=tuple(regions))), region)
        stats = interleaved(contenders, repeats=args.repeats, warmup=0)
        rows = []
        for name, st in stats.items():
            runs = summaries[name]
            first = runs[0][0]
            bp = first.work_done
            base = stats[name.replace("track_", "embed_per_base_")]["median_s"]
            rows.append({
                "contender": name, "bp": bp, "median_s": st["median_s"], "min_s": st["min_s"],
                "bp_per_s": bp / st["median_s"],
                "time_vs_embed_per_base": st["median_s"] / base,
                "workers_model_s": statistics.median(s.model_seconds for s, _ in runs),
                "worker_peak_rss_gib": max(s.worker_peak_rss for s, _ in runs) / 2**30,
                "output_mb": statistics.median(size for _, size in runs) / 1e6,
            })
        print_table(rows, ["contender", "bp", "median_s", "min_s", "bp_per_s",
                           "time_vs_embed_per_base", "workers_model_s", "worker_peak_rss_gib",
                           "output_mb"])
        write_result(f"track_{args.tag}", rows, model="bundled", threads=cores,
                     repeats=args.repeats, source=SOURCE.name, chrom=CHROM,
                     loadavg_start=load_start, loadavg_end=os.getloadavg(),
                     ray_worker_niceness=os.environ["RAY_worker_niceness"])
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
