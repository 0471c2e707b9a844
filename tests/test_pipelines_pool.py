"""The model actors a run leaves behind on the local Ray (runtime.map_units): the next run with the
same model setup uses them, and writes exactly what fresh workers write; anything else, and a run
that fails or is interrupted, ends them. --num-workers beyond the cluster's CPUs runs one worker
per CPU instead of waiting for ever."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from genomeconv.pipelines import job, runtime
from genomeconv.pipelines.embed import embed
from genomeconv.pipelines.options import EmbedOptions, TrackOptions, VariantOptions
from genomeconv.pipelines.track import track
from genomeconv.pipelines.variants import score_variants
from helpers import random_seq, run_cli, save_tiny_model, write_fasta, write_vcf


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root, rng = tmp_path_factory.mktemp("pool"), np.random.default_rng(7)
    seqs = {f"c{k}": random_seq(rng, 700) for k in range(4)}
    fasta = write_fasta(root / "g.fa", seqs)
    records = [(c, p, ".", seqs[c][p - 1], "ACGT"[("ACGT".index(seqs[c][p - 1]) + 1) % 4])
               for c in seqs for p in (40, 350, 690)]
    return {"fasta": Path(fasta), "vcf": write_vcf(root / "v.vcf", {c: 700 for c in seqs},
                                                   records),
            "m1": save_tiny_model(root / "m1", seed=1, max_seq_len=256),
            "m2": save_tiny_model(root / "m2", seed=2, max_seq_len=256)}


def _runs(w: dict, out: Path) -> list[tuple[str, object]]:
    """Runs in an order where some follow a run of the same actor class and model setup."""
    return [
        ("embed", lambda: embed(EmbedOptions(fasta=w["fasta"], model=w["m1"],
                                             out=out / "e1", unit_bp=700))),
        ("embed", lambda: embed(EmbedOptions(fasta=w["fasta"], model=w["m1"], pooling="max",
                                             per_base=True, out=out / "e2", unit_bp=1400))),
        ("track", lambda: track(TrackOptions(fasta=w["fasta"], model=w["m1"], out=out / "t",
                                             context=64))),
        ("variants", lambda: score_variants(VariantOptions(
            variants=w["vcf"], fasta=w["fasta"], model=w["m1"], window=128, out=out / "v1"))),
        ("variants", lambda: score_variants(VariantOptions(
            variants=w["vcf"], fasta=w["fasta"], model=w["m2"], window=128, out=out / "v2"))),
        ("variants", lambda: score_variants(VariantOptions(
            variants=w["vcf"], fasta=w["fasta"], model=w["m1"], window=96, strands="fwd",
            out=out / "v3"))),
    ]


def _kept_ids() -> list[str]:
    return [a._actor_id.hex() for pool in runtime._session["kept"].values() for a in pool]


def _values(folder: Path) -> list[dict]:
    """A folder's Parquet rows, sorted (outputs are keyed, not ordered)."""
    rows = pq.read_table(folder).to_pylist()
    return sorted(rows, key=repr)


def test_a_kept_pool_serves_the_next_run_and_writes_what_fresh_workers_write(ray_local, world,
                                                                             tmp_path):
    kept = []
    for _, run in _runs(world, tmp_path / "kept"):
        run()
        kept.append(_kept_ids())
    assert all(len(ids) == 1 for ids in kept)  # one worker per run, kept after it
    assert kept[1] == kept[0]  # embed after embed, same model: the same actor
    assert len({ids[0] for ids in kept}) == 5  # every other change of class or model: a new one
    for _, run in _runs(world, tmp_path / "fresh"):
        runtime.release_workers()
        run()
    for folder in ("e1/embeddings", "e2/embeddings", "e2/per_base", "t/track", "v1", "v2", "v3"):
        assert _values(tmp_path / "kept" / folder) == _values(tmp_path / "fresh" / folder), folder
    assert sorted(p.name for p in (tmp_path / "kept" / "t" / "bigwig").iterdir()) == sorted(
        p.name for p in (tmp_path / "fresh" / "t" / "bigwig").iterdir())


def test_a_failed_or_interrupted_run_ends_its_pool(ray_local, world, tmp_path):
    import ray

    opts = EmbedOptions(fasta=world["fasta"], model=world["m1"], out=tmp_path / "a", unit_bp=700)
    embed(opts)
    (before,) = runtime._session["kept"].values()

    def stop(count: int, work: int) -> None:
        raise RuntimeError("stopped after the first unit")

    with pytest.raises(RuntimeError, match="stopped"):
        embed(EmbedOptions(fasta=world["fasta"], model=world["m1"], out=tmp_path / "b",
                           unit_bp=700), on_unit=stop)
    assert runtime._session["kept"] == {}
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(before[0].__ray_ready__.remote(), timeout=60)


def test_reset_peak_rss_counts_from_the_reset():
    """On Linux the peak restarts; without clear_refs it counts from the process's start."""
    block = np.ones(300 * 2**20 // 8)  # 300 MiB, every page touched
    del block
    before = job.peak_rss()
    job.reset_peak_rss()
    if Path("/proc/self/clear_refs").exists():
        assert job.peak_rss() < before - 200 * 2**20
    else:
        assert job.peak_rss() >= before


def test_more_workers_than_cpus_run_one_per_cpu(world, tmp_path):
    """The CLI joins the test run's Ray (2 CPUs) as a cluster: Ray held each of 3 actors' CPU
    for its life, so the third never started and its units waited for ever."""
    got = run_cli("embed", world["fasta"], "--model", world["m1"], "--out", tmp_path / "o",
                  "--num-workers", "3", "--unit-bp", "700", timeout=240)
    assert got.returncode == 0, got.stderr
    assert "--num-workers 3: running 2, one per CPU of the cluster" in got.stderr
    assert pq.read_table(tmp_path / "o" / "embeddings").num_rows == 4
