"""`genomeconv embed`: pooled (and optionally per-base) embeddings of regions, genes, BED
intervals, whole records or reads, on Ray, written as keyed, resumable Parquet parts.

The driver plans work items that carry coordinates only (never sequences), groups them into
deterministic work units sized by work (`plan_units`: about `default_unit_bp` bases and at most
runtime.UNIT_MAX_ITEMS items each, an item that long alone), skips units already written, and
streams the rest, as columns, through a Ray Data actor pool. Each `EmbedActor` opens the FASTA
or read file and loads the model once; per unit it fetches every item's bases in file order,
reverse-complements minus-strand items, runs them sorted by length in right-padded batches
through the model's bounded-memory path (`inference.hidden_states`), pools each item over its
own positions only (so its embedding does not depend on its batch), and writes the unit's
part(s) column-wise: OUT/per_base/ first, then OUT/embeddings/, so a unit whose embeddings part
exists is complete. Many small items thus cost one Ray task and one Parquet part per few Mbp,
not per item.

Per-base rows: `position` is 0-based on the reference (a minus-strand item's first base is its
highest position); for reads it is the offset in the read as sequenced.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from genomeconv.io.regions import Interval, format_region, parse_region
from genomeconv.pipelines import runtime, schema

FORWARD_TOKENS = 1 << 17  # right-padded tokens per model call when batching short items
PER_BASE_ROWS = 65_536  # rows per per-base row group (bounds the writer's buffer)
PER_BASE_PART_BYTES = 1 << 29  # per-base embedding bytes per unit (caps the unit's bases)
POOLINGS = ("mean", "max", "last")
PER_BASE_DTYPES = ("float32", "float16")
EMBEDDINGS_DIR, PER_BASE_DIR = "embeddings", "per_base"


@dataclass(frozen=True)
class Item:
    """One thing to embed, by coordinates: a FASTA interval or a read (offset/flag locate it)."""

    item_id: str
    seq_name: str
    chrom: str | None
    start: int
    end: int
    strand: str
    length: int
    gene_id: str | None = None
    gene_name: str | None = None
    read_name: str | None = None
    read_flag: int | None = None
    read_offset: int | None = None


def item_id(source: str | Path, *parts: object) -> str:
    """Stable id: hash of the input's file name and the item's coordinates, strand and name."""
    key = "\t".join([Path(source).name, *("" if p is None else str(p) for p in parts)])
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def is_read_file(path: str | Path) -> bool:
    """True for BAM/uBAM (BGZF holding 'BAM\\1') and CRAM inputs, from the content."""
    import gzip

    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"CRAM":
        return True
    if head[:2] != b"\x1f\x8b":
        return False
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read(4) == b"BAM\x01"
    except OSError:
        return False


# --- planning (driver side) ---------------------------------------------------------------


def _interval_item(source: str, iv: Interval, seq_name: str, gene_id: str | None = None,
                   gene_name: str | None = None) -> Item:
    return Item(item_id(source, iv.chrom, iv.start, iv.end, iv.strand, gene_id or iv.name),
                seq_name, iv.chrom, iv.start, iv.end, iv.strand, iv.end - iv.start,
                gene_id=gene_id, gene_name=gene_name)


def plan_fasta_items(fasta_path: str | Path, *, regions: Sequence[str] = (),
                     gtf: str | Path | None = None, genes: Sequence[str] | None = None,
                     bed: str | Path | None = None) -> list[Item]:
    """Items on a FASTA: the regions, the (selected) GTF/GFF3 genes and the BED intervals
    asked for, or every record when none is given. Contig names are resolved against the FASTA
    (chr1 <-> 1); unknown contigs and genes raise errors naming them."""
    from genomeconv.io.annotations import read_bed, read_genes, select_genes
    from genomeconv.io.fasta import FastaFile

    src = str(fasta_path)
    items: list[Item] = []
    with FastaFile(src) as fa:
        def clip(iv: Interval) -> Interval:
            chrom = fa.resolve(iv.chrom)
            size = fa.length(chrom)
            end = size if iv.end is None else iv.end
            if iv.start >= size or end > size:
                raise ValueError(f"{format_region(iv)} runs past the end of {chrom} "
                                 f"(length {size}) in {src}")
            return Interval(chrom, iv.start, end, iv.strand, iv.name)

        for text in regions:
            iv = clip(parse_region(text))
            items.append(_interval_item(src, iv, text))
        if gtf is not None:
            found = read_genes(gtf)
            if genes:
                found = select_genes(found, genes, source=str(gtf))
            for g in found:
                iv = clip(g.interval)
                items.append(_interval_item(src, iv, g.gene_name or g.gene_id, g.gene_id,
                                            g.gene_name))
        if bed is not None:
            for iv in read_bed(bed):
                iv = clip(iv)
                items.append(_interval_item(src, iv, iv.name or format_region(iv)))
        if not (regions or gtf or bed):
            for name, size in zip(fa.references, fa.lengths):
                items.append(_interval_item(src, Interval(name, 0, size), name))
    return _unique(items)


def plan_read_items(reads_path: str | Path, *, regions: Sequence[str] = (), min_mapq: int = 0,
                    min_length: int = 0, reference: str | Path | None = None) -> list[Item]:
    """One item per selected read (primary alignments, MAPQ/length filters, optional regions)."""
    from genomeconv.io.reads import scan_reads

    items = []
    for region in regions or [None]:
        for r in scan_reads(reads_path, region=region, min_mapq=min_mapq, min_length=min_length,
                            reference=reference):
            items.append(Item(
                item_id(reads_path, r.chrom, r.start, r.end, r.strand, r.name, r.flag, r.offset),
                r.name, r.chrom, r.start, r.end, r.strand, r.length, read_name=r.name,
                read_flag=r.flag, read_offset=r.offset))
    return _unique(items)


def _unique(items: list[Item]) -> list[Item]:
    """Drop repeats of the same item (e.g. a region given twice), keeping the first."""
    seen: dict[str, Item] = {}
    for it in items:
        seen.setdefault(it.item_id, it)
    return list(seen.values())


def default_unit_bp(model: Any, items: Sequence[Item], workers: int = 1, per_base: bool = False,
                    per_base_dtype: str = "float32") -> int:
    """Bases per work unit: `runtime.unit_bases` of the model; with per-base output also at most
    PER_BASE_PART_BYTES of per-base embeddings, so a per-base part stays a manageable file; and
    at most the items' bases over `workers`, so that no worker of a small job stays idle."""
    import numpy as np

    bp = runtime.unit_bases(model.d_model, model.config.n_layer)
    if per_base:
        bp = min(bp, PER_BASE_PART_BYTES // (model.d_model * np.dtype(per_base_dtype).itemsize))
    return runtime.per_worker(bp, sum(it.length for it in items), workers)


def plan_units(items: Sequence[Item], unit_bp: int) -> list[runtime.WorkUnit]:
    """Work units of about `unit_bp` bases and at most runtime.UNIT_MAX_ITEMS items each; an item
    of `unit_bp` bases or more is a unit of its own."""
    return runtime.plan_units([it.item_id for it in items], runtime.UNIT_MAX_ITEMS,
                              costs=[it.length for it in items], unit_cost=unit_bp)


# --- the worker ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerConfig:
    """Everything an EmbedActor needs (small and picklable)."""

    model: str | None
    fasta: str | None
    reads: str | None
    out: str
    pooling: str = "mean"
    per_base: bool = False
    per_base_dtype: str = "float32"
    batch_size: int = 16
    chunk_size: int | None = None
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    command: str = "genomeconv embed"


class EmbedActor:
    """Ray Data actor: opens the inputs and loads the model once, then embeds whole units."""

    def __init__(self, config: WorkerConfig) -> None:
        import torch

        from genomeconv.models import load

        if config.threads:
            torch.set_num_threads(config.threads)
        self.cfg = config
        self.model = load(config.model, device=config.device)
        self.dtype = runtime.compute_dtype(config.dtype)
        if config.reads:
            from genomeconv.io.reads import ReadFile

            self.source = ReadFile(config.reads, reference=config.fasta)
        else:
            from genomeconv.io.fasta import FastaFile

            self.source = FastaFile(config.fasta)
        self.meta = schema.file_metadata(self.model, config.command, "embeddings")
        self.meta_pb = schema.file_metadata(self.model, config.command, "per_base")

    def __call__(self, batch: Any) -> dict[str, list]:
        """Embed every unit in the batch (a pyarrow table: unit_id and one list column per Item
        field); one summary row per unit: unit_id, items, bp, model_s (seconds in the model)
        and peak_rss (this worker's peak resident bytes so far)."""
        import resource

        out: dict[str, list] = {"unit_id": [], "items": [], "bp": [], "model_s": [],
                                "peak_rss": []}
        for unit in batch.to_pylist():
            items = [Item(*row) for row in zip(*(unit[f] for f in ITEM_FIELDS))]
            out["model_s"].append(self.run_unit(unit["unit_id"], items))
            out["unit_id"].append(unit["unit_id"])
            out["items"].append(len(items))
            out["bp"].append(sum(it.length for it in items))
            out["peak_rss"].append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return out

    def sequence(self, item: Item) -> str:
        """A FASTA item's bases in its own orientation (minus strand: reverse complement)."""
        from genomeconv.io.regions import reverse_complement

        seq = self.source.fetch(item.chrom, item.start, item.end)
        return reverse_complement(seq) if item.strand == "-" else seq

    def sequences(self, items: Sequence[Item]) -> list[str]:
        """Every item's bases (as `sequence`), in the order of `items`, fetched in file order:
        a BGZF block is then inflated once, not once per item (50x faster for short items)."""
        from genomeconv.io.reads import ReadRef

        if self.cfg.reads:
            return self.source.sequences([
                ReadRef(it.read_name, it.read_flag, it.chrom, it.start, it.end, it.strand,
                        it.length, it.read_offset) for it in items])
        seqs = [""] * len(items)
        for k in sorted(range(len(items)), key=lambda k: (items[k].chrom, items[k].start)):
            seqs[k] = self.sequence(items[k])
        return seqs

    def run_unit(self, unit_id: str, items: list[Item]) -> float:
        """Embed one unit's items and write its part(s); return the seconds spent in the model
        (its forward and the pooling)."""
        import numpy as np

        from genomeconv.models.inference import pool

        seqs = self.sequences(items)
        pooled = np.empty((len(items), self.model.d_model), dtype=np.float32)
        model_s = 0.0
        writer = _PerBaseWriter(self.cfg, unit_id, self.model.d_model, self.meta_pb) \
            if self.cfg.per_base else None
        try:
            for group in _forward_groups([len(s) for s in seqs], self.cfg.batch_size):
                t0 = time.perf_counter()
                hidden, lengths = self.hidden([seqs[k] for k in group])
                pooled[group] = pool(hidden, self.cfg.pooling, lengths).float().cpu().numpy()
                model_s += time.perf_counter() - t0
                if writer is not None:
                    host = hidden.cpu()  # one device-to-host copy per batch, not per item
                    for j, k in enumerate(group):
                        writer.write(items[k], host[j, :len(seqs[k])])
            if writer is not None:
                writer.commit()
        finally:
            if writer is not None:
                writer.discard()
        runtime.write_part(self.table(items, seqs, pooled), Path(self.cfg.out) / EMBEDDINGS_DIR,
                           unit_id, self.meta)
        return model_s

    def hidden(self, seqs: list[str]) -> tuple[Any, Any]:
        """Hidden states of a batch, (B, max length, d) float32, and the lengths (B,): right
        padding, which a causal model never sees from earlier positions; tokenized in one
        vectorized call."""
        import torch

        from genomeconv.models import tokenize
        from genomeconv.models.inference import hidden_states
        from genomeconv.models.tokenizer import PAD_ID

        lengths = torch.tensor([len(s) for s in seqs])
        valid = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
        ids = torch.full(valid.shape, PAD_ID, dtype=torch.long)
        ids[valid] = tokenize("".join(seqs))  # row-major: the sequences one after the other
        hidden = hidden_states(self.model, ids, chunk_size=self.cfg.chunk_size, dtype=self.dtype)
        return hidden, lengths

    def table(self, items: Sequence[Item], seqs: Sequence[str], pooled: Any) -> Any:
        """The unit's embeddings rows, built column by column."""
        import pyarrow as pa

        out_schema = schema.embeddings_schema(self.model.d_model)
        columns: dict[str, Any] = {k: [getattr(it, k) for it in items]
                                   for k in schema.ITEM_KEYS.names}
        columns["length"] = [len(s) for s in seqs]
        columns["n_fraction"] = [s.count("N") / max(1, len(s)) for s in seqs]
        columns["pooling"] = [self.cfg.pooling] * len(items)
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(
            pa.array(pooled.reshape(-1)), self.model.d_model)
        return pa.table(columns, schema=out_schema)


ITEM_FIELDS = tuple(f.name for f in fields(Item))  # how units travel to the workers: columns


def _forward_groups(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of the items for each model call: sorted by length, at most `batch_size` and
    FORWARD_TOKENS padded tokens per call (a long item is a call of its own)."""
    groups: list[list[int]] = []
    for k in sorted(range(len(lengths)), key=lengths.__getitem__):
        g = groups[-1] if groups else None
        if g and len(g) < batch_size and (len(g) + 1) * lengths[k] <= FORWARD_TOKENS:
            g.append(k)
        else:
            groups.append([k])
    return groups


class _PerBaseWriter:
    """Streams one unit's per-base rows through runtime.PartWriter in row groups of
    PER_BASE_ROWS rows, buffering small items' rows (a read is not a row group of its own)."""

    def __init__(self, cfg: WorkerConfig, unit_id: str, d_model: int,
                 metadata: dict[bytes, bytes]) -> None:
        self.np_dtype = cfg.per_base_dtype
        self.d = d_model
        self.part = runtime.PartWriter(Path(cfg.out) / PER_BASE_DIR, unit_id,
                                       schema.per_base_schema(d_model, cfg.per_base_dtype),
                                       metadata)
        self.pending: list[Any] = []  # tables not yet written, fewer than PER_BASE_ROWS rows
        self.rows = 0
        self.discard = self.part.discard

    def write(self, item: Item, hidden) -> None:
        """Add the item's rows; write every full row group."""
        import numpy as np
        import pyarrow as pa

        n = hidden.shape[0]
        for lo in range(0, n, PER_BASE_ROWS):
            hi = min(n, lo + PER_BASE_ROWS)
            offsets = np.arange(lo, hi, dtype=np.int64)
            if item.read_name is not None:
                positions = offsets
            elif item.strand == "-":
                positions = item.end - 1 - offsets
            else:
                positions = item.start + offsets
            values = pa.array(hidden[lo:hi].numpy().astype(self.np_dtype).reshape(-1))
            self.pending.append(pa.table({
                "item_id": pa.array([item.item_id] * (hi - lo), pa.string()),
                "position": pa.array(positions),
                "embedding": pa.FixedSizeListArray.from_arrays(values, self.d),
            }, schema=self.part.schema))
            self.rows += hi - lo
            if self.rows >= PER_BASE_ROWS:
                self._flush(PER_BASE_ROWS)

    def _flush(self, size: int) -> None:
        """Write the buffered rows in whole row groups of `size` rows; keep the remainder."""
        import pyarrow as pa

        table = pa.concat_tables(self.pending)
        cut = len(table) // size * size
        if cut:
            self.part.write(table.slice(0, cut))
        self.pending = [table.slice(cut)] if cut < len(table) else []
        self.rows = len(table) - cut

    def commit(self) -> Path:
        """Write what is buffered and move the part into place."""
        if self.rows:
            self._flush(self.rows)
        return self.part.commit()


# --- the driver ----------------------------------------------------------------------------


@dataclass
class EmbedSummary:
    """What an `embed` run did."""

    items: int
    bp: int
    units: int
    units_skipped: int  # already written by an earlier run
    items_done: int  # embedded by this run
    bp_done: int
    seconds: float
    model_seconds: float  # spent in the model's forward by the workers (summed over workers)
    worker_peak_rss: int  # the largest peak resident memory of any worker (bytes)
    out: str
    outputs: list[str] = field(default_factory=list)


def embed(input_path: str | Path, out: str | Path, *, regions: Sequence[str] = (),
          gtf: str | Path | None = None, genes: Sequence[str] | None = None,
          bed: str | Path | None = None, bam: str | Path | None = None, min_mapq: int = 0,
          min_length: int = 0, model: str | None = None, pooling: str = "mean",
          per_base: bool = False, per_base_dtype: str = "float32", batch_size: int = 16,
          unit_bp: int | None = None, chunk_size: int | None = None,
          address: str | None = None, num_workers: int = 1,
          gpus_per_worker: float = 0, device: str | None = None, dtype: str | None = None,
          command: str = "genomeconv embed",
          on_plan: Callable[[int, int], None] | None = None,
          on_unit: Callable[[int, int], None] | None = None) -> EmbedSummary:
    """Embed the items selected on `input_path` (a FASTA, or a BAM/CRAM/uBAM of reads; `bam`
    gives reads with `input_path` as their reference) into Parquet parts under `out`.

    batch_size: items per model call (sorted by length); unit_bp: bases per work unit and
    Parquet part (default `default_unit_bp`). Resumes: units already written under `out` are
    skipped. `on_plan(items_bp_to_do, units)` is called once planned, `on_unit(items, bp)` after
    each unit (for progress bars).
    """
    import ray
    import ray.data

    from genomeconv.models import load

    t0 = time.perf_counter()
    if pooling not in POOLINGS:
        raise ValueError(f"--pooling must be one of {', '.join(POOLINGS)} (got {pooling!r})")
    if per_base_dtype not in PER_BASE_DTYPES:
        raise ValueError(f"--per-base-dtype must be float32 or float16 (got {per_base_dtype!r})")
    if batch_size < 1 or num_workers < 1 or (unit_bp is not None and unit_bp < 1):
        raise ValueError("--batch-size, --unit-bp and --num-workers must be >= 1")
    runtime.compute_dtype(dtype)
    probe = load(model, device="cpu")  # fail on a bad --model before planning or starting Ray
    # Workers may run in another directory (or on another node): hand them absolute paths.
    input_path, out = Path(input_path).resolve(), Path(out).resolve()
    bam = Path(bam).resolve() if bam is not None else None
    if model is not None and Path(model).exists():
        model = str(Path(model).resolve())

    reads = str(bam) if bam is not None else (str(input_path) if is_read_file(input_path)
                                              else None)
    fasta = None if reads == str(input_path) else str(input_path)
    if reads is not None:
        if gtf is not None or bed is not None:
            raise ValueError("--gtf/--bed select intervals of a FASTA, not reads")
        items = plan_read_items(reads, regions=regions, min_mapq=min_mapq,
                                min_length=min_length, reference=fasta)
    else:
        items = plan_fasta_items(fasta, regions=regions, gtf=gtf, genes=genes, bed=bed)
    by_id = {it.item_id: it for it in items}
    units = plan_units(items, unit_bp or default_unit_bp(probe, items, num_workers, per_base,
                                                         per_base_dtype))
    done = runtime.finished_units(Path(out) / EMBEDDINGS_DIR)
    if per_base:
        done &= runtime.finished_units(Path(out) / PER_BASE_DIR)
    todo = [u for u in units if u.unit_id not in done]
    todo_bp = sum(by_id[i].length for u in todo for i in u.item_ids)
    if on_plan is not None:
        on_plan(todo_bp, len(todo))

    items_done = bp_done = peak_rss = 0
    model_s = 0.0
    if todo:
        resources = runtime.connect(address)
        gpus = gpus_per_worker if gpus_per_worker > 0 else 0
        workers = max(1, min(num_workers, len(todo)))
        node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]),
                        default=1)
        cpus = max(1, min(int(resources.get("CPU", 1)) // workers, int(node_cpus)))
        config = WorkerConfig(
            model=model, fasta=fasta, reads=reads, out=str(out), pooling=pooling,
            per_base=per_base, per_base_dtype=per_base_dtype, batch_size=batch_size,
            chunk_size=chunk_size, device=device or ("cuda" if gpus else None), dtype=dtype,
            threads=None if gpus else cpus, command=command)
        rows = [{"unit_id": u.unit_id, **{f: [getattr(by_id[i], f) for i in u.item_ids]
                                          for f in ITEM_FIELDS}}
                for u in sorted(todo, key=lambda u: -sum(by_id[i].length for i in u.item_ids))]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            EmbedActor, batch_size=1, batch_format="pyarrow",
            fn_constructor_kwargs={"config": config},
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=0 if gpus else cpus, num_gpus=gpus)
        for row in ds.iter_rows():
            items_done += int(row["items"])
            bp_done += int(row["bp"])
            peak_rss = max(peak_rss, int(row["peak_rss"]))
            model_s += float(row["model_s"])
            if on_unit is not None:
                on_unit(int(row["items"]), int(row["bp"]))
    outputs = [str(Path(out) / EMBEDDINGS_DIR)] + ([str(Path(out) / PER_BASE_DIR)]
                                                   if per_base else [])
    return EmbedSummary(items=len(items), bp=sum(it.length for it in items), units=len(units),
                        units_skipped=len(units) - len(todo), items_done=items_done,
                        bp_done=bp_done, seconds=time.perf_counter() - t0,
                        model_seconds=model_s, worker_peak_rss=peak_rss, out=str(out),
                        outputs=outputs)
