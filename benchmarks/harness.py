"""Shared benchmark plumbing: timing with repeats, peak memory, a printed table, a JSON record.

Every `benchmarks/bench_*.py` uses these helpers so that all results carry the same fields:
machine, versions, the exact command, medians of repeats and peak memory. Benchmarks compare
against their baseline in the same run (ratios), since shared machines are noisy; `interleaved`
alternates the contenders repeat by repeat so that background load hits both alike.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TREE_ENV = "BENCH_TREE"  # the checkout whose genomeconv a benchmark process imports
# CPU features that change what these benchmarks measure (SIMD width, native bf16/fp16, AMX).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_fp16")


def machine_info() -> dict[str, Any]:
    """CPU model and the flags in CPU_FLAGS it has, core count, memory and library versions
    for the JSON record (machines differ between sessions: compare only within one run)."""
    cpu, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == platform.processor():
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from genomeconv.pipelines.runtime import describe_environment

    env = describe_environment()
    env.pop("ray status", None)
    return {"cpu": cpu, "cpu_flags": [f for f in CPU_FLAGS if f in flags],
            "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1),
            "platform": platform.platform(), "versions": env}


class PeakRSS:
    """Peak resident memory of this process during a block, sampled every 2 ms (bytes).

    ru_maxrss only ever grows over a process's life, so a sampler thread measures the peak of one
    block; `extra` is the peak above the RSS at entry.
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak = 0
        self.start = 0

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self.start = self.peak = self.current()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())

    @property
    def extra(self) -> int:
        return self.peak - self.start


def time_once(fn: Callable[[], Any]) -> tuple[float, int]:
    """Seconds and peak extra RSS (bytes) of one call."""
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
    return seconds, mem.extra


def interleaved(contenders: dict[str, Callable[[], Any]], repeats: int = 3,
                warmup: int = 1) -> dict[str, dict[str, float]]:
    """Run each contender `repeats` times, alternating them, and return median seconds and peak
    extra memory per contender (keys: median_s, min_s, peak_extra_bytes, repeats)."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    peaks: dict[str, int] = {name: 0 for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            seconds, extra = time_once(fn)
            times[name].append(seconds)
            peaks[name] = max(peaks[name], extra)
    return {name: {"median_s": statistics.median(ts), "min_s": min(ts),
                   "peak_extra_bytes": peaks[name], "repeats": len(ts)}
            for name, ts in times.items()}


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print rows as an aligned text table with the given columns."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def write_result(name: str, rows: Sequence[dict[str, Any]], **extra: Any) -> Path:
    """Write benchmarks/results/<name>.json with machine, versions, command and rows."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "load_average_at_write": os.getloadavg(),
        **extra,
        "rows": list(rows),
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return path


def tree_root(script: str) -> str:
    """The checkout a benchmark script imports genomeconv from: $BENCH_TREE (set by
    `run_in_tree`), else the script's own."""
    return os.environ.get(TREE_ENV) or str(Path(script).resolve().parent.parent)


def run_in_tree(script: str | Path, tree: str | Path, args: Sequence[str],
                timeout: float = 3600) -> dict[str, Any]:
    """Run `python script *args` against the genomeconv of checkout `tree` (first on the path,
    for Ray's workers too), e.g. the commit a change started from, so that before and after
    run the same benchmark code alternately on one machine; the JSON object its last stdout
    line holds."""
    env = {**os.environ, TREE_ENV: str(tree), "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{script} in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
