"""Training data: genome windows for pretraining and labelled variants for fine-tuning.

Pretraining split. With `val_records`, those FASTA records are held out whole. Without, the
last `val_fraction` of every record is held out (so a single-record genome still has a
validation region: for a 5.3 Mbp chromosome and 0.02, its last 106 kb). Training windows never
overlap the held-out bases; they are drawn uniformly over all valid start positions of the
training segments, each on the forward or reverse strand with probability 1/2, from a generator
seeded by (seed, step), so every rank and every resumed run sees the same batches.

Labelled variants: a VCF/BCF with a label INFO field (Number=1 or Number=A) or a table with a
label column; rows are aligned one per ALT allele with `genomeconv.io.variants.iter_variants`.
The train/validation split is by chromosome (whole chromosomes held out, so neighbouring
variants never straddle the split); with a single chromosome the variants past the
(1 - val_fraction) quantile of POS are held out and training variants within one window of
them are dropped.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genomeconv.errors import InputError
from genomeconv.io.variants import Variant, iter_variants

COMPLEMENT_IDS = np.arange(16, dtype=np.int64)
COMPLEMENT_IDS[[7, 8, 9, 10]] = [10, 9, 8, 7]  # A<->T, C<->G on token ids; N and specials stay


def reverse_complement_ids(ids: np.ndarray) -> np.ndarray:
    """Reverse complement of token ids along the last axis."""
    return COMPLEMENT_IDS[np.asarray(ids)[..., ::-1]]


@dataclass
class Segment:
    """A stretch of one record as token ids (uint8); start is 0-based on the record."""

    record: str
    start: int
    ids: np.ndarray


@dataclass
class GenomeSplit:
    """Training and held-out segments of a genome."""

    train: list[Segment]
    val: list[Segment]

    def describe(self) -> str:
        """One line: bases and records on each side of the split."""
        def side(segs: list[Segment]) -> str:
            spans = ", ".join(f"{s.record}:{s.start + 1}-{s.start + len(s.ids)}" for s in segs)
            return f"{sum(len(s.ids) for s in segs):,} bp ({spans})"
        return f"train {side(self.train)}; validation {side(self.val)}"


def load_genome(path: str | Path, tokenize: Callable[[Sequence[str]], Any], *,
                val_records: Sequence[str] = (), val_fraction: float = 0.02) -> GenomeSplit:
    """Read every record of an (indexed or indexable) FASTA as the model's token ids
    (`tokenize`: its `LanguageModel.tokenize`) and split it (see module doc)."""
    from genomeconv.io.fasta import FastaFile

    train, val = [], []
    with FastaFile(path) as fa:
        held = {_record(fa, r, path) for r in val_records}
        for name, length in zip(fa.references, fa.lengths):
            ids = tokenize([fa.fetch(name)])[0].numpy().astype(np.uint8)
            if held:
                (val if name in held else train).append(Segment(name, 0, ids))
                continue
            cut = length - int(np.ceil(length * val_fraction))
            if cut > 0:
                train.append(Segment(name, 0, ids[:cut]))
            if cut < length:
                val.append(Segment(name, cut, ids[cut:]))
    if not train or not val:
        raise InputError(f"the split left no {'training' if not train else 'validation'} "
                         "sequence (check --val-records / --val-fraction)", path=path)
    return GenomeSplit(train, val)


def check_window_fits(split: GenomeSplit, length: int) -> None:
    """Training windows of `length` fit in some training segment (else InputError)."""
    longest = max(len(s.ids) for s in split.train)
    if longest < length:
        raise InputError(f"no training segment is as long as the window ({length} bp; the "
                         f"longest is {longest} bp): lower --seq-len / --warmup-lengths")


def _record(fa, name: str, path: str | Path) -> str:
    """The FASTA's name for a --val-records entry (chr1 <-> 1), or InputError."""
    try:
        return fa.resolve(name)
    except KeyError:
        shown = ", ".join(fa.references[:5]) + (", ..." if len(fa.references) > 5 else "")
        raise InputError(f"--val-records {name!r} is not a record (records: {shown})",
                         path=path) from None


def sample_windows(segments: Sequence[Segment], rng: np.random.Generator, n: int,
                   length: int) -> np.ndarray:
    """n windows (n, length) int64 of token ids, uniform over start positions and strands."""
    eligible = [s for s in segments if len(s.ids) >= length]
    if not eligible:
        raise InputError(f"no training segment is as long as the window ({length} bp)")
    starts_per = np.array([len(s.ids) - length + 1 for s in eligible], dtype=np.float64)
    which = rng.choice(len(eligible), size=n, p=starts_per / starts_per.sum())
    starts = rng.integers(0, starts_per[which].astype(np.int64))
    minus = rng.random(n) < 0.5
    out = np.stack([eligible[w].ids[s:s + length] for w, s in zip(which, starts)]).astype(np.int64)
    out[minus] = reverse_complement_ids(out[minus])
    return out


def tile_windows(segments: Sequence[Segment], length: int, n_max: int) -> list[np.ndarray]:
    """Non-overlapping windows of the segments, at most n_max // 2 evenly spaced ones, each on
    both strands (forward then reverse complement)."""
    tiles = [s.ids[i:i + length].astype(np.int64) for s in segments
             for i in range(0, len(s.ids) - length + 1, length)]
    if not tiles:
        raise InputError(f"the validation region is shorter than one window ({length} bp): "
                         "raise --val-fraction or lower --seq-len")
    keep = max(1, n_max // 2)
    if len(tiles) > keep:
        tiles = [tiles[i] for i in np.linspace(0, len(tiles) - 1, keep).round().astype(int)]
    return [w for t in tiles for w in (t, reverse_complement_ids(t))]


# ------------------------------------------------------------------------ labelled variants
@dataclass
class LabelledVariants:
    """Variants (one per ALT allele) with their label strings, and the class names."""

    variants: list[Variant]
    labels: list[str]

    @property
    def classes(self) -> list[str]:
        """Sorted distinct labels (numerically when all are numbers)."""
        distinct = set(self.labels)
        try:
            return sorted(distinct, key=float)
        except ValueError:
            return sorted(distinct)


def read_labelled_variants(path: str | Path, label: str) -> LabelledVariants:
    """Variants of `path` with the INFO field (VCF/BCF) or column (table) named `label`."""
    path = str(path)
    variants = list(iter_variants(path))
    if path.endswith((".vcf", ".vcf.gz", ".vcf.bgz", ".bcf")):
        labels = _vcf_labels(path, label)
    else:
        labels = _table_labels(path, label)
    if not variants:
        raise InputError("no variants to train on", path=path)
    if len(labels) != len(variants):
        raise InputError(f"{len(labels)} labels for {len(variants)} ALT alleles", path=path)
    missing = [v.location for v, y in zip(variants, labels) if y in ("", ".", "None")]
    if missing:
        raise InputError(f"{missing[0]}: missing label {label!r} ({len(missing)} rows without "
                         "one)")
    return LabelledVariants(variants, labels)


def _vcf_labels(path: str, field: str) -> list[str]:
    import pysam

    out: list[str] = []
    with pysam.VariantFile(path) as vf:
        if field not in vf.header.info:
            raise InputError(f"no INFO field {field!r} in the header (--label-field; INFO "
                             f"fields: {', '.join(vf.header.info) or 'none'})", path=path)
        for rec in vf:
            n_alt = len(rec.alts) if rec.alts else 1
            value = rec.info.get(field)
            values = list(value) if isinstance(value, tuple) else [value] * n_alt
            if len(values) != n_alt:
                raise InputError(f"{len(values)} values of {field!r} for {n_alt} ALT alleles",
                                 path=path, record=f"{rec.chrom}:{rec.pos}")
            out.extend("" if v is None else str(v) for v in values)
    return out


def _table_labels(path: str, column: str) -> list[str]:
    if path.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        names = {n.lstrip("#").lower(): n for n in table.column_names}
        if column.lower() not in names or "alt" not in names:
            raise InputError(f"no column {column!r} (--label-column; found "
                             f"{table.column_names})", path=path)
        labels = table.column(names[column.lower()]).to_pylist()
        alts = table.column(names["alt"]).to_pylist()
    else:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", newline="") as f:
            delimiter = "," if ".csv" in path else "\t"
            rows = list(csv.reader((line for line in f if not line.startswith("##")),
                                   delimiter=delimiter))
        if not rows:
            raise InputError("empty table", path=path)
        header = [h.strip().lstrip("#").lower() for h in rows[0]]
        if column.lower() not in header or "alt" not in header:
            raise InputError(f"no column {column!r} (--label-column; found {rows[0]})",
                             path=path)
        li, ai = header.index(column.lower()), header.index("alt")
        labels = [r[li] for r in rows[1:] if r]
        alts = [r[ai] for r in rows[1:] if r]
    return [str(y) for y, alt in zip(labels, alts) for _ in str(alt).split(",")]


def split_by_chromosome(variants: Sequence[Variant], *, val_chroms: Sequence[str] = (),
                        val_fraction: float = 0.2, window: int = 0) -> tuple[list[int], list[int]]:
    """Indices of training and validation variants (see module doc).

    Without `val_chroms`, chromosomes are taken for validation in sorted name order from the
    end until they hold at least `val_fraction` of the variants (at least one, never all).
    """
    chroms = sorted({v.chrom for v in variants})
    if val_chroms:
        held = set(val_chroms)
    elif len(chroms) > 1:
        counts = {c: sum(v.chrom == c for v in variants) for c in chroms}
        held, total = set(), 0
        for c in reversed(chroms[1:]):
            held.add(c)
            total += counts[c]
            if total >= val_fraction * len(variants):
                break
    else:
        cut = float(np.quantile([v.pos for v in variants], 1.0 - val_fraction))
        val = [i for i, v in enumerate(variants) if v.pos > cut]
        train = [i for i, v in enumerate(variants) if v.pos <= cut - window]
        return train, val
    train = [i for i, v in enumerate(variants) if v.chrom not in held]
    val = [i for i, v in enumerate(variants) if v.chrom in held]
    return train, val
