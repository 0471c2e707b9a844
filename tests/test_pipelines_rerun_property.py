"""Property: any sequence of interrupted reruns into one folder with result-neutral changes
(--batch-size / --unit-size, a subset or a superset of the items) ends, after one uninterrupted
run on real Ray, with each key exactly once and the values of one clean run.

An interrupted run is simulated honestly and cheaply: the driver's own steps (manifest, lock,
completed keys, grouping with `plan_units`) and the worker's own code (`EmbedActor.run_unit`,
`UnitScorer.run_unit`, committing under the run's token) run in this process for the first k
units, then the run "dies" leaving what a SIGKILL leaves: its committed parts, the per-base part of
a unit whose embeddings part never came, a stray temporary file and a lock file naming a process
that no longer exists.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genomeconv.models import HyenaConfig, HyenaDNA, load
from genomeconv.pipelines import embed as E
from genomeconv.pipelines import manifest, runtime
from genomeconv.pipelines import variants as V
from helpers import open_actor, random_seq, worker_setup, write_fasta

N_ITEMS = 7
PROPERTY = settings(max_examples=3, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
# one step: (indices of the items selected, batch/unit size, units committed before the kill)
STEPS = st.lists(st.tuples(st.sets(st.integers(0, N_ITEMS - 1), min_size=1),
                           st.integers(1, 4), st.integers(0, 3)), min_size=1, max_size=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A random genome, a tiny random model and a process id that no longer exists."""
    rng = np.random.default_rng(31)
    work = tmp_path_factory.mktemp("world")
    genome = {"c1": random_seq(rng, 900), "c2": random_seq(rng, 500)}
    fasta = str(Path(write_fasta(work / "g.fa", genome)).resolve())
    torch.manual_seed(4)
    model_dir = work / "model"
    HyenaDNA(HyenaConfig(d_model=16, n_layer=2, d_inner=32, max_seq_len=256)).save(model_dir)
    intervals = []
    for i in range(N_ITEMS):
        chrom = "c1" if i % 2 else "c2"
        start = int(rng.integers(0, 400))
        intervals.append((chrom, start, start + int(rng.integers(20, 90)), "+-"[i % 3 == 0]))
    alleles = []
    for i in range(N_ITEMS - 1):
        chrom = "c1" if i % 2 else "c2"
        pos = int(rng.integers(1, len(genome[chrom]) + 1))
        ref = genome[chrom][pos - 1]
        alleles.append((chrom, pos, ref, "ACGT".replace(ref, "")[i % 3]))
    alleles.append(alleles[2])  # an allele listed twice: written twice
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return {"genome": genome, "fasta": fasta, "model": str(model_dir.resolve()),
            "intervals": intervals, "alleles": alleles, "dead_pid": dead.pid, "work": work}


def _killed(out: Path, run: manifest.Run, dead_pid: int, temp_dir: Path) -> None:
    """What SIGKILL leaves besides committed parts: the lock's text naming a process that is
    gone, and a temporary part never renamed."""
    (out / manifest.LOCK_FILE).write_text(json.dumps(
        {"pid": dead_pid, "host": "here", "command": "genomeconv (killed)",
         "run_id": run.token.run_id}))
    temp_dir.mkdir(parents=True, exist_ok=True)
    (temp_dir / f".tmp-unit-{dead_pid}-deadbeef").write_bytes(b"PAR1 half a part")


# --- embed -------------------------------------------------------------------------------------


def _bed(path: Path, world, picks) -> str:
    path.write_text("".join(f"{c}\t{s}\t{e}\tb{i}\t0\t{st_}\n" for i, (c, s, e, st_)
                            in enumerate(world["intervals"]) if i in picks))
    return str(path)


def _embed_run(world, out: Path, bed: str, batch_size: int, stop_after: int | None) -> None:
    """The driver's steps in this process, the first `stop_after` units, then the kill."""
    items = E.plan_fasta_items(world["fasta"], bed=bed)
    run_manifest = E.embed_manifest(
        world["model"], load(world["model"]).config_sha256, fasta=world["fasta"], reads=None,
        pooling="mean", per_base=True, per_base_dtype="float32", dtype=None, device_type="cpu")
    dirs = [out / E.EMBEDDINGS_DIR, out / E.PER_BASE_DIR]
    with manifest.open_run(out, run_manifest, part_dirs=dirs, command="test") as run:
        done = E.completed_items(out, True, run_manifest.sha256)
        todo = [it for it in items if it.item_id not in done]
        by_id = {it.item_id: it for it in todo}
        units = E.plan_units(todo, 60 * batch_size)  # bases per unit: another grouping each run
        config = E.WorkerConfig(fasta=world["fasta"], reads=None, per_base=True,
                                batch_size=batch_size)
        setup = worker_setup(world["model"], out, manifest_sha256=run_manifest.sha256,
                             token=run.token)
        actor = open_actor(E.EmbedActor, setup, config)
        for unit in units[:stop_after]:
            actor.run_unit(unit.unit_id, [by_id[i] for i in unit.item_ids])
        if stop_after is not None and len(units) > stop_after:  # killed between two commits
            unit = units[stop_after]
            unit_items = [by_id[i] for i in unit.item_ids]
            writer = E._PerBaseWriter(config, setup, unit.unit_id, actor.model.d_model,
                                      actor.meta_pb)
            hidden, lengths = actor.hidden([actor.sequence(i) for i in unit_items])
            for j, it in enumerate(unit_items):
                writer.write(it, hidden[j, :int(lengths[j])])
            writer.commit()
    if stop_after is not None:
        _killed(out, run, world["dead_pid"], out / E.EMBEDDINGS_DIR)


@pytest.fixture(scope="module")
def clean_embed(world):
    out = world["work"] / "clean_embed"
    _embed_run(world, out, _bed(world["work"] / "all.bed", world, range(N_ITEMS)), 4, None)
    return {r["item_id"]: r for r in pq.read_table(out / E.EMBEDDINGS_DIR).to_pylist()}, \
        pq.read_table(out / E.PER_BASE_DIR).to_pandas()


@PROPERTY
@given(steps=STEPS, final_batch=st.integers(1, 5))
def test_embed_interrupted_reruns_end_exactly_once(ray_local, world, clean_embed, steps,
                                                   final_batch):
    want, want_pb = clean_embed
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        for k, (picks, batch, stop_after) in enumerate(steps):
            _embed_run(world, out, _bed(Path(tmp) / f"s{k}.bed", world, picks), batch, stop_after)
        summary = E.embed(
            E.EmbedOptions(
                fasta=world["fasta"],
                out=out,
                bed=_bed(Path(tmp) / "all.bed", world, range(N_ITEMS)),
                model=world["model"],
                per_base=True,
                batch_size=final_batch,
            )
        )
        assert summary.items == N_ITEMS
        rows = pq.read_table(out / E.EMBEDDINGS_DIR).to_pylist()
        assert sorted(r["item_id"] for r in rows) == sorted(want)  # each item exactly once
        for r in rows:
            np.testing.assert_allclose(r["embedding"], want[r["item_id"]]["embedding"],
                                       rtol=1e-5, atol=1e-6)
        per_base = pq.read_table(out / E.PER_BASE_DIR).to_pandas()
        assert len(per_base) == len(want_pb)
        assert not per_base.duplicated(["item_id", "position"]).any()
        got = per_base.sort_values(["item_id", "position"])
        ref = want_pb.sort_values(["item_id", "position"])
        assert (got.item_id.to_numpy() == ref.item_id.to_numpy()).all()
        np.testing.assert_allclose(np.stack(got.embedding.to_numpy()),
                                   np.stack(ref.embedding.to_numpy()), rtol=1e-5, atol=1e-6)
        assert not list((out / E.EMBEDDINGS_DIR).glob(".tmp-*"))


# --- score-variants ----------------------------------------------------------------------------


def _table(path: Path, world, picks) -> str:
    path.write_text("chrom\tpos\tref\talt\n" + "".join(
        f"{c}\t{p}\t{r}\t{a}\n" for i, (c, p, r, a) in enumerate(world["alleles"])
        if i in picks))
    return str(path)


def _variants_run(world, out: Path, table: str, unit_size: int, stop_after: int | None) -> None:
    """The driver's steps in this process, the first `stop_after` units, then the kill."""
    from genomeconv.io.variants import iter_variants

    found = list(iter_variants(table))
    by_id = dict(zip(V.item_ids(found), found))
    run_manifest = V.variants_manifest(
        world["model"], load(world["model"]).config_sha256, fasta=world["fasta"], window=33,
        rc=True, site_probs=True, dtype=None, device_type="cpu")
    with manifest.open_run(out, run_manifest, part_dirs=[out], command="test") as run:
        done = V.completed_variants(out, run_manifest.sha256)
        units = runtime.plan_units([i for i in by_id if i not in done], unit_size)
        setup = worker_setup(world["model"], out, manifest_sha256=run_manifest.sha256,
                             token=run.token)
        scorer = open_actor(V.UnitScorer, setup, V.ScorerConfig(fasta=world["fasta"], window=33,
                                                                site_probs=True))
        for unit in units[:stop_after]:
            scorer.run_unit(unit.unit_id, [by_id[i] for i in unit.item_ids])
    if stop_after is not None:
        _killed(out, run, world["dead_pid"], out)


@pytest.fixture(scope="module")
def clean_variants(world):
    out = world["work"] / "clean_variants"
    _variants_run(world, out, _table(world["work"] / "all.tsv", world, range(N_ITEMS)), 4, None)
    return {(r["chrom"], r["pos"], r["ref"], r["alt"]): r for r in pq.read_table(out).to_pylist()}


@PROPERTY
@given(steps=STEPS, final_unit=st.integers(1, 5))
def test_variants_interrupted_reruns_end_exactly_once(ray_local, world, clean_variants, steps,
                                                      final_unit):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        for k, (picks, unit_size, stop_after) in enumerate(steps):
            _variants_run(world, out, _table(Path(tmp) / f"s{k}.tsv", world, picks), unit_size,
                          stop_after)
        summary = V.score_variants(
            V.VariantOptions(
                variants=_table(Path(tmp) / "all.tsv", world, range(N_ITEMS)),
                fasta=world["fasta"],
                out=out,
                model=world["model"],
                window=33,
                site_probs=True,
                unit_alleles=final_unit,
            )
        )
        assert summary.items == N_ITEMS
        rows = pq.read_table(out).to_pylist()
        keys = Counter((r["chrom"], r["pos"], r["ref"], r["alt"]) for r in rows)
        assert keys == Counter(world["alleles"])  # each allele as often as the input lists it
        for r in rows:
            want = clean_variants[(r["chrom"], r["pos"], r["ref"], r["alt"])]
            for key in ("llr_fwd", "llr_rev", "emb_l2", "p_ref", "p_alt"):
                assert r[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
