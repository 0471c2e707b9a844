"""HyenaDNA forward pass, large-1m shape (d_model 256, 8 layers, d_inner 1024, l_max 1,000,002,
random weights): genomeconv's bounded-memory path in float32 and bfloat16 against a plain
re-implementation of the public forward pass (torch.fft with 2L padding over full-length
tensors), in the same run, alternating repeats. Reports bp/s, peak RSS and errors vs float32.

Every timed call runs under torch.profiler, which splits its seconds into matmuls (the aten
matmul ops, their bias copies included, and oneDNN's linear with bias and GELU fused in the
bf16 path) and everything else (long and short convolutions, gates, GELU, LayerNorms, casts,
copies), medians over the repeats: bf16 pays only where its non-matmul time stays at the
float32 path's. The bf16 error against float32 is reported beside
that of a plain PyTorch bf16 forward (`model.to(torch.bfloat16)(ids)`, run once, untimed).

    python benchmarks/bench_model.py                   # L = 131,072 (public too) and 1,000,000
    python benchmarks/bench_model.py --lengths 131072 4000000 --public-max 131072
    python benchmarks/bench_model.py --quick           # L = 16,384, a small smoke run
    python benchmarks/bench_model.py --lengths 131072 --repeats 2 --public-repeats 1  # loaded CPU
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import PeakRSS, interleaved, print_table, write_result  # noqa: E402
from genomeconv.models import HyenaConfig, HyenaDNA, inference  # noqa: E402
from genomeconv.pipelines.runtime import native_half  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PUBLIC = "public fp32 (torch.fft 2L)"
# matmul ops, none of which calls another: oneDNN's linear carries the bf16 path's bias and GELU
# in its epilogue (inference._linear), so they count as matmul time there
MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise")
LARGE_1M = HyenaConfig(d_model=256, n_layer=8, d_inner=1024, max_seq_len=1_000_002)


def public_fftconv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """The public formula: rfft of input and filter at 2L, product, irfft, + D u."""
    L = u.shape[-1]
    n = 2 * L
    k_f = torch.fft.rfft(k, n=n) / n
    u_f = torch.fft.rfft(u.to(k.dtype), n=n)
    y = torch.fft.irfft(u_f * k_f, n=n, norm="forward")[..., :L]
    return (y + u * D.unsqueeze(-1)).to(u.dtype)


@torch.no_grad()
def public_forward(model: HyenaDNA, ids: torch.Tensor) -> torch.Tensor:
    """The public forward pass over full-length tensors (L <= max_seq_len)."""
    bb = model.backbone
    L = ids.shape[1]
    residual = bb.embeddings.word_embeddings(ids)
    for block in bb.layers:
        mixer, filt = block.mixer, block.mixer.filter_fn
        u = mixer.in_proj(block.norm1(residual)).transpose(1, 2)
        x0, x1, v = mixer.short_filter(u)[..., :L].split(mixer.d_model, dim=1)
        z, t = filt.pos_emb.z[:, :L], filt.pos_emb.t[:, :L]
        h = filt.implicit_filter(z)
        h = h * (torch.exp(-t * filt.modulation.deltas.abs()) + filt.modulation.shift)
        k = h[0].transpose(0, 1)
        v = public_fftconv(v * x1, k, filt.bias)
        residual = mixer.out_proj((v * x0).transpose(1, 2)) + residual
        residual = block.mlp(block.norm2(residual)) + residual
    return bb.ln_f(residual)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def profiled(fn, record: dict[str, list[float]]):
    """fn wrapped to run under torch.profiler and append its wall seconds and the seconds of
    its matmul ops (total CPU time of MATMUL_OPS events, which run on the calling thread) to
    record["total"] and record["matmul"]."""
    def call():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            result = fn()
            record["total"].append(time.perf_counter() - t0)
        record["matmul"].append(sum(e.cpu_time_total for e in prof.key_averages()
                                    if e.key in MATMUL_OPS) / 1e6)
        return result
    return call


def bench_length(model: HyenaDNA, L: int, public_max: int, repeats: int, warmup: int,
                 chunk: int | None, dtypes: list[str], public_repeats: int) -> list[dict]:
    gen = torch.Generator().manual_seed(L)
    ids = torch.randint(7, 12, (1, L), generator=gen)
    outs: dict[str, torch.Tensor] = {}

    def run(name, fn):
        def call():
            outs[name] = fn()
        return call

    contenders = {f"genomeconv {name}": run(name, lambda dt=DTYPES[name]: inference.hidden_states(
        model, ids, chunk_size=chunk, dtype=dt)) for name in dtypes}
    if L <= min(public_max, model.max_seq_len):
        public = run("public", lambda: public_forward(model, ids))
        contenders = {PUBLIC: public, **contenders}
    records = {name: {"total": [], "matmul": []} for name in contenders}
    contenders = {name: profiled(fn, records[name]) for name, fn in contenders.items()}
    base = PeakRSS.current()
    stats = {}
    if public_repeats != repeats and PUBLIC in contenders:  # first, alone: it costs the most
        stats = interleaved({PUBLIC: contenders.pop(PUBLIC)}, repeats=public_repeats,
                            warmup=warmup)
    stats.update(interleaved(contenders, repeats=repeats, warmup=warmup))
    for rec in records.values():  # the timed repeats only
        del rec["total"][:warmup], rec["matmul"][:warmup]
    seconds = {name: statistics.median(rec["total"]) for name, rec in records.items()}
    public = seconds.get(PUBLIC)
    fp32 = records.get("genomeconv fp32")
    other = {name: statistics.median(t - m for t, m in zip(rec["total"], rec["matmul"]))
             for name, rec in records.items()}
    rows = []
    for name, st in stats.items():
        rec = records[name]
        row = {"L": L, "contender": name, "seconds": seconds[name],
               "matmul_s": statistics.median(rec["matmul"]), "non_matmul_s": other[name],
               "non_matmul_vs_fp32": other[name] / other["genomeconv fp32"] if fp32 else "",
               "kbp_per_s": L / seconds[name] / 1e3,
               "peak_rss_gb": (base + st["peak_extra_bytes"]) / 2**30,
               "speedup_vs_public": public / seconds[name] if public else "",
               "repeat_seconds": rec["total"], "repeat_matmul_s": rec["matmul"]}
        key = "public" if name.startswith("public") else name.split()[-1]
        if key != "fp32" and "fp32" in outs:
            row["rel_err_vs_genomeconv_fp32"] = rel_err(outs[key], outs["fp32"])
            if key in DTYPES:  # the same precision's plain PyTorch forward, for scale
                with torch.no_grad():
                    plain = copy.deepcopy(model).to(DTYPES[key])(ids)
                row["plain_torch_rel_err_vs_genomeconv_fp32"] = rel_err(plain, outs["fp32"])
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[131_072, 1_000_000])
    ap.add_argument("--public-max", type=int, default=131_072,
                    help="run the public re-implementation only up to this length "
                         "(measured here: 660 s and 20.5 GB at 1 Mbp)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--public-repeats", type=int, default=None,
                    help="repeats of the public contender (default --repeats); when different, "
                         "it runs first, alone, before the alternating genomeconv repeats")
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES),
                    help="genomeconv compute dtypes (bf16 is only fast on CPUs with native "
                         "bf16 matmuls: AVX512-BF16 or AMX)")
    ap.add_argument("--n-layer", type=int, default=LARGE_1M.n_layer,
                    help="fewer layers for a quick memory probe (buffers are per layer)")
    ap.add_argument("--name", default="bench_model", help="results/<name>.json")
    ap.add_argument("--quick", action="store_true", help="L = 16,384 only, 2 repeats")
    args = ap.parse_args()
    if args.quick:
        args.lengths, args.repeats, args.warmup = [16_384], 2, 1
    torch.manual_seed(0)
    config = HyenaConfig(**{**LARGE_1M.to_dict(), "n_layer": args.n_layer})
    model = HyenaDNA(config).eval()
    rows = []
    for L in args.lengths:
        rows += bench_length(model, L, args.public_max, args.repeats, args.warmup,
                             args.chunk_size, args.dtypes,
                             args.public_repeats or args.repeats)
        print_table(rows, ["L", "contender", "seconds", "matmul_s", "non_matmul_s",
                           "non_matmul_vs_fp32", "kbp_per_s", "peak_rss_gb",
                           "speedup_vs_public", "rel_err_vs_genomeconv_fp32",
                           "plain_torch_rel_err_vs_genomeconv_fp32"])
    write_result(args.name, rows, config=config.to_dict(), threads=torch.get_num_threads(),
                 native_bf16=native_half("bfloat16"),
                 flop_per_bp_matmul=2 * config.n_layer * config.d_model * (
                     3 * config.d_model + config.d_model + 2 * config.d_inner),
                 note="public fp32 = the public formula re-implemented here")


if __name__ == "__main__":
    main()
