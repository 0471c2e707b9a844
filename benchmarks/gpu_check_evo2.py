"""The Evo 2 and variant-scoring stages of scripts/gpu_check.sh (issue 29), each part time-boxed
by the script and recorded as named checks (value and bound) as gpu_check.py's are.

    python benchmarks/gpu_check_evo2.py evo2 --out DIR       # -> DIR/evo2_gpu.json
    python benchmarks/gpu_check_evo2.py variants --out DIR   # -> DIR/variants_gpu.json

`evo2`: a random model of the 7B-1M layer pattern at reduced width (bench_evo2's part (b) shape:
hidden 256, 32 layers, interpolated rotary) on `cuda`, float32 and bf16, against the CPU path on
a short input (float32 within 1e-4; bf16 within 2x the CPU bf16 path's error against CPU
float32); a long input in bounded memory, its peak GPU memory against the README's formula
(families/evo2/memory.memory_estimate, within 10%); tokens/s at 8,192 and at the longest length
(doubling from 8,192) whose forward fits in 60 s; and the 1B shape (evo2-1b-8k.yml, random
weights in bf16) at 8,192 bp in bf16: tokens/s, windows/s against 2x the official code's
published ~9.5 windows/s on an H100, and peak memory against the formula.
`variants`: variant windows on `cuda` through the model interface score-variants uses: a batch
of 1,024-bp windows equal row by row to each window alone, and ALT windows computed from their
first difference (`log_likelihoods_shared`) equal to full windows (1e-5 absolute on each
window's log-likelihood sum, in float32), for HyenaDNA (the bundled shape, random weights) and
Evo 2 (a tiny random model of every block type).

Without a CUDA device the same code runs on the CPU at small sizes (a dry run) and says so.
Imports neither ray nor pysam nor deepspeed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_evo2 import release_values  # noqa: E402
from benchmarks.bench_gpu import gpu_info, in_units  # noqa: E402
from benchmarks.gpu_check import Checks, rel, synced  # noqa: E402
from genomeconv.models import load  # noqa: E402
from genomeconv.models.families.evo2 import Evo2, Evo2Config  # noqa: E402
from genomeconv.models.families.evo2.memory import memory_estimate  # noqa: E402
from genomeconv.models.families.hyena.model import HyenaDNA  # noqa: E402

GIB = 2**30
OFFICIAL_1B_WINDOWS_PER_S = 9.5  # the Evo 2 paper's BRCA1 run: 8,192-bp windows, one H100


def dna(B: int, L: int, seed: int) -> torch.Tensor:
    """Random A/C/G/T byte tokens (B, L)."""
    g = torch.Generator().manual_seed(seed)
    return torch.tensor([65, 67, 71, 84])[torch.randint(0, 4, (B, L), generator=g)]


def random_evo2(values: dict, seed: int, dtype: torch.dtype = torch.float32) -> Evo2:
    """A random Evo 2 of a release config's values, in eval mode, weights in `dtype` (the hcl
    poles and residues stay float32, as loading a release leaves them)."""
    torch.manual_seed(seed)
    model = Evo2(Evo2Config.from_release(values)).eval()
    keep = {n for n, _ in model.named_parameters() if n.endswith(("log_poles", "residues"))}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in keep:
                p.data = p.data.to(dtype)
    return model


def peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else None


def reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def evo2_against_cpu(values: dict, L: int, device, checks: Checks, record: dict) -> None:
    """Hidden states and log-likelihoods on the device vs the CPU path, fp32 and bf16."""
    cpu = random_evo2(values, 0)
    model = random_evo2(values, 0).to(device)
    ids = dna(1, L, 1)
    ll_cpu, h_cpu = cpu.log_likelihoods(ids, with_hidden=True)
    ll_cpu_bf, h_cpu_bf = cpu.log_likelihoods(ids, with_hidden=True, dtype=torch.bfloat16)
    (out, s) = synced(lambda: model.log_likelihoods(ids, with_hidden=True), device)
    ll, h = out
    checks.add("evo2 fp32 hidden states vs CPU", rel(h, h_cpu), 1e-4)
    checks.add("evo2 fp32 log-likelihoods vs CPU", rel(ll, ll_cpu), 1e-4)
    ll_bf, h_bf = model.log_likelihoods(ids, with_hidden=True, dtype=torch.bfloat16)
    for what, got, cpu_bf, want in (("hidden states", h_bf, h_cpu_bf, h_cpu),
                                    ("log-likelihoods", ll_bf, ll_cpu_bf, ll_cpu)):
        bound = 2 * rel(cpu_bf, want) + 1e-3
        checks.add(f"evo2 bf16 {what} vs CPU fp32, bound 2x the CPU bf16 error",
                   rel(got, want), bound, cpu_bf16_error=rel(cpu_bf, want))
    record["compare"] = {"L": L, "device_seconds_fp32": s}


def forward_seconds(model: Evo2, L: int, dtype: torch.dtype, device) -> tuple[float, int | None]:
    """Seconds and peak device bytes of one log-likelihood forward of L random bases."""
    ids = dna(1, L, 2)
    reset(device)
    (ll, _), s = synced(lambda: model.log_likelihoods(ids, dtype=dtype), device)
    if not bool(torch.isfinite(ll).all()):
        raise FloatingPointError(f"non-finite log-likelihoods at {L} bp")
    return s, peak(device)


def evo2_long(values: dict, L: int, device, checks: Checks, record: dict) -> None:
    """One long input in bounded memory: peak device memory against the formula."""
    model = random_evo2(values, 0, torch.bfloat16).to(device)
    s, used = forward_seconds(model, L, torch.bfloat16, device)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    predicted = memory_estimate(model.config, batch=1, length=L, dtype=torch.bfloat16,
                                weights=weights)["total"]
    record["long"] = {"L": L, "dtype": "bf16", "seconds": s, "tokens_per_s": L / s,
                      "peak_gib": in_units(used, GIB), "formula_gib": predicted / GIB}
    print(f"  {L} bp bf16: {s:.2f} s, peak {in_units(used, GIB)} GiB, formula "
          f"{predicted / GIB:.2f} GiB", flush=True)
    if used is not None:
        checks.add(f"evo2 {L} bp peak memory vs the formula (relative difference)",
                   abs(used - predicted) / predicted, 0.10)


def evo2_rates(values: dict, device, budget_s: float, checks: Checks, record: dict) -> None:
    """Tokens/s at 8,192 bp and at the longest doubling whose forward fits in `budget_s`."""
    model = random_evo2(values, 0, torch.bfloat16).to(device)
    forward_seconds(model, 2048, torch.bfloat16, device)  # warm-up
    rates, L = [], 8192
    while True:
        try:
            s, used = forward_seconds(model, L, torch.bfloat16, device)
        except torch.OutOfMemoryError:
            break
        rates.append({"L": L, "seconds": s, "tokens_per_s": L / s,
                      "peak_gib": in_units(used, GIB)})
        print(f"  {L} bp bf16: {L / s:,.0f} tokens/s", flush=True)
        if 2.2 * s > budget_s or device.type != "cuda" and L >= 16384:
            break
        L *= 2
    record["rates"] = rates
    if not rates:
        raise RuntimeError("not even 8,192 bp fit on the device")


def evo2_1b(device, checks: Checks, record: dict) -> None:
    """The 1B shape at 8,192 bp in bf16: tokens/s, windows/s, peak memory vs the formula."""
    values = release_values("a")
    if device.type != "cuda":  # the dry run: 2 of its 25 layers (one hyena, one attention)
        values = {**values, "num_layers": 2, "attn_layer_idxs": [1], "hcl_layer_idxs": [],
                  "hcm_layer_idxs": [], "hcs_layer_idxs": [0]}
    model = random_evo2(values, 0, torch.bfloat16).to(device)
    forward_seconds(model, 2048, torch.bfloat16, device)  # warm-up
    s, used = forward_seconds(model, 8192, torch.bfloat16, device)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    predicted = memory_estimate(model.config, batch=1, length=8192, dtype=torch.bfloat16,
                                weights=weights)["total"]
    record["1b"] = {"layers": model.config.num_layers, "L": 8192, "seconds": s,
                    "tokens_per_s": 8192 / s, "windows_per_s": 1 / s,
                    "peak_gib": in_units(used, GIB), "formula_gib": predicted / GIB}
    print(f"  1B shape 8,192 bp bf16: {1 / s:.1f} windows/s, peak {in_units(used, GIB)} GiB",
          flush=True)
    if device.type == "cuda":
        checks.add("evo2 1B windows/s at 8,192 bp, bound 2x the official ~9.5 (negated)",
                   -1 / s, -2 * OFFICIAL_1B_WINDOWS_PER_S)


def main_evo2(args) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    values = release_values("b")
    if device.type == "cuda":
        L_cmp, L_long, budget = args.compare_length, args.length, args.budget_s
    else:
        print("gpu_check evo2: no CUDA device: a CPU dry run at small sizes", flush=True)
        values = {**values, "num_layers": 4, "attn_layer_idxs": [3], "hcl_layer_idxs": [2],
                  "hcm_layer_idxs": [1], "hcs_layer_idxs": [0]}
        L_cmp, L_long, budget = 1024, 4096, 10.0
    record = {"device": gpu_info(device), "config": values}
    checks = Checks()
    with checks.part(f"evo2 vs the CPU path at {L_cmp} bp"):
        evo2_against_cpu(values, L_cmp, device, checks, record)
    with checks.part(f"evo2 {L_long} bp in bounded memory"):
        evo2_long(values, L_long, device, checks, record)
    with checks.part("evo2 tokens/s"):
        evo2_rates(values, device, budget, checks, record)
    with checks.part("evo2 1B shape at 8,192 bp"):
        evo2_1b(device, checks, record)
    return write(args.out, "evo2_gpu.json", record, checks)


def shared_windows(window: int, rows: int, seed: int
                   ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """`rows` random REF windows, each followed by its 3 SNV ALT windows (the variant near the
    centre): the sequences, and `log_likelihoods_shared`'s parent and start."""
    g = torch.Generator().manual_seed(seed)
    seqs, parent, start = [], [], []
    for _ in range(rows):
        ref = "".join("ACGT"[i] for i in torch.randint(0, 4, (window,), generator=g))
        k = window // 2 + int(torch.randint(-window // 8, window // 8, (1,), generator=g))
        root = len(seqs)
        seqs.append(ref)
        parent.append(-1)
        start.append(0)
        for alt in "ACGT".replace(ref[k], ""):
            seqs.append(ref[:k] + alt + ref[k + 1:])
            parent.append(root)
            start.append(k)
    return seqs, torch.tensor(parent), torch.tensor(start)


def check_windows(name: str, model, device, window: int, rows: int, checks: Checks,
                  record: dict) -> None:
    """A batch equal to each row alone, and shared ALT rows equal to full rows, on `device`."""
    seqs, parent, start = shared_windows(window, rows, 3)
    ids = model.tokenize(seqs)
    full, _ = model.log_likelihoods(ids)
    alone = torch.cat([model.log_likelihoods(ids[i:i + 1])[0] for i in range(0, len(seqs), 5)])
    sums = full.double().sum(dim=1).cpu()
    checks.add(f"{name}: a batch row vs the row alone (max abs difference of sums)",
               float((alone.double().sum(dim=1).cpu() - sums[::5]).abs().max()), 1e-5)
    (shared, _), s = synced(lambda: model.log_likelihoods_shared(ids, parent.to(device),
                                                                 start.to(device)), device)
    (_, _), s_full = synced(lambda: model.log_likelihoods(ids), device)
    diff = float((shared.double().sum(dim=1).cpu() - sums).abs().max())
    checks.add(f"{name}: ALT windows from their first difference vs full (max abs)", diff, 1e-5)
    record[name] = {"windows": len(seqs), "window": window, "seconds_shared": s,
                    "seconds_full": s_full, "max_abs_difference": diff}
    print(f"  {name}: {len(seqs)} windows, shared {s:.3f} s vs full {s_full:.3f} s", flush=True)


def main_variants(args) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = 32 if device.type == "cuda" else 4
    if device.type != "cuda":
        print("gpu_check variants: no CUDA device: a CPU dry run at small sizes", flush=True)
    record = {"device": gpu_info(device)}
    checks = Checks()
    with checks.part("HyenaDNA windows"):
        bundled = load(device="cpu")
        torch.manual_seed(0)
        model = HyenaDNA(bundled.config).eval().to(device)  # the bundled shape, random weights
        check_windows("hyena", model, device, 1024, rows, checks, record)
    with checks.part("Evo 2 windows"):
        values = {**release_values("b"), "hidden_size": 32, "num_filters": 32,
                  "hcl_filter_groups": 32, "hcm_filter_groups": 4, "hcs_filter_groups": 4,
                  "num_attention_heads": 2, "inner_mlp_size": 64, "num_layers": 4,
                  "attn_layer_idxs": [3], "hcl_layer_idxs": [2], "hcm_layer_idxs": [1],
                  "hcs_layer_idxs": [0]}
        check_windows("evo2", random_evo2(values, 1).to(device), device, 1024, rows, checks,
                      record)
    return write(args.out, "variants_gpu.json", record, checks)


def write(out: str, name: str, record: dict, checks: Checks) -> int:
    record["checks"], record["passed"] = checks.items, checks.passed
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {path / name}: {'passed' if checks.passed else 'FAILED'}", flush=True)
    return 0 if checks.passed else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    e = sub.add_parser("evo2", help="Evo 2 on the device -> OUT/evo2_gpu.json")
    e.add_argument("--out", required=True)
    e.add_argument("--compare-length", type=int, default=4096)
    e.add_argument("--length", type=int, default=1 << 20)
    e.add_argument("--budget-s", type=float, default=60.0)
    v = sub.add_parser("variants", help="variant windows on the device -> OUT/variants_gpu.json")
    v.add_argument("--out", required=True)
    args = ap.parse_args()
    sys.exit({"evo2": main_evo2, "variants": main_variants}[args.command](args))


if __name__ == "__main__":
    main()
