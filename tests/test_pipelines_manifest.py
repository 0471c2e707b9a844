"""Run manifests, the folder lock, commits under a run token and part verification, on real files
and real processes (no Ray: the pipelines' tests run these through Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from genomeconv.errors import GenomeconvError, InputError
from genomeconv.models import HyenaConfig, HyenaDNA, load
from genomeconv.pipelines import manifest, runtime, schema


def make_manifest(tmp_path: Path, **settings) -> manifest.Manifest:
    fasta = tmp_path / "g.fa"
    if not fasta.exists():
        fasta.write_text(">c\nACGTACGTAC\n")
    return manifest.Manifest("embed", {"pooling": "mean", **settings},
                             {"fasta": manifest.file_fingerprint(fasta)})


def write_part(folder: Path, name: str, keys: list[str], sha: str) -> Path:
    table = pa.table({"item_id": keys, "value": [1.0] * len(keys)})
    meta = {schema.KEY_MANIFEST: sha.encode(), schema.KEY_KIND: b"embeddings"}
    return runtime.write_part(table, folder, name, meta)


def test_fingerprints_follow_content_not_touches(tmp_path):
    path = tmp_path / "g.fa"
    path.write_text(">c\nACGTACGTAC\n")
    a = make_manifest(tmp_path)
    os.utime(path, ns=(1, 1))  # touched, same bytes: whole-file hash, mtime not compared
    assert make_manifest(tmp_path).sha256 == a.sha256
    path.write_text(">c\nACGTACGTAA\n")  # same size, other bytes
    diffs = manifest.differences(a, make_manifest(tmp_path))
    assert len(diffs) == 1 and diffs[0].startswith("fasta.sha256: ")
    assert manifest.differences(a, make_manifest(tmp_path, pooling="max"))[-1] == \
        "pooling: 'mean' (in the folder) vs 'max' (this run)"


def test_large_inputs_are_sampled_and_compared_by_mtime(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "FULL_HASH_BYTES", 100)
    monkeypatch.setattr(manifest, "SAMPLE_BYTES", 16)
    path = tmp_path / "big.fa"
    path.write_bytes(os.urandom(1000))
    fp = manifest.file_fingerprint(path)
    assert "sha256" not in fp and len(fp["sha256_head_tail"]) == 64
    m = manifest.Manifest("embed", {}, {"fasta": fp})
    os.utime(path, ns=(fp["mtime_ns"] + 10**9, fp["mtime_ns"] + 10**9))
    diffs = manifest.differences(m, manifest.Manifest(
        "embed", {}, {"fasta": manifest.file_fingerprint(path)}))
    assert [d.split(":")[0] for d in diffs] == ["fasta.mtime_ns"]


def test_model_fingerprint_hashes_the_weights(tmp_path):
    torch.manual_seed(0)
    model = HyenaDNA(HyenaConfig(d_model=8, n_layer=1, d_inner=16, max_seq_len=32))
    model.save(tmp_path / "m")
    a = manifest.model_fingerprint(str(tmp_path / "m"), model.config_sha256)
    assert a["model"] == str((tmp_path / "m").resolve())
    with torch.no_grad():
        model.lm_head.weight.add_(1e-3)  # same config, other weights
    model.save(tmp_path / "m")
    b = manifest.model_fingerprint(str(tmp_path / "m"), model.config_sha256)
    assert a["model_config_sha256"] == b["model_config_sha256"]
    assert a["model_weights_sha256"] != b["model_weights_sha256"]
    bundled = manifest.model_fingerprint(None, load(None).config_sha256)
    assert bundled["model"] == "genomeconv/bundled" and len(bundled["model_weights_sha256"]) == 64


def test_open_run_resumes_refuses_and_overwrites(tmp_path, capsys):
    out = tmp_path / "out"
    m = make_manifest(tmp_path)
    with manifest.open_run(out, m, part_dirs=[out], command="c1") as run:
        assert json.loads((out / manifest.LOCK_FILE).read_text())["run_id"] == run.token.run_id
        write_part(out, "u1", ["a", "b"], m.sha256)
    assert (out / manifest.LOCK_FILE).read_text() == ""  # a clean end empties the lock
    saved = json.loads((out / manifest.MANIFEST_FILE).read_text())
    assert saved["sha256"] == m.sha256 and saved["command"] == "c1"
    with manifest.open_run(out, make_manifest(tmp_path), part_dirs=[out], command="c2"):
        pass  # the same manifest resumes
    other = make_manifest(tmp_path, pooling="max", window=7)
    with pytest.raises(InputError) as err:
        with manifest.open_run(out, other, part_dirs=[out], command="c3"):
            pytest.fail("a run with other settings must not start")
    text = str(err.value)
    assert "pooling: 'mean' (in the folder) vs 'max' (this run)" in text
    assert "window: None (in the folder) vs 7 (this run)" in text and "--overwrite" in text
    assert "\n" not in text and (out / "part-u1.parquet").exists()
    (out / ".tmp-u9-1-dead").write_bytes(b"x")
    with manifest.open_run(out, other, part_dirs=[out], command="c3", overwrite=True):
        assert not list(out.glob("part-*")) and not list(out.glob(".tmp-*"))
    assert "--overwrite removed 1 earlier part(s)" in capsys.readouterr().err
    assert json.loads((out / manifest.MANIFEST_FILE).read_text())["sha256"] == other.sha256


def test_parts_without_a_manifest_are_refused(tmp_path):
    out = tmp_path / "out"
    write_part(out, "u1", ["a"], "old")
    with pytest.raises(InputError, match="holds 1 part.* but no _genomeconv_manifest.json"):
        with manifest.open_run(out, make_manifest(tmp_path), part_dirs=[out], command="c"):
            pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="must be a folder"):
        with manifest.open_run(tmp_path / "file", make_manifest(tmp_path), part_dirs=[],
                               command="c"):
            pass


HOLDER = textwrap.dedent("""
    import sys, time
    from genomeconv.pipelines.manifest import FolderLock
    lock = FolderLock(sys.argv[1], "genomeconv embed held-by-test")
    lock.acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


def test_second_run_is_refused_at_once_and_a_dead_holder_is_stale(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(InputError) as err:
            with manifest.open_run(out, make_manifest(tmp_path), part_dirs=[out], command="c"):
                pytest.fail("two writers")
        assert time.monotonic() - t0 < 2  # refused at once, not waiting
        text = str(err.value)
        assert f"pid {holder.pid} on " in text and "genomeconv embed held-by-test" in text
        assert "another genomeconv run is writing here" in text and "\n" not in text
    finally:
        holder.kill()  # SIGKILL: the kernel frees the flock, the lock file keeps its text
        holder.wait()
    with manifest.open_run(out, make_manifest(tmp_path), part_dirs=[out], command="c") as run:
        err_text = capsys.readouterr().err
        assert "taking over a stale lock" in err_text and f"pid {holder.pid}" in err_text
        assert json.loads((out / manifest.LOCK_FILE).read_text())["run_id"] == run.token.run_id


def test_an_orphaned_worker_cannot_commit_after_a_new_run_took_over(tmp_path):
    out = tmp_path / "out"
    m = make_manifest(tmp_path)
    schema_ = pa.schema([("item_id", pa.string())])
    with manifest.open_run(out, m, part_dirs=[out], command="first") as first:
        orphan = runtime.PartWriter(out, "u1", schema_, {}, first.token)
        orphan.write(pa.table({"item_id": ["a"]}))
    with manifest.open_run(out, m, part_dirs=[out], command="second") as second:
        with pytest.raises(GenomeconvError, match="no longer holds the folder's lock"):
            orphan.commit()
        assert not list(out.glob("part-*")) and not list(out.glob(".tmp-*"))
        fresh = runtime.PartWriter(out, "u1", schema_, {}, second.token)
        fresh.write(pa.table({"item_id": ["a"]}))
        assert fresh.commit().exists()


def test_read_part_keys_counts_only_sound_parts(tmp_path, capsys):
    sha = "ab" * 32
    good = write_part(tmp_path, "good", ["a", "b"], sha)
    keys, why = manifest.read_part_keys(good, sha, ("item_id",))
    assert why is None and keys.column("item_id").to_pylist() == ["a", "b"]
    assert manifest.read_part_keys(good, sha, ()) == (2, None)
    assert manifest.read_part_keys(good, "cd" * 32, ("item_id",)) == (
        None, "it was not written under this folder's manifest")
    empty = tmp_path / "part-empty.parquet"
    empty.write_bytes(b"")
    assert manifest.read_part_keys(empty, sha, ("item_id",))[1] == "it is empty (zero bytes)"
    cut = tmp_path / "part-cut.parquet"
    cut.write_bytes(good.read_bytes()[:-20])  # a truncated footer
    assert manifest.read_part_keys(cut, sha, ("item_id",))[1].startswith("it cannot be read")
    nulls = tmp_path / "part-nulls.parquet"
    pq.write_table(pa.table({"item_id": ["a", None]}).replace_schema_metadata(
        {schema.KEY_MANIFEST: sha.encode()}), nulls)
    assert manifest.read_part_keys(nulls, sha, ("item_id",))[1] == "it has rows without keys"
    moved = manifest.move_aside(empty, "it is empty (zero bytes)")
    assert moved.name.startswith(".damaged-") and not empty.exists()
    assert f"{empty}: not counted as done because it is empty" in capsys.readouterr().err


def test_another_kind_of_output_is_refused(tmp_path):
    out = tmp_path / "out"
    scores = manifest.Manifest("variants", {"window": 33})
    with manifest.open_run(out, scores, part_dirs=[out], command="score-variants"):
        write_part(out, "u1", ["a"], scores.sha256)
    with pytest.raises(InputError, match="kind: 'variants' \\(in the folder\\) vs 'embed'"):
        with manifest.open_run(out, make_manifest(tmp_path), part_dirs=[out / "embeddings"],
                               command="embed"):
            pass


def test_overwrite_removes_every_kind_of_output(tmp_path, capsys):
    """`track --overwrite` into an embed folder removed nothing (it cleared only track's own
    folders) and `query` then listed both kinds (issue 30)."""
    from genomeconv.pipelines.query import discover

    out = tmp_path / "out"
    embed = make_manifest(tmp_path)
    with manifest.open_run(out, embed, part_dirs=[out / "embeddings", out / "per_base"],
                           command="genomeconv embed"):
        for kind in ("embeddings", "per_base"):
            write_part(out / kind, "000000-a", ["a", "b"], embed.sha256)
        (out / "embeddings" / f"{manifest.DAMAGED_PREFIX}1-part-x.parquet").write_bytes(b"x")
        (out / "embeddings" / ".tmp-000001-b-1-dead").write_bytes(b"x")
    (out / "bigwig").mkdir()
    (out / "bigwig" / "entropy.bw").write_bytes(b"an earlier track's")
    (out / "notes.txt").write_text("the user's own file")
    track = manifest.Manifest("track", {"context": 8}, embed.inputs)
    with manifest.open_run(out, track, part_dirs=[out / "track", out / "bigwig"],
                           command="genomeconv track", overwrite=True):
        left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        assert left == sorted([manifest.LOCK_FILE, manifest.COMMIT_LOCK_FILE,
                               manifest.MANIFEST_FILE, "notes.txt"])
        runtime.write_part(pa.table({"position": [1]}), out / "track", "000000-t",
                           {schema.KEY_MANIFEST: track.sha256.encode(),
                            schema.KEY_KIND: b"track"})
    assert "--overwrite removed 2 earlier part(s)" in capsys.readouterr().err
    assert list(discover([out])) == ["track"]
