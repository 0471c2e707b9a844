"""Many small items at the model's speed (issue 22): work units sized by bases, length-sorted
batches whose padding never reaches a pooled vector, per-base rows in whole row groups, reads
fetched in one pass, variant units sized by window. Real files, a real tiny model, real Ray.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pyarrow.parquet as pq
import pysam
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import open_actor, random_seq, save_tiny_model, worker_setup
from genomeconv.io.reads import ReadFile, ReadRef, scan_reads
from genomeconv.models import load, pool
from genomeconv.models.tokenizer import tokenize
from genomeconv.pipelines import runtime
from genomeconv.pipelines.embed import (FORWARD_TOKENS, PER_BASE_ROWS, EmbedActor, WorkerConfig,
                                        _forward_groups, default_unit_bp, embed, plan_read_items,
                                        plan_units)
from genomeconv.pipelines.variants import alleles_per_unit
from genomeconv.pipelines.options import EmbedOptions


def write_ubam(path, seqs: dict[str, str]) -> str:
    """An unaligned BAM with one record per read, in the given order."""
    with pysam.AlignmentFile(str(path), "wb", header={"HD": {"VN": "1.6", "SO": "unknown"}}) as bam:
        for name, seq in seqs.items():
            seg = pysam.AlignedSegment(bam.header)
            seg.query_name, seg.flag, seg.query_sequence = name, 4, seq
            bam.write(seg)
    return str(path)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A random HyenaDNA small enough to embed hundreds of reads in seconds."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", seed=11, max_seq_len=512)


@pytest.fixture(scope="module")
def reads(tmp_path_factory):
    """300 reads of 20-400 bp (lengths spread, so batches mix long and short reads)."""
    rng = np.random.default_rng(22)
    seqs = {f"r{i:03d}": random_seq(rng, int(n)) for i, n in
            enumerate(rng.integers(20, 401, 300))}
    return seqs, write_ubam(tmp_path_factory.mktemp("reads") / "r.bam", seqs)


# --- grouping ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(costs=st.lists(st.integers(1, 5000), min_size=1, max_size=300),
       unit_cost=st.integers(1, 20_000), max_items=st.integers(1, 50), seed=st.integers(0, 9))
def test_units_by_cost_cover_each_item_once_deterministically(costs, unit_cost, max_items, seed):
    ids = [f"item{i:04d}" for i in range(len(costs))]
    units = runtime.plan_units(ids, max_items, costs=costs, unit_cost=unit_cost)
    order = list(range(len(ids)))
    random.Random(seed).shuffle(order)
    again = runtime.plan_units([ids[i] for i in order], max_items,
                               costs=[costs[i] for i in order], unit_cost=unit_cost)
    assert units == again  # the same items in another order: the same units and ids
    flat = [i for u in units for i in u.item_ids]
    assert sorted(flat) == ids
    cost = dict(zip(ids, costs))
    for u in units:
        assert len(u.item_ids) <= max_items
        if any(cost[i] >= unit_cost for i in u.item_ids):
            assert len(u.item_ids) == 1  # a long item is alone
    short = [i for i in ids if cost[i] < unit_cost]
    n = max(math.ceil(sum(cost[i] for i in short) / unit_cost),
            math.ceil(len(short) / max_items))
    assert len(units) - (len(ids) - len(short)) <= max(0, 2 * n - 1)


def test_unit_count_grows_with_bases_not_items():
    def count(n_items: int, length: int) -> int:
        ids = [f"i{k}" for k in range(n_items)]
        return len(runtime.plan_units(ids, runtime.UNIT_MAX_ITEMS, costs=[length] * n_items,
                                      unit_cost=1_000_000))

    assert count(26_000, 163) == 5  # 4.2 Mbp of reads: 5 units, not 1,625
    assert count(52_000, 163) == 9  # twice the bases: about twice the units
    assert count(13_000, 326) == count(26_000, 163)  # same bases, half the items: the same
    assert count(3, 163) == 1
    assert sorted(len(u.item_ids) for u in runtime.plan_units(
        [f"i{k}" for k in range(1000)], 400, costs=[1] * 1000, unit_cost=10**6)) \
        == [333, 333, 334]  # the item cap alone: balanced units


def test_embed_units_use_item_lengths_and_model_size(reads):
    items = plan_read_items(reads[1])
    total = sum(it.length for it in items)
    units = plan_units(items, total // 3)
    assert len(units) in (3, 4) and sum(len(u.item_ids) for u in units) == len(items)
    bundled = load(None)
    assert runtime.unit_bases(bundled.work_per_base) == 8 * 2**20
    assert runtime.unit_bases(256 * 8) == 2**19  # a larger model: fewer bases per unit


def test_small_jobs_keep_every_worker_busy(reads, tiny_model):
    items = plan_read_items(reads[1])
    model = load(tiny_model)
    total = sum(it.length for it in items)
    bp = default_unit_bp(model)
    assert len(plan_units(items, runtime.per_worker(bp, total, 1))) == 1  # small: one part
    assert len(plan_units(items, runtime.per_worker(bp, total, 4))) == 4
    assert runtime.per_worker(default_unit_bp(model, per_base=True), total, 1) == \
        runtime.per_worker(bp, total, 1)
    assert runtime.per_worker(2048, 11, 2) == 6 and runtime.per_worker(5, 11, 2) == 5
    assert runtime.per_worker(2048, 0, 3) == 1


def test_variant_units_are_sized_by_window(tiny_model):
    model = load(tiny_model)
    bases = runtime.unit_bases(model.work_per_base)
    small, large = (alleles_per_unit(bases, w, rc=True) for w in (1024, 4096))
    assert small == 4 * large and alleles_per_unit(bases, 1024, rc=False) == 2 * small
    assert alleles_per_unit(bases, 1 << 30, rc=True) == 1
    assert alleles_per_unit(bases, 2, rc=False) == runtime.UNIT_MAX_ITEMS


def test_forward_groups_sort_by_length_and_bound_padding():
    rng = np.random.default_rng(5)
    lengths = [int(n) for n in rng.integers(1, 40_000, 500)]
    groups = _forward_groups(lengths, 16)
    assert sorted(k for g in groups for k in g) == list(range(500))
    flat = [lengths[k] for g in groups for k in g]
    assert flat == sorted(lengths)
    for g in groups:
        assert len(g) <= 16
        assert len(g) == 1 or len(g) * max(lengths[k] for k in g) <= FORWARD_TOKENS


# --- masked pooling ----------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "max", "last"])
def test_masked_pool_sees_only_each_rows_positions(pooling, rng):
    hidden = torch.from_numpy(rng.standard_normal((6, 50, 8)))
    lengths = torch.tensor([50, 1, 17, 33, 2, 49])
    padded = hidden.clone()
    for b, n in enumerate(lengths.tolist()):
        padded[b, n:] = 1e6  # padding that must never show
    got = pool(padded, pooling, lengths)
    for b, n in enumerate(lengths.tolist()):
        own = pool(hidden[b:b + 1, :n], pooling)[0]  # float64: the row alone
        np.testing.assert_allclose(got[b].numpy(), own.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pooling", ["mean", "max", "last"])
def test_pooled_read_does_not_depend_on_its_batch(pooling, reads, tiny_model, tmp_path,
                                                 one_thread):
    """The worker's own path (fetch, sort, pad, model, pool, write) with batches of 1, 7 and 64
    reads: every read's vector equals its embedding alone, and the plain forward's."""
    seqs, bam = reads
    items = plan_read_items(bam)[:80]  # 20-400 bp
    seqs = {it.read_name: seqs[it.read_name] for it in items}
    tables = {}
    for batch in (1, 7, 64):
        cfg = WorkerConfig(fasta=None, reads=bam, pooling=pooling, batch_size=batch)
        open_actor(EmbedActor, worker_setup(tiny_model, tmp_path / str(batch)), cfg).run_unit(
            "u", items)
        table = pq.read_table(tmp_path / str(batch) / "embeddings" / "part-u.parquet")
        tables[batch] = {r["read_name"]: np.asarray(r["embedding"]) for r in table.to_pylist()}
    model = load(tiny_model)
    reduce = {"mean": lambda h: h.mean(0), "max": lambda h: h.max(0), "last": lambda h: h[-1]}
    for name, seq in list(seqs.items())[::8]:
        with torch.no_grad():
            ref = reduce[pooling](model(tokenize(seq)[None])[0].double().numpy())
        for batch in (1, 7, 64):
            np.testing.assert_allclose(tables[batch][name], ref, rtol=1e-4, atol=1e-5)
    for batch in (7, 64):  # batched vs alone: float32 rounding of another FFT size only
        for name in seqs:
            np.testing.assert_allclose(tables[batch][name], tables[1][name], rtol=1e-5,
                                       atol=1e-6)


# --- reads fetched in one pass -----------------------------------------------------------------


def test_read_file_sequences_match_one_by_one(reads):
    seqs, bam = reads
    refs = list(scan_reads(bam))
    with ReadFile(bam) as rf:
        for pick in (refs, refs[::37], random.Random(3).sample(refs, 120)):
            assert rf.sequences(pick) == [seqs[r.name] for r in pick]
        moved = ReadRef("nope", 4, None, 0, 0, "+", 10, refs[5].offset)
        with pytest.raises(KeyError, match="'nope'"):
            rf.sequences([refs[0], moved])


# --- end to end ---------------------------------------------------------------------------------


def test_reads_job_writes_few_parts_in_whole_row_groups(ray_local, reads, tiny_model, tmp_path):
    seqs, bam = reads
    total = sum(map(len, seqs.values()))
    out = tmp_path / "out"
    summary = embed(
        EmbedOptions(
            fasta=bam, out=out, model=tiny_model, per_base=True, batch_size=32, unit_bp=total // 2
        )
    )
    parts = sorted((out / "embeddings").glob("part-*.parquet"))
    assert summary.units == len(parts) in (2, 3) and summary.items_done == len(seqs)
    names = [n for p in parts for n in pq.read_table(p, columns=["read_name"])
             .column("read_name").to_pylist()]
    assert sorted(names) == sorted(seqs)  # every read once, by key
    for p in (out / "per_base").glob("part-*.parquet"):
        meta = pq.ParquetFile(p).metadata
        # rows of ~100 reads per part, in whole row groups (not one row group per read)
        assert meta.num_row_groups == math.ceil(meta.num_rows / PER_BASE_ROWS)
    per_base = pq.read_table(out / "per_base")
    assert per_base.num_rows == total
    again = embed(
        EmbedOptions(
            fasta=bam, out=out, model=tiny_model, per_base=True, batch_size=7, unit_bp=total // 2
        )
    )
    assert again.items_skipped == len(seqs) and again.units == again.items_done == 0

    default = embed(
        EmbedOptions(fasta=bam, out=tmp_path / "default", model=tiny_model, batch_size=32)
    )
    assert default.units == 1  # the whole job is far less than one unit's work
