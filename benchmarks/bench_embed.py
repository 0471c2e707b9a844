"""`genomeconv embed` end to end vs the model's own forward on the same sequences.

Items: `--items` regions of ITEM_BP (>= 100 kbp) from the Klebsiella pneumoniae MGH 78578 chromosome
(../shared/data, recompressed to bgzip in a temporary folder). Contenders, alternated repeat by
repeat (harness.interleaved) so background load hits all alike:
- model: the same sequences (fetched beforehand) through `inference.hidden_states` + mean pooling
  in this process (torch threads = --threads, default all cores): the model-only time;
- embed_1w / embed_2w: `pipelines.embed.embed` with 1 and 2 Ray workers (cores split between
  them), into a fresh output folder each repeat, Ray already started: planning, the actor start
  and model load, fetching, the model, pooling and the Parquet write.
Pipeline overhead = embed / model - 1; also each embed run against its own model time, measured
inside the workers (`workers_model_s`, per worker; median over repeats of the per-run ratio),
which cancels load differences between repeats and between the driver process and the actors. The
fixed per-run cost (actor start, model load) is also measured alone on one 1 kbp item
(`embed_1w_startup`) and reported subtracted, since it does not grow with the input. `--big` runs
one 2.3 Mbp item instead (time and the worker's peak RSS; results/embed_big.json).

Model: a random HyenaDNA of the HyenaDNA tiny shape (d_model 128, 2 layers) with filters as long
as the items (max_seq_len ITEM_BP + 2; 2.3 Mbp + 2 for --big): the pipeline code path does not
depend on the weights.

Warm-up: one 1 kbp call of each kind (not the full items, to keep the run short).

`--small` runs the many-small-items cases instead, each next to its own model-only run
(bundled model, batch size SMALL_BATCH for both):
- reads: the 26,000 unaligned reads of ../shared/data/lambda_reads.unaligned.bam (~163 bp);
- intervals: N_INTERVALS seeded BED intervals of 0.3-2 kbp (both strands) over the Klebsiella
  chromosome.
Model-only there = the same sequences (fetched beforehand), sorted by length and cut into batches
of SMALL_BATCH, right-padded, through `inference.hidden_states`, mean-pooled over each item's own
positions, in this process. The pipeline runs into a fresh folder each repeat; its part count and
sizes are recorded (results/embed_small*.json).

`--small` also runs `reads_defaults`: embed of the reads with the command line's defaults (no
--batch-size: `pipelines.embed` picks it; the worker's threads: all of --threads), against
reads_model (SMALL_BATCH per call, --threads threads): the issue-28 figure. `--cases reads`
leaves the intervals out. With BENCH_TREE=TREE PYTHONPATH=TREE (harness.run_in_tree) the same
script measures another checkout (e.g. the commit a change started from).

Priority: Ray starts its workers at nice 15 (its `worker_niceness`), this process runs at nice 0;
on a machine other jobs load, that alone would slow the pipeline against model-only. The Ray
instance started here therefore runs its workers at nice 0 (RAY_worker_niceness=0, unless set).

Usage: python benchmarks/bench_embed.py [--repeats 3] [--items 4] [--big | --small] [--tag T]
"""

from __future__ import annotations

import argparse
import functools
import gzip
import itertools
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import pysam
import torch

sys.path.insert(0, os.environ.get("BENCH_TREE") or str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import interleaved, print_table, write_result  # noqa: E402
from genomeconv.io.fasta import FastaFile  # noqa: E402
from genomeconv.models import HyenaConfig, HyenaDNA, load, pool  # noqa: E402
from genomeconv.models.tokenizer import tokenize  # noqa: E402
from genomeconv.models.inference import hidden_states  # noqa: E402
from genomeconv.pipelines import runtime  # noqa: E402
from genomeconv.pipelines.embed import embed  # noqa: E402
from genomeconv.pipelines.options import EmbedOptions  # noqa: E402

# ../shared/data beside the checkout (or a worktree folder's parent); GENOMECONV_DATA overrides
DATA = Path(os.environ.get("GENOMECONV_DATA") or next(
    (p / "shared" / "data" for p in Path(__file__).resolve().parents[1:]
     if (p / "shared" / "data").is_dir()), Path("../shared/data")))
SOURCE = DATA / "klebsiella_pneumoniae_MGH78578.fna.gz"
CHROM = "CP000647.1"
ITEM_BP = 131_072
BIG_BP = 2_300_000
SHAPE = dict(d_model=128, n_layer=2, d_inner=512)
READS = DATA / "lambda_reads.unaligned.bam"
SMALL_BATCH = 64
N_INTERVALS = 5000
INTERVAL_BP = (300, 2000)


def bgzip_copy(src: Path, dst: Path) -> str:
    """Plain gzip -> bgzip (what the FastaFile error message asks users to do)."""
    plain = dst.with_suffix("")
    with gzip.open(src, "rb") as fin, open(plain, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    pysam.tabix_compress(str(plain), str(dst), force=True)
    plain.unlink()
    return str(dst)


def make_model(tmp: Path, max_len: int) -> str:
    torch.manual_seed(0)
    path = tmp / f"model_{max_len}"
    HyenaDNA(HyenaConfig(**SHAPE, max_seq_len=max_len + 2)).save(path)
    return str(path)


def regions(n: int, length: int) -> list[str]:
    return [f"{CHROM}:{1 + i * length:,}-{(i + 1) * length:,}" for i in range(n)]


def run_items(fasta: str, model_path: str, tmp: Path, args) -> list[dict]:
    """The interleaved comparison on `args.items` x ITEM_BP."""
    counter = itertools.count()
    model = load(model_path)
    items = regions(args.items, ITEM_BP)
    with FastaFile(fasta) as fa:
        seqs = [fa.fetch(CHROM, i * ITEM_BP, (i + 1) * ITEM_BP) for i in range(args.items)]
    total_bp = sum(map(len, seqs))

    def model_only() -> None:
        for s in seqs:
            pool(hidden_states(model, tokenize(s)[None]), "mean")

    own: dict[str, list[tuple[float, float]]] = {}  # per run: (wall s, model s per worker)

    def run_embed(workers: int, regs: list[str], name: str):
        def go() -> None:
            s = embed(EmbedOptions(fasta=Path(fasta), out=tmp / f"out{next(counter)}",
                                   regions=tuple(regs), model=str(model_path),
                                   num_workers=workers, batch_size=1))
            own.setdefault(name, []).append((s.seconds, s.model_seconds / workers))
        return go

    startup_run = run_embed(1, [f"{CHROM}:1-1,000"], "embed_1w_startup")
    pool(hidden_states(model, tokenize(seqs[0][:1000])[None]), "mean")  # cheap warm-ups
    startup_run()
    stats = interleaved({"model": model_only, "embed_1w": run_embed(1, items, "embed_1w"),
                         "embed_2w": run_embed(2, items, "embed_2w"),
                         "embed_1w_startup": startup_run},
                        repeats=args.repeats, warmup=0)
    base = stats["model"]["median_s"]
    startup = stats["embed_1w_startup"]["median_s"]
    rows = []
    for name, st in stats.items():
        bp = 1000 if name == "embed_1w_startup" else total_bp
        row = {"contender": name, "items": 1 if bp == 1000 else args.items, "bp": bp,
               "median_s": st["median_s"], "min_s": st["min_s"],
               "bp_per_s": bp / st["median_s"]}
        if name.startswith("embed_") and bp != 1000:
            row["overhead_pct"] = 100 * (st["median_s"] / base - 1)
            row["overhead_pct_excl_startup"] = 100 * ((st["median_s"] - startup) / base - 1)
            # each run against its own model time (measured in the workers, per worker)
            runs = own[name][-args.repeats:]
            row["workers_model_s"] = statistics.median(m for _, m in runs)
            row["overhead_pct_vs_own_model"] = statistics.median(100 * (w / m - 1)
                                                                 for w, m in runs)
        rows.append(row)
    return rows


def small_inputs(fasta: str, tmp: Path) -> dict[str, tuple[dict, list[str]]]:
    """The two small-item cases: EmbedOptions fields and the sequences of their items."""
    import numpy as np

    rng = np.random.default_rng(22)
    with FastaFile(fasta) as fa:
        size = fa.length(CHROM)
        lengths = rng.integers(INTERVAL_BP[0], INTERVAL_BP[1] + 1, N_INTERVALS)
        starts = rng.integers(0, size - INTERVAL_BP[1], N_INTERVALS)
        strands = rng.choice(["+", "-"], N_INTERVALS)
        bed = tmp / "intervals.bed"
        bed.write_text("".join(f"{CHROM}\t{s}\t{s + n}\tiv{i}\t0\t{st}\n" for i, (s, n, st)
                               in enumerate(zip(starts, lengths, strands))))
        interval_seqs = [fa.fetch(CHROM, int(s), int(s + n)) for s, n in zip(starts, lengths)]
    with pysam.AlignmentFile(str(READS), check_sq=False) as bam:
        read_seqs = [r.query_sequence for r in bam.fetch(until_eof=True)]
    return {"reads": ({"reads": READS}, read_seqs),
            "intervals": ({"fasta": Path(fasta), "bed": bed}, interval_seqs)}


def model_only_small(model, seqs: list[str], batch: int) -> None:
    """The model's forward over `seqs`, sorted by length, `batch` at a time, right-padded,
    mean-pooled over each sequence's own positions."""
    from genomeconv.models.tokenizer import PAD_ID

    ordered = sorted(seqs, key=len)
    for i in range(0, len(ordered), batch):
        group = ordered[i:i + batch]
        lengths = torch.tensor([len(s) for s in group])
        ids = torch.full((len(group), int(lengths.max())), PAD_ID, dtype=torch.long)
        for j, s in enumerate(group):
            ids[j, :len(s)] = tokenize(s)
        hidden = hidden_states(model, ids)
        mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
        (hidden * mask[..., None]).sum(1) / lengths[:, None]


def run_small(fasta: str, tmp: Path, args) -> list[dict]:
    """Reads and intervals: pipeline (1 worker) vs model-only, interleaved, same batch size;
    and the reads through the pipeline with its default batch size."""
    counter = itertools.count()
    model = load(None)
    cases = {k: v for k, v in small_inputs(fasta, tmp).items() if k in args.cases.split(",")}
    own: dict[str, list] = {}
    parts: dict[str, list[int]] = {}

    def pipeline(name: str, kwargs: dict):
        def go() -> None:
            out = tmp / f"small{next(counter)}"
            s = embed(EmbedOptions(out=out, num_workers=1, **kwargs))
            own.setdefault(name, []).append((s.seconds, s.model_seconds))
            parts[name] = [p.stat().st_size for p in (out / "embeddings").glob("part-*.parquet")]
            shutil.rmtree(out)
        return go

    contenders = {}
    for case, (kwargs, seqs) in cases.items():
        contenders[f"{case}_model"] = functools.partial(model_only_small, model, seqs, SMALL_BATCH)
        contenders[f"{case}_embed"] = pipeline(f"{case}_embed",
                                               {**kwargs, "batch_size": SMALL_BATCH})
    if "reads" in cases:
        contenders["reads_defaults"] = pipeline("reads_defaults", cases["reads"][0])
    model_only_small(model, next(iter(cases.values()))[1][:SMALL_BATCH], SMALL_BATCH)
    stats = interleaved(contenders, repeats=args.repeats, warmup=0)
    rows = []
    for case, (_, seqs) in cases.items():
        bp = sum(map(len, seqs))
        base = stats[f"{case}_model"]["median_s"]
        for kind in ("model", "embed", "defaults")[:3 if case == "reads" else 2]:
            name = f"{case}_{kind}"
            st = stats[name]
            row = {"contender": name, "items": len(seqs), "bp": bp, "median_s": st["median_s"],
                   "min_s": st["min_s"], "items_per_s": len(seqs) / st["median_s"],
                   "bp_per_s": bp / st["median_s"]}
            if kind != "model":
                row["throughput_vs_model_pct"] = 100 * base / st["median_s"]
                row["workers_model_s"] = statistics.median(m for _, m in own[name])
                row["parts"] = len(parts[name])
                row["part_mb_median"] = statistics.median(parts[name]) / 1e6
                row["part_mb_min"] = min(parts[name]) / 1e6
            rows.append(row)
    return rows


def run_big(fasta: str, tmp: Path, bp: int) -> dict:
    """One item of `bp` bases through `embed` (1 worker): time and the worker's peak RSS."""
    s = embed(EmbedOptions(fasta=Path(fasta), out=tmp / "big", regions=(f"{CHROM}:1-{bp:,}",),
                           model=str(make_model(tmp, bp))))
    return {"contender": f"embed_1w_{bp / 1e6:g}Mbp", "items": 1, "bp": s.bp, "median_s": s.seconds,
            "min_s": s.seconds, "bp_per_s": s.bp / s.seconds, "workers_model_s": s.model_seconds,
            "worker_peak_rss_gib": s.worker_peak_rss / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--big", action="store_true", help="instead, one long item")
    parser.add_argument("--big-bp", type=int, default=BIG_BP, help="its length (default 2.3 Mbp)")
    parser.add_argument("--small", action="store_true",
                        help="instead, the many-small-items cases (reads, intervals)")
    parser.add_argument("--tag", default="", help="suffix of the result file's name")
    parser.add_argument("--cases", default="reads,intervals", help="--small: which cases")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads here and Ray CPUs (so the worker's threads too)")
    args = parser.parse_args()
    cores = args.threads
    torch.set_num_threads(cores)
    load_start = os.getloadavg()
    os.environ.setdefault("RAY_worker_niceness", "0")  # the workers' priority = this process's
    tmp = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    try:
        fasta = bgzip_copy(SOURCE, tmp / "kp.fa.gz")
        runtime.connect(num_cpus=cores, temp_dir=str(tmp / "ray"))
        if args.small:
            rows = run_small(fasta, tmp, args)
            print_table(rows, ["contender", "items", "bp", "median_s", "min_s", "items_per_s",
                               "bp_per_s", "throughput_vs_model_pct", "workers_model_s",
                               "parts", "part_mb_median", "part_mb_min"])
            write_result("embed_small" + args.tag, rows, model="bundled",
                         batch_size=SMALL_BATCH, threads=cores, repeats=args.repeats,
                         loadavg_start=load_start,
                         ray_worker_niceness=os.environ["RAY_worker_niceness"],
                         loadavg_end=os.getloadavg(), sources=[READS.name, SOURCE.name])
            return
        if args.big:
            rows = [run_big(fasta, tmp, args.big_bp)]
        else:
            rows = run_items(fasta, make_model(tmp, ITEM_BP), tmp, args)
        print_table(rows, ["contender", "items", "bp", "median_s", "min_s", "bp_per_s",
                           "overhead_pct", "overhead_pct_excl_startup", "workers_model_s",
                           "overhead_pct_vs_own_model", "worker_peak_rss_gib"])
        name = "embed" if not args.big else (
            "embed_big" if args.big_bp == BIG_BP else f"embed_big_{args.big_bp}")
        write_result(
            name,
            rows,
            model_shape=SHAPE,
            item_bp=args.big_bp if args.big else ITEM_BP,
            repeats=args.repeats,
            source=str(SOURCE.name),
            chrom=CHROM,
        )
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
