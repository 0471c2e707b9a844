"""`genomeconv embed`: pooled (and optionally per-base) embeddings of regions, genes, BED
intervals, whole records or reads, on Ray, written as keyed, resumable Parquet parts.

The driver plans work items that carry coordinates only (never sequences), locks OUT and checks its
run manifest (pipelines/manifest.py: a rerun with other value-changing settings or inputs is
refused, `overwrite` starts afresh), reads the item ids of the parts already committed, drops those
items, and only then groups the rest into work units sized by work (`plan_units`: about
`default_unit_bp` bases and at most runtime.UNIT_MAX_ITEMS items each, an item that long alone),
so another --batch-size, a subset or a superset of the items resumes with every item written
exactly once. The units stream through a Ray Data actor pool. Each `EmbedActor` opens the FASTA
or read file and loads the model once; per unit it fetches every item's bases in file order,
reverse-complements minus-strand items, runs them sorted by length in right-padded batches
through the model's bounded-memory path (`LanguageModel.hidden_states`), pools each item
(models.pool) over its own positions only (so its embedding does not depend on its batch), and writes the unit's
part(s) column-wise: OUT/per_base/ first, then OUT/embeddings/. Many small items thus cost one
Ray task and one Parquet part per few Mbp, not per item. A unit is done when its embeddings
part counts (manifest.read_part_keys) and, with --per-base, its per-base part of the same name
counts and holds one row per base of the unit's items; otherwise the unit's parts are moved
aside (damaged) or removed (a per-base part whose embeddings part never came: its run was
killed between the two commits).

Outputs are finite: an item whose hidden states hold NaN or infinity stops the run with an error
naming it (a model that produces NaN is broken), unless --keep-nonfinite, which writes such rows
with `nonfinite` = true (per-base rows join them on item_id).

Per-base rows: `position` is 0-based on the reference (a minus-strand item's first base is its
highest position); for reads it is the offset in the read as sequenced.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genomeconv.errors import InputError
from genomeconv.io.regions import Interval, format_region, parse_region, reverse_complement
from genomeconv.pipelines import manifest, preflight, runtime, schema
from genomeconv.pipelines.options import EMBED

if TYPE_CHECKING:
    from genomeconv.io.annotations import Feature
    from genomeconv.models.base import LanguageModel

FORWARD_TOKENS = 1 << 17  # right-padded tokens per model call when batching short items
PER_BASE_ROWS = 65_536  # rows per per-base row group (bounds the writer's buffer)
PER_BASE_PART_BYTES = 1 << 29  # per-base embedding bytes per unit (caps the unit's bases)
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
    parts: list | None = None  # spliced feature: [start, end, strand] in biological order


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


def _feature_item(src: str, feature: Feature, spliced: bool,
                  clip: Callable[[Interval], Interval]) -> Item:
    """One annotated feature: its whole span, or with `spliced` (and several parts) its parts
    joined; the key and seq_name ("CDS:abcA" or "CDS:abcA:spliced") say which."""
    iv = clip(Interval(feature.chrom, feature.start, feature.end, feature.strand, feature.label))
    parts = None
    if spliced and len(feature.parts) > 1:
        parts = [[s, e, strand] for s, e, strand in feature.parts]
        for s, e, _ in parts:
            clip(Interval(iv.chrom, s, e))
    name = f"{feature.type}:{feature.label}" + (":spliced" if parts else "")
    return Item(item_id(src, iv.chrom, iv.start, iv.end, iv.strand, name, parts), name, iv.chrom,
                iv.start, iv.end, iv.strand,
                sum(e - s for s, e, _ in parts) if parts else iv.end - iv.start,
                gene_id=feature.locus_tag or feature.feature_id, gene_name=feature.gene,
                parts=parts)


def plan_fasta_items(fasta_path: str | Path, *, regions: Sequence[str] = (),
                     gtf: str | Path | None = None, genes: Sequence[str] | None = None,
                     bed: str | Path | None = None, features: Sequence[str] | None = None,
                     spliced: bool = False) -> list[Item]:
    """Items on a FASTA: the regions, the (selected) GTF/GFF3 genes or features of the given
    types and the BED intervals asked for, or every record when none is given. A GenBank, EMBL
    or GFF3+FASTA input is its own annotation when no `gtf` is given. Contig names are resolved
    against the FASTA (chr1 <-> 1); unknown contigs and genes raise errors naming them."""
    from genomeconv.io.annotations import read_bed, select_features, select_genes
    from genomeconv.io.fasta import FastaFile
    from genomeconv.io.seqrecords import features_of, genes_of, is_record_file

    src = str(fasta_path)
    items: list[Item] = []
    if gtf is None and (genes or features) and is_record_file(src):
        gtf = src
    if (genes or features) and gtf is None:
        raise InputError("--genes and --features need --gtf, or a GenBank/EMBL/GFF3 input")
    with FastaFile(src) as fa:
        def clip(iv: Interval) -> Interval:
            chrom = fa.resolve(iv.chrom)
            size = fa.length(chrom)
            end = size if iv.end is None else iv.end
            if iv.start >= size or end > size:
                raise InputError(f"{format_region(iv)} runs past the end of {chrom} "
                                 f"(length {size})", path=src)
            return Interval(chrom, iv.start, end, iv.strand, iv.name)

        for text in regions:
            iv = clip(parse_region(text))
            items.append(_interval_item(src, iv, text))
        if features:
            for f in select_features(features_of(gtf), features, genes, source=str(gtf)):
                items.append(_feature_item(src, f, spliced, clip))
        elif gtf is not None:
            found = genes_of(gtf)
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
        if not (regions or gtf is not None or bed):
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


def default_unit_bp(model: LanguageModel, items: Sequence[Item], workers: int = 1,
                    per_base: bool = False, per_base_dtype: str = "float32") -> int:
    """Bases per work unit: `runtime.unit_bases` of the model; with
    per-base output also at most
    PER_BASE_PART_BYTES of per-base embeddings, so a per-base part stays a manageable file; and
    at most the items' bases over `workers`, so that no worker of a small job stays idle."""
    import numpy as np

    bp = runtime.unit_bases(model.work_per_base)
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
    keep_nonfinite: bool = False
    manifest_sha256: str | None = None
    token: manifest.RunToken | None = None  # commits parts while this run holds OUT


class EmbedActor(runtime.UnitActor):
    """Ray Data actor: opens the inputs and loads the model once, then embeds whole units."""

    item_type = Item

    def __init__(self, config: WorkerConfig) -> None:
        import torch

        from genomeconv.models import load

        if config.threads:
            torch.set_num_threads(config.threads)
        self.cfg = config
        self.model: LanguageModel = load(config.model, device=config.device)
        self.dtype = runtime.compute_dtype(config.dtype)
        if config.reads:
            from genomeconv.io.reads import ReadFile

            self.source = ReadFile(config.reads, reference=config.fasta)
        else:
            from genomeconv.io.fasta import FastaFile

            self.source = FastaFile(config.fasta)
        self.meta = schema.file_metadata(self.model, config.command, "embeddings",
                                         config.manifest_sha256)
        self.meta_pb = schema.file_metadata(self.model, config.command, "per_base",
                                            config.manifest_sha256)

    def sequence(self, item: Item) -> str:
        """The item's bases in its own orientation (minus strand: reverse complement; a spliced
        feature: its parts joined, each in its own orientation)."""
        from genomeconv.io.reads import ReadRef

        if item.parts:
            return "".join(self.source.fetch(item.chrom, s, e) if strand == "+" else
                           reverse_complement(self.source.fetch(item.chrom, s, e))
                           for s, e, strand in item.parts)
        if item.read_name is not None:
            return self.source.sequence(ReadRef(item.read_name, item.read_flag, item.chrom,
                                                item.start, item.end, item.strand, item.length,
                                                item.read_offset))
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

        from genomeconv.models import pool

        seqs = self.sequences(items)
        pooled = np.empty((len(items), self.model.d_model), dtype=np.float32)
        nonfinite = np.zeros(len(items), dtype=bool)
        model_s = 0.0
        writer = _PerBaseWriter(self.cfg, unit_id, self.model.d_model, self.meta_pb) \
            if self.cfg.per_base else None
        try:
            for group in _forward_groups([len(s) for s in seqs], self.cfg.batch_size):
                t0 = time.perf_counter()
                hidden, lengths = self.hidden([seqs[k] for k in group])
                nonfinite[group] = self.check_finite([items[k] for k in group], hidden, lengths)
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
        runtime.write_part(self.table(items, seqs, pooled, nonfinite),
                           Path(self.cfg.out) / EMBEDDINGS_DIR, unit_id, self.meta, self.cfg.token)
        return model_s

    def hidden(self, seqs: list[str]) -> tuple[Any, Any]:
        """Hidden states of a batch, (B, max length, d) float32, and the lengths (B,): right
        padding, which a causal model never sees from earlier positions; tokenized in one
        vectorized call."""
        import torch

        from genomeconv.models import tokenize
        from genomeconv.models.tokenizer import PAD_ID

        lengths = torch.tensor([len(s) for s in seqs])
        valid = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
        ids = torch.full(valid.shape, PAD_ID, dtype=torch.long)
        ids[valid] = tokenize("".join(seqs))  # row-major: the sequences one after the other
        hidden = self.model.hidden_states(ids, chunk_size=self.cfg.chunk_size, dtype=self.dtype)
        return hidden, lengths

    def table(self, items: Sequence[Item], seqs: Sequence[str], pooled: Any,
              nonfinite: Any) -> Any:
        """The unit's embeddings rows, built column by column."""
        import pyarrow as pa

        from genomeconv.io.fasta import ambiguous_fraction

        out_schema = schema.embeddings_schema(self.model.d_model)
        columns: dict[str, Any] = {k: [getattr(it, k) for it in items]
                                   for k in schema.ITEM_KEYS.names}
        columns["length"] = [len(s) for s in seqs]
        columns["n_fraction"] = [ambiguous_fraction(s) for s in seqs]
        columns["pooling"] = [self.cfg.pooling] * len(items)
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(
            pa.array(pooled.reshape(-1)), self.model.d_model)
        columns["nonfinite"] = pa.array(nonfinite)
        return pa.table(columns, schema=out_schema)

    def check_finite(self, items: Sequence[Item], hidden: Any, lengths: Any) -> Any:
        """Per item of a batch, whether its hidden states (its own positions) hold NaN or
        infinity: an error naming the first such item, or with keep_nonfinite the flags."""
        import torch

        valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] \
            < lengths.to(hidden.device)[:, None]
        bad = ((~torch.isfinite(hidden)).any(-1) & valid).any(-1).cpu().numpy()
        if bad.any() and not self.cfg.keep_nonfinite:
            item = items[int(bad.argmax())]
            raise InputError(f"the model gives non-finite (NaN or infinite) embeddings for item "
                             f"{describe_item(item)}: a model that produces NaN is broken; pass "
                             "--keep-nonfinite to write such rows marked nonfinite = true",
                             path=self.model.model_id)
        return bad


def describe_item(item: Item) -> str:
    """An item as a person finds it again: its name and coordinates (1-based, inclusive)."""
    if item.read_name is not None:
        return f"read {item.read_name!r} (flag {item.read_flag})"
    return (f"{item.seq_name!r} ({item.chrom}:{item.start + 1:,}-{item.end:,} {item.strand}, "
            f"item_id {item.item_id})")


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
                                       metadata, cfg.token)
        self.pending: list[Any] = []  # tables not yet written, fewer than PER_BASE_ROWS rows
        self.rows = 0
        self.discard = self.part.discard

    def write(self, item: Item, hidden) -> None:
        """Add the item's rows; write every full row group."""
        import numpy as np
        import pyarrow as pa

        n = hidden.shape[0]
        spliced = np.concatenate([np.arange(s, e) if strand == "+" else np.arange(e - 1, s - 1, -1)
                                  for s, e, strand in item.parts]) if item.parts else None
        for lo in range(0, n, PER_BASE_ROWS):
            hi = min(n, lo + PER_BASE_ROWS)
            offsets = np.arange(lo, hi, dtype=np.int64)
            if spliced is not None:
                positions = spliced[lo:hi].astype(np.int64)
            elif item.read_name is not None:
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


def completed_items(out: str | Path, per_base: bool, manifest_sha256: str) -> set[str]:
    """Item ids already written under OUT by runs with this manifest (see the module docstring);
    parts that do not count are moved aside or removed here, before any new part is planned."""
    emb_dir, pb_dir = Path(out) / EMBEDDINGS_DIR, Path(out) / PER_BASE_DIR
    done: dict[str, str] = {}  # item id -> the part holding it
    for part in sorted(emb_dir.glob(manifest.PART_GLOB)) if emb_dir.is_dir() else ():
        keys, why = manifest.read_part_keys(part, manifest_sha256, ("item_id", "length"))
        ids = keys.column("item_id").to_pylist() if keys is not None else []
        if why is None and len(set(ids)) != len(ids):
            why = "it holds an item twice"
        if why is None and (twice := next((i for i in ids if i in done), None)):
            why = f"item {twice} is already in {done[twice]}"
        pb = pb_dir / part.name
        if why is None and per_base:
            rows, why_pb = (manifest.read_part_keys(pb, manifest_sha256, ())
                            if pb.exists() else (None, "missing"))
            bases = sum(keys.column("length").to_pylist())
            if why_pb is None and rows != bases:
                why_pb = f"it has {rows} rows for {bases} bases"
            if why_pb is not None:
                why = f"its per-base part {pb.name} does not count ({why_pb})"
        if why is not None:
            manifest.move_aside(part, why)
            if pb.exists():
                manifest.move_aside(pb, f"its unit's embeddings part does not count ({why})")
            continue
        done.update(dict.fromkeys(ids, part.name))
    for pb in sorted(pb_dir.glob(manifest.PART_GLOB)) if pb_dir.is_dir() else ():
        if not (emb_dir / pb.name).exists():  # a unit killed between its two commits
            pb.unlink()
    return set(done)


def embed_manifest(model: str | None, config_sha256: str, *, fasta: str | None,
                   reads: str | None, pooling: str, per_base: bool, per_base_dtype: str,
                   dtype: str | None, device_type: str) -> manifest.Manifest:
    """The settings and inputs an `embed` folder's values depend on (not which items, nor
    --keep-nonfinite: it only adds marked rows, so a rerun with it resumes a run stopped by NaN)."""
    settings = {**manifest.model_fingerprint(model, config_sha256), "pooling": pooling,
                "per_base": per_base, "per_base_dtype": per_base_dtype if per_base else None,
                "dtype": dtype or "float32", "device_type": device_type}
    inputs = {role: manifest.file_fingerprint(path)
              for role, path in (("fasta", fasta), ("reads", reads)) if path is not None}
    return manifest.Manifest("embed", settings, inputs)


@dataclass
class EmbedSummary:
    """What an `embed` run did."""

    items: int
    bp: int
    units: int  # units run by this run (the items not done yet, grouped)
    items_skipped: int  # already written by an earlier run
    items_done: int  # embedded by this run
    bp_done: int
    seconds: float
    model_seconds: float  # spent in the model's forward by the workers (summed over workers)
    worker_peak_rss: int  # the largest peak resident memory of any worker (bytes)
    out: str
    outputs: list[str] = field(default_factory=list)


def embed(input_path: str | Path, out: str | Path, *, regions: Sequence[str] = (),
          gtf: str | Path | None = None, genes: Sequence[str] | None = None,
          bed: str | Path | None = None, bam: str | Path | None = None,
          min_mapq: int = EMBED.min_mapq, min_length: int = EMBED.min_length,
          features: Sequence[str] | None = None, spliced: bool = False,
          model: str | None = None, pooling: str = EMBED.pooling,
          per_base: bool = False, per_base_dtype: str = EMBED.per_base_dtype,
          batch_size: int = EMBED.batch_size,
          unit_bp: int | None = None, chunk_size: int | None = None,
          address: str | None = None, num_workers: int = EMBED.num_workers,
          gpus_per_worker: float = EMBED.gpus_per_worker, device: str | None = None, dtype: str | None = None,
          overwrite: bool = False, keep_nonfinite: bool = False,
          command: str = "genomeconv embed",
          on_plan: Callable[[int, int], None] | None = None,
          on_unit: Callable[[int, int], None] | None = None) -> EmbedSummary:
    """Embed the items selected on `input_path` (a FASTA, or a BAM/CRAM/uBAM of reads; `bam`
    gives reads with `input_path` as their reference) into Parquet parts under `out`.

    batch_size: items per model call (sorted by length); unit_bp: bases per work unit and
    Parquet part (default `default_unit_bp`). Resumes: items already written under `out` (by a
    run with the same manifest) are skipped; `overwrite` removes the folder's earlier outputs
    first. `on_plan(items_bp_to_do, units)` is called once planned, `on_unit(items, bp)` after
    each unit (for progress bars).
    """
    from genomeconv.io.fasta import readable_fasta
    from genomeconv.models import POOLINGS, load
    from genomeconv.models.kmer import parse_spec

    t0 = time.perf_counter()
    if parse_spec(model) is not None:
        raise InputError(f"embed needs embeddings (hidden states); --model {model} is a k-mer "
                         "model, which has none: use a neural model (e.g. the bundled HyenaDNA)")
    if pooling not in POOLINGS:
        raise InputError(f"--pooling must be one of {', '.join(POOLINGS)} (got {pooling!r})")
    if per_base_dtype not in PER_BASE_DTYPES:
        raise InputError(f"--per-base-dtype must be float32 or float16 (got {per_base_dtype!r})")
    runtime.compute_dtype(dtype)
    preflight.check(out, fasta=None if is_read_file(input_path) else input_path, device=device,
                    sizes={"--batch-size": batch_size, "--unit-bp": unit_bp,
                           "--chunk-size": chunk_size},
                    gpus_per_worker=gpus_per_worker, num_workers=num_workers, address=address)
    probe = load(model, device="cpu")  # fail on a bad --model before planning or starting Ray
    probe.require_embeddings("embed")
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
            raise InputError("--gtf/--bed select intervals of a FASTA, not reads")
        items = plan_read_items(reads, regions=regions, min_mapq=min_mapq,
                                min_length=min_length,
                                reference=readable_fasta(fasta) if fasta else None)
    else:
        items = plan_fasta_items(fasta, regions=regions, gtf=gtf, genes=genes, bed=bed,
                                 features=features, spliced=spliced)
    gpus = gpus_per_worker if gpus_per_worker > 0 else 0
    device = device or ("cuda" if gpus else None)
    run_manifest = embed_manifest(
        model, probe.config_sha256, fasta=fasta, reads=reads, pooling=pooling,
        per_base=per_base, per_base_dtype=per_base_dtype, dtype=dtype,
        device_type=runtime.device_type(device))
    items_done = bp_done = peak_rss = 0
    model_s = 0.0
    with manifest.open_run(out, run_manifest, part_dirs=[out / EMBEDDINGS_DIR, out / PER_BASE_DIR],
                           command=command, overwrite=overwrite) as run:
        done = completed_items(out, per_base, run_manifest.sha256)
        todo_items = [it for it in items if it.item_id not in done]
        by_id = {it.item_id: it for it in todo_items}
        todo = plan_units(todo_items, unit_bp or default_unit_bp(
            probe, todo_items, num_workers, per_base, per_base_dtype))
        del probe  # the workers load their own copies
        if on_plan is not None:
            on_plan(sum(it.length for it in todo_items), len(todo))
        if todo:
            workers, cpus = runtime.actor_shape(address, num_workers, len(todo), gpus)
            config = WorkerConfig(
                model=model, fasta=readable_fasta(fasta) if fasta else None, reads=reads,
                out=str(out), pooling=pooling,
                per_base=per_base, per_base_dtype=per_base_dtype, batch_size=batch_size,
                chunk_size=chunk_size, device=device, dtype=dtype,
                threads=None if gpus else cpus, command=command, keep_nonfinite=keep_nonfinite,
                manifest_sha256=run_manifest.sha256, token=run.token)
            rows = [{"unit_id": u.unit_id,
                     "items": json.dumps([asdict(by_id[i]) for i in u.item_ids])}
                    for u in sorted(todo, key=lambda u: -sum(by_id[i].length
                                                             for i in u.item_ids))]
            for row in runtime.map_units(rows, EmbedActor, {"config": config}, workers=workers,
                                         cpus=cpus, gpus=gpus):
                items_done += int(row["items"])
                bp_done += int(row["bp"])
                peak_rss = max(peak_rss, int(row["peak_rss"]))
                model_s += float(row["model_s"])
                if on_unit is not None:
                    on_unit(int(row["items"]), int(row["bp"]))
    outputs = [str(Path(out) / EMBEDDINGS_DIR)] + ([str(Path(out) / PER_BASE_DIR)]
                                                   if per_base else [])
    return EmbedSummary(items=len(items), bp=sum(it.length for it in items), units=len(todo),
                        items_skipped=len(items) - len(todo_items), items_done=items_done,
                        bp_done=bp_done, seconds=time.perf_counter() - t0,
                        model_seconds=model_s, worker_peak_rss=peak_rss, out=str(out),
                        outputs=outputs)
