"""`genomeconv query` / `neighbors` over real Parquet outputs, checked against plain Python."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from genomeconv.cli import app
from genomeconv.errors import InputError
from genomeconv.pipelines import query as pipeline
from genomeconv.pipelines import runtime, schema
from helpers import assert_one_line_error, run_cli, run_cli_here

D = 8
MODEL = SimpleNamespace(family="hyenadna", model_id="test/random", config_sha256="ab" * 32)


def _embedding_rows(rng, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        start = int(rng.integers(0, 5000))
        rows.append({
            "item_id": f"item{i:04d}", "seq_name": f"seq{i}", "chrom": "chr17" if i % 3 else "chr1",
            "start": start, "end": start + int(rng.integers(1, 400)),
            "strand": "+-"[i % 2], "gene_id": f"ENSG{i // 2:05d}", "gene_name": f"G{i // 2}",
            "read_name": None, "length": 10, "n_fraction": float(rng.random()),
            "pooling": "mean" if i % 5 else "max",
            "embedding": rng.standard_normal(D).astype(np.float32).tolist(),
        })
    return rows


def _variant_rows(rng, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        ref = "ACGT"[i % 4] * int(rng.integers(1, 4))
        scored = i % 7 != 0
        llr = float(rng.normal()) if scored else None
        rows.append({
            "chrom": "chr17", "pos": int(rng.integers(1, 5400)), "ref": ref, "alt": "T",
            "id": f"rs{i}", "status": "ok" if scored else "ref_mismatch", "ref_match": scored,
            "window_start": 0, "window_end": 100, "llr_fwd": llr, "llr_rev": llr, "llr": llr,
            "emb_cosine": float(rng.random()), "emb_l2": float(rng.random()), "p_ref": None,
            "p_alt": None, "model": MODEL.model_id,
        })
    return rows


def _write(rows: list[dict], table_schema: pa.Schema, out, unit: str, kind: str,
           model=MODEL) -> None:
    table = pa.Table.from_pylist(rows, schema=table_schema)
    runtime.write_part(table, out, unit, schema.file_metadata(model, "genomeconv test", kind))


@pytest.fixture
def outputs(tmp_path, rng):
    """An embed output (embeddings in two parts + per_base) and a variants output."""
    emb = _embedding_rows(rng, 60)
    variants = _variant_rows(rng, 80)
    embed_dir, var_dir = tmp_path / "embed", tmp_path / "scores"
    for unit, part in (("000000-a", emb[:25]), ("000001-b", emb[25:])):
        _write(part, schema.embeddings_schema(D), embed_dir / "embeddings", unit, "embeddings")
    per_base = [{"item_id": r["item_id"], "position": r["start"] + j,
                 "embedding": rng.standard_normal(D).astype(np.float32).tolist()}
                for r in emb[:4] for j in range(3)]
    _write(per_base, schema.per_base_schema(D), embed_dir / "per_base", "000000-a", "per_base")
    _write(variants, schema.VARIANTS, var_dir, "000000-c", "variants")
    pq.write_table(pa.table({"x": [1, 2]}), embed_dir / "notes.parquet")  # not an output: ignored
    return SimpleNamespace(embed=embed_dir, variants=var_dir, emb=emb, var=variants,
                           per_base=per_base, tmp=tmp_path)


def _json_rows(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_views_named_by_kind_from_metadata(outputs):
    views = pipeline.discover([outputs.embed, outputs.variants])
    assert sorted(views) == ["embeddings", "per_base", "variants"]
    assert len(views["embeddings"]) == 2
    rows = _json_rows(invoke("query", outputs.embed, outputs.variants, "--format", "json"))
    counts = {r["view"]: r["rows"] for r in rows}
    assert counts == {"embeddings": 60, "per_base": len(outputs.per_base), "variants": 80}
    named = invoke("query", outputs.embed / "notes.parquet")
    assert named.exit_code != 0 and "not a genomeconv output" in named.output


def test_sql_over_several_outputs(outputs):
    sql = ("SELECT e.chrom, count(*) AS n FROM embeddings e JOIN per_base p USING (item_id) "
           "GROUP BY e.chrom ORDER BY e.chrom")
    rows = _json_rows(invoke("query", outputs.embed, outputs.variants, sql, "--format", "json"))
    expected: dict[str, int] = {}
    chrom_of = {r["item_id"]: r["chrom"] for r in outputs.emb}
    for p in outputs.per_base:
        expected[chrom_of[p["item_id"]]] = expected.get(chrom_of[p["item_id"]], 0) + 1
    assert {r["chrom"]: r["n"] for r in rows} == expected
    table = invoke("query", outputs.variants, "SELECT id, llr FROM variants", "--limit", "5")
    assert table.exit_code == 0 and "5 rows" in table.output


def test_region_keeps_overlapping_rows(outputs):
    # 1-based closed 1,001-2,000 is 0-based half-open [1000, 2000); "17" resolves to chr17.
    rows = _json_rows(invoke("query", outputs.embed, "--region", "17:1,001-2,000",
                             "--format", "json"))
    expected = {r["item_id"] for r in outputs.emb
                if r["chrom"] == "chr17" and r["start"] < 2000 and r["end"] > 1000}
    assert {r["item_id"] for r in rows} == expected and expected
    rows = _json_rows(invoke("query", outputs.variants, "--region", "chr17:1001-2000",
                             "--format", "json"))
    expected = {r["id"] for r in outputs.var
                if r["pos"] - 1 < 2000 and r["pos"] - 1 + len(r["ref"]) > 1000}
    assert {r["id"] for r in rows} == expected and expected
    missing = invoke("query", outputs.embed, "--region", "chrX:1-10")
    assert missing.exit_code != 0 and "unknown contig" in missing.output


def test_region_boundaries_are_exact(tmp_path):
    # Items [99, 100) and [100, 101) against the region 101-101 (0-based [100, 101)).
    rows = [dict(_embedding_rows(np.random.default_rng(7), 1)[0], item_id=f"i{s}", start=s,
                 end=s + 1, chrom="chr1") for s in (99, 100, 101)]
    _write(rows, schema.embeddings_schema(D), tmp_path, "x", "embeddings")
    got = _json_rows(invoke("query", tmp_path, "--region", "chr1:101-101", "--format", "json"))
    assert [r["item_id"] for r in got] == ["i100"]


def test_gene_on_embeddings_and_on_variants(outputs):
    rows = _json_rows(invoke("query", outputs.embed, "--genes", "G7", "--format", "json"))
    assert sorted(r["item_id"] for r in rows) == ["item0014", "item0015"]
    gene_items = [r for r in outputs.emb if r["gene_name"] == "G10" and r["chrom"] == "chr17"]
    rows = _json_rows(invoke("query", outputs.embed, outputs.variants, "--genes", "G10",
                             "--format", "json"))
    expected = {v["id"] for v in outputs.var for g in gene_items
                if v["pos"] - 1 < g["end"] and v["pos"] - 1 + len(v["ref"]) > g["start"]}
    assert {r["id"] for r in rows} == expected
    # score-variants adds `contig` (the FASTA's name): VCF "17" still meets FASTA "chr17".
    renamed = [dict(v, chrom="17") for v in outputs.var]
    with_contig = pa.schema([*schema.VARIANTS, pa.field("contig", pa.string())])
    _write([dict(v, contig="chr17") for v in renamed], with_contig, outputs.tmp / "vcf17", "u",
           "variants")
    rows = _json_rows(invoke("query", outputs.embed, outputs.tmp / "vcf17", "--genes", "G10",
                             "--format", "json"))
    assert {r["id"] for r in rows} == expected and expected
    alone = invoke("query", outputs.variants, "--genes", "G10")
    assert alone.exit_code != 0 and "embeddings output" in alone.output


def test_top_by_llr_most_damaging_first_and_by_other_columns(outputs):
    rows = _json_rows(invoke("query", outputs.variants, "--top", "10", "--format", "json"))
    scored = sorted((v["llr"], v["id"]) for v in outputs.var if v["llr"] is not None)
    assert [r["id"] for r in rows] == [i for _, i in scored[:10]]
    rows = _json_rows(invoke("query", outputs.variants, "--top", "80", "--format", "json"))
    assert [r["llr"] for r in rows[len(scored):]] == [None] * (80 - len(scored))  # NULLs last
    rows = _json_rows(invoke("query", outputs.embed, "--view", "embeddings", "--top", "3",
                             "--by", "n_fraction", "--format", "json"))
    assert [r["n_fraction"] for r in rows] == pytest.approx(
        sorted((r["n_fraction"] for r in outputs.emb), reverse=True)[:3])
    rows = _json_rows(invoke("query", outputs.variants, "--top", "2", "--by", "llr",
                             "--descending", "--format", "json"))
    assert [r["llr"] for r in rows] == pytest.approx([s for s, _ in scored[::-1][:2]])
    bad = invoke("query", outputs.variants, "--top", "2", "--by", "nope")
    assert bad.exit_code != 0 and "no column" in bad.output


def test_csv_and_parquet_files(outputs):
    csv_out = outputs.tmp / "res" / "top.csv"
    result = invoke("query", outputs.variants, "--top", "5", "--format", "csv", "--out", csv_out)
    assert result.exit_code == 0, result.output
    lines = csv_out.read_text().splitlines()
    assert lines[0].split(",")[:4] == ["chrom", "pos", "ref", "alt"] and len(lines) == 6
    pq_out = outputs.tmp / "emb.parquet"
    result = invoke("query", outputs.embed, "SELECT item_id, embedding FROM embeddings",
                    "--format", "parquet", "--out", pq_out)
    assert result.exit_code == 0, result.output
    back = pq.read_table(pq_out).to_pylist()
    by_id = {r["item_id"]: r["embedding"] for r in outputs.emb}
    assert len(back) == 60
    for row in back:
        np.testing.assert_array_equal(np.float32(row["embedding"]),
                                      np.float32(by_id[row["item_id"]]))
    table = CliRunner().invoke(app, ["query", str(outputs.embed), "--genes", "G3"],
                               env={"COLUMNS": "160"})  # wide enough for all 14 columns
    assert table.exit_code == 0 and "(8)" in table.output  # embeddings abbreviated on screen


def test_neighbors_match_float64_reference(outputs):
    mean = [r for r in outputs.emb if r["pooling"] == "mean"]
    query = mean[3]
    vectors = np.array([r["embedding"] for r in mean], dtype=np.float64)
    q = np.array(query["embedding"], dtype=np.float64)
    cos = vectors @ q / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q))
    order = [i for i in np.argsort(-cos) if mean[i]["item_id"] != query["item_id"]][:7]
    rows = _json_rows(invoke("neighbors", outputs.embed, query["item_id"], "-k", "7",
                             "--format", "json"))
    assert [r["item_id"] for r in rows] == [mean[i]["item_id"] for i in order]
    assert [r["cosine"] for r in rows] == pytest.approx(cos[order], abs=1e-5)
    assert [r["rank"] for r in rows] == list(range(1, 8))
    by_seq = pipeline.nearest_neighbors([outputs.embed], query["seq_name"], 3)
    assert by_seq["item_id"].to_pylist() == [mean[i]["item_id"] for i in order[:3]]
    ambiguous = invoke("neighbors", outputs.embed, "G7")  # two items of gene G7
    assert ambiguous.exit_code != 0 and "pass an item_id" in ambiguous.output
    assert pipeline.nearest_neighbors([outputs.embed], "G7", 1, pooling="max")["rank"][0].as_py()


def test_neighbors_skip_items_without_embedding(outputs, rng):
    rows = _embedding_rows(rng, 2)
    rows[0].update(item_id="null0", embedding=None, pooling="mean")
    rows[1].update(item_id="zero1", embedding=[0.0] * D, pooling="mean")  # zero norm: no cosine
    _write(rows, schema.embeddings_schema(D), outputs.embed / "embeddings", "000002-n",
           "embeddings")
    result = pipeline.nearest_neighbors([outputs.embed], "item0001", 100)
    ids = result["item_id"].to_pylist()
    n_mean = sum(r["pooling"] == "mean" for r in outputs.emb)
    assert len(ids) == n_mean - 1 and not {"null0", "zero1", "item0001"} & set(ids)


def test_neighbors_refuse_mixed_models(outputs, rng):
    other = SimpleNamespace(family="hyenadna", model_id="other", config_sha256="cd" * 32)
    _write(_embedding_rows(rng, 3), schema.embeddings_schema(D), outputs.embed / "embeddings",
           "000009-z", "embeddings", model=other)
    with pytest.raises(ValueError, match="different models"):
        pipeline.nearest_neighbors([outputs.embed], "item0001", 3)


# ------------------------------------------------------------------ read-only, one-line errors
ATTACKS = {
    "copy": ("COPY (SELECT 1 AS x) TO '{victim}' (FORMAT csv)", "only SELECT"),
    "escape_wrapper": ("SELECT 1 AS x) AS q; COPY (SELECT 1 AS x) TO '{victim}' (FORMAT csv); "
                       "SELECT * FROM (SELECT 1", "SQL:"),
    "two_statements": ("SELECT 1 AS x; COPY (SELECT 1 AS x) TO '{victim}'", "exactly one"),
    "read_other_file": ("SELECT * FROM read_csv('{secret}')", "disabled by configuration"),
    "read_other_parquet": ("SELECT * FROM read_parquet('{notes}')", "disabled by configuration"),
    "glob": ("SELECT * FROM glob('{tmp}/*')", "disabled by configuration"),
    "attach": ("ATTACH '{victim}' AS db", "only SELECT"),
    "install": ("INSTALL httpfs", "only SELECT"),
    "load": ("LOAD httpfs", "only SELECT"),
    "unlock": ("SET enable_external_access = true", "only SELECT"),
    "create": ("CREATE TABLE t AS SELECT 1 AS x", "only SELECT"),
    "comment_swallows_wrapper": ("SELECT * FROM embeddings --", None),
}


@pytest.mark.parametrize("case", sorted(ATTACKS))
def test_sql_is_one_read_only_select(outputs, case):
    """Each attack through the pipeline functions (real DuckDB): refused with a one-line
    InputError, with and without the --limit wrapper, and nothing is written or read."""
    secret = outputs.tmp / "secret.csv"
    secret.write_text("password\nhunter2\n")
    victim = outputs.tmp / "victim.csv"
    sql, message = ATTACKS[case]
    sql = sql.format(victim=victim, secret=secret, notes=outputs.embed / "notes.parquet",
                     tmp=outputs.tmp)
    con, _ = pipeline.open_views([outputs.embed])
    for text in (sql, pipeline.limited(sql, 5)):
        if message is None:  # harmless: the comment cannot hide the wrapper's parenthesis
            assert pipeline.fetch(con, text).num_rows == (60 if text == sql else 5)
            continue
        with pytest.raises(InputError) as info:
            pipeline.fetch(con, text)
        assert "\n" not in str(info.value) and str(info.value).startswith("SQL:")
        if text == sql:
            assert message in str(info.value)
    assert not victim.exists() and not (outputs.tmp / "db").exists()


def test_the_connection_itself_is_locked(outputs):
    """Even SQL that skipped check_select cannot reach files or unlock the configuration."""
    import duckdb

    con, _ = pipeline.open_views([outputs.embed])
    victim = outputs.tmp / "victim.csv"
    for sql in (f"COPY (SELECT 1) TO '{victim}'", "SELECT * FROM read_csv('/etc/hostname')",
                f"ATTACH '{outputs.tmp / 'x.db'}'", "LOAD httpfs",
                "SET enable_external_access = true", "SET allowed_paths = ['/etc/hostname']"):
        with pytest.raises(duckdb.Error):
            con.execute(sql)
    assert not victim.exists()
    assert con.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 60


def test_sql_attacks_through_the_cli(outputs):
    victim = outputs.tmp / "victim.csv"
    escape = f"SELECT 1 AS x) AS q; COPY (SELECT 1 AS x) TO '{victim}'; SELECT * FROM (SELECT 1"
    assert_one_line_error(run_cli("query", outputs.embed, escape, "--limit", "3"), "SQL:")
    assert_one_line_error(run_cli("query", outputs.embed, f"COPY embeddings TO '{victim}'"),
                          "only SELECT")
    read = run_cli("query", outputs.embed, "SELECT * FROM read_csv('/etc/hostname')")
    assert_one_line_error(read, "disabled by configuration")
    assert_one_line_error(run_cli("query", outputs.embed, "SELECT nope FROM embeddings"), "SQL:",
                          "nope")
    assert not victim.exists()


def test_out_refuses_output_folders_and_existing_files(outputs):
    """--out never lands inside an output folder (beside parts, in embeddings/, or anywhere
    under a folder with a run manifest or lock) and replaces an existing file only with
    --force; a part file copied elsewhere fences off its own folder only."""
    args = ("query", outputs.variants, "--top", "3", "--format", "csv")
    parts = sorted(outputs.variants.glob("*.parquet"))
    for inside in (outputs.variants / "rows.csv", outputs.embed / "embeddings" / "rows.csv",
                   outputs.embed / "rows.csv", parts[0]):
        run = run_cli_here(*args, "--out", inside, "--force")
        assert_one_line_error(run, "genomeconv output folder")
    assert pq.read_table(parts[0]).num_rows == 80  # untouched
    for i, marker in enumerate(("_genomeconv_manifest.json", ".genomeconv.lock")):
        marked = outputs.tmp / f"marked{i}"  # as pipelines/manifest.py names them
        marked.mkdir()
        (marked / marker).write_text("{}")
        for target in (marked / "rows.csv", marked / "sub" / "rows.csv"):
            assert_one_line_error(run_cli_here(*args, "--out", target), "genomeconv output folder")
    loose = outputs.tmp / "loose"  # a part copied elsewhere: its own folder only
    (loose / "figs").mkdir(parents=True)
    loose.joinpath(parts[0].name).write_bytes(parts[0].read_bytes())
    assert_one_line_error(run_cli_here(*args, "--out", loose / "rows.csv"),
                          "genomeconv output folder")
    below = run_cli_here(*args, "--out", loose / "figs" / "rows.csv")
    assert below.returncode == 0, below.stderr
    (outputs.tmp / ".lock").write_text("")  # pytest's and pip's lock files mark nothing
    target = outputs.tmp / "rows.csv"
    target.write_text("keep me\n")
    assert_one_line_error(run_cli_here(*args, "--out", target), "already exists", "--force")
    assert target.read_text() == "keep me\n"
    assert_one_line_error(run_cli_here(*args, "--out", outputs.tmp), "is a folder")
    forced = run_cli_here(*args, "--out", target, "--force")
    assert forced.returncode == 0, forced.stderr
    assert len(target.read_text().splitlines()) == 4
    beside = run_cli_here("neighbors", outputs.embed, outputs.emb[1]["item_id"], "--format", "csv",
                 "--out", outputs.embed / "n.csv")
    assert_one_line_error(beside, "genomeconv output folder")


@pytest.mark.parametrize("args,text", [
    (("query", "{var}", "--top", "-1"), "greater than or equal to 0"),
    (("query", "{var}", "--limit", "-5", "--format", "csv"), "greater than or equal to 0"),
    (("neighbors", "{emb}", "item0001", "-k", "0"), "greater than or equal to 1"),
])
def test_bad_numbers_are_usage_errors(outputs, args, text):
    """Typer's own usage errors (exit 2): the option and its bound are named."""
    run = run_cli_here(*(a.format(var=outputs.variants, emb=outputs.embed) for a in args))
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stdout == ""
    assert text in " ".join(run.stderr.replace("│", " ").split())


def test_pipeline_refuses_bad_numbers(outputs):
    con, views = pipeline.open_views([outputs.variants])
    with pytest.raises(InputError, match="--top must be >= 0"):
        pipeline.shortcut_query(con, views, pipeline.Shortcuts(top=-1))
    with pytest.raises(InputError, match="--limit must be >= 0"):
        pipeline.limited("SELECT 1", -1)
    with pytest.raises(InputError, match="-k must be >= 1"):
        pipeline.nearest_neighbors([outputs.embed], "item0001", 0)


def test_neighbors_say_why_they_return_nothing(outputs, tmp_path_factory, rng):
    assert_one_line_error(run_cli_here("neighbors", outputs.embed, "nosuch"),
                          "no embedding for 'nosuch'")
    rows = _embedding_rows(rng, 6)
    for row in rows:
        row["pooling"] = "mean"
    rows[0]["embedding"] = [float("nan")] * D
    broken = tmp_path_factory.mktemp("broken")
    _write(rows, schema.embeddings_schema(D), broken, "000000-a", "embeddings")
    assert_one_line_error(run_cli_here("neighbors", broken, "item0000"), "'item0000'", "not finite")
    for row in rows[1:]:
        row["embedding"] = [float("inf")] + [0.0] * (D - 1)
    rows[0]["embedding"] = rng.standard_normal(D).tolist()
    all_bad = tmp_path_factory.mktemp("all_bad")
    _write(rows, schema.embeddings_schema(D), all_bad, "000000-a", "embeddings")
    assert_one_line_error(run_cli_here("neighbors", all_bad, "item0000"),
                          "all 5 candidate embeddings", "non-finite")
    alone = tmp_path_factory.mktemp("alone")
    _write(rows[:1], schema.embeddings_schema(D), alone, "000000-a", "embeddings")
    assert_one_line_error(run_cli_here("neighbors", alone, "item0000"), "no other item")


# ------------------------------------------------------------------ issue 30
def test_sql_is_never_looked_up_as_a_path(outputs):
    """SQL over 255 characters without a '/' failed as a file name (OSError: File name too
    long, a traceback); SQL is recognized by its first word, and DuckDB's own error about
    deeply nested SQL is one line."""
    columns = ", ".join(f"seq_name AS c{i}" for i in range(40))
    long_sql = f"SELECT {columns} FROM embeddings ORDER BY c0 LIMIT 2"
    assert len(long_sql) > 255 and "/" not in long_sql
    result = invoke("query", outputs.embed, long_sql, "--format", "csv")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split(",") == [f"c{i}" for i in range(40)]
    nested = "SELECT " + "(" * 3000 + "1" + ")" * 3000
    assert_one_line_error(run_cli("query", outputs.embed, nested), "SQL:", "expression depth")
    assert pipeline.is_sql("  -- a comment\n(SELECT 1)") and pipeline.is_sql("with q AS (x)")
    assert not pipeline.is_sql("out dir/run 1") and not pipeline.is_sql("selected runs/x")


def test_cell_values_and_column_names_print_as_text(tmp_path, rng):
    """rich read markup in data: a record named 'a[/b]' stopped query with a MarkupError and
    'c[bold]d' printed as 'cd'; the same in neighbors' table."""
    rows = _embedding_rows(rng, 4)
    names = ["a[/b]", "c[bold]d", "[link=x]e", "f\\[g]"]
    for row, name in zip(rows, names):
        row["seq_name"] = row["gene_name"] = name
        row["pooling"] = "mean"
    _write(rows, schema.embeddings_schema(D), tmp_path / "embeddings", "000000-a", "embeddings")
    result = invoke("query", tmp_path, 'SELECT seq_name AS "[red]name" FROM embeddings')
    assert result.exit_code == 0, result.output
    assert "[red]name" in result.stdout and all(name in result.stdout for name in names)
    near = CliRunner().invoke(app, ["neighbors", str(tmp_path), "c[bold]d", "-k", "3"],
                              env={"COLUMNS": "300"})  # one line per row: values not folded
    assert near.exit_code == 0, near.output
    assert all(name in near.stdout for name in names if name != "c[bold]d")
