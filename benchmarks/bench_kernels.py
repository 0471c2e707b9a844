"""Long-convolution kernels on CPU against the HyenaDNA reference formula, in the same run.

Sweeps L = 2^lo .. 2^hi for (H=256, B=1) and (H=768, B=8), each path and dtype, interleaving
repeats with the reference `irfft(rfft(u, n=2L) * rfft(k, n=2L) / 2L, n=2L, norm="forward")
[..., :L] + u * D` (float32). Reports median seconds, GB/s over the bytes of u read and y
written, peak extra RSS (harness.PeakRSS) and ratios against the reference; then the partial
convolution (Lk = 2^14 at L = 2^22 by default) against full-length FFTs: the reference formula
and the fft path with the same filter, and the fft path with the filter zero-padded to L.
Contenders whose estimated peak memory exceeds --mem-gib are left out of that row (and say so).

`--block-points` instead: the CPU path's row block size (paired.BLOCK_POINTS, complex points
per block of channels and batch rows) swept over the shapes inference runs, the sizes
alternating repeat by repeat (results/bench_block_points.json; design figure
"row_block_size").

    python benchmarks/bench_kernels.py --quick                  # a short run
    python benchmarks/bench_kernels.py --configs 256x1 --hi 20  # the float32 H=256 sweep
    python benchmarks/bench_kernels.py --block-points 15,16,17,18,19 --repeats 7

`--epilogue`: HyenaDNA's fc1 and its GELU in float32 (models/inference._linear) as addmm and
an in-place GELU against one oneDNN linear with both in its epilogue, and fc2 as addmm into the
residual plus a bias pass against a oneDNN linear with its bias, added, at the tile shapes of
the bundled, tiny-1k and large-1m models (results/bench_linear_epilogue.json).

    python benchmarks/bench_kernels.py --epilogue --repeats 20

`--transforms`: paired.py's 1-D transforms of one row block per size, one thread, on ducc0 with
every row in one call against paired.CHUNK_ROWS rows a call, then fftconv at the block-size
shapes with paired.CHUNK_POINTS against every row in one call (results/bench_transforms.json;
design figure "eight_row_transforms").

    python benchmarks/bench_kernels.py --transforms 8,9,10,11,12,13,14,15 --repeats 15

`--real`: per transform size of 2^lg real points, one row block of 2^17 complex points, one
thread: paired.py's two forms of the product with a filter, ducc0's real transforms (r2c,
product, c2r) against the paired step between half-length complex transforms; then fftconv at
the block-size shapes with paired.REAL_POINTS as set against 0 (the paired form everywhere),
the filter side formed per call as in the models' inference (results/bench_real_transforms.json;
design figure "real_transforms").

    python benchmarks/bench_kernels.py --real 7,8,9,10,11,12,13,14,15,16,17 --repeats 15
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import interleaved, print_table, write_result  # noqa: E402
from genomeconv.kernels import SpectrumCache, fftconv  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REF_BYTES_PER_ELEM = 24     # measured peak extra of the reference per element of u (float32)
PATH_BYTES_PER_ELEM = 5     # ours: the output (4 per element at float32) plus channel blocks


def reference(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """HyenaDNA's fftconv formula (standalone/-hf code), float32."""
    L = u.shape[-1]
    n = 2 * L
    u_f = torch.fft.rfft(u, n=n)
    k_f = torch.fft.rfft(k, n=n) / n
    y = torch.fft.irfft(u_f * k_f, n=n, norm="forward")[..., :L]
    return y + u * D[:, None]


def sweep_row(B: int, H: int, L: int, dtype: str, paths: list[str], repeats: int,
              mem_bytes: float, sequential: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(L)
    u32 = torch.randn(B, H, L, generator=g)
    k = torch.randn(H, L, generator=g) / L**0.5
    D = torch.randn(H, generator=g)
    u = u32.to(DTYPES[dtype])
    elems = B * H * L
    contenders = {}
    if elems * REF_BYTES_PER_ELEM <= mem_bytes:
        contenders["reference"] = lambda: reference(u32, k, D)
    if elems * PATH_BYTES_PER_ELEM <= mem_bytes:
        for p in paths:
            contenders[p] = (lambda p=p: fftconv(u, k, D, method=p))
    if not contenders:
        return []
    with torch.no_grad():
        if sequential and "reference" in contenders:  # before the paths fill the filter cache
            res = interleaved({"reference": contenders.pop("reference")}, repeats, warmup=1)
            res.update(interleaved(contenders, repeats=repeats, warmup=1))
        else:
            res = interleaved(contenders, repeats=repeats, warmup=1)
    io_bytes = elems * (u.element_size() + u.element_size())
    ref = res.get("reference")
    rows = []
    for name, r in res.items():
        row = {"B": B, "H": H, "L": L, "log2L": L.bit_length() - 1, "dtype": dtype,
               "path": name, "median_s": r["median_s"], "min_s": r["min_s"],
               "GB/s": io_bytes / r["median_s"] / 1e9,
               "peak_extra_MiB": r["peak_extra_bytes"] / 2**20}
        if ref is not None and name != "reference":
            row["ratio_vs_ref"] = ref["median_s"] / r["median_s"]
            row["mem_vs_ref"] = r["peak_extra_bytes"] / max(ref["peak_extra_bytes"], 1)
        elif ref is None:
            row["note"] = "reference over --mem-gib"
        rows.append(row)
    return rows


def partial_rows(H: int, L: int, Lk: int, repeats: int, mem_bytes: float) -> list[dict]:
    """The partial convolution (overlap-save) against full-length FFTs in the same run: HyenaDNA's
    reference formula (n = 2L, where it fits in --mem-gib) and our fft path (one transform of
    L + Lk - 1 points) given the same short filter, and our fft path given the filter
    zero-padded to L taps (the dense computation of a model without partial convolutions).
    Each path has its own filter cache (default budget), so none evicts another's entries.
    The ", out=" rows write into a preallocated output (no page faults for a fresh one): the
    partial one's peak extra memory is what it needs beyond input and output."""
    g = torch.Generator().manual_seed(Lk)
    u = torch.randn(1, H, L, generator=g)
    k = torch.randn(H, Lk, generator=g) / Lk**0.5
    D = torch.randn(H, generator=g)
    padded = torch.nn.functional.pad(k, (0, L - Lk))
    y = torch.empty_like(u)
    contenders = {}
    if H * L * REF_BYTES_PER_ELEM <= mem_bytes:
        contenders["reference (n = 2L)"] = lambda: reference(u, k, D)
    caches = {name: SpectrumCache() for name in ("fft", "padded", "partial")}
    contenders.update({
        "fft": lambda: fftconv(u, k, D, method="fft", cache=caches["fft"]),
        "fft, filter padded to L": lambda: fftconv(u, padded, D, method="fft",
                                                   cache=caches["padded"]),
        "fft, filter padded to L, out=": lambda: fftconv(u, padded, D, method="fft", out=y,
                                                         cache=caches["padded"]),
        "partial": lambda: fftconv(u, k, D, method="partial", cache=caches["partial"]),
        "partial, out=": lambda: fftconv(u, k, D, method="partial", out=y,
                                         cache=caches["partial"])})
    with torch.no_grad():
        res = interleaved(contenders, repeats=repeats, warmup=1)
    bases = {"speedup_vs_ref": "reference (n = 2L)", "speedup_vs_fft": "fft",
             "speedup_vs_padded": "fft, filter padded to L"}
    rows = []
    for name, r in res.items():
        row = {"H": H, "L": L, "Lk": Lk, "path": name, "median_s": r["median_s"],
               "min_s": r["min_s"], "GB/s": 8 * H * L / r["median_s"] / 1e9,
               "peak_extra_MiB": r["peak_extra_bytes"] / 2**20}
        row.update({col: res[base]["median_s"] / r["median_s"]
                    for col, base in bases.items() if base in res})
        rows.append(row)
    return rows


BLOCK_SHAPES = (  # (what, B, H, L, Lk): float32 inference shapes of fftconv's CPU path
    ("bundled model, 128 windows of 1,024", 128, 64, 1024, 1024),
    ("ALT suffixes of 1,024-bp windows", 256, 64, 512, 1024),
    ("tiny-1k shape, 16 windows", 16, 128, 1024, 1024),
    ("batched 2,048-bp windows", 64, 256, 2048, 2048),
    ("small-32k shape, one input", 1, 256, 32768, 32768),
    ("Evo 2 8,192-bp window (h256 hcl)", 4, 256, 8192, 8192),
    ("one long input, 1,024 taps (partial)", 1, 64, 131072, 1024),
    ("Evo 2 long-input piece (h256 hcl)", 1, 256, 65536, 65536),
)


def shape_sweep(attr: str, values: dict, repeats: int,
                cache: SpectrumCache | None = None) -> list[tuple[tuple, dict]]:
    """fftconv at each BLOCK_SHAPES shape with the constant paired.<attr> at each of `values`
    ({name: value}, alternating repeat by repeat): (shape, harness.interleaved timings by name)
    per shape; the constant restored after. cache: the filter spectra's (default: fftconv's
    module-wide cache, which keeps them between calls)."""
    import genomeconv.kernels.paired as paired

    default = getattr(paired, attr)
    gen = torch.Generator().manual_seed(0)
    timed = []
    try:
        for shape in BLOCK_SHAPES:
            _, B, H, L, Lk = shape
            u = torch.randn(B, H, L, generator=gen)
            k = torch.randn(H, Lk, generator=gen) / Lk ** 0.5
            D, out = torch.randn(H, generator=gen), torch.empty(B, H, L)

            def run(value: object) -> None:
                setattr(paired, attr, value)
                fftconv(u, k, D, out=out, cache=cache)
            timed.append((shape, interleaved({name: (lambda v=v: run(v))
                                              for name, v in values.items()}, repeats=repeats)))
    finally:
        setattr(paired, attr, default)
    return timed


def block_rows(log2s: list[int], repeats: int) -> list[dict]:
    """Seconds per call of fftconv at each BLOCK_SHAPES shape for each paired.BLOCK_POINTS =
    2^log2 (alternating), with the ratio to the fastest size of that shape."""
    import genomeconv.kernels.paired as paired

    rows = []
    for (what, B, H, L, Lk), t in shape_sweep("BLOCK_POINTS", {lg: 1 << lg for lg in log2s},
                                              repeats):
        best = min(r["median_s"] for r in t.values())
        rows += [{"shape": what, "B": B, "H": H, "L": L, "Lk": Lk, "log2_block_points": lg,
                  "median_ms": 1e3 * t[lg]["median_s"], "vs_fastest": t[lg]["median_s"] / best,
                  "default": 1 << lg == paired.BLOCK_POINTS} for lg in log2s]
    return rows


def transform_rows(log2s: list[int], repeats: int) -> list[dict]:
    """Per 1-D transform size M = 2^log2 (one row block of 2^17 complex points, one thread, as
    each of paired.py's threads runs it): ms of a forward and an inverse on ducc0 with every
    row in one call and paired.CHUNK_ROWS rows a call, alternating; then fftconv at the
    BLOCK_SHAPES with paired.CHUNK_POINTS as set against none (every row in one call)."""
    import genomeconv.kernels.paired as paired

    default, threads = paired.CHUNK_POINTS, torch.get_num_threads()
    rng = np.random.default_rng(0)
    rows = []

    def both(z: np.ndarray, src: np.ndarray, points: tuple[int, int]) -> None:
        """Fresh inputs, a forward and an unnormalised inverse (repeated in place, values
        would grow to inf and time another code path)."""
        paired.CHUNK_POINTS = points
        z[:] = src
        paired._c2c_1d(z, True)
        paired._c2c_1d(z, False)
    try:
        torch.set_num_threads(1)
        for lg in log2s:
            src = rng.standard_normal((max(1, (1 << 17) >> lg), 2 << lg)).view(np.complex128)
            src = (src / 2 ** (lg / 2)).astype(np.complex64)
            z = src.copy()
            t = interleaved({"whole": lambda: both(z, src, (1, 1)),
                             "chunked": lambda: both(z, src, (1, 1 << 30))}, repeats=repeats)
            rows.append({"what": f"c2c 2^{lg} x {len(z)} rows, 1 thread",
                         "one_call_ms": 1e3 * t["whole"]["median_s"],
                         "chunked_ms": 1e3 * t["chunked"]["median_s"],
                         "one_call_over_chunked": t["whole"]["median_s"]
                         / t["chunked"]["median_s"],
                         "default_chunked": default[0] <= 1 << lg < default[1]})
    finally:
        paired.CHUNK_POINTS = default
        torch.set_num_threads(threads)
    for (what, *_), t in shape_sweep("CHUNK_POINTS", {"none": (1, 1), "default": default},
                                     repeats):
        rows.append({"what": f"fftconv {what}, {threads} threads",
                     "one_call_ms": 1e3 * t["none"]["median_s"],
                     "default_ms": 1e3 * t["default"]["median_s"],
                     "one_call_over_default": t["none"]["median_s"] / t["default"]["median_s"]})
    return rows


def real_rows(log2s: list[int], repeats: int) -> list[dict]:
    """Per size N = 2^log2 real points (one row block of 2^17 complex points, one thread, as
    each of paired.py's threads runs it): ms of `_real_product` (paired.CHUNK_ROWS rows a
    ducc0 call from 2^10 points, as set, and all rows in one call) against `_paired_product`,
    fresh inputs per call, alternating; then fftconv at the BLOCK_SHAPES with
    paired.REAL_POINTS as set against 0, the filter side formed per call as the models'
    inference forms it (no spectrum cache)."""
    import genomeconv.kernels.paired as paired

    threads, chunk = torch.get_num_threads(), paired.CHUNK_POINTS
    rng = np.random.default_rng(0)
    rows = []

    def spectrum(*shape: int) -> np.ndarray:
        return (rng.standard_normal((*shape, 2)) / shape[-1]).astype(np.float32).view(
            np.complex64)[..., 0]
    try:
        torch.set_num_threads(1)
        for lg in log2s:
            M = 1 << (lg - 1)
            R = max(1, (1 << 17) // M)
            src = rng.standard_normal((1, R, 1, 2 * M)).astype(np.float32)
            frames, spec = src.copy(), np.empty((1, R, 1, M + 1), np.complex64)
            K, coef = spectrum(R, 1, M + 1), (spectrum(R, 1, M), spectrum(R, 1, M))

            def real(chunk_from: int = chunk[0]) -> None:
                paired.CHUNK_POINTS = (chunk_from, chunk[1])
                frames[:] = src
                paired._real_product(frames, spec, K)

            def pair() -> None:
                frames[:] = src
                paired._paired_product(frames, coef)
            t = interleaved({"real": real, "one call": lambda: real(1 << 40), "paired": pair},
                            repeats=repeats)
            rows.append({"what": f"product 2^{lg} x {R} rows, 1 thread",
                         "paired_ms": 1e3 * t["paired"]["median_s"],
                         "real_ms": 1e3 * t["real"]["median_s"],
                         "real_one_call_ms": 1e3 * t["one call"]["median_s"],
                         "paired_over_real": t["paired"]["median_s"] / t["real"]["median_s"],
                         "default_real": 1 << lg <= paired.REAL_POINTS})
    finally:
        paired.CHUNK_POINTS = chunk
        torch.set_num_threads(threads)
    for (what, *_), t in shape_sweep("REAL_POINTS", {"paired": 0,
                                                     "default": paired.REAL_POINTS}, repeats,
                                      cache=SpectrumCache(max_bytes=0)):
        rows.append({"what": f"fftconv {what}, {threads} threads",
                     "paired_ms": 1e3 * t["paired"]["median_s"],
                     "default_ms": 1e3 * t["default"]["median_s"],
                     "paired_over_default": t["paired"]["median_s"] / t["default"]["median_s"]})
    return rows


EPILOGUE_SHAPES = ((4096, 64, 256), (4096, 128, 512), (4096, 256, 1024))  # tile, d -> d_inner


def epilogue_rows(repeats: int) -> list[dict]:
    """Milliseconds per call of fc1 + GELU (tanh) and of fc2 added into the residual, each both
    ways (models/inference._linear, _add_linear), and their max abs differences."""
    from genomeconv.models import inference

    gen = torch.Generator().manual_seed(0)
    rows = []
    for m, d, n in EPILOGUE_SHAPES:
        x, b1, b2 = (torch.randn(*s, generator=gen) for s in ((m, d), (n,), (d,)))
        w1, w2 = (torch.randn(*s, generator=gen) / s[1] ** 0.5 for s in ((n, d), (d, n)))
        h, out, r = torch.randn(m, n, generator=gen), torch.empty(m, n), torch.zeros(m, d)

        def fc2_addmm():
            torch.addmm(r, h, w2.T, out=r)
            r.add_(b2)
        t = interleaved({"fc1 addmm": lambda: inference._linear(x, w1, b1, out, gelu=True),
                         "fc1 fused": lambda: inference._linear(x, w1, b1, None, gelu=True),
                         "fc2 addmm": fc2_addmm,
                         "fc2 fused": lambda: r.add_(inference._linear(h, w2, b2, None))},
                        repeats=repeats)
        ms = {k: 1e3 * v["median_s"] for k, v in t.items()}
        fc1 = inference._linear(x, w1, b1, None, gelu=True) - inference._linear(x, w1, b1, out,
                                                                                gelu=True)
        fc2 = inference._linear(h, w2, b2, None) - torch.addmm(b2, h, w2.T)
        rows.append({"tile": m, "d_model": d, "d_inner": n,
                     "fc1_addmm_gelu_ms": ms["fc1 addmm"], "fc1_fused_ms": ms["fc1 fused"],
                     "fc1_speedup": ms["fc1 addmm"] / ms["fc1 fused"],
                     "fc2_addmm_ms": ms["fc2 addmm"], "fc2_fused_ms": ms["fc2 fused"],
                     "fc2_speedup": ms["fc2 addmm"] / ms["fc2 fused"],
                     "max_abs_diff_fc1": fc1.abs().max().item(),
                     "max_abs_diff_fc2": fc2.abs().max().item()})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="short run: H=256 B=1 float32, L=2^10..2^16, 2 repeats, small partial")
    ap.add_argument("--lo", type=int, default=10, help="smallest log2 L")
    ap.add_argument("--hi", type=int, default=22, help="largest log2 L")
    ap.add_argument("--configs", default="256x1,768x8", help="HxB list")
    ap.add_argument("--dtypes", default="float32,bfloat16,float16")
    ap.add_argument("--paths", default="auto,fft", help="fftconv methods to time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mem-gib", type=float, default=8.0,
                    help="skip contenders whose estimated peak extra memory exceeds this")
    ap.add_argument("--sequential", action="store_true",
                    help="time the reference's repeats before the paths' instead of alternating "
                         "(when the reference's temporaries and a cached filter spectrum do not "
                         "fit in memory together, e.g. L = 2^21 on 24 GiB)")
    ap.add_argument("--partial", default="16:22:14",
                    help="H:log2L:log2Lk of the partial-vs-full comparison ('' to skip)")
    ap.add_argument("--block-points", default="",
                    help="comma-separated log2 row block sizes to sweep instead (see above)")
    ap.add_argument("--epilogue", action="store_true", help="the fc1 + GELU comparison instead")
    ap.add_argument("--transforms", default="",
                    help="comma-separated log2 transform sizes: rows per ducc0 call")
    ap.add_argument("--real", default="",
                    help="comma-separated log2 real transform sizes: real against paired form")
    ap.add_argument("--name", help="results/<name>.json (default: bench_kernels, or "
                    "bench_linear_epilogue / bench_block_points / bench_transforms / "
                    "bench_real_transforms for those modes)")
    args = ap.parse_args(argv)
    if args.epilogue or args.block_points or args.transforms or args.real:
        if args.epilogue:
            name, rows = "bench_linear_epilogue", epilogue_rows(args.repeats)
            cols = ["tile", "d_model", "d_inner", "fc1_addmm_gelu_ms", "fc1_fused_ms",
                    "fc1_speedup", "fc2_addmm_ms", "fc2_fused_ms", "fc2_speedup"]
        elif args.real:
            name = "bench_real_transforms"
            rows = real_rows([int(v) for v in args.real.split(",")], args.repeats)
            cols = ["what", "paired_ms", "real_ms", "real_one_call_ms", "paired_over_real",
                    "default_real",
                    "default_ms", "paired_over_default"]
        elif args.transforms:
            name = "bench_transforms"
            rows = transform_rows([int(v) for v in args.transforms.split(",")], args.repeats)
            cols = ["what", "one_call_ms", "chunked_ms", "one_call_over_chunked",
                    "default_chunked", "default_ms", "one_call_over_default"]
        else:
            name = "bench_block_points"
            rows = block_rows([int(v) for v in args.block_points.split(",")], args.repeats)
            cols = ["shape", "log2_block_points", "median_ms", "vs_fastest", "default"]
        print_table(rows, cols)
        write_result(args.name or name, rows, threads=torch.get_num_threads(), args=vars(args))
        return
    if args.quick:
        args.hi, args.configs, args.dtypes, args.repeats = 16, "256x1", "float32", 2
        args.partial = args.partial if args.partial != "16:22:14" else "16:19:12"
    mem = args.mem_gib * 2**30
    rows: list[dict] = []
    cols = ["H", "B", "log2L", "dtype", "path", "median_s", "ratio_vs_ref", "GB/s",
            "peak_extra_MiB", "mem_vs_ref", "note"]
    for cfg in args.configs.split(","):
        H, B = (int(v) for v in cfg.split("x"))
        for dtype in args.dtypes.split(","):
            for lg in range(args.lo, args.hi + 1):
                new = sweep_row(B, H, 1 << lg, dtype, args.paths.split(","), args.repeats, mem,
                                args.sequential)
                print_table(new, cols)
                sys.stdout.flush()
                rows += new
    prow: list[dict] = []
    if args.partial:
        H, lg, lgk = (int(v) for v in args.partial.split(":"))
        prow = partial_rows(H, 1 << lg, 1 << lgk, args.repeats, mem)
    print("\n== sweep ==")
    print_table(rows, cols)
    if prow:
        print("\n== partial vs full FFT ==")
        print_table(prow, ["H", "L", "Lk", "path", "median_s", "speedup_vs_ref",
                           "speedup_vs_fft", "speedup_vs_padded", "GB/s", "peak_extra_MiB"])
    write_result(args.name or "bench_kernels", rows, partial=prow,
                 threads=torch.get_num_threads(), args=vars(args))


if __name__ == "__main__":
    main()
