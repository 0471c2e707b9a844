"""GPU benchmark: the gated forward convolution at FlashFFTConv's published H100 shapes, the fused
CUDA kernels against torch.fft (the HyenaDNA formula) in the same run, with the published
FlashFFTConv H100 milliseconds as a reference column; the large-1m model's forward kbp/s at
131,072 and 1,000,000 bp in fp32 and bf16; peak GPU memory of each.

Shapes follow FlashFFTConv's benchmark (benchmarks/benchmark_flashfftconv.py there): B 64, H 768,
with B and H cut at 16K and longer sequences to fit the memory, and the times scaled back to
B 64 H 768 by the number of rows (`ms_at_B64_H768`), as the published table is. Its "gated conv"
rows are circular convolutions of L = N points with an N-point FFT; ours are causal: at L = N
our transform is 2N real points (twice its work, the row `L = N`), at L = N / 2 it is N points
(the same transform, the row `L = N/2`). Both contenders compute the filter's spectrum on every
call, as FlashFFTConv and the HyenaDNA formula do (`genomeconv cuda (spectrum cached)` keeps it);
`genomeconv cuda` is the default bf16x3 split (float32-grade transforms), `fast` one operand
per mma (fp16 operands for fp16, as FlashFFTConv; about 2x the output rounding error).
CUDA events, warm-ups, medians; `floor_ms` is the bytes each call must move (u, both gates in,
y out) over the device-to-device copy bandwidth measured at the start.

    python benchmarks/bench_gpu.py                        # everything, about 2 minutes on an H100
    python benchmarks/bench_gpu.py --quick                # a few lengths, one model length
    python benchmarks/bench_gpu.py --results-dir $OUT     # JSON there instead of results/

Without a CUDA device it runs the torch.fft contender and the model on the CPU at small sizes
(a dry run of this script), says so, and marks the kernels' rows as skipped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness  # noqa: E402
from benchmarks.bench_model import LARGE_1M, public_forward, public_fftconv  # noqa: E402
from genomeconv.kernels import SPECTRA, cuda  # noqa: E402
from genomeconv.models import HyenaDNA, inference  # noqa: E402

# FlashFFTConv paper, H100, gated forward, B 64 H 768 (ms): (its PyTorch baseline, FlashFFTConv)
PUBLISHED_H100_MS = {256: (0.62, 0.11), 1024: (2.30, 0.29), 4096: (9.49, 1.43),
                     8192: (19.4, 3.58), 16384: (29.9, 12.2), 32768: (84.8, 26.3),
                     2**20: (3071.4, 1768.9), 2**21: (6342.6, 4623.5), 2**22: (13031.2, 10049.4)}
# FlashFFTConv's benchmark cuts (B, H) at these sequence lengths to fit in 80 GB.
CUTS = {16384: (32, 768), 32768: (16, 768), 2**20: (8, 48), 2**21: (8, 32), 2**22: (8, 16)}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
BANDWIDTH_NOTE = ("published FlashFFTConv figures are from an H100 (80 GB HBM3, 3.35 TB/s by the "
                  "datasheet); an H200 has about 1.4x that bandwidth (4.8 TB/s), so ratios "
                  "measured on an H200 flatter these kernels where they are memory-bound")


def timer(fn: Callable[[], object], device: torch.device, warmup: int,
          repeats: int) -> tuple[float, float]:
    """(median, min) milliseconds of fn: CUDA events on a GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak GPU memory one call allocates beyond what was allocated before it."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def in_units(nbytes: int | None, unit: int) -> float | None:
    """Bytes in `unit`s, None when not measured (no GPU)."""
    return None if nbytes is None else nbytes / unit


def copy_bandwidth(device: torch.device) -> float | None:
    """Device-to-device copy bandwidth (bytes read + written per second) of a 2 GiB tensor."""
    if device.type != "cuda":
        return None
    src = torch.empty(2**29, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms, _ = timer(lambda: dst.copy_(src), device, 3, 10)
    return 2 * src.numel() * 4 / (ms / 1e3)


def gpu_info(device: torch.device) -> dict:
    """Name, memory, multiprocessors, capability, CUDA and driver-facing versions."""
    if device.type != "cuda":
        return {"gpu": None, "note": "no CUDA device: a CPU dry run at small sizes"}
    p = torch.cuda.get_device_properties(device)
    return {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1),
            "multiprocessors": p.multi_processor_count, "capability": f"{p.major}.{p.minor}",
            "torch_cuda": torch.version.cuda,
            "fused_max_points": cuda.fused_max_points(device.index or 0) if cuda.available()
            else None,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32}


def shape_for(N: int, scale: int) -> tuple[int, int]:
    """FlashFFTConv's (B, H) at sequence length N, divided by `scale` for dry runs."""
    B, H = CUTS.get(N, (64, 768))
    return max(1, B // scale), max(1, H // scale)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max-normalized difference of two outputs (a sanity check between contenders)."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def bench_conv(N: int, L: int, dtype_name: str, device: torch.device, args) -> list[dict]:
    """One (N, L, dtype) point: every contender, timed and memory-measured, same inputs."""
    B, H = shape_for(N, args.scale)
    dtype = DTYPES[dtype_name]
    g = torch.Generator(device=device).manual_seed(N + L)
    u, pre, post = (torch.randn(B, H, L, generator=g, device=device).to(dtype) for _ in range(3))
    k = torch.randn(H, L, generator=g, device=device) / L**0.5
    D = torch.randn(H, generator=g, device=device)

    def ours(cached: bool, fast: bool = False):
        def call():
            if not cached:
                SPECTRA.clear()
            return cuda.fftconv(u, k, D, pregate=pre, postgate=post, fast=fast)
        return call

    contenders: dict[str, Callable[[], torch.Tensor] | str] = {
        "torch.fft (HyenaDNA formula)": lambda: public_fftconv(u * pre, k, D) * post}
    reason = cuda.unavailable_reason() if device.type == "cuda" else "no CUDA device"
    for name, cached, fast in (("genomeconv cuda", False, False),
                               ("genomeconv cuda (spectrum cached)", True, False),
                               ("genomeconv cuda fast (single mma operands)", False, True)):
        contenders[name] = ours(cached, fast) if reason is None else f"skipped: {reason}"
    repeats = 20 if N <= 4096 else 10 if N <= 2**20 else 5
    adjust = 64 * 768 / (B * H)
    flash = PUBLISHED_H100_MS.get(N, (None, None))[1]
    floor = 4 * B * H * L * u.element_size() / args.bandwidth * 1e3 if args.bandwidth else None
    rows, outputs = [], {}
    for name, fn in contenders.items():
        row = {"N": N, "L": L, "case": "L = N" if L == N else "L = N/2", "dtype": dtype_name,
               "B": B, "H": H, "contender": name}
        if isinstance(fn, str):
            rows.append({**row, "error": fn})
            continue
        try:
            outputs[name] = fn()
            ms, best = timer(fn, device, 2, repeats)
            row.update(ms=ms, min_ms=best, ms_at_B64_H768=ms * adjust,
                       peak_gpu_mib=in_units(peak_bytes(fn, device), 2**20),
                       floor_ms=floor, x_floor=ms / floor if floor else None,
                       published_flashfftconv_h100_ms=flash,
                       vs_published_flashfftconv=flash / (ms * adjust) if flash else None)
        except RuntimeError as exc:  # out of memory or a CUDA error: record it, go on
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        rows.append(row)
    base = next((r for r in rows if r["contender"].startswith("torch.fft")), {})
    for r in rows:
        if "ms" in r and "ms" in base:
            r["speedup_vs_torch_fft"] = base["ms"] / r["ms"]
        if r["contender"] in outputs and r is not base and base.get("contender") in outputs:
            r["max_rel_diff_vs_torch_fft"] = rel_err(outputs[r["contender"]],
                                                     outputs[base["contender"]])
    u = pre = post = k = outputs = None  # free the device memory (the closures hold them)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


@torch.no_grad()
def bench_model(L: int, device: torch.device, model: HyenaDNA, args) -> list[dict]:
    """Forward kbp/s of the large-1m model at L bp: bounded-memory inference in fp32 and bf16
    (the long convolutions on the kernels when built), and the public formula in fp32."""
    ids = torch.randint(7, 11, (1, L), generator=torch.Generator().manual_seed(L)).to(device)
    contenders = {f"genomeconv {name}": (lambda dt=DTYPES[name]: inference.hidden_states(
        model, ids, dtype=dt, chunk_size=args.chunk_size)) for name in ("fp32", "bf16")}
    if L <= model.max_seq_len:
        contenders["public fp32 (torch.fft 2L)"] = lambda: public_forward(model, ids)
    rows, outputs = [], {}
    for name, fn in contenders.items():
        row = {"L": L, "contender": name, "device": str(device), "chunk_size": args.chunk_size,
               "long_conv_path": "cuda kernels" if device.type == "cuda" and cuda.available()
               else "torch.fft / CPU paths"}
        try:
            outputs[name] = fn()
            ms, best = timer(fn, device, 1, args.model_repeats)
            row.update(seconds=ms / 1e3, kbp_per_s=L / ms, min_seconds=best / 1e3,
                       peak_gpu_gib=in_units(peak_bytes(fn, device), 2**30))
        except RuntimeError as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        rows.append(row)
    ref = outputs.get("genomeconv fp32")
    for r in rows:
        if ref is not None and r["contender"] in outputs and r["contender"] != "genomeconv fp32":
            out = outputs[r["contender"]]
            r["rel_err_vs_genomeconv_fp32"] = float((out.float() - ref).norm() / ref.norm())
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=sorted(PUBLISHED_H100_MS),
                    help="FlashFFTConv sequence lengths N (FFT sizes) to run")
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp16", "bf16"])
    ap.add_argument("--no-half-length", action="store_true",
                    help="skip the L = N/2 rows (the same transform size as FlashFFTConv's)")
    ap.add_argument("--model-lengths", type=int, nargs="+", default=[131_072, 1_000_000])
    ap.add_argument("--model-repeats", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=1 << 16,
                    help="inference chunk (positions per pointwise step; larger suits GPUs)")
    ap.add_argument("--budget-s", type=float, default=180.0,
                    help="stop starting new convolution points past this many seconds")
    ap.add_argument("--quick", action="store_true", help="4 lengths, fp16, model at 131,072")
    ap.add_argument("--results-dir", default=None, help="write the JSON here (default results/)")
    ap.add_argument("--name", default="bench_gpu", help="<results-dir>/<name>.json")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.scale = 1
    if args.quick:
        args.lengths, args.dtypes, args.model_lengths = [256, 4096, 32768, 2**20], ["fp16"], \
            [131_072]
    if device.type != "cuda":  # dry run: small shapes, the CPU's own timers
        print("bench_gpu: no CUDA device: dry run on the CPU at small sizes; the kernels' "
              "rows are skipped", flush=True)
        args.scale, args.lengths, args.model_lengths = 64, [256, 4096], [1024]
        args.dtypes, args.model_repeats = args.dtypes[:1], 1
    if args.results_dir:
        harness.RESULTS_DIR = Path(args.results_dir)
    args.bandwidth = copy_bandwidth(device)
    info = gpu_info(device)
    bw = f"{args.bandwidth / 1e12:.3f} TB/s" if args.bandwidth else "not measured"
    print(f"device: {info}, copy bandwidth: {bw}", flush=True)
    t0 = time.perf_counter()
    conv_rows, skipped = [], []
    for half in (False,) if args.no_half_length else (False, True):  # L = N rows first
        for N in args.lengths:
            for dtype_name in args.dtypes:
                L = N // 2 if half else N
                if time.perf_counter() - t0 > args.budget_s:
                    skipped.append({"N": N, "L": L, "dtype": dtype_name})
                    continue
                rows = bench_conv(N, L, dtype_name, device, args)
                conv_rows += rows
                harness.print_table(rows, [
                    "N", "case", "dtype", "B", "H", "contender", "ms", "ms_at_B64_H768",
                    "published_flashfftconv_h100_ms", "vs_published_flashfftconv",
                    "speedup_vs_torch_fft", "x_floor", "peak_gpu_mib", "error"])
    torch.manual_seed(0)
    model = HyenaDNA(LARGE_1M).eval().to(device)
    model_rows = []
    for L in args.model_lengths:
        model_rows += bench_model(L, device, model, args)
        harness.print_table(model_rows, ["L", "contender", "seconds", "kbp_per_s",
                                         "peak_gpu_gib", "rel_err_vs_genomeconv_fp32", "error"])
    harness.write_result(args.name, conv_rows + model_rows, device=info,
                         copy_bandwidth_bytes_per_s=args.bandwidth, note=BANDWIDTH_NOTE,
                         skipped_for_time=skipped, model_config=LARGE_1M.to_dict(),
                         published_source="FlashFFTConv paper, H100, gated forward, B 64 H 768")


if __name__ == "__main__":
    main()
