"""Checks that run before Ray starts and before any model runs, so that a bad input or option
costs a second and one line, not a Ray start-up, a model run and a 300-line worker traceback.

Each pipeline (embed, score_variants, pretrain, finetune) calls `check` first. It opens the
inputs in this process with the same readers the workers use (a FASTA is opened, and indexed if
needed, by io.fasta; a VCF or table yields its first record through io.variants), refuses a
`--device` or `--gpus-per-worker` this machine (or, with an address, the cluster) cannot give
(a Ray actor asking for a missing GPU waits forever), and makes sure `--out` can be written:
not a file, and a file can be created in it or in its nearest existing parent (the folder itself
is not created here, so a refused run leaves nothing behind). The model folder is checked by
`checkpoints.load`, which each pipeline calls before planning.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from pathlib import Path

from genomeconv.errors import InputError
from genomeconv.pipelines.manifest import note
from genomeconv.pipelines.runtime import check_address


def check(out: str | Path, *, fasta: str | Path | None = None,
          variants: str | Path | None = None, window: int | None = None,
          device: str | None = None, gpus_per_worker: float = 0.0, num_workers: int = 1,
          address: str | None = None) -> None:
    """Every check that needs no model run, after the options' own (`options.*.check`), in the
    order a user fixes them (the cluster address first: a wrong one would hang Ray later, then
    inputs, devices, output); raises InputError naming the file or option. `window`: a window
    size the user asked for, checked against the FASTA's contigs."""
    check_address(address)
    if fasta is not None:
        check_fasta(fasta, window=window)
    if variants is not None:
        check_variants(variants)
    check_device(device)
    check_gpus(gpus_per_worker, num_workers, address)
    check_out_folder(out)


def check_fasta(path: str | Path, *, window: int | None = None) -> None:
    """The FASTA opens (and is indexed) in this process, as the workers will open it (one note
    per empty record, which the index leaves out, so it is not dropped silently), and a
    requested `window` fits in its longest contig (a longer one makes every window a whole
    contig: a mistyped 10,000,000 ran for minutes on a 48 kbp genome)."""
    from genomeconv.io.fasta import FastaFile

    with FastaFile(path) as fa:
        for empty in fa.empty_records:
            note(f"{path}: record {empty!r} is empty (no bases); it is left out")
        if window is None:
            return
        longest, name = max(zip(fa.lengths, fa.references), default=(0, ""))
    if window > longest:
        raise InputError(f"--window {window:,} is longer than the longest contig ({name}, "
                         f"{longest:,} bp): every window would be a whole contig; use "
                         f"--window {longest} or less", path=path)


def check_variants(path: str | Path) -> None:
    """The variant file exists and its first record parses."""
    from genomeconv.io.variants import iter_variants

    if not Path(path).is_file():
        raise InputError("variant file not found", path=path)
    list(itertools.islice(iter_variants(path), 1))


def check_device(device: str | None) -> None:
    """`--device` names a device torch knows and this machine has."""
    if device is None:
        return
    import torch

    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device!r} is not a device (cpu, cuda, cuda:0 ...)") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {device}: CUDA is not available on this machine "
                             f"(torch {torch.__version__}); use --device cpu")
        if chosen.index is not None and chosen.index >= count:
            raise InputError(f"--device {device}: this machine has {count} CUDA device(s)")
    elif chosen.type != "cpu":
        raise InputError(f"--device {device}: only cpu and cuda devices are supported")


def check_gpus(gpus_per_worker: float, num_workers: int, address: str | None) -> None:
    """`num_workers` actors of `gpus_per_worker` GPUs fit: on this machine, or on the cluster
    (`address` or RAY_ADDRESS) as Ray reports its resources. Ray would otherwise wait forever
    for GPUs that are not there."""
    if not gpus_per_worker > 0:
        return
    if not math.isfinite(gpus_per_worker):
        raise InputError(f"--gpus-per-worker must be finite (got {gpus_per_worker})")
    cluster = address or os.environ.get("RAY_ADDRESS")
    if cluster:
        from genomeconv.pipelines.runtime import connect

        try:
            have = float(connect(address).get("GPU", 0))
        except ConnectionError as exc:
            raise InputError(f"no Ray cluster at {cluster} ({exc})") from None
        where = f"the Ray cluster at {cluster}"
    else:
        import torch

        have = float(torch.cuda.device_count() if torch.cuda.is_available() else 0)
        where = "this machine"
    need = gpus_per_worker * num_workers
    if need > have:
        raise InputError(f"--gpus-per-worker {gpus_per_worker:g} x --num-workers {num_workers} "
                         f"needs {need:g} GPU(s) but {where} has {have:g}; use "
                         "--gpus-per-worker 0 (CPU) or fewer workers")


def check_out_folder(out: str | Path) -> None:
    """`out` is (or can become) a folder this process can write to."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError("--out is a file; give a folder (existing or new)", path=out)
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"--out cannot be created: {parent} is a file", path=out)
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".genomeconv-write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"--out is not writable ({exc.strerror or exc}: {parent})",
                         path=out) from None
