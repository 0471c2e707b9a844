"""The one job skeleton that embed, track and score-variants are instances of.

`run_job(job)` owns everything the jobs share, in this order: the checks that need no model
(options, inputs, devices, OUT: pipelines/preflight.py), one model load on the CPU to plan with,
the run manifest and the folder lock (pipelines/manifest.py), resume by key (the parts that count
are read, the keys they hold are left out of the plan), the pool of Ray actors (`--num-workers`
actors of `--gpus-per-worker` GPUs, the node's CPUs shared among them as torch threads, on the
cluster at `--address`; on a local Ray kept for the next run with the same model setup,
runtime.map_units), one Parquet part per work unit committed under the run's token, the
progress callbacks and the summary (`JobSummary.lines`).

A job (a `Job` subclass) supplies only what differs: how its items are planned into work units
(`prepare` plans the items and returns the manifest; `plan_units` turns the items no part holds
yet into `Unit`s), which keys the parts already hold (`completed`), what a unit computes and
writes (its `UnitActor`, with the job's schema), and its words for the summary. Workers get the
shared `WorkerSetup` (model, device, dtype, threads, OUT, the run token) and the job's own
small, picklable config.
"""

from __future__ import annotations

import functools
import json
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from genomeconv.errors import GenomeconvError
from genomeconv.pipelines import manifest, preflight, runtime

if TYPE_CHECKING:
    from genomeconv.models.base import LanguageModel
    from genomeconv.pipelines.options import JobOptions


@dataclass(frozen=True)
class Unit:
    """One work unit as planned: its id (the part's name), its items, their work (bases, or
    ALT alleles: what the progress bar counts) and how many of the job's nouns they are (items,
    positions, alleles; None: one per item)."""

    unit_id: str
    items: list[Any]
    work: int
    size: int | None = None

    @property
    def count(self) -> int:
        return len(self.items) if self.size is None else self.size


@dataclass(frozen=True)
class WorkerSetup:
    """What every actor needs, whatever its job (small and picklable)."""

    model: str | None
    model_id: str | None  # the id outputs report for a model fitted on the input (kmer:K)
    device: str | None
    dtype: str | None
    threads: int | None  # torch threads (CPU actors: the CPUs Ray gave each)
    out: str
    command: str
    keep_nonfinite: bool
    manifest_sha256: str | None
    token: manifest.RunToken | None  # None: parts are renamed into place without the lock
    weights_sha256: str | None = None  # the model's checkpoint hash, for the parts' metadata
    config_sha256: str | None = None  # the model's config hash

    def pool_key(self) -> tuple:
        """What an actor built with this setup holds whatever the run (its loaded model, torch
        threads, dtype): runs with equal keys may share actors (runtime.map_units)."""
        return (self.model, self.model_id, self.device, self.dtype, self.threads,
                self.weights_sha256, self.config_sha256)


def reset_peak_rss() -> None:
    """Restart this process's peak resident memory count (Linux's clear_refs), so that a kept
    actor reports each run's own peak; elsewhere the peak counts from the process's start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss() -> int:
    """This process's peak resident memory in bytes (since `reset_peak_rss`)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class UnitActor:
    """Base of the job actors: loads the model once, then runs whole work units (`run`).

    The actor outlives a run when runtime.map_units keeps its pool: what a run sets up (its
    WorkerSetup's output and manifest, the job's config, the inputs a subclass opens) happens in
    `open_run`, called on a run's first unit (and again in a restarted process), while
    `__init__` holds only what `WorkerSetup.pool_key` names.
    A unit row holds a unit's id, its items as JSON (`encode_item` of the job; `decode_item`
    here), its work and its count (`Unit.count`). `run_unit` writes the unit's part(s) and returns
    a tally: numbers (`model_s`, the seconds spent in the model, and any counts) are summed over
    units, dicts of numbers summed key by key, other dicts merged. One output row per unit:
    unit_id, count, work, peak_rss (the worker's peak resident bytes in this run so far), tally
    (JSON) and error (a GenomeconvError's `runtime.failure_report`, else empty).
    """

    def __init__(self, setup: WorkerSetup) -> None:
        import torch

        from genomeconv import logs
        from genomeconv.models import load

        logs.quiet_libraries()
        if setup.threads:
            torch.set_num_threads(setup.threads)
        self.model: LanguageModel = load(setup.model, device=setup.device,
                                         model_id=setup.model_id)
        self.dtype = runtime.torch_dtype(setup.dtype)
        self.run_id: str | None = None

    def open_run(self, setup: WorkerSetup, config: Any) -> None:
        """Set up a run (`setup`: equal to the constructor's in `pool_key`); subclasses open
        their inputs here."""
        self.setup, self.cfg = setup, config

    @staticmethod
    def decode_item(data: Any) -> Any:
        raise NotImplementedError

    def run_unit(self, unit_id: str, items: list[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def metadata(self, kind: str, **extra: Any) -> dict[bytes, bytes]:
        """A part's file metadata (schema.file_metadata) under this run's manifest."""
        from genomeconv.pipelines import schema

        return schema.file_metadata(self.model, self.setup.command, kind,
                                    self.setup.manifest_sha256,
                                    weights_sha256=self.setup.weights_sha256, **extra)

    def run(self, unit: dict[str, Any], run_id: str,
            run: tuple[WorkerSetup, Any]) -> dict[str, Any]:
        """Run one unit (a row of `run_units`) of the run `run_id` ((setup, config)) and return
        its output row."""
        items = [self.decode_item(d) for d in json.loads(unit["items"])]
        try:
            if run_id != self.run_id:
                reset_peak_rss()
                self.open_run(*run)
                self.run_id = run_id
            tally, error = self.run_unit(str(unit["unit_id"]), items), ""
        except GenomeconvError as exc:
            tally, error = {}, runtime.failure_report(exc)
        return {"unit_id": unit["unit_id"], "count": unit["count"], "work": unit["work"],
                "peak_rss": peak_rss(), "tally": json.dumps(tally), "error": error}


def add_tally(total: dict[str, Any], tally: dict[str, Any]) -> None:
    """Fold one unit's tally into `total` (see UnitActor)."""
    for key, value in tally.items():
        if isinstance(value, dict):
            into = total.setdefault(key, {})
            for k, v in value.items():
                into[k] = into.get(k, 0) + v if isinstance(v, (int, float)) else v
        else:
            total[key] = total.get(key, 0) + value


@dataclass
class JobSummary:
    """What a run did, in the job's words (`Job.noun`, `Job.work_unit`)."""

    kind: str
    noun: str  # what the job counts: items, positions, ALT alleles
    verb: str  # what it does to them: embedded, scored
    work_unit: str  # what the progress bar counts: bp, alleles
    items: int  # selected
    items_skipped: int  # already written by an earlier run
    items_done: int  # by this run
    work_done: int
    units: int  # run by this run
    seconds: float
    worker_peak_rss: int  # the largest peak resident memory of any worker (bytes)
    tally: dict[str, Any] = field(default_factory=dict)  # summed from the workers' tallies
    facts: dict[str, Any] = field(default_factory=dict)  # the job's own, e.g. {"context": 2051}
    notes: list[str] = field(default_factory=list)  # lines printed before the summary
    outputs: list[str] = field(default_factory=list)

    @property
    def model_seconds(self) -> float:
        """Seconds the workers spent in the model, summed over workers."""
        return float(self.tally.get("model_s", 0.0))

    def lines(self) -> list[str]:
        """The notes, the summary line and the outputs, as the command prints them."""
        rate = self.work_done / self.seconds if self.seconds else 0.0
        facts = ", ".join(f"{k} {v:,}" for k, v in self.facts.items())
        details = f" ({facts})" if facts else ""
        return [*self.notes,
                f"{self.items:,} {self.noun} ({self.items_skipped:,} already done); "
                f"{self.verb} {self.items_done:,} in {self.units} units{details}, "
                f"{self.work_done:,} {self.work_unit} in {self.seconds:.1f} s "
                f"({rate:,.0f} {self.work_unit}/s; peak worker memory "
                f"{self.worker_peak_rss / 2**30:.2f} GiB)",
                "output: " + ", ".join(self.outputs)]


class Job:
    """What one kind of job supplies to `run_job` (see the module docstring)."""

    kind: ClassVar[str]  # the manifest's kind
    actor: ClassVar[type[UnitActor]]
    noun: ClassVar[str] = "items"
    verb: ClassVar[str] = "scored"
    work_unit: ClassVar[str] = "bp"

    def __init__(self, opts: JobOptions) -> None:
        opts.check()
        self.opts = opts
        self.out = Path(opts.out).resolve()  # workers may run elsewhere: absolute paths
        self.items: list[Any] = []

    def selected(self) -> int:
        """How many of the job's nouns the run selects (done before or not)."""
        return len(self.items)

    def check_inputs(self) -> dict[str, Any]:
        """This job's inputs for preflight.check (fasta=, variants=, window=)."""
        return {}

    @functools.cached_property
    def model_spec(self) -> tuple[str | None, str | None]:
        """(the model to load, the id outputs report), resolved once (`resolve_model`)."""
        return self.resolve_model()

    def resolve_model(self) -> tuple[str | None, str | None]:
        """(the model to load, the id outputs report): --model, as an absolute path if it is
        one (workers may run in another directory)."""
        model = self.opts.model
        if model is not None and Path(model).exists():
            model = str(Path(model).resolve())
        return model, None

    def prepare(self, probe: LanguageModel) -> manifest.Manifest:
        """Plan the items (self.items) with the model loaded on the CPU; return the manifest of
        what the outputs' values depend on."""
        raise NotImplementedError

    def part_dirs(self) -> list[Path]:
        """The folders holding this kind's parts (and what --overwrite clears)."""
        raise NotImplementedError

    def completed(self, manifest_sha256: str) -> Any:
        """The keys the folder's counting parts hold (parts that do not count moved aside)."""
        raise NotImplementedError

    def plan_units(self, done: Any, workers: int) -> list[Unit]:
        """The units of the work no part holds yet, in the order they should run; `workers`:
        how many actors may share it (a small job is cut so that each gets some)."""
        raise NotImplementedError

    def encode_item(self, item: Any) -> Any:
        """An item as JSON for its unit's row (the actor's `decode_item` reverses it)."""
        return asdict(item)

    def worker_config(self) -> Any:
        """The job's own small, picklable config for its actors."""
        return None

    def finish(self, ran: bool) -> None:
        """Work after the parts, still under the lock (`ran`: this run wrote some)."""

    def outputs(self) -> list[str]:
        return [str(d) for d in self.part_dirs()]

    def facts(self, tally: dict[str, Any]) -> dict[str, Any]:
        """The job's own figures for the summary (`tally`: the workers')."""
        return {}

    def notes(self, tally: dict[str, Any]) -> list[str]:
        """Lines printed before the summary line."""
        return []


Progress = Callable[[int, int], None]


def run_job(job: Job, *, on_plan: Progress | None = None,
            on_unit: Progress | None = None) -> JobSummary:
    """Run `job` (see the module docstring). `on_plan(work to do, units)` is called once the
    work is planned, `on_unit(count, work)` after each unit."""
    from genomeconv.models import load

    t0 = time.perf_counter()
    opts = job.opts
    preflight.check(opts.out, **job.check_inputs(), device=opts.device,
                    gpus_per_worker=opts.gpus, num_workers=opts.num_workers,
                    address=opts.address)
    model, model_id = job.model_spec
    probe = load(model, device="cpu", model_id=model_id)  # a bad --model fails before Ray
    run_manifest = job.prepare(probe)
    del probe  # the workers load their own copies
    with manifest.open_run(job.out, run_manifest, part_dirs=job.part_dirs(),
                           command=opts.command, overwrite=opts.overwrite) as run:
        units = job.plan_units(job.completed(run_manifest.sha256), opts.num_workers)
        if on_plan is not None:
            on_plan(sum(u.work for u in units), len(units))
        setup = WorkerSetup(model, model_id, opts.worker_device, opts.dtype, None, str(job.out),
                            opts.command, opts.keep_nonfinite, run_manifest.sha256, run.token,
                            run_manifest.settings.get("model_weights_sha256"),
                            run_manifest.settings.get("model_config_sha256"))
        done = run_units(job, units, setup, on_unit)
        job.finish(bool(units))
    selected = job.selected()
    return JobSummary(job.kind, job.noun, job.verb, job.work_unit, selected,
                      selected - sum(u.count for u in units), done["count"], done["work"],
                      len(units), time.perf_counter() - t0, done["peak_rss"], done["tally"],
                      job.facts(done["tally"]), job.notes(done["tally"]), job.outputs())


def run_units(job: Job, units: Sequence[Unit], setup: WorkerSetup,
              on_unit: Progress | None) -> dict[str, Any]:
    """Run the units on the job's actor pool; the totals of their output rows."""
    done: dict[str, Any] = {"count": 0, "work": 0, "peak_rss": 0, "tally": {}}
    if not units:
        return done
    opts = job.opts
    gpus = opts.gpus
    workers, cpus = runtime.actor_shape(opts.address, opts.num_workers, len(units), gpus)
    if workers < min(opts.num_workers, len(units)):
        manifest.note(f"--num-workers {opts.num_workers}: running {workers}, one per CPU of "
                      "the cluster")
    setup = replace(setup, threads=None if gpus else cpus)
    rows = [{"unit_id": u.unit_id, "work": u.work, "count": u.count,
             "items": json.dumps([job.encode_item(i) for i in u.items])} for u in units]
    for row in runtime.map_units(rows, job.actor, setup, (setup, job.worker_config()),
                                 workers=workers, cpus=cpus, gpus=gpus):
        done["count"] += int(row["count"])
        done["work"] += int(row["work"])
        done["peak_rss"] = max(done["peak_rss"], int(row["peak_rss"]))
        add_tally(done["tally"], json.loads(row["tally"]))
        if on_unit is not None:
            on_unit(int(row["count"]), int(row["work"]))
    return done
