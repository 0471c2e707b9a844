"""The Python stages of scripts/gpu_check.sh (issue 20): the model end to end on the GPU, a
small smoke run of every kernel path for compute-sanitizer, and the run's summary (which folds
in the Evo 2 and variant-window records of gpu_check_evo2.py, issue 29).

    python benchmarks/gpu_check.py model --out DIR    # -> DIR/model_gpu.json
    python benchmarks/gpu_check.py smoke              # every kernel path once, tiny sizes
    python benchmarks/gpu_check.py summary --out DIR --stages FILE   # -> DIR/summary.json

`model`: the large-1m shape (d 256 x 8 layers, max_seq_len 1,000,002, random weights) through
the Python API (`inference.hidden_and_loglik`, `HyenaDNA.autograd_log_likelihoods`): hidden
states and log-likelihoods on the GPU equal to the CPU path's on a shorter input (float32 within
1e-4; bf16 within 2x the torch.fft path's error on the same GPU), a 1 Mbp random sequence in fp32
and bf16 (time, kbp/s, peak memory), and 20 bf16 (autocast) training steps with plain AdamW
through the kernels' backward, whose first loss must equal the torch.fft path's. Each check
is recorded with its value and bound; the exit status is 1 when any fails. Without a CUDA
device the same code runs on the CPU at small sizes (a dry run) and says so.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_gpu import gpu_info, in_units  # noqa: E402
from benchmarks.bench_model import LARGE_1M  # noqa: E402
from genomeconv.kernels import cuda  # noqa: E402
from genomeconv.models import HyenaConfig, HyenaDNA, inference  # noqa: E402


class Checks:
    """Named checks with value and bound, and the exceptions of parts that failed."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def add(self, name: str, value: float, bound: float, **extra: object) -> None:
        passed = bool(value == value and value <= bound)  # NaN fails
        self.items.append({"name": name, "passed": passed, "value": value, "bound": bound,
                           **extra})
        print(f"  {'ok  ' if passed else 'FAIL'} {name}: {value:.3g} (bound {bound:.3g})",
              flush=True)

    @contextmanager
    def part(self, name: str):
        """Run one part; an exception becomes a failed check and the next part still runs."""
        print(f"[{name}]", flush=True)
        t0 = time.perf_counter()
        try:
            yield
        except Exception as exc:  # noqa: BLE001 -- recorded, reported, and the run goes on
            traceback.print_exc()
            self.items.append({"name": name, "passed": False,
                               "error": f"{type(exc).__name__}: {exc}"})
        print(f"[{name}] {time.perf_counter() - t0:.1f} s", flush=True)

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.items)


@contextmanager
def torch_fft_path():
    """The same model with the kernels switched off (read on every call)."""
    before = os.environ.get("GENOMECONV_DISABLE_CUDA_KERNELS")
    os.environ["GENOMECONV_DISABLE_CUDA_KERNELS"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["GENOMECONV_DISABLE_CUDA_KERNELS"]
        else:
            os.environ["GENOMECONV_DISABLE_CUDA_KERNELS"] = before


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative difference, in float64 on the CPU."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


def random_ids(B: int, L: int, seed: int) -> torch.Tensor:
    return torch.randint(7, 11, (B, L), generator=torch.Generator().manual_seed(seed))


def synced(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """fn's result and wall seconds, the device synchronized on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def check_against_cpu(model: HyenaDNA, cpu_model: HyenaDNA, L: int, device, checks: Checks,
                      record: dict) -> None:
    """Hidden states and log-likelihoods on the device vs the CPU path at L bp."""
    ids = random_ids(1, L, 1)
    (h_cpu, ll_cpu), s_cpu = synced(lambda: inference.hidden_and_loglik(cpu_model, ids),
                                    torch.device("cpu"))
    (h, ll), s = synced(lambda: inference.hidden_and_loglik(model, ids), device)
    record["compare"] = {"L": L, "cpu_seconds": s_cpu, "device_seconds_fp32": s}
    checks.add("fp32 hidden states vs CPU", rel(h, h_cpu), 1e-4)
    checks.add("fp32 log-likelihoods vs CPU", rel(ll, ll_cpu), 1e-4)
    h_bf, ll_bf = inference.hidden_and_loglik(model, ids, dtype=torch.bfloat16)
    with torch_fft_path():
        h_tf, ll_tf = inference.hidden_and_loglik(model, ids, dtype=torch.bfloat16)
    for what, got, plain, want in (("hidden states", h_bf, h_tf, h_cpu),
                                   ("log-likelihoods", ll_bf, ll_tf, ll_cpu)):
        checks.add(f"bf16 {what} vs CPU fp32, bound 2x the torch.fft path's error",
                   rel(got, want), 2 * rel(plain, want) + 1e-3, torch_fft_error=rel(plain, want))


def run_long(model: HyenaDNA, L: int, device, checks: Checks, record: dict,
             chunk: int) -> None:
    """One L bp sequence through the model in fp32 and bf16: time, kbp/s, peak memory."""
    ids = random_ids(1, L, 2)
    runs = record.setdefault("long", [])
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        (h, ll), s = synced(lambda: inference.hidden_and_loglik(model, ids, dtype=dtype,
                                                                chunk_size=chunk), device)
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        runs.append({"L": L, "dtype": name, "seconds": s, "kbp_per_s": L / s / 1e3,
                     "peak_gpu_gib": in_units(peak, 2**30), "chunk_size": chunk,
                     "mean_loglik": float(ll.mean()), "first_call": True})
        print(f"  {L} bp {name}: {s:.2f} s, {L / s / 1e3:.1f} kbp/s", flush=True)
        checks.add(f"{name} {L} bp: non-finite hidden/loglik values",
                   float((~torch.isfinite(h)).sum() + (~torch.isfinite(ll)).sum()), 0)
        del h, ll


def train(config: HyenaConfig, B: int, L: int, steps: int, device, checks: Checks,
          record: dict) -> None:
    """bf16 autocast training steps with AdamW, the long convolutions on the kernels."""
    torch.manual_seed(3)
    model = HyenaDNA(config).to(device).train()
    ids = random_ids(B, L, 3).to(device)

    def loss_fn():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return -model.autograd_log_likelihoods(ids).mean()

    with torch.no_grad(), torch_fft_path():
        plain = loss_fn().item()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses, times = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())  # synchronizes
        times.append(time.perf_counter() - t0)
    grads_finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters()
                       if p.grad is not None)
    record["train"] = {"B": B, "L": L, "steps": steps, "losses": losses,
                       "step_seconds": times, "first_loss_torch_fft": plain,
                       "peak_gpu_gib": in_units(torch.cuda.max_memory_allocated(), 2**30)
                       if device.type == "cuda" else None}
    checks.add("bf16 first loss vs the torch.fft path", abs(losses[0] - plain) / plain, 1e-2)
    checks.add("non-finite losses or gradients",
               float(sum(x != x or abs(x) == float("inf") for x in losses) + (not grads_finite)),
               0)
    checks.add("last loss minus first (falls)", losses[-1] - losses[0], -1e-3)


def main_model(args) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = LARGE_1M
    if device.type == "cuda":
        kernels = cuda.unavailable_reason() or "fused CUDA kernels"
        L_long, L_cmp, train_shape, steps = args.length, args.compare_length, (1, 131_072), 20
    else:  # the same code on 2 of the 8 layers and short inputs
        print("gpu_check model: no CUDA device: a CPU dry run at small sizes", flush=True)
        kernels = "no CUDA device (CPU dry run)"
        config = HyenaConfig(**{**LARGE_1M.to_dict(), "n_layer": 2})
        L_long, L_cmp, train_shape, steps = 2048, 1024, (1, 1024), 2
    record = {"device": gpu_info(device), "config": config.to_dict(), "kernels": kernels}
    checks = Checks()
    torch.manual_seed(0)
    cpu_model = HyenaDNA(config).eval()
    model = copy.deepcopy(cpu_model).to(device)
    with checks.part(f"CPU equality at {L_cmp} bp"):
        check_against_cpu(model, cpu_model, L_cmp, device, checks, record)
    del cpu_model
    with checks.part(f"{L_long} bp through the model"):
        run_long(model, L_long, device, checks, record, args.chunk_size)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with checks.part(f"{steps} bf16 training steps at {train_shape}"):
        train(config, *train_shape, steps, device, checks, record)
    record["checks"] = checks.items
    record["passed"] = checks.passed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_gpu.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {out / 'model_gpu.json'}: {'passed' if checks.passed else 'FAILED'}")
    return 0 if checks.passed else 1


def main_smoke(_args) -> int:
    """Every kernel path once at tiny sizes (for compute-sanitizer): fused with several rows
    per CTA, four-step, overlap-save, masks, fp16/bf16, single operands, backward."""
    if not torch.cuda.is_available():
        print("gpu_check smoke: no CUDA device: skipped")
        return 0
    from genomeconv.kernels import tiles

    fmax = cuda.fused_max_points(torch.cuda.current_device())
    g = torch.Generator(device="cuda").manual_seed(0)
    runs = [((3, 5, 100), torch.float32, {}), ((1, 2, 300), torch.bfloat16, {"fast": True}),
            ((1, 1, 20001), torch.float16, {}), ((1, 2, 3000), torch.float32, {"partial": True}),
            ((1, 2, 3000), torch.bfloat16, {"keep": "all"})]
    for (B, H, L), dtype, opts in runs:
        u = torch.randn(B, H, L, generator=g, device="cuda").to(dtype).requires_grad_(True)
        Lk = 50 if opts.get("partial") else L
        k = (torch.randn(H, Lk, generator=g, device="cuda") / Lk**0.5).requires_grad_(True)
        gate = torch.randn(B, H, L, generator=g, device="cuda").to(dtype)
        if opts.get("keep") == "all":
            M = cuda.plan(L, L, fmax, partial=False).M
            opts = {"keep": torch.ones(tiles.first_block_count(M, fmax), dtype=torch.bool)}
        y = cuda.fftconv(u, k, pregate=gate, postgate=gate, **opts)
        y.float().square().sum().backward()
        torch.cuda.synchronize()
        print(f"smoke {(B, H, L)} {dtype} {sorted(opts)}: finite "
              f"{bool(torch.isfinite(y).all() and torch.isfinite(u.grad).all())}", flush=True)
    return 0


def junit_counts(path: Path) -> dict | None:
    """tests/failures/errors/skipped of a pytest junit XML file, None when absent."""
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    keys = ("tests", "failures", "errors", "skipped")
    counts = {k: int(suite.get(k, 0)) for k in keys}
    counts["failed_tests"] = [f"{case.get('classname')}::{case.get('name')}"
                              for case in suite.iter("testcase")
                              if case.find("failure") is not None
                              or case.find("error") is not None][:40]
    return counts


def bench_digest(path: Path) -> list[str]:
    """One line per headline row of the benchmark: our kernels at each point (vs torch.fft and
    the published FlashFFTConv H100 time), the model's kbp/s, and every error."""
    if not path.exists():
        return []
    lines = []
    for r in json.loads(path.read_text())["rows"]:
        what = r.get("contender", "")
        if "error" in r and not r["error"].startswith("skipped"):
            lines.append(f"ERROR {r.get('N', '')} {r.get('L')} {r.get('dtype', '')} {what}: "
                         f"{r['error']}")
        elif what.startswith("genomeconv cuda") and "cached" not in what and "ms" in r:
            flash = r.get("published_flashfftconv_h100_ms")
            versus = (f", {r['vs_published_flashfftconv']:.2f}x FlashFFTConv-H100 {flash} ms"
                      if flash else "")
            mode = "fast " if "fast" in what else "split"
            lines.append(f"conv N={r['N']:>7} {r['case']:<7} {r['dtype']} {mode}: "
                         f"{r['ms_at_B64_H768']:.3g} ms at B64 H768, "
                         f"{r.get('speedup_vs_torch_fft', float('nan')):.2f}x torch.fft{versus}")
        elif what.startswith(("genomeconv fp32", "genomeconv bf16", "public")) and "kbp_per_s" in r:
            lines.append(f"model L={r['L']} {what}: {r['kbp_per_s']:.1f} kbp/s, "
                         f"peak {r.get('peak_gpu_gib') or 0:.2f} GiB")
    return lines


def evo2_figures(record: dict) -> list[str]:
    """Headline lines of gpu_check_evo2's evo2 record: tokens/s, the long input, the 1B shape."""
    lines = [f"evo2 7B-1M pattern (hidden 256) {r['L']} bp bf16: {r['tokens_per_s']:,.0f} "
             f"tokens/s, peak {r['peak_gib'] or 0:.2f} GiB" for r in record.get("rates", [])]
    if "long" in record:
        r = record["long"]
        lines.append(f"evo2 {r['L']} bp bf16 in bounded memory: {r['seconds']:.1f} s, peak "
                     f"{r['peak_gib'] or 0:.2f} GiB (formula {r['formula_gib']:.2f} GiB)")
    if "1b" in record:
        r = record["1b"]
        lines.append(f"evo2 1B shape ({r['layers']} layers) 8,192 bp bf16: "
                     f"{r['windows_per_s']:.1f} windows/s, peak {r['peak_gib'] or 0:.2f} GiB "
                     f"(formula {r['formula_gib']:.2f} GiB)")
    return lines


def main_summary(args) -> int:
    out = Path(args.out)
    stages = []
    for line in Path(args.stages).read_text().splitlines():
        name, status, seconds, rc, required = line.split("\t")
        stages.append({"stage": name, "status": status, "seconds": int(seconds), "rc": rc,
                       "required": required == "1"})
    model = out / "model_gpu.json"
    record = json.loads(model.read_text()) if model.exists() else {}
    figures = [f"{r['L']} bp {r['dtype']}: {r['kbp_per_s']:.1f} kbp/s (first call), peak "
               f"{r['peak_gpu_gib'] or 0:.2f} GiB" for r in record.get("long", [])]
    if "train" in record:
        t = record["train"]
        figures.append(f"train {t['steps']} bf16 steps at B {t['B']} L {t['L']}: median "
                       f"{sorted(t['step_seconds'])[len(t['step_seconds']) // 2]:.3f} s/step, "
                       f"loss {t['losses'][0]:.3f} -> {t['losses'][-1]:.3f}")
    # the Evo 2 and variants records are folded in whole (the device tool returns 8 files)
    folded = {name: json.loads(p.read_text()) for name in ("evo2_gpu", "variants_gpu")
              if (p := out / f"{name}.json").exists()}
    figures += evo2_figures(folded.get("evo2_gpu", {}))
    checks = [*(record.get("checks") or []),
              *(c for r in folded.values() for c in r.get("checks") or [])]
    summary = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "stages": stages,
        "pytest": {f.stem: junit_counts(f) for f in sorted(out.glob("pytest_*.xml"))},
        "model_checks": checks,
        "model_figures": figures,
        "bench": bench_digest(out / "bench_gpu.json"),
        **folded,
    }
    summary["passed"] = all(s["status"] in ("passed", "skipped-no-gpu") for s in stages
                            if s["required"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    for name in folded:
        (out / f"{name}.json").unlink()
    print("\n== gpu_check summary (most important last: the device tool keeps the tail) ==")
    for line in summary["bench"]:
        print("bench:", line)
    for line in figures:
        print("model:", line)
    for c in summary["model_checks"] or []:
        print(f"model: {'ok  ' if c['passed'] else 'FAIL'} {c['name']} "
              f"{c.get('value', c.get('error', ''))}")
    for name, c in summary["pytest"].items():
        if c:
            print(f"{name}: {c['tests']} tests, {c['failures']} failed, {c['errors']} errors, "
                  f"{c['skipped']} skipped {c['failed_tests'][:8]}")
    for s in stages:
        print(f"{s['stage']:<16} {s['status']:<15} {s['seconds']:>4} s  rc {s['rc']}"
              f"{'' if s['required'] else '  (informational)'}")
    print(f"gpu_check: {'ALL PASSED' if summary['passed'] else 'FAILED'} "
          f"(gpu: {summary['gpu']})")
    return 0 if summary["passed"] else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("model", help="the model end to end -> OUT/model_gpu.json")
    m.add_argument("--out", required=True)
    m.add_argument("--length", type=int, default=1_000_000)
    m.add_argument("--compare-length", type=int, default=32_768)
    m.add_argument("--chunk-size", type=int, default=1 << 16)
    sub.add_parser("smoke", help="every kernel path once, tiny sizes")
    s = sub.add_parser("summary", help="OUT/summary.json from the stages and results")
    s.add_argument("--out", required=True)
    s.add_argument("--stages", required=True)
    args = ap.parse_args()
    run = {"model": main_model, "smoke": main_smoke, "summary": main_summary}[args.command]
    sys.exit(run(args))


if __name__ == "__main__":
    main()
