"""`genomeconv embed`: pooled (and optionally per-base) embeddings of regions, genes, BED
intervals, whole records or reads, on Ray, written as keyed, resumable Parquet parts.

`EmbedJob` is an instance of the job skeleton (pipelines/job.py: manifest, lock, resume, actor
pool, progress, summary). It plans work items that carry coordinates only (never sequences);
the skeleton drops the items the committed parts hold (`completed_items`), and only then are the
rest grouped into work units sized by work (`plan_units`: about `default_unit_bp` bases and at
most runtime.UNIT_MAX_ITEMS items each, an item that long alone), so another --batch-size, a
subset or a superset of the items resumes with every item written exactly once. Each `EmbedActor`
opens the FASTA or read file and loads the model once; per unit it fetches every item's bases in
file order, reverse-complements minus-strand items, runs them sorted by length in right-padded
batches through the model's bounded-memory path (`LanguageModel.hidden_states`, of the final norm
or of the `--layer` named, which the manifest and every file's metadata record), pools each item
(models.pool) over its own positions only (so its embedding does not depend on its batch), and
writes the unit's part(s) column-wise: OUT/per_base/ first, then OUT/embeddings/. Many small items
thus cost one Ray task and one Parquet part per few Mbp, not per item. A unit is done when its
embeddings part counts (manifest.read_part_keys) and, with --per-base, its per-base part of the
same name counts and holds one row per base of the unit's items; otherwise the unit's parts are
moved aside (damaged) or removed (a per-base part whose embeddings part never came: its run was
killed between the two commits).

Outputs are finite: an item whose hidden states hold NaN or infinity stops the run with an error
naming it (a model that produces NaN is broken), unless --keep-nonfinite, which writes such rows
with `nonfinite` = true (per-base rows join them on item_id).

Per-base rows: `position` is 0-based on the reference (a minus-strand item's first base is its
highest position); for reads it is the offset in the read as sequenced.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genomeconv.errors import InputError
from genomeconv.io.regions import Interval, format_region, parse_region, reverse_complement
from genomeconv.pipelines import manifest, runtime, schema
from genomeconv.pipelines.job import (Job, JobSummary, Progress, Unit, UnitActor, WorkerSetup,
                                      run_job)
from genomeconv.pipelines.options import EmbedOptions

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


def default_unit_bp(model: LanguageModel, per_base: bool = False,
                    per_base_dtype: str = "float32", layer: str | None = None) -> int:
    """Bases per work unit: `runtime.unit_bases` of the model; with per-base output also at most
    PER_BASE_PART_BYTES of per-base embeddings, so a per-base part stays a manageable file (a
    small job then cuts it further, `runtime.per_worker`, so that no worker stays idle)."""
    import numpy as np

    bp = runtime.unit_bases(model.work_per_base)
    if per_base:
        width = model.layer_width(layer)
        bp = min(bp, PER_BASE_PART_BYTES // (width * np.dtype(per_base_dtype).itemsize))
    return bp


def plan_units(items: Sequence[Item], unit_bp: int) -> list[runtime.WorkUnit]:
    """Work units of about `unit_bp` bases and at most runtime.UNIT_MAX_ITEMS items each; an item
    of `unit_bp` bases or more is a unit of its own."""
    return runtime.plan_units([it.item_id for it in items], runtime.UNIT_MAX_ITEMS,
                              costs=[it.length for it in items], unit_cost=unit_bp)


# --- the worker ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerConfig:
    """What an EmbedActor needs beyond job.WorkerSetup (small and picklable)."""

    fasta: str | None
    reads: str | None
    pooling: str = "mean"
    per_base: bool = False
    per_base_dtype: str = "float32"
    layer: str | None = None
    batch_size: int = 16
    chunk_size: int | None = None


class EmbedActor(UnitActor):
    """The embed actor: loads the model once, opens the inputs once a run, then embeds whole
    units."""

    def open_run(self, setup: WorkerSetup, config: WorkerConfig) -> None:
        super().open_run(setup, config)
        if config.reads:
            from genomeconv.io.reads import ReadFile

            self.source = ReadFile(config.reads, reference=config.fasta)
        else:
            from genomeconv.io.fasta import FastaFile

            self.source = FastaFile(config.fasta)
        self.width = self.model.layer_width(config.layer)  # of each embedding
        self.meta = self.metadata("embeddings", layer=config.layer)
        self.meta_pb = self.metadata("per_base", layer=config.layer)

    @staticmethod
    def decode_item(data: dict[str, Any]) -> Item:
        return Item(**data)

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
        a BGZF block is then inflated once, not once per item ("file_order_fetch" in
        benchmarks/results/design_figures.json)."""
        from genomeconv.io.reads import ReadRef

        if self.cfg.reads:
            return self.source.sequences([
                ReadRef(it.read_name, it.read_flag, it.chrom, it.start, it.end, it.strand,
                        it.length, it.read_offset) for it in items])
        seqs = [""] * len(items)
        for k in sorted(range(len(items)), key=lambda k: (items[k].chrom, items[k].start)):
            seqs[k] = self.sequence(items[k])
        return seqs

    def run_unit(self, unit_id: str, items: list[Item]) -> dict[str, Any]:
        """Embed one unit's items and write its part(s); return the seconds spent in the model
        (its forward and the pooling)."""
        import numpy as np

        from genomeconv.models import pool

        seqs = self.sequences(items)
        pooled = np.empty((len(items), self.width), dtype=np.float32)
        nonfinite = np.zeros(len(items), dtype=bool)
        model_s = 0.0
        writer = _PerBaseWriter(self.cfg, self.setup, unit_id, self.width,
                                self.meta_pb) if self.cfg.per_base else None
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
                           Path(self.setup.out) / EMBEDDINGS_DIR, unit_id, self.meta,
                           self.setup.token)
        return {"model_s": model_s}

    def hidden(self, seqs: list[str]) -> tuple[Any, Any]:
        """Hidden states of a batch, (B, max length, d) float32, and the lengths (B,): right
        padding (`LanguageModel.tokenize`), which a causal model never sees from earlier
        positions."""
        import torch

        lengths = torch.tensor([len(s) for s in seqs])
        ids = self.model.tokenize(seqs)
        hidden = self.model.hidden_states(ids, layer=self.cfg.layer,
                                          chunk_size=self.cfg.chunk_size, dtype=self.dtype)
        return hidden, lengths

    def table(self, items: Sequence[Item], seqs: Sequence[str], pooled: Any,
              nonfinite: Any) -> Any:
        """The unit's embeddings rows, built column by column."""
        import pyarrow as pa

        from genomeconv.io.fasta import ambiguous_fraction

        out_schema = schema.embeddings_schema(self.width)
        columns: dict[str, Any] = {k: [getattr(it, k) for it in items]
                                   for k in schema.ITEM_KEYS.names}
        columns["length"] = [len(s) for s in seqs]
        columns["n_fraction"] = [ambiguous_fraction(s) for s in seqs]
        columns["pooling"] = [self.cfg.pooling] * len(items)
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(
            pa.array(pooled.reshape(-1)), self.width)
        columns["nonfinite"] = pa.array(nonfinite)
        return pa.table(columns, schema=out_schema)

    def check_finite(self, items: Sequence[Item], hidden: Any, lengths: Any) -> Any:
        """Per item of a batch, whether its hidden states (its own positions) hold NaN or
        infinity: an error naming the first such item, or with keep_nonfinite the flags."""
        import torch

        valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] \
            < lengths.to(hidden.device)[:, None]
        bad = ((~torch.isfinite(hidden)).any(-1) & valid).any(-1).cpu().numpy()
        if bad.any() and not self.setup.keep_nonfinite:
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

    def __init__(self, cfg: WorkerConfig, setup: WorkerSetup, unit_id: str, width: int,
                 metadata: dict[bytes, bytes]) -> None:
        self.np_dtype = cfg.per_base_dtype
        self.d = width
        self.part = runtime.PartWriter(Path(setup.out) / PER_BASE_DIR, unit_id,
                                       schema.per_base_schema(width, cfg.per_base_dtype),
                                       metadata, setup.token)
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
                   dtype: str | None, device_type: str,
                   layer: str | None = None) -> manifest.Manifest:
    """The settings and inputs an `embed` folder's values depend on (not which items, nor
    --keep-nonfinite: it only adds marked rows, so a rerun with it resumes a run stopped by NaN).
    `layer` is recorded only when given, so folders of the final norm written before --layer
    existed still resume."""
    settings = {**manifest.model_fingerprint(model, config_sha256), "pooling": pooling,
                "per_base": per_base, "per_base_dtype": per_base_dtype if per_base else None,
                "dtype": dtype or "float32", "device_type": device_type,
                **({"layer": layer} if layer is not None else {})}
    inputs = {role: manifest.file_fingerprint(path)
              for role, path in (("fasta", fasta), ("reads", reads)) if path is not None}
    return manifest.Manifest("embed", settings, inputs)


class EmbedJob(Job):
    """`embed` as an instance of the job skeleton: items are intervals or reads, a unit's
    work is its items' bases, its parts embeddings/ (and per_base/) keyed by item_id."""

    kind, actor, verb = "embed", EmbedActor, "embedded"

    def __init__(self, opts: EmbedOptions) -> None:
        from genomeconv.models.families.kmer import parse_spec

        super().__init__(opts)
        self.opts: EmbedOptions = opts
        reads = opts.reads if opts.reads is not None else (
            opts.fasta if opts.fasta is not None and is_read_file(opts.fasta) else None)
        fasta = None if reads is not None and reads == opts.fasta else opts.fasta
        self.reads = str(Path(reads).resolve()) if reads is not None else None
        self.fasta = str(Path(fasta).resolve()) if fasta is not None else None
        self.unit_bp = 0  # the model's (`prepare`)
        if parse_spec(opts.model) is not None:
            raise InputError(f"embed needs embeddings (hidden states); --model {opts.model} is "
                             "a k-mer model, which has none: use a neural model (e.g. the "
                             "bundled HyenaDNA)")

    def check_inputs(self) -> dict[str, Any]:
        return {"fasta": self.fasta}

    def prepare(self, probe: LanguageModel) -> manifest.Manifest:
        from genomeconv.io.fasta import readable_fasta

        o = self.opts
        probe.require_embeddings("embed")
        probe.check_layer(o.layer)
        if self.reads is not None:
            self.items = plan_read_items(self.reads, regions=o.regions, min_mapq=o.min_mapq,
                                         min_length=o.min_length, reference=readable_fasta(
                                             self.fasta) if self.fasta else None)
        else:
            self.items = plan_fasta_items(self.fasta, regions=o.regions, gtf=o.gtf,
                                          genes=o.genes, bed=o.bed, features=o.features,
                                          spliced=o.spliced)
        self.unit_bp = default_unit_bp(probe, o.per_base, o.per_base_dtype, o.layer)
        model, _ = self.model_spec
        return embed_manifest(model, probe.config_sha256, fasta=self.fasta, reads=self.reads,
                              pooling=o.pooling, per_base=o.per_base,
                              per_base_dtype=o.per_base_dtype, dtype=o.dtype,
                              device_type=runtime.device_type(o.worker_device), layer=o.layer)

    def part_dirs(self) -> list[Path]:
        return [self.out / EMBEDDINGS_DIR, self.out / PER_BASE_DIR]

    def outputs(self) -> list[str]:
        return [str(d) for d in self.part_dirs()[:1 + self.opts.per_base]]

    def completed(self, manifest_sha256: str) -> set[str]:
        return completed_items(self.out, self.opts.per_base, manifest_sha256)

    def plan_units(self, done: set[str], workers: int) -> list[Unit]:
        todo = [it for it in self.items if it.item_id not in done]
        by_id = {it.item_id: it for it in todo}
        bp = self.opts.unit_bp or runtime.per_worker(self.unit_bp,
                                                     sum(it.length for it in todo), workers)
        units = [Unit(u.unit_id, [by_id[i] for i in u.item_ids],
                      sum(by_id[i].length for i in u.item_ids)) for u in plan_units(todo, bp)]
        return sorted(units, key=lambda u: -u.work)  # the longest first

    def worker_config(self) -> WorkerConfig:
        from genomeconv.io.fasta import readable_fasta

        o = self.opts
        return WorkerConfig(fasta=readable_fasta(self.fasta) if self.fasta else None,
                            reads=self.reads, pooling=o.pooling, per_base=o.per_base,
                            per_base_dtype=o.per_base_dtype, layer=o.layer,
                            batch_size=o.batch_size, chunk_size=o.chunk_size)

    def facts(self, tally: dict[str, Any]) -> dict[str, Any]:
        return {"bp selected": sum(it.length for it in self.items)}


def embed(opts: EmbedOptions, *, on_plan: Progress | None = None,
          on_unit: Progress | None = None) -> JobSummary:
    """Embed the items `opts` selects on its FASTA or reads into Parquet parts under
    `opts.out` (the job skeleton, pipelines/job.py, does the rest; resumes by item)."""
    return run_job(EmbedJob(opts), on_plan=on_plan, on_unit=on_unit)
