"""Every command-line option that more than one command takes, declared once with its help text,
and the way a command turns its options into the pipeline's one options object.

Options are `Annotated` types named for what they hold; a command lists the ones it takes in its
signature (under the field names of its options class in pipelines/options.py) and calls
`build(OptionsClass, locals())`. `build` applies the hidden spellings of earlier versions
(`OLD_SPELLINGS`: each prints a one-line note of the new name), splits comma-separated lists and
leaves out options not given, so the options class's defaults hold.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from genomeconv.errors import InputError

T = TypeVar("T")

# --- the run group: every job -----------------------------------------------------------------
Out = Annotated[Path, typer.Option("--out", help="Output folder (rerun the same command to "
                                   "resume).")]
Model = Annotated[Optional[str], typer.Option(
    "--model", help="Checkpoint folder or hub id (default: the bundled model), or kmer:K: an "
    "order-K Markov model fitted on the reference (both strands).")]
Device = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:0 ... "
                                               "(default: cpu; cuda with --gpus-per-worker).")]
Dtype = Annotated[Optional[str], typer.Option("--dtype", help="Compute dtype: float32, bfloat16 "
                                              "or float16 (default: float32).")]
NumWorkers = Annotated[int, typer.Option("--num-workers", help="Ray workers (model actors, or "
                                         "training processes with --address).")]
Address = Annotated[Optional[str], typer.Option("--address", help="Ray cluster address "
                                                "(default: RAY_ADDRESS, else a private local "
                                                "Ray on 127.0.0.1).")]
# --- the job group: embed, track, score-variants ---------------------------------------------
GpusPerWorker = Annotated[float, typer.Option("--gpus-per-worker", help="GPUs per actor (> 0 "
                                              "places actors on GPUs; a cuda --device: 1).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Remove OUT's earlier outputs and "
                                         "start afresh (a rerun with other settings is "
                                         "refused).")]
KeepNonfinite = Annotated[bool, typer.Option("--keep-nonfinite", help="Write NaN/inf values "
                                             "(rows marked nonfinite) instead of stopping.")]
UnitBp = Annotated[Optional[int], typer.Option("--unit-bp", help="Bases of model input per work "
                                               "unit and Parquet part (default: sized by the "
                                               "model).")]
ChunkSize = Annotated[Optional[int], typer.Option("--chunk-size", help="Positions per chunk in "
                                                  "the bounded-memory path.")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Sequences per model "
                                                  "call (default: ~131k tokens' worth).")]
Strands = Annotated[str, typer.Option("--strands", help="both, fwd or rev: the strands scored "
                                      "(both: forward, reverse and their mean).")]
# --- the selection group ----------------------------------------------------------------------
Regions = Annotated[Optional[list[str]], typer.Option(
    "--region", help="Region, samtools style (chr1:1,000-2,000; 1-based, closed); repeatable.")]
Genes = Annotated[Optional[str], typer.Option(
    "--genes", help="Only these genes: comma-separated gene names or ids (gene_id, locus_tag, "
    "protein_id), from --gtf or a GenBank/EMBL/GFF3 reference.")]
Gtf = Annotated[Optional[Path], typer.Option("--gtf", help="GTF/GFF3 annotation: its genes "
                                             "(whole span; minus strand reverse-complemented).")]
Bed = Annotated[Optional[Path], typer.Option("--bed", help="BED intervals (0-based, strand "
                                             "column honoured).")]
Features = Annotated[Optional[str], typer.Option(
    "--features", help="Each feature of these types (comma-separated, e.g. gene,CDS) of a "
    "GenBank/EMBL/GFF3 reference or of --gtf.")]
# --- hidden states: embed, finetune -----------------------------------------------------------
Layer = Annotated[Optional[str], typer.Option(
    "--layer", help="Hidden states of this layer of the model (a module name as in its "
    "checkpoints, e.g. backbone.layers.0; default: the final norm); an unknown name lists the "
    "valid ones.")]
# --- references ---------------------------------------------------------------------------------
Fasta = Annotated[Optional[Path], typer.Option(
    "--fasta", help="Reference: FASTA (plain, gzip or bgzip), GenBank/EMBL (plain or gzip) or "
    "GFF3 with ##FASTA.")]
Reference = Annotated[Optional[Path], typer.Argument(
    metavar="[FASTA]", show_default=False, help="The reference, as --fasta.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output file.")]

# --- spellings of earlier versions: hidden, each prints a one-line note ------------------------
OldGene = Annotated[Optional[str], typer.Option("--gene", hidden=True)]
OldNoRc = Annotated[bool, typer.Option("--no-rc", hidden=True)]
OldUnitSize = Annotated[Optional[int], typer.Option("--unit-size", hidden=True)]
OldStrand = Annotated[Optional[str], typer.Option("--strand", hidden=True)]
OldBaseModel = Annotated[Optional[str], typer.Option("--base-model", hidden=True)]
OldForce = Annotated[bool, typer.Option("--force", hidden=True)]
# parameter -> (old spelling, the field it sets, its new spelling, value conversion)
OLD_SPELLINGS: dict[str, tuple[str, str, str, Callable[[Any], Any]]] = {
    "old_gene": ("--gene", "genes", "--genes", lambda v: v),
    "old_no_rc": ("--no-rc", "strands", "--strands fwd", lambda v: "fwd"),
    "old_unit_size": ("--unit-size", "unit_alleles", "--unit-bp (bases: an ALT allele costs 2 x "
                      "window per strand)", lambda v: v),
    "old_strand": ("--strand", "strands", "--strands", lambda v: v),
    "old_base_model": ("--base-model", "model", "--model", lambda v: v),
    "old_force": ("--force", "max_hours", "--max-hours 0", lambda v: 0.0),
}
LISTS = ("genes", "features", "val_records", "val_chroms")  # comma-separated on the command line


def new_spellings(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with each old spelling given replaced by its field (and a note)."""
    from genomeconv.pipelines.manifest import note

    values = dict(values)
    for param, (old, name, new, convert) in OLD_SPELLINGS.items():
        value = values.pop(param, None)
        if value in (None, False):
            continue
        note(f"{old} is now {new}")
        values[name] = convert(value)
    return values


def split(text: str | None) -> tuple[str, ...] | None:
    """A comma-separated option as a tuple (None when not given)."""
    return None if text is None else tuple(x.strip() for x in text.split(",") if x.strip())


def build(cls: type[T], values: dict[str, Any], **fixed: Any) -> T:
    """The options object of `cls` from a command's parameters (`locals()`): old spellings
    applied, lists split, options not given (None) left to the class's defaults."""
    values = new_spellings(values)
    for name in LISTS:
        if isinstance(values.get(name), str):
            values[name] = split(values[name])
    if values.get("regions") is not None:
        values["regions"] = tuple(values["regions"])
    names = {f.name for f in fields(cls)}
    given = {k: v for k, v in values.items() if k in names and v is not None}
    if "command" in names:
        given["command"] = command_line()
    return cls(**{**given, **fixed})


def reference(positional: Path | None, fasta: Path | None, what: str = "FASTA") -> Path:
    """The reference given either way: as the positional argument or as --fasta."""
    if positional is not None and fasta is not None and positional != fasta:
        raise InputError(f"give the reference once: as {what} or as --fasta (got {positional} "
                         f"and {fasta})")
    found = positional or fasta
    if found is None:
        raise InputError(f"give the reference as {what} or --fasta")
    return found


def command_line() -> str:
    """The command as typed, recorded in every output file's metadata."""
    return " ".join(["genomeconv", *sys.argv[1:]])


def warn_emulated_dtype(dtype: str | None, device: str | None, address: str | None) -> None:
    """Warn on stderr when a local job's --dtype would run emulated on this CPU (see
    runtime.emulated_dtype_warning; a cluster's workers may have other CPUs: no warning)."""
    from genomeconv.pipelines.runtime import emulated_dtype_warning

    message = emulated_dtype_warning(dtype, device)
    if message and address is None and not os.environ.get("RAY_ADDRESS"):
        typer.secho(f"warning: {message}", err=True, fg="yellow")


def run_job(run: Callable[..., Any], opts: Any, label: str, unit: str) -> Any:
    """Run a job pipeline (`run(opts, on_plan=, on_unit=)`) under a progress bar in `unit`s,
    then print its summary lines."""
    from genomeconv.commands.progress import work_progress

    warn_emulated_dtype(opts.dtype, opts.worker_device, opts.address)
    with work_progress(label, unit) as (on_plan, on_unit):
        summary = run(opts, on_plan=on_plan, on_unit=on_unit)
    for line in summary.lines():
        typer.echo(line)
    return summary
