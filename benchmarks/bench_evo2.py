"""Evo 2 forward pass (per-base log-likelihoods, batch 1, random weights): genomeconv against the
official code (vortex, `vtx`, run on the CPU through tests/evo2_official.py) in the same run, in
float32 and in the official inference precision (bf16 weights and matmuls), on this CPU.

(a) the 1B shape (evo2-1b-8k.yml: hidden 1,920, 25 layers) at 8,192 bp, beside the time the
    model's matmuls alone take in each dtype (the same matmul shapes, timed bare) and causal
    attention alone (its four layers' scaled_dot_product_attention);
(b) the 7B-1M layer pattern (evo2-7b-1m.yml: 32 layers, interpolated rotary) at hidden 256
    (2 heads of 128 as the 7B's, 16 channels per hcs/hcm group, MLP 704 = 2.75 H) at 131,072 bp;
(c) the memory formula (families/evo2/memory.memory_estimate) for the real 7B at 1,048,576 bp
    (bf16 on one 80 GB GPU) and the 1B shape at 1 Mbp on this machine, and against the peaks
    measured here (the 7B pattern at hidden 256 at 16,384 and 65,536 bp too);
(d) the short filters alone (inference._correlate) on one layer of 65,536 positions: the
    featurizer (768 channels = 3 x hidden 256, 3 taps, bf16 projections into float32) and an
    hcs filter (256 channels, 7 taps, float32), one pass per tap over the whole length (as
    before blocks) against genomeconv's blocks of CORRELATE_BLOCK positions.

Every contender runs in a fresh process (python bench_evo2.py --worker JSON), so each peak RSS is
its own: process baseline, model weights and the forward's peak; a kernel warmup at 512 bp comes
first. Timed calls run under torch.profiler, which attributes their seconds to the matmul ops
(MATMUL_OPS), attention (ATTENTION_OPS) and the rest. Log-likelihood errors are against the
official float32 output.

    python benchmarks/bench_evo2.py                  # (a), (b), (c); about 1.5 hours here
    python benchmarks/bench_evo2.py --parts a c --repeats 2
    python benchmarks/bench_evo2.py --parts a b d --dtypes bf16 --name bench_evo2_correlate
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.harness import PeakRSS, interleaved, print_table, write_result  # noqa: E402
from genomeconv.models.families.evo2 import Evo2, Evo2Config, layouts  # noqa: E402
from genomeconv.models.families.evo2.config import CONFIG_DIR  # noqa: E402
from genomeconv.models.families.evo2.memory import memory_estimate, weight_bytes  # noqa: E402
from genomeconv.pipelines.runtime import native_half  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul",
              "mkldnn::_linear_pointwise")
ATTENTION_OPS = ("aten::scaled_dot_product_attention",
                 "aten::_scaled_dot_product_flash_attention_for_cpu")
GIB = 2 ** 30


def release_values(part: str) -> dict:
    """The config values of a part: (a) evo2-1b-8k.yml as published, (b) evo2-7b-1m.yml at
    hidden 256."""
    if part == "a":
        return yaml.safe_load((CONFIG_DIR / "evo2-1b-8k.yml").read_text())
    values = yaml.safe_load((CONFIG_DIR / "evo2-7b-1m.yml").read_text())
    values.update(hidden_size=256, num_filters=256, hcl_filter_groups=256, hcm_filter_groups=16,
                  hcs_filter_groups=16, num_attention_heads=2, inner_mlp_size=704)
    return values


def dna(length: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.tensor([65, 67, 71, 84])[torch.randint(0, 4, (1, length), generator=gen)]


def rss() -> int:
    return PeakRSS.current()


def profiled(fn) -> tuple[float, float, float, object]:
    """(wall seconds, matmul op seconds, attention op seconds, the result) of fn() under
    torch.profiler."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    events = prof.key_averages()  # self times: each op's own, nested ops not counted twice
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e6
    attention = sum(e.self_cpu_time_total for e in events if e.key in ATTENTION_OPS) / 1e6
    return seconds, matmul, attention, out


def worker(spec: dict) -> dict:
    """One contender in this process: build, warm up, time `repeats` forwards (the first under
    the profiler), measure the peak RSS, save the first forward's log-likelihoods."""
    import evo2_official as official

    torch.manual_seed(0)
    values = release_values(spec["part"])
    config = Evo2Config.from_release(values)
    dtype = DTYPES[spec["dtype"]]
    base = rss()
    model = Evo2(config)  # random float32 weights, the same in every process
    state = model.state_tensors()
    if spec["impl"] == "genomeconv":
        del model
        model = layouts.build(config, state, "bench", None, dtype if dtype != torch.float32
                              else None, Path("random"))
        del state

        def forward(ids):
            return model.log_likelihoods(ids)[0]
    else:
        off = official.build(values, state, bf16=dtype == torch.bfloat16)
        del model, state

        def forward(ids):
            logits, _ = official.forward(off, ids)
            logp = torch.log_softmax(logits.float(), dim=-1)[:, :-1]
            return logp.gather(-1, ids[:, 1:, None])[..., 0]
    gc.collect()
    loaded = rss()
    forward(dna(512, seed=1))  # kernel warmup (oneDNN, FFT plans)
    ids = dna(spec["length"])
    seconds, matmul, attention = [], [], []
    with PeakRSS() as mem:
        for i in range(spec["repeats"]):
            if i == 0:
                s, m, a, out = profiled(lambda: forward(ids))
                matmul.append(m)
                attention.append(a)
            else:
                t0 = time.perf_counter()
                forward(ids)
                s = time.perf_counter() - t0
            seconds.append(s)
    if spec.get("save"):
        torch.save(out, spec["save"])
    return {"seconds": statistics.median(seconds), "repeat_seconds": seconds,
            "matmul_s": matmul[0], "attention_s": attention[0],
            "rest_s": seconds[0] - matmul[0] - attention[0],
            "rss_baseline_gb": base / GIB, "rss_loaded_gb": loaded / GIB,
            "peak_rss_gb": mem.peak / GIB, "peak_above_baseline_gb": (mem.peak - base) / GIB,
            "threads": torch.get_num_threads()}


def matmuls_alone(part: str, dtype: torch.dtype, length: int, chunk: int = 4096) -> dict:
    """Seconds of the model's matmuls alone (projections, out, MLP, Wqkv, out_proj,
    unembedding: the shapes genomeconv runs, chunks of `chunk` rows) and of its causal attention
    alone (scaled_dot_product_attention per attention layer), in `dtype`."""
    config = Evo2Config.from_release(release_values(part))
    H, I, heads = config.hidden_size, config.inner_mlp_size, config.num_attention_heads
    gen = torch.Generator().manual_seed(0)

    def w(rows, cols):
        return (torch.randn(rows, cols, generator=gen) * 0.02).to(dtype)

    proj, out, l1, l2, l3 = w(3 * H, H), w(H, H), w(I, H), w(I, H), w(H, I)
    unembed = w(config.vocab_size, H)
    x, h = w(chunk, H), w(chunk, I)
    per_layer = [(proj, x), (out, x), (l1, x), (l2, x), (l3, h)]
    for weight, inp in per_layer:  # warmup
        torch.mm(inp, weight.T)
    t0 = time.perf_counter()
    for _ in range(config.num_layers):
        for c0 in range(0, length, chunk):
            for weight, inp in per_layer:
                torch.mm(inp[:min(chunk, length - c0)], weight.T)
    for c0 in range(0, length, chunk):
        torch.mm(x[:min(chunk, length - c0)], unembed.T)
    matmul = time.perf_counter() - t0
    q = torch.randn(1, heads, length, H // heads, generator=gen).to(dtype)
    torch.nn.functional.scaled_dot_product_attention(q[:, :, :512], q[:, :, :512],
                                                     q[:, :, :512], is_causal=True)
    t0 = time.perf_counter()
    for _ in config.attn_layer_idxs:
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    return {"matmul_alone_s": matmul, "attention_alone_s": time.perf_counter() - t0}


def spawn(spec: dict, timeout: float) -> dict:
    """Run `worker(spec)` in a fresh Python process; its result (or the error)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def run_part(part: str, length: int, repeats: int, dtypes: list[str], tmp: Path,
             timeout: float) -> list[dict]:
    rows, outs = [], {}
    config = Evo2Config.from_release(release_values(part))
    for name in dtypes:
        alone = matmuls_alone(part, DTYPES[name], length)
        for impl in ("official", "genomeconv"):
            save = tmp / f"{part}_{impl}_{name}.pt"
            spec = {"part": part, "impl": impl, "dtype": name, "length": length,
                    "repeats": repeats, "save": str(save)}
            print(f"running {spec} ...", flush=True)
            result = spawn(spec, timeout)
            if save.exists():
                outs[(impl, name)] = torch.load(save)
            row = {"part": part, "L": length, "contender": f"{impl} {name}", **alone, **result}
            if impl == "genomeconv" and "seconds" in result:
                est = memory_estimate(config, batch=1, length=length, dtype=DTYPES[name])
                row["predicted_peak_gb"] = est["total"] / GIB
                row["predicted_terms_gb"] = {k: v / GIB for k, v in est.items()}
                row["vs_matmul_alone"] = result["seconds"] / alone["matmul_alone_s"]
                row["vs_matmuls_and_attention_alone"] = result["seconds"] / (
                    alone["matmul_alone_s"] + alone["attention_alone_s"])
            rows.append(row)
            print_table([row], ["part", "L", "contender", "seconds", "matmul_s", "attention_s",
                                "rest_s", "peak_rss_gb", "peak_above_baseline_gb"])
        ours, theirs = (next((r for r in rows if r["contender"] == f"{i} {name}"), {})
                        for i in ("genomeconv", "official"))
        if "seconds" in ours and "seconds" in theirs:
            ours["speedup_vs_official"] = theirs["seconds"] / ours["seconds"]
            ours["peak_vs_official"] = ours["peak_above_baseline_gb"] / theirs[
                "peak_above_baseline_gb"]
    reference = outs.get(("official", "fp32"))
    for row in rows:
        impl, name = row["contender"].split()
        if reference is not None and (impl, name) in outs and (impl, name) != ("official",
                                                                              "fp32"):
            row["loglik_rel_err_vs_official_fp32"] = rel_err(outs[(impl, name)], reference)
    return rows


def memory_check(lengths: list[int], timeout: float) -> list[dict]:
    """genomeconv bf16, the 7B pattern at hidden 256: predicted vs measured peak."""
    config = Evo2Config.from_release(release_values("b"))
    rows = []
    for length in lengths:
        result = spawn({"part": "b", "impl": "genomeconv", "dtype": "bf16", "length": length,
                        "repeats": 1}, timeout)
        est = memory_estimate(config, batch=1, length=length, dtype=torch.bfloat16)
        rows.append({"part": "c-check", "L": length, "contender": "genomeconv bf16",
                     "predicted_peak_gb": est["total"] / GIB, **result})
    return rows


def correlate_part(length: int = 65_536, repeats: int = 5) -> list[dict]:
    """(d): seconds per layer of the short filters, whole-length passes against blocks."""
    from genomeconv.models.families.evo2.inference import CORRELATE_BLOCK, _correlate

    def whole(x, taps, out):  # one pass per tap over the whole length, x in its own dtype
        K, n = taps.shape[1], out.shape[-1]
        torch.mul(x[..., K - 1:K - 1 + n], taps[:, K - 1, None], out=out)
        for t in range(K - 1):
            out.addcmul_(x[..., t:t + n], taps[:, t, None])

    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, channels, K, dtype in (("featurizer", 768, 3, torch.bfloat16),
                                     ("hcs", 256, 7, torch.float32)):
        x = torch.randn(1, channels, K - 1 + length, generator=gen).to(dtype)
        taps = torch.randn(channels, K, generator=gen)
        out = torch.empty(1, channels, length)
        t = interleaved({"whole": lambda: whole(x, taps, out),
                         "blocks": lambda: _correlate(x, taps, None, out)}, repeats=repeats)
        ref = torch.empty_like(out)
        whole(x, taps, ref)
        rows.append({"part": "d", "filter": name, "L": length, "channels": channels, "taps": K,
                     "input_dtype": str(dtype), "block": CORRELATE_BLOCK,
                     "whole_ms": 1e3 * t["whole"]["median_s"],
                     "blocks_ms": 1e3 * t["blocks"]["median_s"],
                     "speedup": t["whole"]["median_s"] / t["blocks"]["median_s"],
                     "max_abs_diff": (out - ref).abs().max().item()})
    return rows


def predictions() -> list[dict]:
    from genomeconv.models.families.evo2.config import published_config

    rows = []
    for name, length, dtype, budget in (("evo2-7b-1m.yml", 1 << 20, torch.bfloat16, 80),
                                        ("evo2-1b-8k.yml", 1 << 20, torch.bfloat16, 24),
                                        ("evo2-1b-8k.yml", 1 << 20, torch.float32, 24)):
        config = published_config(name)
        est = memory_estimate(config, batch=1, length=length, dtype=dtype)
        rows.append({"part": "c", "config": name, "L": length, "dtype": str(dtype),
                     "budget_gb": budget, "predicted_gb": est["total"] / GIB,
                     "fits": est["total"] / GIB < budget,
                     "terms_gb": {k: round(v / GIB, 3) for k, v in est.items()},
                     "weights_bytes": weight_bytes(config, dtype)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c", "d"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--length-a", type=int, default=8192)
    ap.add_argument("--length-b", type=int, default=131_072)
    ap.add_argument("--check-lengths", type=int, nargs="+", default=[16_384, 65_536])
    ap.add_argument("--timeout", type=float, default=5400)
    ap.add_argument("--name", default="bench_evo2")
    ap.add_argument("--dtypes-b", nargs="+", choices=list(DTYPES),
                    help="dtypes of part (b) (default --dtypes)")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    load = os.getloadavg()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        if "a" in args.parts:
            rows += run_part("a", args.length_a, args.repeats, args.dtypes, Path(tmp),
                             args.timeout)
        if "b" in args.parts:
            rows += run_part("b", args.length_b, args.repeats, args.dtypes_b or args.dtypes,
                             Path(tmp), args.timeout)
        if "c" in args.parts:
            rows += memory_check(args.check_lengths, args.timeout)
            rows += predictions()
        if "d" in args.parts:
            rows += correlate_part()
    print_table([r for r in rows if "contender" in r],
                ["part", "L", "contender", "seconds", "matmul_s", "attention_s", "rest_s",
                 "matmul_alone_s", "attention_alone_s", "speedup_vs_official",
                 "peak_above_baseline_gb", "peak_vs_official", "predicted_peak_gb",
                 "loglik_rel_err_vs_official_fp32"])
    print_table([r for r in rows if r["part"] == "c"],
                ["config", "L", "dtype", "budget_gb", "predicted_gb", "fits"])
    print_table([r for r in rows if r["part"] == "d"],
                ["filter", "L", "channels", "taps", "input_dtype", "whole_ms", "blocks_ms",
                 "speedup", "max_abs_diff"])
    write_result(args.name, rows, threads=torch.get_num_threads(),
                 native_bf16=native_half("bfloat16"), load_average_at_start=load,
                 load_average_at_end=os.getloadavg())


if __name__ == "__main__":
    main()
