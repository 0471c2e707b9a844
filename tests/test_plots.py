"""`genomeconv plot`: each figure's drawn data (artists' arrays) against the Parquet it read.

Inputs are written here, without Ray or DeepSpeed: variant scores, embeddings and a track as
Parquet parts in the exact schemas and file metadata of pipelines/schema.py (nulls included, as
the pipelines leave them), and a pretrain and a finetune folder as the summary.json and
history.jsonl records pipelines/train.py writes (test_train draws a real run's folder).
References are computed independently here: DuckDB over the Parquet, a float64 eigen-PCA, a
brute-force pair count for AUROC (sklearn is not installed in this venv).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib.collections import PathCollection, QuadMesh
from matplotlib.patches import Rectangle
from typer.testing import CliRunner

from helpers import assert_one_line_error, random_seq, run_cli, write_fasta
from genomeconv.cli import app
from genomeconv.errors import InputError
from genomeconv.io.variants import info_values
from genomeconv.pipelines import metrics, runtime, schema
from genomeconv.plots import embeddings as emb_plot
from genomeconv.plots import figures
from genomeconv.plots import mutagenesis as mut_plot
from genomeconv.plots import track as track_plot
from genomeconv.plots import training as train_plot
from genomeconv.plots import variants as var_plot

W = 33
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-", "svg": b"<svg"}
SAT = range(21, 61)  # 1-based positions of chr1 with (almost) every SNV in the VCF
DROPPED = {(30, 0), (45, 1)}  # (pos, k-th alternative base) left out of the VCF: blank cells
CSQ_FORMAT = "Allele|Consequence|SYMBOL"


# ----------------------------------------------------------------------------- fixtures
# what file metadata names
MODEL = SimpleNamespace(family="hyenadna", model_id="tiny", config_sha256="0" * 64)


def write_part(rows: list[dict], table_schema: pa.Schema, folder: Path, kind: str,
               command: str | None = None) -> None:
    """One part of a genomeconv output: `rows` in `table_schema` with the file metadata the
    pipelines write (schema.file_metadata; `command` as the CLI records it), committed by the
    pipelines' part writer."""
    meta = schema.file_metadata(MODEL, command or f"genomeconv {kind} test", kind)
    runtime.write_part(pa.Table.from_pylist(rows, schema=table_schema), folder, "000000-test",
                       meta)


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> dict:
    rng = np.random.default_rng(19)
    work = tmp_path_factory.mktemp("plots_genome")
    records = {"chr1": random_seq(rng, 400), "chr2": random_seq(rng, 200)}
    return {"records": records, "fasta": write_fasta(work / "ref.fa", records), "work": work}


def write_info_vcf(path: Path, genome: dict) -> tuple[Path, dict]:
    """A VCF of every SNV at SAT (minus DROPPED), an indel and a REF mismatch, with INFO CLNSIG
    (Number=A), GROUP (Number=1), CSQ (pipe-delimited) and a Flag; returns it and the truth
    {(chrom, pos, ref, alt): {field: value or None}}."""
    rng = np.random.default_rng(5)
    seq = genome["records"]["chr1"]
    header = ["##fileformat=VCFv4.2", "##contig=<ID=chr1,length=400>",
              "##contig=<ID=chr2,length=200>",
              '##INFO=<ID=CLNSIG,Number=A,Type=String,Description="significance">',
              '##INFO=<ID=GROUP,Number=1,Type=String,Description="a group">',
              '##INFO=<ID=HOT,Number=0,Type=Flag,Description="a flag">',
              f'##INFO=<ID=CSQ,Number=.,Type=String,Description="VEP. Format: {CSQ_FORMAT}">',
              "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    lines, truth = [], {}
    for pos in SAT:
        ref = seq[pos - 1]
        alts = [b for k, b in enumerate("ACGT".replace(ref, "")) if (pos, k) not in DROPPED]
        sig = [str(rng.choice(["Pathogenic", "Benign", "."], p=[0.4, 0.5, 0.1])) for _ in alts]
        group = str(rng.choice(["g1", "g2", "g3"]))
        hot = bool(rng.random() < 0.3)
        csq = ",".join(f"{a}|{'missense' if a in 'AT' else 'synonymous'}|GENE" for a in alts)
        info = f"CLNSIG={','.join(sig)};GROUP={group};CSQ={csq}" + (";HOT" if hot else "")
        lines.append(f"chr1\t{pos}\t.\t{ref}\t{','.join(alts)}\t.\t.\t{info}")
        for a, s in zip(alts, sig):
            truth[("chr1", pos, ref, a)] = {
                "CLNSIG": None if s == "." else s, "GROUP": group, "HOT": "yes" if hot else None,
                "CSQ:Consequence": "missense" if a in "AT" else "synonymous"}
    pos = 80  # an indel (scored) and a REF mismatch (no score): not in a heat map
    lines.append(f"chr1\t{pos}\t.\t{seq[pos - 1]}\t{seq[pos - 1]}GG\t.\t.\tGROUP=g1")
    wrong = "ACGT".replace(seq[pos], "")[0]
    lines.append(f"chr1\t{pos + 1}\t.\t{wrong}\t{seq[pos]}\t.\t.\t.")
    none = dict.fromkeys(("CLNSIG", "GROUP", "HOT", "CSQ:Consequence"))
    truth[("chr1", pos, seq[pos - 1], seq[pos - 1] + "GG")] = {**none, "GROUP": "g1"}
    truth[("chr1", pos + 1, wrong, seq[pos])] = none
    path.write_text("\n".join(header + lines) + "\n")
    return path, truth


@pytest.fixture(scope="module")
def scored(genome) -> dict:
    """score-variants' output for the VCF as the pipeline writes it: every ALT allele one row;
    SNVs and the indel scored (p_ref/p_alt for SNVs only), the REF mismatch unscored."""
    vcf, truth = write_info_vcf(genome["work"] / "calls.vcf", genome)
    rng = np.random.default_rng(6)
    rows = []
    for chrom, pos, ref, alt in truth:
        ok = genome["records"][chrom][pos - 1:pos - 1 + len(ref)] == ref
        row = {"chrom": chrom, "pos": pos, "ref": ref, "alt": alt, "id": None,
               "status": "ok" if ok else "ref_mismatch", "ref_match": ok,
               "window_start": max(0, pos - 1 - W // 2), "window_end": max(W, pos - 1 + W - W // 2),
               "model": MODEL.model_id, "contig": chrom, "nonfinite": False}
        if ok:
            fwd, rev = rng.normal(-0.5, 1.0, 2)
            row.update(llr_fwd=fwd, llr_rev=rev, llr=(fwd + rev) / 2,
                       emb_cosine=rng.random() * 1e-3, emb_l2=rng.random())
            if len(ref) == len(alt) == 1:
                row.update(p_ref=rng.random(), p_alt=rng.random())
        rows.append(row)
    out = genome["work"] / "scores"
    write_part(rows, schema.variants_schema(), out, "variants")
    return {"out": out, "vcf": vcf, "truth": truth}


@pytest.fixture(scope="module")
def embedded(genome) -> dict:
    """embed's output for 3 genes of a GTF and 24 BED intervals (mean pooling, width 16)."""
    work = genome["work"]
    gtf = work / "genes.gtf"
    gtf.write_text('chr1\tt\tgene\t11\t150\t.\t+\t.\tgene_id "G1"; gene_name "ALPHA";\n'
                   'chr1\tt\tgene\t201\t390\t.\t-\t.\tgene_id "G2"; gene_name "BETA";\n'
                   'chr2\tt\tgene\t5\t120\t.\t+\t.\tgene_id "G3";\n')
    rng = np.random.default_rng(8)
    items = [("ALPHA", "chr1", 10, 150, "+", "G1", "ALPHA"), ("BETA", "chr1", 200, 390, "-", "G2",
                                                               "BETA"),
             ("G3", "chr2", 4, 120, "+", "G3", None)]
    items += [(f"b{i}", "chr1", int(s), int(s + rng.integers(20, 70)), "+", None, None)
              for i, s in enumerate(rng.integers(0, 330, size=24))]
    rows = [{"item_id": f"item{k:04d}", "seq_name": name, "chrom": chrom, "start": start,
             "end": end, "strand": strand, "gene_id": gene_id, "gene_name": gene_name,
             "read_name": None, "length": end - start, "n_fraction": 0.0, "pooling": "mean",
             "embedding": rng.normal(size=16).astype(np.float32).tolist(), "nonfinite": False}
            for k, (name, chrom, start, end, strand, gene_id, gene_name) in enumerate(items)]
    out = work / "embed"
    write_part(rows, schema.embeddings_schema(16), out / "embeddings", "embeddings")
    return {"out": out, "gtf": gtf}


def training_run(folder: Path, history: list[dict], **summary) -> Path:
    """A finished pretrain/finetune folder as pipelines/train.py leaves it: summary.json and
    history.jsonl holding the same records."""
    folder.mkdir(parents=True)
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    (folder / "summary.json").write_text(json.dumps({**summary, "history": history}, indent=2))
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A pretrain of 8 steps (evaluated at 4 and 8, Markov baseline recorded) and a finetune of
    3 epochs."""
    rng = np.random.default_rng(2)
    work = tmp_path_factory.mktemp("trained")
    steps = []
    for step, loss in enumerate(np.sort(rng.uniform(1.2, 2.8, 8))[::-1], start=1):
        record = {"step": step, "length": 64, "train_loss": loss, "lr": 5e-3, "tokens": 256,
                  "seconds": 0.1}
        if step % 4 == 0:
            record["val_nll"] = loss + 0.05
            record["val_ppl"] = math.exp(record["val_nll"])
        steps.append(record)
    baseline = {"order": 2, "val_nll": 1.3, "val_ppl": math.exp(1.3)}
    pre = training_run(work / "pre", steps, command="genomeconv pretrain test", steps=8,
                       val_nll=steps[-1]["val_nll"], val_ppl=steps[-1]["val_ppl"],
                       kmer_baseline=baseline)
    epochs = [{"epoch": e, "train_loss": 0.7 - 0.1 * e, "seconds": 1.0, "accuracy": a,
               "auroc": r, "auprc": p}
              for e, (a, r, p) in enumerate(((0.6, 0.7, 0.6), (0.7, 0.85, 0.8),
                                             (0.65, 0.8, 0.75)), start=1)]
    ft = training_run(work / "ft", epochs, command="genomeconv finetune test", best=0.85)
    return {"pretrain": pre, "finetune": ft}


def write_track(folder: Path, rng: np.random.Generator) -> pa.Table:
    """A track part for chr1 positions 0..299 (0-based) without rows 100..109, with nulls: the
    forward strand at position 0, every measure at two N bases; returns the table written."""
    positions = np.r_[0:100, 110:300]
    n = len(positions)
    columns: dict[str, object] = {
        "chrom": ["chr1"] * n, "position": positions,
        "ref": [random_seq(rng, 1) for _ in range(n)],
        "context_fwd": np.minimum(positions, 64).astype(np.int32),
        "context_rev": np.minimum(299 - positions, 64).astype(np.int32)}
    for name in schema.track_columns():
        values = rng.normal(-1.4, 0.3, n).astype(np.float32)
        mask = np.zeros(n, dtype=bool)
        mask[[57, 58]] = True  # N bases: no measure at all
        mask[0] = name.endswith("_fwd")  # no base before it on the forward strand
        columns[name] = pa.array(values, mask=mask)
    columns["nonfinite"] = [False] * n
    table = pa.table(columns, schema=schema.TRACK)
    meta = schema.file_metadata(MODEL, "genomeconv track test", "track")
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(meta), folder / "part-00000.parquet")
    return table


@pytest.fixture(scope="module")
def track_out(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("track")
    table = write_track(work / "track_out" / "track", np.random.default_rng(11))
    gtf = work / "genes.gtf"  # Ensembl contig names: matched to chr1
    gtf.write_text(
        '1\tt\tgene\t41\t160\t.\t+\t.\tgene_id "G1"; gene_name "ALPHA";\n'
        '1\tt\texon\t41\t70\t.\t+\t.\tgene_id "G1"; transcript_id "T1"; gene_name "ALPHA";\n'
        '1\tt\texon\t121\t160\t.\t+\t.\tgene_id "G1"; transcript_id "T1"; gene_name "ALPHA";\n'
        '1\tt\texon\t101\t130\t.\t+\t.\tgene_id "G1"; transcript_id "T2"; gene_name "ALPHA";\n'
        '1\tt\tgene\t151\t280\t.\t-\t.\tgene_id "G2"; gene_name "BETA";\n'
        '1\tt\texon\t151\t200\t.\t-\t.\tgene_id "G2"; transcript_id "T3"; gene_name "BETA";\n'
        '1\tt\tgene\t351\t380\t.\t+\t.\tgene_id "G3"; gene_name "FAR";\n')
    return {"out": work / "track_out", "table": table, "gtf": gtf}


def invoke(*args: object) -> "object":
    """The CLI in this process (typer's runner); stderr kept apart."""
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *texts: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for text in texts:
        assert text in lines[0], lines[0]
    return lines[0]


def duck(folder: Path, sql: str) -> list[tuple]:
    return duckdb.sql(sql.replace("V", f"read_parquet('{folder}/**/*.parquet', "
                                       "union_by_name = true)")).fetchall()


# ------------------------------------------------------------------------------- track
def test_track_panels_draw_the_rows_with_gaps_and_gene_models(track_out):
    fig = track_plot.track_figure([track_out["out"]], "1:51-250", measures=["logp_ref", "entropy"],
                                  strand="both", annotation=track_out["gtf"])
    axes = fig.axes
    assert len(axes) == 3 and "1-based" in axes[-1].get_xlabel()
    rows = {p: i for i, p in enumerate(track_out["table"]["position"].to_pylist())}
    for ax, measure in zip(axes, ["logp_ref", "entropy"]):
        lines = {line.get_gid(): line.get_xydata() for line in ax.get_lines()}
        assert set(lines) == {f"{measure}_fwd", f"{measure}_rev"}
        for gid, xy in lines.items():
            column = track_out["table"][gid].to_pylist()
            np.testing.assert_array_equal(xy[:, 0], np.arange(51, 251))
            want = [np.nan if p - 1 not in rows or column[rows[p - 1]] is None
                    else column[rows[p - 1]] for p in range(51, 251)]
            np.testing.assert_array_equal(xy[:, 1], np.array(want, dtype=np.float32))
            assert np.isnan(xy[57 - 50, 1]) and np.isnan(xy[100 - 50:110 - 50, 1]).all()
    genes = axes[-1]
    boxes = {}
    for patch in genes.patches:
        if isinstance(patch, Rectangle) and patch.get_gid():
            boxes.setdefault(patch.get_gid(), []).append((patch.get_x(), patch.get_width()))
    # ALPHA: exons 41-70 and 101-160 (T1 and T2 overlapping: merged), 1-based closed
    assert sorted(boxes["exon:G1"]) == [(40.5, 30), (100.5, 60)]
    assert boxes["exon:G2"] == [(150.5, 50)]
    assert "exon:G3" not in boxes  # outside the region
    markers = {line.get_gid(): line.get_marker() for line in genes.get_lines()}
    assert markers["strand:G1"] == ">" and markers["strand:G2"] == "<"
    gene_line = next(line for line in genes.get_lines() if line.get_gid() == "gene:G2")
    np.testing.assert_array_equal(gene_line.get_xdata(), [150.5, 250.5])  # clipped to the region
    texts = [t.get_text() for t in genes.texts]
    assert "ALPHA (+)" in texts and "BETA (-)" in texts


MODELS = {"ALPHA": ("+", (40, 160), [(40, 70), (120, 160)]),  # 0-based half-open
          "BETA": ("-", (150, 280), [(150, 200), (240, 280)])}


def write_models(path: Path, kind: str) -> Path:
    """MODELS as a GTF, a GFF3 (exons naming only their transcript) or a GenBank file."""
    if kind == "gbk":
        from Bio import SeqIO
        from Bio.Seq import Seq
        from Bio.SeqFeature import CompoundLocation, SeqFeature, SimpleLocation
        from Bio.SeqRecord import SeqRecord

        rec = SeqRecord(Seq(random_seq(np.random.default_rng(1), 300)), id="chr1", name="chr1",
                        annotations={"molecule_type": "DNA"})
        for name, (strand, (lo, hi), exons) in MODELS.items():
            sign = 1 if strand == "+" else -1
            tags = {"locus_tag": [f"{name}_1"], "gene": [name]}
            rec.features.append(SeqFeature(SimpleLocation(lo, hi, sign), type="gene",
                                           qualifiers=tags))
            parts = [SimpleLocation(s, e, sign) for s, e in exons][::sign]
            rec.features.append(SeqFeature(CompoundLocation(parts), type="mRNA", qualifiers=tags))
        SeqIO.write([rec], path, "genbank")
        return path
    lines = []
    for i, (name, (strand, (lo, hi), exons)) in enumerate(MODELS.items()):
        if kind == "gtf":
            attrs = f'gene_id "g{i}"; gene_name "{name}";'
            lines.append(f"chr1\tt\tgene\t{lo + 1}\t{hi}\t.\t{strand}\t.\t{attrs}")
            lines += [f'chr1\tt\texon\t{s + 1}\t{e}\t.\t{strand}\t.\t{attrs} transcript_id "t{i}";'
                      for s, e in exons]
        else:
            lines.append(f"chr1\tt\tgene\t{lo + 1}\t{hi}\t.\t{strand}\t.\tID=g{i};Name={name}")
            lines.append(f"chr1\tt\tmRNA\t{lo + 1}\t{hi}\t.\t{strand}\t.\tID=t{i};Parent=g{i}")
            lines += [f"chr1\tt\texon\t{s + 1}\t{e}\t.\t{strand}\t.\tParent=t{i}"
                      for s, e in exons]
    path.write_text(("##gff-version 3\n" if kind == "gff3" else "") + "\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("kind", ["gtf", "gff3", "gbk"])
def test_gene_models_from_gtf_gff3_and_genbank_agree(track_out, tmp_path, kind):
    annotation = write_models(tmp_path / f"models.{kind}", kind)
    fig = track_plot.track_figure([track_out["out"]], "chr1:1-300", annotation=annotation)
    genes = fig.axes[-1]
    boxes: dict[str, list] = {}
    for patch in genes.patches:
        boxes.setdefault(patch.get_gid().split(":")[1], []).append(
            (patch.get_x() - 0.5, patch.get_x() - 0.5 + patch.get_width()))
    ids = {text.get_text().split(" ")[0]: text for text in genes.texts}
    assert set(ids) == set(MODELS)
    lines = {line.get_gid(): line for line in genes.get_lines()}
    for gene_id, parts in boxes.items():
        strand_line = lines[f"strand:{gene_id}"]
        span = tuple(lines[f"gene:{gene_id}"].get_xdata() - 0.5)
        name = next(n for n, m in MODELS.items() if m[1] == span)
        assert sorted(parts) == MODELS[name][2], (kind, name)
        assert strand_line.get_marker() == (">" if MODELS[name][0] == "+" else "<")


def test_track_mean_strand_and_measure_errors(track_out):
    fig = track_plot.track_figure([track_out["out"]], "chr1:1-20", measures=["llr_site_G"])
    (line,) = fig.axes[0].get_lines()
    column = track_out["table"]["llr_site_G"].to_pylist()[:20]
    np.testing.assert_array_equal(line.get_ydata(), np.array(column, dtype=np.float32))
    with pytest.raises(InputError, match="unknown measure 'logp'"):
        track_plot.track_figure([track_out["out"]], "chr1:1-20", measures=["logp"])
    with pytest.raises(InputError, match="unknown contig 'chr9'"):
        track_plot.track_figure([track_out["out"]], "chr9:1-20")
    with pytest.raises(InputError, match=r"no track rows in chr1:101-110 \(the view has "
                                         r"chr1:1-300\)"):
        track_plot.track_figure([track_out["out"]], "chr1:101-110")
    with pytest.raises(InputError, match="--strands must be one of"):
        track_plot.track_figure([track_out["out"]], "chr1:1-20", strand="plus")


def test_long_regions_are_drawn_as_bin_means(track_out, monkeypatch):
    monkeypatch.setattr(track_plot, "MAX_POINTS", 60)
    fig = track_plot.track_figure([track_out["out"]], "chr1:1-298", measures=["logp_ref"],
                                  strand="fwd")
    (line,) = fig.axes[0].get_lines()
    assert fig.axes[0].get_title(loc="left") == "logp_ref (mean of 5-bp bins)"
    table = track_out["table"]
    dense = np.full(300, np.nan)
    dense[table["position"].to_numpy()] = np.array(
        [np.nan if v is None else v for v in table["logp_ref_fwd"].to_pylist()], dtype=np.float32)
    xy = line.get_xydata()
    assert len(xy) == 60
    for i, (x, y) in enumerate(xy):
        positions = np.arange(5 * i, min(298, 5 * i + 5))  # the last bin holds 3 positions
        assert x == pytest.approx(np.mean(positions + 1), rel=1e-15)
        values = dense[positions]
        if np.isnan(values).all():
            assert np.isnan(y)
        else:
            assert y == pytest.approx(np.nanmean(values), rel=1e-12)
    assert np.isnan(xy[20:22, 1]).all() and not np.isnan(xy[0, 1])  # 101..110 empty: a gap


# -------------------------------------------------------------------------- mutagenesis
def test_mutagenesis_heat_map_is_the_scores_with_reference_marked(scored, genome):
    warnings: list[str] = []
    fig = mut_plot.mutagenesis_figure([scored["out"]], "chr1:21-85", "llr",
                                      warn=warnings.append)
    ax = fig.axes[0]
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    grid = np.ma.filled(mesh.get_array().reshape(4, -1).astype(float), np.nan)
    want = np.full((4, 65), np.nan)
    for pos, alt, llr in duck(scored["out"], "SELECT pos, alt, llr FROM V WHERE status = 'ok' "
                              "AND length(ref) = 1 AND length(alt) = 1 AND pos BETWEEN 21 AND 85"):
        want["ACGT".index(alt), pos - 21] = llr
    np.testing.assert_array_equal(grid, want)
    seq = genome["records"]["chr1"]
    for pos, k in DROPPED:  # SNVs absent from the input: blank
        assert np.isnan(grid["ACGT".index("ACGT".replace(seq[pos - 1], "")[k]), pos - 21])
    assert np.isnan(grid[:, 60 - 21 + 1:]).all()  # no SNV after 60 (indel, mismatch only)
    low, high = mesh.get_clim()
    assert low == -high and high == pytest.approx(np.nanmax(np.abs(want)))
    (dots,) = [c for c in ax.collections if c.get_gid() == "reference"]
    np.testing.assert_array_equal(dots.get_offsets(),
                                  [(p, "ACGT".index(seq[p - 1])) for p in SAT])
    assert all(np.isnan(grid["ACGT".index(seq[p - 1]), p - 21]) for p in SAT)
    assert warnings == ["2 of 120 rows in the region left out (not SNVs, status not ok, or no "
                        "llr)"]


def test_mutagenesis_errors(scored, embedded):
    with pytest.raises(InputError, match="no scored SNVs .* in chr1:80-81: 2 rows"):
        mut_plot.mutagenesis_figure([scored["out"]], "chr1:80-81")
    with pytest.raises(InputError, match="no column 'cadd'"):
        mut_plot.mutagenesis_figure([scored["out"]], "chr1:21-30", "cadd")
    with pytest.raises(InputError, match=r"no variants rows in chr1:200-300 \(the view has "
                                         r"chr1:21-81\)"):
        mut_plot.mutagenesis_figure([scored["out"]], "chr1:200-300")
    with pytest.raises(InputError, match=r"no variants output among .*embed \(found: embeddings\)"):
        mut_plot.mutagenesis_figure([embedded["out"]], "chr1:1-10")


# ----------------------------------------------------------------------------- variants
def brute_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    return float(np.mean([(p > q) + 0.5 * (p == q) for p, q in itertools.product(pos, neg)]))


def test_roc_area_is_the_tie_aware_pair_count(rng):
    for n, levels in ((40, 5), (57, 1000), (9, 2)):
        labels = rng.random(n) < 0.4
        labels[:2] = [True, False]
        scores = rng.integers(0, levels, n).astype(float)
        fpr, tpr = var_plot.roc_curve(labels, scores)
        assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        want = brute_auroc(labels, scores)
        assert area == pytest.approx(want, abs=1e-12)
        assert metrics.auroc(labels, scores) == pytest.approx(want, abs=1e-12)


def test_info_values_per_alt_allele(scored):
    truth = scored["truth"]
    for field in ("CLNSIG", "GROUP", "HOT", "CSQ:Consequence"):
        got = info_values(scored["vcf"], field)
        assert {k: got[k] for k in truth} == {k: v[field] for k, v in truth.items()}, field
    with pytest.raises(InputError, match="no INFO field 'AF'"):
        info_values(scored["vcf"], "AF")
    with pytest.raises(InputError, match="no sub-field 'IMPACT'.*Allele, Consequence, SYMBOL"):
        info_values(scored["vcf"], "CSQ:IMPACT")


def test_variant_groups_and_roc_draw_the_scores(scored):
    warnings: list[str] = []
    fig = var_plot.variants_figure([scored["out"]], "llr", vcf=scored["vcf"], info="CLNSIG",
                                   label="CLNSIG", positive="Pathogenic", warn=warnings.append)
    box_ax, roc_ax = fig.axes
    llr = {(c, p, r, a): s for c, p, r, a, s in
           duck(scored["out"], "SELECT chrom, pos, ref, alt, llr FROM V WHERE llr IS NOT NULL")}
    truth = scored["truth"]
    groups: dict[str, list[float]] = {}
    for key, value in llr.items():
        groups.setdefault(truth[key]["CLNSIG"] or "missing", []).append(value)
    drawn = {c.get_gid().removeprefix("points:"): np.sort(c.get_offsets()[:, 1])
             for c in box_ax.collections if isinstance(c, PathCollection)}
    assert drawn.keys() == groups.keys()
    for name, values in groups.items():
        np.testing.assert_array_equal(drawn[name], np.sort(values))
    ticks = [t.get_text() for t in box_ax.get_xticklabels()]
    assert ticks[-1] == f"missing\nn={len(groups['missing'])}"
    assert set(ticks) == {f"{g}\nn={len(v)}" for g, v in groups.items()}
    # ROC: lower llr predicts Pathogenic; rows without CLNSIG left out
    known = [(truth[k]["CLNSIG"] == "Pathogenic", v) for k, v in llr.items()
             if truth[k]["CLNSIG"] is not None]
    labels = np.array([k for k, _ in known])
    scores = np.array([v for _, v in known])
    want = brute_auroc(labels, -scores)
    roc = next(line for line in roc_ax.get_lines() if line.get_gid() == "roc")
    fpr, tpr = roc.get_xydata().T
    assert float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) == pytest.approx(want, abs=1e-12)
    legend = [t.get_text() for t in roc_ax.get_legend().get_texts()]
    assert legend[0] == f"AUROC {want:.3f}: lower llr predicts CLNSIG = Pathogenic"
    assert warnings == [f"1 of {len(llr) + 1} rows have no llr (status not ok) or a non-finite "
                        "one, and are left out",
                        f"{len(groups['missing'])} scored rows have no CLNSIG and are left out "
                        "of the ROC"]
    higher = var_plot.variants_figure([scored["out"]], "llr", vcf=scored["vcf"],
                                      label="CLNSIG", positive="Pathogenic",
                                      lower_is_positive=False)
    text = higher.axes[1].get_legend().get_texts()[0].get_text()
    assert text == f"AUROC {1 - want:.3f}: higher llr predicts CLNSIG = Pathogenic"


def test_variant_groups_by_column_and_csq(scored):
    fig = var_plot.variants_figure([scored["out"]], "p_ref", by="status")
    (points,) = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    want = [v for (v,) in duck(scored["out"], "SELECT p_ref FROM V WHERE p_ref IS NOT NULL")]
    assert points.get_gid() == "points:ok"
    np.testing.assert_array_equal(np.sort(points.get_offsets()[:, 1]), np.sort(want))
    fig = var_plot.variants_figure([scored["out"]], vcf=scored["vcf"], info="CSQ:Consequence")
    drawn = {c.get_gid() for c in fig.axes[0].collections if isinstance(c, PathCollection)}
    assert drawn == {"points:missense", "points:synonymous", "points:missing"}  # the indel


def test_variant_errors(scored):
    out = [scored["out"]]
    with pytest.raises(InputError, match="no column 'kind' in the variants view"):
        var_plot.variants_figure(out, by="kind")
    with pytest.raises(InputError, match="--info needs --vcf"):
        var_plot.variants_figure(out, info="CLNSIG")
    with pytest.raises(InputError, match="--label and --positive go together"):
        var_plot.variants_figure(out, label="status")
    with pytest.raises(InputError, match=r"the ROC needs both classes: 0 of \d+ labelled rows "
                                         r"have CLNSIG == 'benign' \(values: Benign, Pathogenic\)"):
        var_plot.variants_figure(out, vcf=scored["vcf"], label="CLNSIG", positive="benign")
    with pytest.raises(InputError, match="no column 'CLNSIG' .* no --vcf"):
        var_plot.variants_figure(out, label="CLNSIG", positive="Pathogenic")


# --------------------------------------------------------------------------- embeddings
def reference_pca(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 PCA by eigendecomposition of the covariance (largest-|loading| positive)."""
    x = matrix.astype(np.float64) - matrix.astype(np.float64).mean(axis=0)
    values, vectors = np.linalg.eigh(x.T @ x)
    top = np.argsort(values)[::-1][:2]
    comps = vectors[:, top].T
    comps *= np.sign(comps[np.arange(2), np.abs(comps).argmax(axis=1)])[:, None]
    return x @ comps.T, values[top] / values.sum()


def test_embeddings_pca_matches_float64_reference(embedded):
    table = pq.read_table(embedded["out"] / "embeddings")
    matrix = np.array(table["embedding"].to_pylist(), dtype=np.float32)
    want, ratio = reference_pca(matrix)
    names = table["seq_name"].to_pylist()
    fig = emb_plot.embeddings_figure([embedded["out"]], "seq_name")
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == figures.MAX_GROUPS + 1 and legend[-1] == f"other ({len(names) - 20})"
    drawn = {c.get_gid().removeprefix("points:"): c.get_offsets() for c in ax.collections}
    kept = sorted(names)[:20]  # every name once: the first 20 by name, then "other"
    for name in kept:
        np.testing.assert_allclose(drawn[name], want[[names.index(name)]], rtol=1e-9,
                                   atol=1e-9 * np.abs(want).max())
    others = [i for i, n in enumerate(names) if n not in kept]
    np.testing.assert_allclose(np.sort(drawn["other"], axis=0), np.sort(want[others], axis=0),
                               rtol=1e-9, atol=1e-9 * np.abs(want).max())
    assert ax.get_xlabel() == f"PC1 ({100 * ratio[0]:.1f}% of variance)"
    assert ax.get_ylabel() == f"PC2 ({100 * ratio[1]:.1f}% of variance)"
    numeric = emb_plot.embeddings_figure([embedded["out"]], "length").axes[0]
    (points,) = numeric.collections
    np.testing.assert_allclose(points.get_offsets(), want, rtol=1e-9,
                               atol=1e-9 * np.abs(want).max())
    np.testing.assert_array_equal(points.get_array(), table["length"].to_numpy())
    genes = emb_plot.embeddings_figure([embedded["out"]]).axes[0]
    legend = [t.get_text() for t in genes.get_legend().get_texts()]
    assert legend == ["ALPHA (1)", "BETA (1)", f"missing ({len(names) - 2})"]


def test_embeddings_of_several_poolings_or_models(embedded, tmp_path):
    part = next((embedded["out"] / "embeddings").glob("part-*.parquet"))
    table = pq.read_table(part)
    meta = dict(table.schema.metadata)
    rng = np.random.default_rng(4)
    other = pa.array(rng.normal(size=(table.num_rows, 16)).astype(np.float32).tolist(),
                     type=table.schema.field("embedding").type)
    maxed = table.set_column(table.schema.get_field_index("pooling"), "pooling",
                             pa.array(["max"] * table.num_rows))
    maxed = maxed.set_column(maxed.schema.get_field_index("embedding"), "embedding", other)
    (tmp_path / "max").mkdir()
    pq.write_table(maxed.replace_schema_metadata(meta), tmp_path / "max" / "part.parquet")
    both = [embedded["out"], tmp_path / "max"]
    with pytest.raises(InputError, match=r"several poolings \(max, mean\); choose one"):
        emb_plot.embeddings_figure(both)
    fig = emb_plot.embeddings_figure(both, "length", pooling="max")
    want, _ = reference_pca(np.array(other.to_pylist(), dtype=np.float32))
    np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets(), want, rtol=1e-9,
                               atol=1e-9 * np.abs(want).max())
    (tmp_path / "other_model").mkdir()
    pq.write_table(table.replace_schema_metadata({**meta, schema.KEY_MODEL_SHA: b"f" * 64}),
                   tmp_path / "other_model" / "part.parquet")
    with pytest.raises(InputError, match="embeddings from different models"):
        emb_plot.embeddings_figure([embedded["out"], tmp_path / "other_model"])


def test_embeddings_errors(embedded, scored):
    with pytest.raises(InputError, match="no column 'tissue' in the embeddings view"):
        emb_plot.embeddings_figure([embedded["out"]], "tissue")
    with pytest.raises(InputError, match="no embeddings with pooling 'max'"):
        emb_plot.embeddings_figure([embedded["out"]], pooling="max")
    with pytest.raises(InputError,
                       match=r"no embeddings output among .*scores \(found: variants\)"):
        emb_plot.embeddings_figure([scored["out"]])


# ------------------------------------------------------------------------------ training
def test_training_curves_are_the_recorded_history(trained):
    summary = json.loads((trained["pretrain"] / "summary.json").read_text())
    history = summary["history"]
    fig = train_plot.training_figure(trained["pretrain"])
    loss_ax, ppl_ax = fig.axes
    lines = {line.get_gid(): line.get_xydata() for ax in fig.axes for line in ax.get_lines()}
    np.testing.assert_array_equal(lines["train_loss"],
                                  [(r["step"], r["train_loss"]) for r in history])
    np.testing.assert_array_equal(lines["val_nll"], [(r["step"], r["val_nll"]) for r in history
                                                     if "val_nll" in r])
    np.testing.assert_array_equal(lines["val_ppl"], [(r["step"], r["val_ppl"]) for r in history
                                                     if "val_ppl" in r])
    assert lines["kmer_val_nll"][0, 1] == summary["kmer_baseline"]["val_nll"]
    assert lines["kmer_val_ppl"][0, 1] == summary["kmer_baseline"]["val_ppl"]
    ft = json.loads((trained["finetune"] / "summary.json").read_text())
    lines = {line.get_gid(): line.get_xydata()
             for ax in train_plot.training_figure(trained["finetune"] / "summary.json").axes
             for line in ax.get_lines()}
    for name in ("train_loss", "auroc", "auprc", "accuracy"):
        np.testing.assert_array_equal(lines[name], [(r["epoch"], r[name]) for r in ft["history"]])
    best = next(r["epoch"] for r in ft["history"] if r["auroc"] == ft["best"])
    assert lines["best"][0, 0] == best


def test_unfinished_run_is_drawn_from_its_history_log(trained, tmp_path):
    """A run without summary.json (still going, or killed) is drawn from history.jsonl, which
    holds the same records as the finished run's summary; a line cut short is left out."""
    for kind, x in (("pretrain", "step"), ("finetune", "epoch")):
        history = json.loads((trained[kind] / "summary.json").read_text())["history"]
        logged = (trained[kind] / "history.jsonl").read_text()
        assert [json.loads(line) for line in logged.splitlines()] == history
        run = tmp_path / kind
        run.mkdir()
        (run / "history.jsonl").write_text(logged + '{"step": 99, "train_lo')
        fig = train_plot.training_figure(run)
        lines = {line.get_gid(): line.get_xydata() for ax in fig.axes for line in ax.get_lines()}
        np.testing.assert_array_equal(lines["train_loss"],
                                      [(r[x], r["train_loss"]) for r in history])
        assert f"unfinished: {len(history)} {x}s so far" in fig.texts[0].get_text()


def test_training_errors(tmp_path):
    with pytest.raises(InputError, match="no summary.json"):
        train_plot.training_figure(tmp_path)
    (tmp_path / "summary.json").write_text('{"history": []}')
    with pytest.raises(InputError, match="no training history"):
        train_plot.training_figure(tmp_path)


# ---------------------------------------------------------------------------------- CLI
def cli_cases(track_out, scored, embedded, trained) -> dict[str, list[object]]:
    return {
        "track": ["track", track_out["out"], "--region", "chr1:1-300", "--gtf", track_out["gtf"],
                  "--measures", "logp_ref,entropy,llr_site_A"],
        "mutagenesis": ["mutagenesis", scored["out"], "--region", "chr1:21-60"],
        "variants": ["variants", scored["out"], "--vcf", scored["vcf"], "--info", "GROUP",
                     "--label", "CLNSIG", "--positive", "Pathogenic"],
        "embeddings": ["embeddings", embedded["out"], "--color-by", "chrom"],
        "training": ["training", trained["pretrain"]],
    }


def test_every_plot_writes_png_svg_pdf_and_guards_its_output(track_out, scored, embedded,
                                                             trained, tmp_path):
    for name, args in cli_cases(track_out, scored, embedded, trained).items():
        for fmt, magic in MAGIC.items():
            out = tmp_path / f"{name}.{fmt}"
            result = invoke("plot", *args, "-o", out)
            assert result.exit_code == 0, (name, result.stderr, result.exception)
            head = out.read_bytes()[:400]
            assert (magic in head) if fmt == "svg" else head.startswith(magic), (name, fmt)
        before = (tmp_path / f"{name}.png").read_bytes()
        one_line_error(invoke("plot", *args, "-o", tmp_path / f"{name}.png"),
                       "already exists (pass --force")
        assert invoke("plot", *args, "-o", tmp_path / f"{name}.png", "--force").exit_code == 0
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == before[:8]
        one_line_error(invoke("plot", *args, "-o", tmp_path / f"{name}.jpg"),
                       "unknown figure format '.jpg'")
        assert not (tmp_path / f"{name}.jpg").exists()
    one_line_error(invoke("plot", "embeddings", embedded["out"], "-o",
                          embedded["out"] / "pca.png"), "inside the genomeconv output folder")
    warned = invoke("plot", "mutagenesis", scored["out"], "--region", "chr1:50-90", "-o",
                    tmp_path / "warn.png")
    assert warned.exit_code == 0 and "warning: 2 of 35 rows in the region left out" in \
        warned.stderr


@pytest.mark.parametrize("args,texts", [
    (["track", "T", "--region", "chr1:1-10", "--measures", "logp_ref,gc"],
     ["unknown measure 'gc'"]),
    (["track", "T", "--region", "chrX:1-10"], ["unknown contig 'chrX' in the track view"]),
    (["track", "T", "--region", "chr1:5-2"], ["invalid region 'chr1:5-2'"]),
    (["mutagenesis", "S", "--region", "chr1:21-30", "--score", "x"], ["no column 'x'"]),
    (["variants", "S", "--vcf", "V", "--info", "NOPE"], ["V", "no INFO field 'NOPE'"]),
    (["variants", "S", "--vcf", "V", "--label", "CLNSIG", "--positive", "benign"],
     ["the ROC needs both classes: 0 of"]),
    (["embeddings", "E", "--color-by", "x"], ["no column 'x' in the embeddings view"]),
    (["training", "S"], ["summary.json", "no summary.json"]),
])
def test_bad_input_is_one_line(track_out, scored, embedded, args, texts, tmp_path):
    paths = {"T": track_out["out"], "S": scored["out"], "V": scored["vcf"], "E": embedded["out"]}
    args = [str(paths.get(a, a)) for a in args]
    texts = [str(paths.get(t, t)) for t in texts]
    one_line_error(invoke("plot", *args, "-o", tmp_path / "x.png"), *texts)
    assert not (tmp_path / "x.png").exists()


def test_console_script_error_is_one_line(tmp_path):
    """The real entry point in a fresh process (the in-process runner above shares state)."""
    assert_one_line_error(run_cli("plot", "training", tmp_path, "-o", tmp_path / "c.gif"),
                          "unknown figure format '.gif'")


# ------------------------------------------------------------------------------ issue 30
def test_a_strand_the_track_lacks_is_left_out_with_a_warning(track_out, tmp_path):
    """`plot track --strands rev` on a forward-only track drew empty panels, exit 0, no word."""
    import pyarrow.compute as pc

    table = track_out["table"]
    fwd_only = table
    for name in schema.track_columns(("_rev",)):  # as `track --strands fwd` writes them
        fwd_only = fwd_only.set_column(fwd_only.schema.get_field_index(name), name,
                                       pa.nulls(len(table), pa.float32()))
    folder = tmp_path / "fwd" / "track"
    folder.mkdir(parents=True)
    pq.write_table(fwd_only.replace_schema_metadata(pq.read_schema(
        next((track_out["out"] / "track").glob("*.parquet"))).metadata), folder / "part-0.parquet")
    assert pc.all(pc.is_null(fwd_only["entropy_rev"])).as_py()
    refused = invoke("plot", "track", tmp_path / "fwd", "--region", "chr1:1-300", "--strands",
                     "rev", "-o", tmp_path / "rev.png")
    one_line_error(refused, "no values of logp_ref_rev, entropy_rev in chr1:1-300",
                   "nothing to draw")
    assert not (tmp_path / "rev.png").exists()
    warnings: list[str] = []
    fig = track_plot.track_figure([tmp_path / "fwd"], "chr1:1-300", strand="both",
                                  warn=warnings.append)
    drawn = [line.get_gid() for ax in fig.axes for line in ax.get_lines()]
    assert drawn == ["logp_ref_fwd", "entropy_fwd"]
    assert warnings == ["no values of logp_ref_rev, entropy_rev in chr1:1-300 (a track written "
                        "with --strands fwd has no _rev values): left out of the figure"]


def test_track_lines_are_rolling_means_stated_in_the_title(track_out):
    """`--smooth N`: a centred rolling mean over N bases, NaN-aware, gaps kept; the default
    grows with the region (per base below 1 kbp)."""
    fig = track_plot.track_figure([track_out["out"]], "chr1:1-300", measures=["entropy"],
                                  strand="fwd", smooth=5)
    (line,) = fig.axes[0].get_lines()
    assert fig.axes[0].get_title(loc="left") == "entropy (rolling mean over 5 bp)"
    table = track_out["table"]
    dense = np.full(300, np.nan)
    dense[table["position"].to_numpy()] = np.array(
        [np.nan if v is None else v for v in table["entropy_fwd"].to_pylist()], dtype=np.float32)
    y = line.get_ydata()
    for p in range(300):
        if np.isnan(dense[p]):
            assert np.isnan(y[p])  # a gap stays a gap
        else:
            assert y[p] == pytest.approx(np.nanmean(dense[max(0, p - 2):p + 3]), rel=1e-12)
    assert [track_plot.default_smooth(n) for n in (300, 999, 6_000, 48_502, 250_000)] == \
        [1, 1, 10, 50, 500]
    plain = track_plot.track_figure([track_out["out"]], "chr1:1-300", strand="fwd")
    assert plain.axes[0].get_title(loc="left") == "logp_ref"  # 300 bp: per base


@pytest.fixture(scope="module")
def saturated(genome) -> Path:
    """`score-variants --saturate chr1:101-130`'s output as the pipeline writes it: every SNV of
    the region one row, the command line recorded as the CLI records it."""
    seq, rng = genome["records"]["chr1"], np.random.default_rng(7)
    rows = [{"chrom": "chr1", "pos": pos, "ref": seq[pos - 1], "alt": alt, "id": None,
             "status": "ok", "ref_match": True, "window_start": max(0, pos - 1 - W // 2),
             "window_end": max(W, pos - 1 + W - W // 2), "model": MODEL.model_id,
             "contig": "chr1", "nonfinite": False, "llr": rng.normal(), "llr_fwd": 0.0,
             "llr_rev": 0.0}
            for pos in range(101, 131) for alt in "ACGT" if alt != seq[pos - 1]]
    out = genome["work"] / "saturated"
    write_part(rows, schema.variants_schema(), out, "variants",
               command=f"genomeconv score-variants --saturate chr1:101-130 --fasta "
                       f"{genome['fasta']} --window {W} --out {out}")
    return out


def test_mutagenesis_takes_the_saturated_region_of_the_output(saturated, scored, tmp_path):
    """plot mutagenesis demanded --region even for an output of one saturated region."""
    fig = mut_plot.mutagenesis_figure([saturated], None)
    assert fig.axes[0].get_title(loc="left") == "llr of every SNV, chr1:101-130"
    result = invoke("plot", "mutagenesis", saturated, "-o", tmp_path / "sat.png")
    assert result.exit_code == 0, result.stderr
    one_line_error(invoke("plot", "mutagenesis", scored["out"], "-o", tmp_path / "vcf.png"),
                   "the output holds no saturated region", "choose one with --region")
    part = next(saturated.glob("part-*.parquet"))  # a copy recorded as another region's run
    table = pq.read_table(part)
    meta = {**table.schema.metadata,
            schema.KEY_COMMAND: b"genomeconv score-variants --saturate=chr2:1-9 --fasta f"}
    (tmp_path / "other").mkdir()
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "other" / part.name)
    with pytest.raises(InputError, match=r"several saturated regions \(chr1:101-130, chr2"):
        mut_plot.mutagenesis_figure([saturated, tmp_path / "other"], None)


def test_the_figure_refusal_says_figure(embedded):
    with pytest.raises(InputError, match="write the figure elsewhere"):
        figures.check_figure_out(embedded["out"] / "pca.png")
