"""GenBank, EMBL and GFF3+FASTA files as reference and annotation, and plain-gzip FASTA, through
the io layer, through what `embed` and `score-variants` plan and feed their model (their own
planning and worker code, run without Ray), and once end to end on real local Ray with a tiny
random model.

Every result is compared with the same work done from an equivalent FASTA + GTF written by the
test (and spliced sequences with Biopython's own `SeqFeature.extract`). The genome has a
two-part CDS on each strand, a record without features and a gene that runs past its record.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from Bio import SeqIO
from Bio.Seq import Seq
from Bio.SeqFeature import CompoundLocation, SeqFeature, SimpleLocation
from Bio.SeqRecord import SeqRecord
from typer.testing import CliRunner

from genomeconv.cli import app
from genomeconv.errors import InputError
from genomeconv.io.annotations import select_features
from genomeconv.io.fasta import FastaFile
from genomeconv.io.seqrecords import features_of, genes_of, record_format
from genomeconv.pipelines.embed import plan_fasta_items
from helpers import open_actor, random_seq, save_tiny_model, worker_setup, write_fasta

# (type, parts as (start, end, strand) in biological order, qualifiers); record "R1.1"
FEATURES = [
    ("gene", [(9, 61, "+")], {"gene": "abcA", "locus_tag": "T_001"}),
    ("CDS", [(9, 30, "+"), (40, 61, "+")],
     {"gene": "abcA", "locus_tag": "T_001", "protein_id": "P_001.1"}),
    ("gene", [(99, 260, "-")], {"locus_tag": "T_002"}),
    ("CDS", [(199, 260, "-"), (99, 150, "-")], {"locus_tag": "T_002", "protein_id": "P_002.1"}),
    ("tRNA", [(300, 372, "+")], {"gene": "trnA", "locus_tag": "T_003"}),
]
PAST_END = ("gene", [(560, 640, "+")], {"locus_tag": "T_004"})  # R1.1 is 600 bp long


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("GENOMECONV_CACHE", str(path))
    return path


def _location(parts):
    locs = [SimpleLocation(s, e, 1 if strand == "+" else -1) for s, e, strand in parts]
    return locs[0] if len(locs) == 1 else CompoundLocation(locs)


def write_genome(folder: Path, rng, *, past_end: bool = False) -> dict:
    """The same genome as GenBank, EMBL (both also gzip), GFF3+FASTA and FASTA + GTF."""
    seqs = {"R1.1": random_seq(rng, 600), "R2.1": random_seq(rng, 250)}  # R2.1: no features
    feats = FEATURES + ([PAST_END] if past_end else [])
    records = []
    for name, seq in seqs.items():
        rec = SeqRecord(Seq(seq), id=name, name=name.split(".")[0], description="test",
                        annotations={"molecule_type": "DNA"})
        if name == "R1.1":
            rec.features = [SeqFeature(_location(parts), type=t,
                                       qualifiers={k: [v] for k, v in q.items()})
                            for t, parts, q in feats]
        records.append(rec)
    out = {"seqs": seqs, "records": records}
    for fmt, suffix in (("genbank", "gbk"), ("embl", "embl")):
        path = folder / f"genome.{suffix}"
        SeqIO.write(records, path, fmt)
        with gzip.open(f"{path}.gz", "wb") as fh:
            fh.write(path.read_bytes())
        out[suffix], out[suffix + ".gz"] = str(path), f"{path}.gz"
    out["fasta"] = write_fasta(folder / "genome.fa", seqs, index=False)
    gtf, gff = [], ["##gff-version 3"]
    for i, (t, parts, q) in enumerate(feats):
        attrs = [f'gene_id "{q["locus_tag"]}"', f'transcript_id "tx{i}"'] + [
            f'{k if k != "gene" else "gene_name"} "{v}"' for k, v in q.items()
            if k in ("gene", "protein_id")]
        gff_attrs = f"ID=f{i};locus_tag={q['locus_tag']}" + "".join(
            f";{k}={v}" for k, v in q.items() if k in ("gene", "protein_id"))
        for s, e, strand in parts:
            gtf.append(f"R1.1\tt\t{t}\t{s + 1}\t{e}\t.\t{strand}\t0\t{'; '.join(attrs)};")
            gff.append(f"R1.1\tt\t{t}\t{s + 1}\t{e}\t.\t{strand}\t0\t{gff_attrs}")
    Path(folder / "genome.gtf").write_text("\n".join(gtf) + "\n")
    out["gtf"] = str(folder / "genome.gtf")
    fasta_text = Path(out["fasta"]).read_text()
    Path(folder / "genome.gff3").write_text("\n".join(gff) + "\n##FASTA\n" + fasta_text)
    out["gff3"] = str(folder / "genome.gff3")
    return out


def spliced(rec: SeqRecord, parts) -> str:
    """Biopython's own extraction of a (compound) location."""
    return str(_location(parts).extract(rec.seq)).upper()


@pytest.fixture
def genome(tmp_path, rng):
    return write_genome(tmp_path, rng)


RECORD_INPUTS = ["gbk", "gbk.gz", "embl", "embl.gz", "gff3"]


@pytest.mark.parametrize("kind", RECORD_INPUTS)
def test_record_files_read_as_fasta(genome, kind, capfd):
    assert record_format(genome[kind]) == {"gbk": "genbank", "emb": "embl",
                                           "gff": "gff3"}[kind[:3]]
    with FastaFile(genome[kind]) as fa:
        assert fa.references == ("R1.1", "R2.1") and fa.lengths == (600, 250)
        assert fa.fetch("R1.1", 17, 444) == genome["seqs"]["R1.1"][17:444]
        assert fa.fetch("R2.1") == genome["seqs"]["R2.1"]
    assert "FASTA and feature table" in capfd.readouterr().err
    with FastaFile(genome[kind]):
        pass
    assert capfd.readouterr().err == ""  # converted once


def _shape(features):
    return sorted((f.chrom, f.type, f.parts, f.strand, f.gene, f.locus_tag, f.protein_id)
                  for f in features)


@pytest.mark.parametrize("kind", RECORD_INPUTS)
def test_features_and_genes_equal_the_gtf(genome, kind):
    assert _shape(features_of(genome[kind])) == _shape(features_of(genome["gtf"]))
    ids = {f"f{i}" for i in range(len(FEATURES))}  # GFF3 IDs are aliases there too

    def genes(path):
        return {g.gene_id: (g.interval, g.gene_name, set(g.aliases) - ids) for g in genes_of(path)}

    assert genes(genome[kind]) == genes(genome["gtf"])
    assert set(genes(genome[kind])) == {"T_001", "T_002", "T_003"}


def _rows(items):
    return [(it.seq_name, it.chrom, it.start, it.end, it.strand, it.length, it.gene_id,
             it.gene_name, it.parts) for it in items]


def _plan(genome, kind, **kw):
    gtf = genome["gtf"] if kind == "fasta" else None
    return _rows(plan_fasta_items(genome[kind], gtf=gtf, **kw))


@pytest.mark.parametrize("kind", ["gbk", "embl.gz", "gff3"])
def test_planned_items_equal_fasta_plus_gtf(genome, kind):
    for kw in ({"features": ["CDS"]}, {"features": ["CDS", "trna"], "spliced": True},
               {"genes": ["abcA", "P_002.1"]}, {"features": ["gene"], "genes": ["T_002"]}):
        assert _plan(genome, kind, **kw) == _plan(genome, "fasta", **kw), kw
    cds = _plan(genome, kind, features=["CDS"], spliced=True)
    assert [c[0] for c in cds] == ["CDS:abcA:spliced", "CDS:T_002:spliced"]
    assert [c[5] for c in cds] == [42, 112]  # joined lengths, not spans
    assert [c[0] for c in _plan(genome, kind, features=["CDS"])] == ["CDS:abcA", "CDS:T_002"]
    records = plan_fasta_items(genome[kind])  # no selection: whole records
    assert [(it.seq_name, it.length) for it in records] == [("R1.1", 600), ("R2.1", 250)]


def test_gff3_without_fasta_is_an_annotation_not_a_reference(genome, tmp_path):
    gff = tmp_path / "annotation.gff3"
    gff.write_text(Path(genome["gff3"]).read_text().split("##FASTA")[0])
    assert _shape(features_of(gff)) == _shape(features_of(genome["gff3"]))
    assert _rows(plan_fasta_items(genome["fasta"], gtf=gff, genes=["T_001", "P_002.1"])) == \
        _plan(genome, "fasta", genes=["T_001", "P_002.1"])
    with pytest.raises(InputError, match="no sequence found.*needs a ##FASTA section"):
        FastaFile(gff)


def test_selection_errors_name_the_file(genome):
    with pytest.raises(InputError, match="no feature of type 'mRNA'.*types present: CDS, gene, "
                                         "tRNA"):
        plan_fasta_items(genome["gbk"], features=["mRNA"])
    with pytest.raises(KeyError, match="abcB.*did you mean abcA"):
        plan_fasta_items(genome["gbk"], features=["CDS"], genes=["abcB"])
    with pytest.raises(InputError, match="need --gtf"):
        plan_fasta_items(genome["fasta"], genes=["abcA"])
    assert select_features(features_of(genome["gbk"]), ["cds"], ["P_001.1"])[0].gene == "abcA"


def test_feature_past_record_end_is_refused_like_the_gtf(tmp_path, rng):
    genome = write_genome(tmp_path, rng, past_end=True)
    for kind in ("gbk", "fasta"):
        with pytest.raises(InputError, match=f"^{genome[kind]}: R1.1:561-640 runs past the "
                                             "end of R1.1 \\(length 600\\)"):
            _plan(genome, kind, features=["gene"])
        # other selections from the same file still work
        assert len(_plan(genome, kind, features=["CDS"], spliced=True)) == 2


def test_pretrain_genome_from_gzip_and_genbank_equals_fasta(genome, tmp_path):
    from genomeconv.models.tokenizer import tokenize_rows
    from genomeconv.pipelines.training_data import load_genome

    gz = tmp_path / "genome.fa.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(Path(genome["fasta"]).read_bytes())

    def split(path):
        s = load_genome(path, tokenize_rows, val_records=["R2.1"])
        return [(seg.record, seg.start, seg.ids.tobytes()) for seg in s.train + s.val]

    assert split(gz) == split(genome["gbk"]) == split(genome["fasta"])


# --- through the jobs' own planning and workers ------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", seed=11, max_seq_len=1024)


def actor_sequences(model: str, path: str, out: Path, **selection) -> dict[tuple, str]:
    """The bases an EmbedActor (run here, without Ray) embeds for each item `embed` plans on
    `path` (a FASTA + --gtf when `gtf` is given, else a FASTA or a record file), keyed by the
    item's coordinates."""
    from genomeconv.io.fasta import readable_fasta
    from genomeconv.pipelines.embed import EmbedActor, WorkerConfig

    items = plan_fasta_items(path, **selection)
    actor = open_actor(EmbedActor, worker_setup(model, out),
                       WorkerConfig(fasta=readable_fasta(path), reads=None))
    return {(it.seq_name, it.chrom, it.start, it.end, it.strand, it.length): seq
            for it, seq in zip(items, actor.sequences(items))}


def test_embed_workers_read_record_files_as_fasta_plus_gtf(tiny_model, genome, tmp_path):
    """What `embed` feeds the model from an EMBL --genes or a GFF3+FASTA file equals the FASTA
    + GTF's (and the plan is the same, test_planned_items_equal_fasta_plus_gtf)."""
    genes = {"genes": ["abcA", "P_002.1"]}
    embl = actor_sequences(tiny_model, genome["embl"], tmp_path, **genes)
    assert embl == actor_sequences(tiny_model, genome["fasta"], tmp_path, gtf=genome["gtf"],
                                   **genes)
    assert len(embl) == 2
    records = actor_sequences(tiny_model, genome["gff3"], tmp_path)
    assert records == actor_sequences(tiny_model, genome["fasta"], tmp_path)
    assert sorted(records.values()) == sorted(genome["seqs"].values())


def embeddings(out: Path) -> dict[tuple, np.ndarray]:
    table = pq.read_table(out / "embeddings")
    return {(r["seq_name"], r["chrom"], r["start"], r["end"], r["strand"], r["length"]):
            np.asarray(r["embedding"]) for r in table.to_pylist()}


def run_cli(args: list[str]) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_embed_genbank_features_spliced_equal_fasta(ray_local, tiny_model, genome, tmp_path):
    """End to end on Ray (the one run of this module): `embed genome.gbk.gz --features CDS
    --spliced --per-base` equals embedding the joined sequences (cut by Biopython) from a FASTA,
    its per-base positions following the parts in biological order."""
    rec = genome["records"][0]
    joined = {f"{t}_{i}": spliced(rec, parts) for i, (t, parts, _) in enumerate(FEATURES)
              if t == "CDS"}
    joined_fa = write_fasta(tmp_path / "joined.fa", joined, index=False)
    common = ["--model", tiny_model, "--batch-size", "2"]
    run_cli(["embed", genome["gbk.gz"], "--features", "CDS", "--spliced", "--per-base", "--out",
             tmp_path / "gbk", *common])
    per_base = pq.read_table(tmp_path / "gbk" / "per_base").to_pylist()
    ids = {r["item_id"]: r["seq_name"] for r in pq.read_table(tmp_path / "gbk" / "embeddings")
           .to_pylist()}
    positions = {name: [r["position"] for r in per_base if ids[r["item_id"]] == name]
                 for name in ids.values()}
    assert positions == {"CDS:abcA:spliced": [*range(9, 30), *range(40, 61)],
                         "CDS:T_002:spliced": [*range(259, 198, -1), *range(149, 98, -1)]}
    run_cli(["embed", joined_fa, "--out", tmp_path / "joined", *common])
    got, want = embeddings(tmp_path / "gbk"), embeddings(tmp_path / "joined")
    assert sorted(k[0] for k in got) == ["CDS:T_002:spliced", "CDS:abcA:spliced"]
    for key, name in zip(sorted(got), ("CDS_3", "CDS_1")):
        (want_key,) = [k for k in want if k[0] == name]
        assert key[5] == want_key[5] == len(joined[name])
        np.testing.assert_allclose(got[key], want[want_key], rtol=1e-5, atol=1e-6)


def planned_windows(vcf: Path, fasta: str, tmp_path: Path, **selection) -> list[tuple]:
    """The variants score-variants selects from `vcf` on `fasta` (VariantsJob.read_variants)
    with their planned windows (status, REF and ALT window bases), as its workers plan them."""
    from genomeconv.io.fasta import readable_fasta
    from genomeconv.pipelines.options import VariantOptions
    from genomeconv.pipelines.variants import VariantsJob, plan_variant

    job = VariantsJob(VariantOptions(variants=vcf, fasta=fasta, out=tmp_path / "o", **selection))
    contigs: dict[str, str | None] = {}
    with FastaFile(readable_fasta(fasta)) as fa:
        return [(v.chrom, v.pos, v.ref, v.alt, pv.status, pv.ref_seq, pv.alt_seq)
                for v in job.read_variants() for pv in [plan_variant(v, fa, 128, contigs)]]


def test_score_variants_genbank_and_gzip_reference_equal_fasta(genome, tmp_path):
    """score-variants on a GenBank reference (its own annotation for --genes) or a plain-gzip
    FASTA selects the same variants and scores the same windows as on the FASTA (+ GTF)."""
    seq = genome["seqs"]["R1.1"]
    vcf = tmp_path / "calls.vcf"
    positions = [20, 45, 120, 230, 330, 580]  # in abcA, abcA, T_002 (x2), trnA, no gene
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=R1.1,length=600>",
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    lines += [f"R1.1\t{p}\t.\t{seq[p - 1]}\t{'A' if seq[p - 1] != 'A' else 'C'}\t.\t.\t."
              for p in positions]
    vcf.write_text("\n".join(lines) + "\n")
    gz = tmp_path / "genome.fa.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(Path(genome["fasta"]).read_bytes())
    genes = ("abcA", "T_002")
    got = planned_windows(vcf, genome["gbk"], tmp_path, genes=genes)
    assert [r[1] for r in got] == [20, 45, 120, 230] and {r[4] for r in got} == {"ok"}
    assert got == planned_windows(vcf, genome["fasta"], tmp_path, gtf=Path(genome["gtf"]),
                                  genes=genes)
    whole = planned_windows(vcf, str(gz), tmp_path)
    assert whole == planned_windows(vcf, genome["fasta"], tmp_path) and len(whole) == 6
    assert all(len(r[5]) == len(r[6]) == 128 for r in whole)
