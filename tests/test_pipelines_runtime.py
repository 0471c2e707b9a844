"""Resume bookkeeping (work units, atomic parts) and output metadata shared by every job."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import genomeconv
from genomeconv.errors import InputError
from genomeconv.pipelines import runtime, schema


@dataclass
class _Model:
    family: str = "hyenadna"
    model_id: str = "tests/random-model"
    config_sha256: str = "ab" * 32


def test_plan_units_is_deterministic_and_covers_every_item_once():
    items = [f"item{i:03d}" for i in range(23)]
    shuffled = items[7:] + items[:7]
    a = runtime.plan_units(items, 5)
    b = runtime.plan_units(shuffled, 5)
    assert [u.unit_id for u in a] == [u.unit_id for u in b]
    flat = [i for u in a for i in u.item_ids]
    assert sorted(flat) == sorted(items) and len(flat) == len(set(flat))
    assert [len(u.item_ids) for u in a] == [5, 5, 5, 5, 3]


def test_plan_units_asserts_unique_ids_and_a_positive_size():
    """Bugs of the caller (sizes are checked as options before planning): assertions."""
    with pytest.raises(AssertionError, match="unique"):
        runtime.plan_units(["a", "a"], 2)
    with pytest.raises(AssertionError, match="unit_size"):
        runtime.plan_units(["a"], 0)


def test_write_part_is_atomic_and_carries_metadata(tmp_path):
    meta = schema.file_metadata(_Model(), "genomeconv embed x.fa", "embeddings")
    table = pa.table({"item_id": ["a", "b"], "value": [1.0, 2.0]})
    units = runtime.plan_units(["a", "b"], 2)
    (tmp_path / f".tmp-{units[0].unit_id}-1-deadbeef").write_bytes(b"partial")  # a killed write
    writer = runtime.PartWriter(tmp_path, units[0].unit_id, table.schema, meta)
    writer.write(table)
    assert not list(tmp_path.glob("part-*"))  # nothing visible before the commit
    path = writer.commit()
    assert [p.name for p in tmp_path.glob("part-*")] == [f"part-{units[0].unit_id}.parquet"]
    assert runtime.write_part(table, tmp_path, units[0].unit_id, meta) == path
    read = pq.read_table(path)
    assert read.column("item_id").to_pylist() == ["a", "b"]
    md = pq.read_schema(path).metadata
    assert md[schema.KEY_VERSION] == genomeconv.__version__.encode()
    assert md[schema.KEY_MODEL] == b"tests/random-model" and md[schema.KEY_FAMILY] == b"hyenadna"
    assert md[schema.KEY_MODEL_SHA] == b"ab" * 32
    assert md[schema.KEY_COMMAND] == b"genomeconv embed x.fa"
    assert md[schema.KEY_SCHEMA] == schema.SCHEMA_VERSION.encode()
    assert md[schema.KEY_KIND] == b"embeddings"


def test_schemas_have_keys_and_fixed_size_embeddings():
    emb = schema.embeddings_schema(16)
    assert emb.field("embedding").type == pa.list_(pa.float32(), 16)
    for key in ("item_id", "chrom", "start", "end", "strand", "gene_id", "gene_name", "read_name"):
        assert key in emb.names
    assert schema.per_base_schema(8, "float16").field("embedding").type == pa.list_(pa.float16(), 8)
    assert schema.VARIANTS.names[:4] == ["chrom", "pos", "ref", "alt"]


def test_an_address_where_no_cluster_answers_is_one_line_at_once(tmp_path, rng):
    """--address 127.0.0.1:1 (or the same in RAY_ADDRESS) waited past 300 s in ray.init,
    printing only Ray's warnings (issue 30): the address is probed before anything else."""
    import os
    import subprocess
    import sys
    import time

    from helpers import assert_one_line_error, cli_env, random_seq, write_fasta

    fasta = write_fasta(tmp_path / "g.fa", {"c1": random_seq(rng, 200)})
    script = [sys.executable, "-c", "from genomeconv.cli import main; main()"]
    runs = {"--address 127.0.0.1:1": (["--address", "127.0.0.1:1"], cli_env()),
            "RAY_ADDRESS=127.0.0.1:1": ([], {**cli_env(), "RAY_ADDRESS": "127.0.0.1:1"})}
    t0 = time.monotonic()
    procs = {where: subprocess.Popen([*script, "embed", fasta, "--out", str(tmp_path / "o"),
                                      *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
             for where, (args, env) in runs.items()}
    for where, proc in procs.items():
        _, stderr = proc.communicate(timeout=120)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
        assert_one_line_error(result, f"no Ray cluster answers at {where}")
    assert time.monotonic() - t0 < 60
    assert not os.path.exists(tmp_path / "o")  # refused before the output folder is made
    with pytest.raises(InputError, match="--address head:port: expected HOST:PORT"):
        runtime.check_address("head:port")
