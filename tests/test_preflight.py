"""Checks before work starts (genomeconv.pipelines.preflight): real files, the command line
through its error boundary for the exit code and the single stderr line, with starting Ray
failing the test (`run_cli_here`), no model run, and the output folder never created."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_one_line_error, random_seq, run_cli_here, write_fasta
from genomeconv.errors import InputError
from genomeconv.models import HyenaConfig, HyenaDNA
from genomeconv.pipelines import preflight

# sysfs refuses new files even to root (chmod 0o555 does not stop root), so it stands for a
# read-only folder on every machine.
READ_ONLY = Path("/sys/kernel")
CUDA_COUNT = torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("preflight")
    fasta = write_fasta(root / "ref.fa", {"chr1": random_seq(rng, 2000)})
    vcf = root / "v.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n##contig=<ID=chr1,length=2000>\n"
                   "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   "chr1\t100\t.\tA\tC\t.\t.\t.\n")
    torch.manual_seed(1)
    model = root / "model"
    HyenaDNA(HyenaConfig(d_model=8, n_layer=1, d_inner=16, max_seq_len=64)).save(model)
    return root, fasta, vcf, model


def test_out_must_be_a_writable_folder(tmp_path):
    preflight.check_out_folder(tmp_path / "new" / "deeper")  # creatable: fine, and not created
    assert not (tmp_path / "new").exists()
    assert list(tmp_path.iterdir()) == []  # the write probe leaves nothing
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(InputError, match="--out is a file"):
        preflight.check_out_folder(afile)
    with pytest.raises(InputError, match=f"{afile} is a file"):
        preflight.check_out_folder(afile / "sub")
    with pytest.raises(InputError, match="--out is not writable"):
        preflight.check_out_folder(READ_ONLY / "genomeconv_out")


def test_devices_this_machine_does_not_have():
    with pytest.raises(InputError, match="is not a device"):
        preflight.check_device("gpu0")
    with pytest.raises(InputError, match="only cpu and cuda"):
        preflight.check_device("meta")
    preflight.check_device("cpu")
    if CUDA_COUNT == 0:
        with pytest.raises(InputError, match="CUDA is not available"):
            preflight.check_device("cuda")
    with pytest.raises(InputError, match="CUDA"):
        preflight.check_device(f"cuda:{CUDA_COUNT}")
    with pytest.raises(InputError, match=f"needs {CUDA_COUNT + 1:g} GPU"):
        preflight.check_gpus(1, CUDA_COUNT + 1, None)
    preflight.check_gpus(0, 4, None)


def test_cluster_gpus_come_from_ray(ray_local):
    """With an address the cluster's resources decide (the shared local Ray has no GPU)."""
    gpus = ray_local.cluster_resources().get("GPU", 0)
    with pytest.raises(InputError, match=r"the Ray cluster at 127\.0\.0\.1:1 has"):
        preflight.check_gpus(0.5, int(2 * gpus) + 2, "127.0.0.1:1")


def test_inputs_open_in_the_driver(tmp_path, inputs):
    _, fasta, vcf, _ = inputs
    preflight.check(tmp_path / "o", fasta=fasta, variants=vcf)
    with pytest.raises(InputError, match="FASTA file not found"):
        preflight.check_fasta(tmp_path / "missing.fa")
    plain = tmp_path / "p.fa.gz"
    with gzip.open(plain, "wt") as fh:
        fh.write(">c\n" + "ACGT" * 5000 + "\n")
    preflight.check_fasta(plain)  # plain gzip: converted once to a cached bgzip copy
    cut = tmp_path / "cut.fa.gz"
    cut.write_bytes(plain.read_bytes()[:-20])
    with pytest.raises(InputError, match=f"{cut}.*truncated or corrupt gzip"):
        preflight.check_fasta(cut)
    with pytest.raises(InputError, match="variant file not found"):
        preflight.check_variants(tmp_path / "missing.vcf")
    broken = tmp_path / "b.tsv"
    broken.write_text("chrom\tpos\tref\talt\nchr1\tten\tA\tC\n")
    with pytest.raises(ValueError, match="line 2"):
        preflight.check_variants(broken)


def test_a_window_longer_than_every_contig_is_refused(inputs):
    _, fasta, _, _ = inputs
    preflight.check_fasta(fasta, window=2000)
    with pytest.raises(InputError, match=r"--window 10,000,000 is longer than the longest "
                                         r"contig \(chr1, 2,000 bp\)"):
        preflight.check_fasta(fasta, window=10_000_000)


@pytest.mark.parametrize("case", ["out_file", "out_read_only", "device_cuda", "bad_device",
                                  "window", "window_zero",
                                  "missing_fasta", "missing_vcf", "bad_vcf", "bad_model"])
def test_score_variants_refuses_before_ray_and_the_model(inputs, tmp_path, case):
    root, fasta, vcf, model = inputs
    out = tmp_path / "o"
    args = {"fasta": fasta, "vcf": vcf, "out": out, "model": model, "extra": []}
    want: tuple[str, ...]
    if case == "out_file":
        out.write_text("x")
        want = ("--out is a file",)
    elif case == "out_read_only":
        args["out"] = READ_ONLY / "o"
        want = ("--out is not writable",)
    elif case == "device_cuda":
        args["extra"] = ["--device", f"cuda:{CUDA_COUNT}"]
        want = ("--device cuda:",)
    elif case == "window":
        args["extra"] = ["--window", "10000000"]
        want = ("--window 10,000,000 is longer than the longest contig", "a whole contig")
    elif case == "window_zero":  # it meant the default window, silently (issue 30)
        args["extra"] = ["--window", "0"]
        want = ("--window must be at least 2 (got 0)",)
    elif case == "bad_device":
        args["extra"] = ["--device", "quantum"]
        want = ("'quantum' is not a device",)
    elif case == "missing_fasta":
        args["fasta"] = tmp_path / "none.fa"
        want = ("FASTA file not found",)
    elif case == "missing_vcf":
        args["vcf"] = tmp_path / "none.vcf"
        want = ("variant file not found", "none.vcf")
    elif case == "bad_vcf":
        bad = tmp_path / "bad.tsv"  # a table: htslib's own stderr lines are the formats' concern
        bad.write_text("chrom\tpos\tref\talt\nchr1\tten\tA\tC\n")
        args["vcf"] = bad
        want = ("bad.tsv", "line 2")
    else:
        broken = tmp_path / "broken"
        shutil.copytree(model, broken)
        meta = json.loads((broken / "config.json").read_text())
        meta["config"]["d_model"] = "wide"
        (broken / "config.json").write_text(json.dumps(meta))
        args["model"] = broken
        want = ("config.json", "d_model = 'wide' is not an integer")
    run = run_cli_here("score-variants", args["vcf"], "--fasta", args["fasta"], "--out",
                       args["out"], "--model", args["model"], *args["extra"])
    assert_one_line_error(run, *want)
    if case != "out_file":
        assert not out.exists()
    assert "Started a local Ray instance" not in run.stdout + run.stderr


@pytest.mark.parametrize("case", ["gpus_per_worker", "device_cuda", "out_read_only"])
def test_embed_refuses_before_ray(inputs, tmp_path, case):
    """--gpus-per-worker beyond this machine's GPUs used to wait forever for a GPU."""
    _, fasta, _, model = inputs
    out = tmp_path / "o"
    extra, want = {
        "gpus_per_worker": (["--gpus-per-worker", "1", "--num-workers", str(CUDA_COUNT + 1)],
                            ("--gpus-per-worker 1", "this machine has")),
        "device_cuda": (["--device", f"cuda:{CUDA_COUNT}"], ("--device cuda:",)),
        "out_read_only": (["--out", str(READ_ONLY / "o")], ("--out is not writable",)),
    }[case]
    run = run_cli_here("embed", fasta, "--model", model, "--out", out, *extra)
    assert_one_line_error(run, *want)
    assert not out.exists()


@pytest.mark.parametrize("job, option, value", [
    ("track", "context", 0), ("track", "piece_bp", 0), ("track", "unit_bp", -5),
    ("track", "chunk_size", 0), ("embed", "unit_bp", 0), ("embed", "batch_size", 0),
    ("embed", "chunk_size", 0), ("variants", "unit_alleles", 0), ("variants", "batch_size", 0),
    ("variants", "window", 1), ("variants", "num_workers", 0)])
def test_non_positive_sizes_are_refused(inputs, tmp_path, job, option, value):
    """A size of 0 silently meant the default (track's context, piece and unit sizes;
    score-variants' window, batch and unit sizes), as --window 0 did on the command line."""
    from genomeconv.pipelines.embed import embed
    from genomeconv.pipelines.options import EmbedOptions, TrackOptions, VariantOptions
    from genomeconv.pipelines.track import track
    from genomeconv.pipelines.variants import score_variants

    _, fasta, vcf, model = inputs
    out = tmp_path / "o"
    common = {"out": out, "fasta": fasta, "model": str(model), option: value}
    run = {"track": lambda: track(TrackOptions(**common)),
           "embed": lambda: embed(EmbedOptions(**common)),
           "variants": lambda: score_variants(VariantOptions(variants=vcf, **common))}[job]
    name = "--unit-size" if option == "unit_alleles" else "--" + option.replace("_", "-")
    least = 2 if name == "--window" else 1
    with pytest.raises(InputError, match=f"^{name} must be at least {least} \\(got {value}\\)"):
        run()
    assert not out.exists()
