"""The Ray connection, shared by every job: local by default, an existing cluster on request.

`connect()` is the only place genomeconv calls `ray.init`. Without an address (and without
RAY_ADDRESS) it starts a private local instance bound to 127.0.0.1; with one, it joins that cluster.
It also keeps the part bookkeeping every job shares: deterministic work units, atomic part files
committed under the folder's run token (pipelines/manifest.py decides which keys are done), and
the way a worker's GenomeconvError reaches the driver as one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genomeconv.errors import GenomeconvError, InputError, writing

if TYPE_CHECKING:
    import pyarrow as pa

    from genomeconv.pipelines.manifest import RunToken

DEFAULT_HOST = "127.0.0.1"
PROBE_TIMEOUT_S = 5.0  # a cluster's head answers a TCP connection in well under a second
DEFAULT_PORTS = {"": 6379, "ray://": 10001}  # Ray's GCS port; its client server's


def check_address(address: str | None) -> None:
    """InputError naming the address unless something accepts a TCP connection at `address`
    (else RAY_ADDRESS) within PROBE_TIMEOUT_S: ray.init waits for minutes on an address where
    nothing answers (300 s and more for 127.0.0.1:1), printing only Ray's own warnings.
    "auto" and "local" are left to Ray, which resolves them at once."""
    given = address or os.environ.get("RAY_ADDRESS") or None
    if given is None or given in ("auto", "local"):
        return
    where = f"--address {given}" if address else f"RAY_ADDRESS={given}"
    host, port = _host_port(given)
    if port is None:
        raise InputError(f"{where}: expected HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        why = exc.strerror or f"no answer within {PROBE_TIMEOUT_S:g} s"
        raise InputError(f"no Ray cluster answers at {where} ({why}); start one there (ray "
                         "start --head) or leave the address out for a local instance") from None


def _host_port(address: str) -> tuple[str, int | None]:
    """(host, port) of "[ray://]HOST[:PORT]" (an IPv6 host in brackets), the port Ray's default
    when left out; port None when it is not a port number."""
    scheme = "ray://" if address.startswith("ray://") else ""
    rest = address.removeprefix(scheme)
    host, _, port = rest.rpartition(":")
    if not host or port.endswith("]"):  # no port: "head", "[::1]"
        host, port = rest, str(DEFAULT_PORTS[scheme])
    ok = port.isdigit() and 0 < int(port) < 65536
    return host.strip("[]"), int(port) if ok else None


def connect(address: str | None = None, *, num_cpus: int | None = None,
            temp_dir: str | None = None) -> dict[str, Any]:
    """Connect to Ray (idempotent) and return the cluster's resources.

    address: a cluster address ("auto", "HOST:PORT"); None uses RAY_ADDRESS if set, else starts a
    local instance whose servers listen on 127.0.0.1 only. An address is probed first
    (`check_address`). The local instance's workers inherit this process's environment (its
    GENOMECONV_VERBOSE and Ray log level, see genomeconv.logs): no runtime_env, whose workers Ray
    starts afresh for each actor instead of handing over the ones it started with the instance
    (~1 s an actor, measured here).
    """
    import logging

    import ray

    from genomeconv import logs
    from genomeconv.errors import verbose

    if not ray.is_initialized():
        check_address(address)
        logs.quiet_libraries()  # after importing ray, which sets its own levels
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False,
                                  "logging_level": logging.INFO if verbose() else logging.ERROR}
        if address is None:
            kwargs.update(num_cpus=num_cpus, include_dashboard=False,
                          dashboard_host=DEFAULT_HOST, _node_ip_address=DEFAULT_HOST)
            if temp_dir:
                kwargs["_temp_dir"] = temp_dir
        else:
            kwargs["address"] = address
        with logs.ray_start_output():
            ray.init(**kwargs)
        _session["local"] = ray.get_runtime_context().get_job_id() if address is None else None
        logs.quiet_libraries()
    return ray.cluster_resources()


# Per connection: "local", the Ray job id of the local instance `connect` started (None on a
# cluster); "kept", the actor pool `map_units` keeps there ({key: actors}, at most one).
_session: dict[str, Any] = {"local": None, "kept": {}}


def actor_shape(address: str | None, num_workers: int, units: int,
                gpus: float) -> tuple[int, int]:
    """(workers, CPUs per worker) for a pool of model actors over `units` work units: no more
    workers than units, nor CPU workers than the cluster's CPUs (more would wait for CPUs for
    ever: Ray holds an actor's CPUs while it lives), and on CPU the cluster's CPUs shared among
    them (at most one node's worth each), which each actor then uses as its torch threads."""
    import ray

    resources = connect(address)
    cpus = int(resources.get("CPU", 1))
    workers = max(1, min(num_workers, units, num_workers if gpus else cpus))
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
    return workers, max(1, min(cpus // workers, int(node_cpus)))


# Units queued on each actor beyond the one it runs, so that it never waits for the driver.
QUEUED_PER_ACTOR = 1


def map_units(rows: list[dict[str, Any]], actor: type, setup: Any, run: Any, *, workers: int,
              cpus: int, gpus: float) -> Iterator[dict[str, Any]]:
    """Run `actor` (a `job.UnitActor` class, built with `setup`) over the work-unit rows, one
    row per call with the run's `run` arguments, on a pool of `workers` Ray actors; yield each
    unit's output row as it finishes, raising the error a worker reported (`failure_report`) in
    the driver.

    Plain Ray actors rather than a Ray Data actor pool: Ray Data cost every run ~1.5 CPU-s of
    imports in each worker and ~5 CPU-s of helper actors per job, seconds a small job felt. A
    worker process that dies is restarted and its units run again (max_restarts,
    max_task_retries, as Ray Data did). On the local instance `connect` started, CPU actors
    reserve no Ray CPUs (the node is this process's; their threads share its CPUs) and a pool
    whose run succeeded is kept, so that the next run in this process with the same actor class,
    `setup` (its `pool_key()`: the model, device, dtype, threads) and shape skips starting
    workers and loading the model (~2.5 s a run with the bundled model here, a minute and more
    with a large checkpoint); another pool, `release_workers`, or Ray's shutdown ends it. Any
    other pool, and one whose run failed or was interrupted, is killed when the run ends.
    """
    import ray

    job_id = ray.get_runtime_context().get_job_id()
    keep = _session["local"] == job_id and not gpus
    key = (actor.__module__, actor.__qualname__, setup.pool_key(), workers, cpus, job_id)
    pool = _session["kept"].pop(key, None)
    release_workers()
    if pool is None:
        remote = ray.remote(actor).options(num_cpus=0 if gpus or keep else cpus, num_gpus=gpus,
                                           max_restarts=-1, max_task_retries=-1)
        pool = [remote.remote(setup) for _ in range(workers)]
    run_id, run_ref = uuid.uuid4().hex, ray.put(run)
    todo = rows[::-1]  # pop() hands them out in order
    running: dict[Any, Any] = {}

    def give(worker: Any) -> None:
        if todo:
            running[worker.run.remote(todo.pop(), run_id, run_ref)] = worker

    done = False
    try:
        for _ in range(1 + QUEUED_PER_ACTOR):
            for worker in pool:
                give(worker)
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            give(running.pop(ref))
            row = ray.get(ref)
            raise_failure(row["error"])
            yield row
        done = True
    finally:
        if done and keep:
            _session["kept"][key] = pool
        else:
            for worker in pool:
                ray.kill(worker)


def release_workers() -> None:
    """Kill the actor pool `map_units` kept, if any (its processes and their models' memory)."""
    import ray

    kept, _session["kept"] = _session["kept"], {}
    for key, pool in kept.items():
        if ray.is_initialized() and key[-1] == ray.get_runtime_context().get_job_id():
            for worker in pool:
                ray.kill(worker)


def torch_dtype(name: str | None) -> Any:
    """The torch dtype for a job's --dtype option (None: the model's own).

    Weights stay float32; LayerNorms and residuals run in float32 (genomeconv.models.inference).
    """
    if name is None:
        return None
    from genomeconv.pipelines.options import DTYPES, choice

    choice("--dtype", name, DTYPES)
    import torch

    return getattr(torch, name)


def device_type(device: str | None) -> str:
    """"cuda" or "cpu" for a job's --device (None: cpu); results differ between them in the last
    bits, so run manifests record it."""
    return "cuda" if str(device or "cpu").startswith("cuda") else "cpu"


CPUINFO = Path("/proc/cpuinfo")
NATIVE_FLAGS = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}


def native_half(name: str) -> bool | None:
    """Whether this machine's CPU computes the half type `name` natively (NATIVE_FLAGS in
    /proc/cpuinfo); None where that cannot be read (not Linux)."""
    if not CPUINFO.exists():
        return None
    return bool(set(CPUINFO.read_text().split()) & set(NATIVE_FLAGS[name]))


def emulated_dtype_warning(name: str | None, device: str | None) -> str | None:
    """A warning when a local job's --dtype `name` would run emulated on this CPU, else None
    (float32, a CUDA device, native support, or an unknown CPU)."""
    if name not in NATIVE_FLAGS or (device or "cpu").startswith("cuda") or native_half(name) in (
            True, None):
        return None
    return (f"--dtype {name} is emulated on this CPU (no {' or '.join(NATIVE_FLAGS[name])}): "
            "it runs slower than float32, not faster (bfloat16 measured 14x slower on an "
            "AVX2-only CPU, benchmarks/bench_model.py); use float32 here")


def describe_environment() -> dict[str, str]:
    """Versions, devices and Ray status, for `genomeconv info` and benchmark records."""
    import genomeconv

    info: dict[str, str] = {
        "genomeconv": genomeconv.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": str(os.cpu_count()),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["devices"] = "cpu, " + ", ".join(f"cuda:{i} {n}" for i, n in enumerate(names))
        else:
            info["devices"] = "cpu"
    except ImportError:
        info["torch"] = "not installed"
    for name in ("ray", "pysam", "pyarrow", "duckdb", "deepspeed"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except Exception as exc:  # deepspeed may fail to import without its accelerator settings
            info[name] = f"unavailable ({type(exc).__name__})"
    try:
        import ray

        if ray.is_initialized():
            info["ray status"] = f"connected: {ray.cluster_resources()}"
        elif os.environ.get("RAY_ADDRESS"):
            info["ray status"] = f"not connected (RAY_ADDRESS={os.environ['RAY_ADDRESS']})"
        else:
            info["ray status"] = "not connected (jobs start a local instance on 127.0.0.1)"
    except ImportError:
        pass
    return info


# --- resume bookkeeping ----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkUnit:
    """A batch of items written together as one Parquet part; its id is stable across reruns."""

    unit_id: str
    item_ids: tuple[str, ...]


UNIT_WORK = 1 << 30  # bases x d_model x layers per work unit (8 Mbp for the bundled d64 x 2)
UNIT_MAX_ITEMS = 65_536  # items per work unit: bounds a unit's rows held in a worker


def unit_bases(work_per_base: int) -> int:
    """Bases per work unit for a model of this work per base (UNIT_WORK / work_per_base; see
    LanguageModel.work_per_base, d_model x n_layer for HyenaDNA).

    Sized by work so that per-unit costs (a Ray task, a Parquet part and its metadata) vanish
    beside the model's time, while a killed run loses about a minute of a 2-core CPU's work
    (bundled model: 8 Mbp per unit) and a bigger model gets proportionally fewer bases; a cheap
    model is capped at UNIT_MAX_ITEMS items per unit instead.
    """
    return max(1, UNIT_WORK // max(1, work_per_base))


def per_worker(unit_size: int, total: int, workers: int) -> int:
    """`unit_size`, lowered where needed so that `total` (bases, alleles) makes at least
    `workers` units: a small job still keeps every worker busy."""
    return max(1, min(unit_size, -(-total // max(1, workers))))


def plan_units(item_ids: Sequence[str], unit_size: int, *, costs: Sequence[int] | None = None,
               unit_cost: int | None = None) -> list[WorkUnit]:
    """Group items into units of at most `unit_size` items, deterministically.

    With `costs` (one per item, e.g. bases) and `unit_cost`, units are also sized by work: an item
    costing `unit_cost` or more is a unit of its own, and the others are cut into
    ceil(total / unit_cost) units of about equal cost (more when `unit_size` requires), so a
    job's unit count grows with its work, not with its item count.
    Items are sorted by id so that the same inputs always give the same units; a unit's id
    hashes its item ids, so two units (of any runs) share a part name only when they hold the
    same items. Callers pass only the items not done yet: completion is per item, not per unit.
    """
    # Callers pass checked sizes (preflight refuses non-positive options) and unique ids.
    assert unit_size >= 1, f"unit_size must be >= 1, got {unit_size}"
    assert (costs is None) == (unit_cost is None) and (unit_cost is None or unit_cost >= 1), \
        "costs and a unit_cost >= 1 go together"
    cost = dict(zip(item_ids, costs if costs is not None else [0] * len(item_ids)))
    ordered = sorted(cost)
    assert len(ordered) == len(item_ids), \
        "item ids must be unique; duplicates would be written twice"
    groups: list[list[str]] = []
    if unit_cost is not None:
        groups = [[i] for i in ordered if cost[i] >= unit_cost]
        ordered = [i for i in ordered if cost[i] < unit_cost]
    total = sum(cost[i] for i in ordered)
    n = max(-(-total // unit_cost) if unit_cost else 0, -(-len(ordered) // unit_size))
    if n:
        short: list[list[str]] = [[]]
        placed = 0  # cost of the items already placed
        for i in ordered:
            # a new unit when this one is full, or when the item lies mostly past its share
            # (placed + cost / 2 > total k / n, in integers): at most n units by cost
            if short[-1] and (len(short[-1]) >= unit_size
                              or n * (2 * placed + cost[i]) > 2 * total * len(short)):
                short.append([])
            short[-1].append(i)
            placed += cost[i]
        groups += short
    units = []
    for k, chunk in enumerate(groups):
        digest = hashlib.sha256("\n".join(chunk).encode()).hexdigest()[:16]
        units.append(WorkUnit(f"{k:06d}-{digest}", tuple(chunk)))
    return units


class PartWriter:
    """Streams one unit's rows into `part-<unit_id>.parquet` atomically, in bounded row groups.

    Rows go to a `.tmp-*` file that `commit` renames into place (through `token`, which refuses
    once another run holds the folder); a run killed before that leaves only the temporary file,
    which is never read and is removed by the next run. A part is either absent or complete.
    """

    def __init__(self, out_dir: str | Path, unit_id: str, schema: "pa.Schema",
                 metadata: dict[bytes, bytes], token: "RunToken | None" = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = Path(out_dir)
        self.final = out / f"part-{unit_id}.parquet"
        self.tmp = out / f".tmp-{unit_id}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.schema = schema.with_metadata({**(schema.metadata or {}), **metadata})
        self.token = token
        # Dictionary pages only for text (names, bases, statuses): on float columns they made
        # parts slower to write and larger ("dictionary_pages", benchmarks/results/).
        text = [f.name for f in schema if pa.types.is_string(f.type)]
        with writing(self.final):  # a full disk: one line naming the part (errors.writing)
            out.mkdir(parents=True, exist_ok=True)
            self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self.tmp, self.schema,
                                                                     use_dictionary=text)

    def write(self, table: "pa.Table") -> None:
        """Append rows (one or more row groups of at most 65,536 rows)."""
        assert self._writer is not None, "write after commit/discard"
        with writing(self.final):
            self._writer.write_table(table.replace_schema_metadata(self.schema.metadata),
                                     row_group_size=65536)

    def commit(self) -> Path:
        """Close the file and move it into place."""
        assert self._writer is not None, "commit twice"
        with writing(self.final):
            self._writer.close()
        self._writer = None
        if self.token is None:
            os.replace(self.tmp, self.final)
        else:
            self.token.commit(self.tmp, self.final)
        return self.final

    def discard(self) -> None:
        """Remove the temporary file of a failed unit (no-op after commit), also when closing
        it fails too (a full disk): only whole parts are ever left."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except OSError:
                pass  # the file is removed next, whatever its writer could not flush
            self.tmp.unlink(missing_ok=True)


def write_part(table: "pa.Table", out_dir: str | Path, unit_id: str,
               metadata: dict[bytes, bytes], token: "RunToken | None" = None) -> Path:
    """Write one unit's rows atomically as `part-<unit_id>.parquet` (see PartWriter)."""
    writer = PartWriter(out_dir, unit_id, table.schema, metadata, token)
    try:
        writer.write(table)
        return writer.commit()
    finally:
        writer.discard()


def failure_report(exc: GenomeconvError) -> str:
    """How a worker hands a GenomeconvError (a broken model, a bad input) to its driver: as text
    in its output row, because Ray's wrappers of a raised exception lose its type and message."""
    return json.dumps({"input_error": isinstance(exc, InputError), "message": str(exc)})


def raise_failure(report: str | None) -> None:
    """Raise the error a worker reported with `failure_report` (nothing when `report` is empty),
    so that it reads as one line, as it would without Ray."""
    if report:
        failure = json.loads(report)
        raise (InputError if failure["input_error"] else GenomeconvError)(failure["message"])
