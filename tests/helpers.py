"""What more than one test module uses (no test module imports another): generated input files
(FASTA, VCF, a labelled-variant task), the command line in a fresh process, tiny random HyenaDNA
models with an independent float64 numpy forward, and float64 references of the convolution.
Inputs are written fresh into each test's tmp_path."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pysam
import scipy.signal
import torch

from genomeconv.models import HyenaConfig, HyenaDNA


def random_seq(rng: np.random.Generator, n: int, alphabet: str = "ACGT") -> str:
    """n random letters from `alphabet`."""
    return "".join(rng.choice(list(alphabet), size=n))


def write_fasta(path: str | Path, records: dict[str, str], width: int = 60,
                index: bool = True) -> str:
    """A plain FASTA with `width` bases a line (headers carry a description); indexed with
    pysam.faidx unless index=False. Returns the path as a string."""
    with open(path, "w") as fh:
        for name, seq in records.items():
            fh.write(f">{name} generated\n")
            fh.writelines(seq[i:i + width] + "\n" for i in range(0, len(seq), width))
    if index:
        pysam.faidx(str(path))
    return str(path)


def session_ray():
    """The test run's one real local Ray (2 CPUs, servers on 127.0.0.1), started on first use
    (the `ray_local` fixture, `cli_env`); conftest shuts it down at the end of the run."""
    import os

    import ray

    from genomeconv.pipelines.runtime import connect

    connect(num_cpus=2, temp_dir=f"/tmp/gc_ray_{os.getpid()}")  # socket paths must stay short
    return ray


def cli_env(private_ray: bool = False) -> dict[str, str]:
    """Environment for a fresh `genomeconv` process: this checkout on PYTHONPATH, no
    GENOMECONV_VERBOSE from the calling shell, and RAY_ADDRESS set to the test run's Ray
    (`session_ray`), which the process joins as a user's job joins a cluster: starting a private
    Ray costs ~10 s a run. private_ray: no RAY_ADDRESS, for tests of a run's own local Ray
    (its start and shutdown under Ctrl-C, its output lines)."""
    import os

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for key in ("GENOMECONV_VERBOSE", "RAY_ADDRESS"):
        env.pop(key, None)
    if not private_ray:
        env["RAY_ADDRESS"] = session_ray().get_runtime_context().gcs_address
    return env


def run_cli(*args: object, timeout: float = 300,
            private_ray: bool = False) -> subprocess.CompletedProcess[str]:
    """The real `genomeconv` command line in a fresh process (see `cli_env`)."""
    import sys

    return subprocess.run([sys.executable, "-m", "genomeconv.cli", *map(str, args)],
                          env=cli_env(private_ray), capture_output=True, text=True,
                          timeout=timeout)


def run_cli_here(*args: object) -> subprocess.CompletedProcess[str]:
    """The `genomeconv` command line run in this process (click's runner, through the same
    error boundary), with starting Ray made to fail as a bug: for options and inputs that must
    be refused before any work starts, without a fresh process's ~2.5 s of imports. Lines
    written past Python (htslib's) are not seen here; `run_cli` sees them."""
    from unittest import mock

    from typer.testing import CliRunner

    from genomeconv.cli import app

    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("Ray started before the refusal")

    with mock.patch("genomeconv.pipelines.runtime.connect", forbidden):
        result = CliRunner().invoke(app, [str(a) for a in args])
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += f"\n{result.exception!r}"
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, stderr)


def assert_one_line_error(run: subprocess.CompletedProcess[str], *texts: str) -> str:
    """Exit code 2, and stderr is exactly one line `error: ...` holding each of `texts`."""
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in run.stderr, run.stderr
    for text in texts:
        assert text in lines[0], lines[0]
    return lines[0]


def worker_setup(model: str | None, out: str | Path, **fields: object):
    """A job.WorkerSetup for running an actor in this process (no run, no lock)."""
    from genomeconv.pipelines.job import WorkerSetup

    base = dict(model=model, model_id=None, device=None, dtype=None, threads=None, out=str(out),
                command="genomeconv test", keep_nonfinite=False, manifest_sha256=None,
                token=None)
    return WorkerSetup(**{**base, **fields})


def open_actor(actor: type, setup, config):
    """A job actor (job.UnitActor) in this process, set up for one run: built, then opened."""
    made = actor(setup)
    made.open_run(setup, config)
    return made


def save_tiny_model(path: str | Path, *, seed: int, max_seq_len: int, d_inner: int = 32) -> str:
    """A random HyenaDNA (d_model 16, 2 layers) saved in genomeconv's layout at `path`: small
    enough to run hundreds of items in seconds; `seed` makes its weights reproducible."""
    torch.manual_seed(seed)
    HyenaDNA(HyenaConfig(d_model=16, n_layer=2, d_inner=d_inner,
                         max_seq_len=max_seq_len)).save(path)
    return str(path)


# --- VCF inputs -------------------------------------------------------------------------------
VCF_HEADER_LINES = 5  # fileformat, INFO END, one contig line per contig (2), #CHROM


def write_vcf(path: Path, contigs: dict[str, int], records: list[tuple]) -> Path:
    """A VCF as text: records are (chrom, pos, id, ref, alt) with alt comma-separated."""
    lines = ["##fileformat=VCFv4.2",  # END: htslib needs it in the header to write <DEL> as BCF
             '##INFO=<ID=END,Number=1,Type=Integer,Description="End position">']
    lines += [f"##contig=<ID={name},length={length}>" for name, length in contigs.items()]
    lines.append("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO")
    lines += ["\t".join(map(str, (c, p, i, r, a, ".", ".", "."))) for c, p, i, r, a in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def bgzip_and_index(path: Path) -> Path:
    """bgzip + tabix a VCF with pysam; returns the .vcf.gz path."""
    return Path(pysam.tabix_index(str(path), preset="vcf", force=True, keep_original=True))


# --- a tiny random HyenaDNA and its float64 numpy forward -------------------------------------
TINY = HyenaConfig(d_model=16, n_layer=2, d_inner=48, max_seq_len=40, filter_order=8)


def random_model(cfg: HyenaConfig = TINY, seed: int = 0) -> HyenaDNA:
    """A model with every parameter random (non-default LayerNorms, biases, freq)."""
    torch.manual_seed(seed)
    model = HyenaDNA(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("freq"):
                p.uniform_(5.0, 12.0)
            elif "norm" in name or "ln_f" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def random_ids(rng: np.random.Generator, B: int, L: int) -> torch.Tensor:
    """(B, L) random ids of the bases A, C, G, T, N."""
    return torch.from_numpy(rng.integers(7, 12, size=(B, L)))


def _ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _filter(sd, p, cfg: HyenaConfig, length: int):
    """Implicit filter taps (d, length), built from the published formulas."""
    L_max = cfg.max_seq_len
    t = np.linspace(0, 1, L_max)[:, None]
    bands = (cfg.emb_dim - 1) // 2
    w = 2 * math.pi * np.arange(L_max)[:, None] / L_max
    f = np.linspace(1e-4, bands - 1, bands)[None]
    zc = np.exp(-1j * f * w)
    z = np.concatenate([t, zc.real, zc.imag], axis=-1)[:length]
    freq = sd[p + "implicit_filter.1.freq"]
    h = np.sin(freq * (z @ sd[p + "implicit_filter.0.weight"].T + sd[p + "implicit_filter.0.bias"]))
    for i in (2, 4):
        h = np.sin(freq * (h @ sd[p + f"implicit_filter.{i}.weight"].T
                           + sd[p + f"implicit_filter.{i}.bias"]))
    k = h @ sd[p + "implicit_filter.6.weight"].T
    deltas = np.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, cfg.d_model)
    k = k * (np.exp(-t[:length] * np.abs(deltas)[None]) + 0.05)
    return k.T


def reference_hidden(model: HyenaDNA, ids: torch.Tensor) -> np.ndarray:
    """Hidden states after ln_f in float64; the long conv is a direct causal convolution with
    min(L, max_seq_len) taps (a partial convolution past the trained length)."""
    cfg = model.config
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    ids = ids.numpy()
    B, L = ids.shape
    d = cfg.d_model
    x = sd["backbone.embeddings.word_embeddings.weight"][ids]
    for i in range(cfg.n_layer):
        p = f"backbone.layers.{i}."
        u = _ln(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        u = u @ sd[p + "mixer.in_proj.weight"].T + sd[p + "mixer.in_proj.bias"]  # B L 3d
        w = sd[p + "mixer.short_filter.weight"][:, 0]  # 3d x 3: w[:, 2] multiplies x_t
        pad = np.concatenate([np.zeros((B, 2, 3 * d)), u], axis=1)
        u = (w[:, 0] * pad[:, :-2] + w[:, 1] * pad[:, 1:-1] + w[:, 2] * pad[:, 2:]
             + sd[p + "mixer.short_filter.bias"])
        x0, x1, v = u[..., :d], u[..., d:2 * d], u[..., 2 * d:]
        v = x1 * v
        k = _filter(sd, p + "mixer.filter_fn.", cfg, min(L, cfg.max_seq_len))
        y = np.empty_like(v)
        for b in range(B):
            for c in range(d):
                y[b, :, c] = np.convolve(v[b, :, c], k[c])[:L]
        y = y + v * sd[p + "mixer.filter_fn.bias"]
        x = x + (x0 * y) @ sd[p + "mixer.out_proj.weight"].T + sd[p + "mixer.out_proj.bias"]
        h = _ln(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        h = _gelu_tanh(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    return _ln(x, sd["backbone.ln_f.weight"], sd["backbone.ln_f.bias"])


def assert_close_ref(ours: torch.Tensor, ref: np.ndarray, tol: float = 2e-4) -> None:
    """`ours` within `tol` of the float64 reference, relative to its largest value."""
    err = np.abs(ours.detach().double().numpy() - ref).max() / np.abs(ref).max()
    assert err < tol, f"relative error {err:.2e}"


# --- training inputs --------------------------------------------------------------------------
def markov_genome(rng: np.random.Generator, n: int) -> str:
    """A sequence from an order-2 Markov chain with peaked transitions."""
    probs = rng.dirichlet(np.full(4, 0.3), size=16)
    out = list(rng.choice(4, size=2))
    for _ in range(n - 2):
        out.append(rng.choice(4, p=probs[out[-2] * 4 + out[-1]]))
    return "".join("ACGT"[i] for i in out)


def make_variant_task(root: Path, seed: int, length: int, per_chrom: int,
                      label=lambda i, alt: int(alt in "AT")) -> tuple:
    """A genome of 3 chromosomes, a tiny base model (window 32), and labelled SNVs:
    `label(i, alt)` of the i-th variant, plus a 3-class label `three` (the ALT base's rank
    among the other bases). Returns (fasta, table, base, rows)."""
    rng = np.random.default_rng(seed)
    contigs = {f"chr{i}": markov_genome(rng, length) for i in (1, 2, 3)}
    fasta = write_fasta(root / "ref.fa", contigs)
    rows = []
    for chrom, seq in contigs.items():
        for pos in rng.choice(np.arange(40, length - 40), size=per_chrom, replace=False):
            ref = seq[pos - 1]
            alt = rng.choice([b for b in "ACGT" if b != ref])
            rows.append((chrom, int(pos), ref, alt, label(len(rows), alt),
                         "ACGT".replace(ref, "").index(alt)))
    table = root / "variants.tsv"
    table.write_text("chrom\tpos\tref\talt\tlabel\tthree\n" +
                     "".join("\t".join(map(str, r)) + "\n" for r in rows))
    torch.manual_seed(seed)
    base = root / "base"
    HyenaDNA(HyenaConfig(d_model=16, n_layer=2, d_inner=32, max_seq_len=32)).save(base)
    return fasta, table, base, rows


# --- convolution references -------------------------------------------------------------------
def conv_reference(u, k, D=None, pregate=None, postgate=None) -> np.ndarray:
    """Float64 causal conv by the issue's formula (scipy.signal.fftconvolve, float64)."""
    f = lambda t: None if t is None else t.detach().to(torch.float64).numpy()  # noqa: E731
    u64, k64, D64, pre, post = map(f, (u, k, D, pregate, postgate))
    x = u64 if pre is None else u64 * pre
    L = x.shape[-1]
    k64 = k64[:, :L]
    y = scipy.signal.fftconvolve(x, k64[None], axes=-1)[..., :L]
    if D64 is not None:
        y = y + D64[:, None] * x
    return y if post is None else y * post


def conv_inputs(B, H, L, Lk, dtype=torch.float32, gates=True, D=True, seed=0):
    """fftconv's arguments (CPU, never zeros): u and gates (B, H, L) in `dtype`, k (H, Lk), D."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(u=r(B, H, L).to(dtype), k=r(H, Lk), D=r(H) if D else None,
                pregate=r(B, H, L).to(dtype) if gates else None,
                postgate=r(B, H, L).to(dtype) if gates else None)


def f64(t: torch.Tensor | None):
    """A tensor as a float64 numpy array (None stays None)."""
    return None if t is None else t.detach().double().cpu().numpy()


def rel_err(got, want) -> float:
    """max |got - want| / max |want| in float64 (tensors or arrays)."""
    got = f64(got) if isinstance(got, torch.Tensor) else got
    want = f64(want) if isinstance(want, torch.Tensor) else want
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def plain_torch_conv(u, k, D, pregate=None, postgate=None):
    """Plain torch in u's precision: float32 FFTs of the rounded inputs, output in u.dtype."""
    x = u.float() * (1.0 if pregate is None else pregate.float())
    L = u.shape[-1]
    n = L + k.shape[-1]
    z = torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(k.float(), n=n), n=n)[..., :L]
    y = (z + (0.0 if D is None else D.float()[:, None]) * x)
    return (y * (1.0 if postgate is None else postgate.float())).to(u.dtype)


def autograd_reference(u, k, D, pregate, postgate, keep_bins=None, n=None):
    """float64 autograd reference (CPU) of the gated causal convolution."""
    x = u * pregate
    L = u.shape[-1]
    n = L + k.shape[-1] if n is None else n
    K = torch.fft.rfft(k, n=n) + D[:, None]
    if keep_bins is not None:
        K = K * keep_bins
    return torch.fft.irfft(torch.fft.rfft(x, n=n) * K, n=n)[..., :L] * postgate


def grads(fn, tensors, dy):
    """The gradients of sum(fn(**tensors) * dy) with respect to each of `tensors`."""
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in tensors.items()}
    (fn(**leaves) * dy).sum().backward()
    return {n: t.grad for n, t in leaves.items()}


VARIANT_KEY = ("chrom", "pos", "ref", "alt")


def score_variants_cli(*args: object) -> str:
    """`genomeconv score-variants ARGS` in this process; its output (it must succeed)."""
    from typer.testing import CliRunner

    from genomeconv.cli import app

    result = CliRunner().invoke(app, ["score-variants", *map(str, args)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def variant_rows(folder: Path) -> list[dict]:
    """Every row of a score-variants output, sorted by (chrom, pos, ref, alt)."""
    import pyarrow.parquet as pq

    return sorted(pq.read_table(folder).to_pylist(),
                  key=lambda r: tuple(r[k] for k in VARIANT_KEY))
