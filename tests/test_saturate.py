"""Saturation mutagenesis (`score-variants --saturate`): every SNV of a region, scored exactly as
the same SNVs given as a VCF (bit-identical), with soft-masked and N bases, contig ends, the
run-time refusal, resume, and one-line errors.

Real components: a random genome written as text and indexed with pysam, a tiny random HyenaDNA,
VCFs written as text, the real local Ray (tests/conftest.py) and Parquet read back with pyarrow.
"""

from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest

from genomeconv.errors import InputError
from genomeconv.io.saturation import Saturation
from genomeconv.pipelines import schema
from genomeconv.pipelines.options import VariantOptions
from helpers import (VARIANT_KEY, assert_one_line_error, random_seq, run_cli, save_tiny_model,
                     score_variants_cli, variant_rows, write_fasta, write_vcf)

W = 33


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("sat_model"), seed=11, max_seq_len=66)


@pytest.fixture
def genome(rng) -> dict[str, str]:
    """chr1 with a soft-masked stretch (41-60, 1-based), N at 71-73 and an R at 81; chr2 short."""
    g1 = list(random_seq(rng, 200))
    g1[40:60] = [b.lower() for b in g1[40:60]]
    g1[70:73] = "NNN"
    g1[80] = "R"
    return {"chr1": "".join(g1), "chr2": random_seq(rng, 100)}


def expected_snvs(genome: dict[str, str], spans: list[tuple[str, int, int]]) -> list[tuple]:
    """(chrom, pos, ref, alt) of every SNV of the 1-based closed spans, skipping non-ACGT bases."""
    out = set()
    for chrom, first, last in spans:
        for pos in range(first, last + 1):
            ref = genome[chrom][pos - 1].upper()
            out.update((chrom, pos, ref, alt) for alt in "ACGT" if ref in "ACGT" and alt != ref)
    return sorted(out)


def test_saturation_equals_the_same_snvs_as_a_vcf(ray_local, tiny_model, genome, tmp_path):
    """Rows = 3 x scorable positions, the score-variants schema, and every value equal (==) to
    score-variants on a VCF of the same SNVs; then resume, and a VCF rerun into the folder."""
    fasta = write_fasta(tmp_path / "ref.fa", genome)
    regions = ["1:1-12", "chr1:35-85", "chr1:80-90", "chr2:93-100"]  # Ensembl name, overlap
    snvs = expected_snvs(genome, [("chr1", 1, 12), ("chr1", 35, 90), ("chr2", 93, 100)])
    assert len(snvs) == 3 * (12 + 56 - 4 + 8)  # N x 3 and R skipped
    opts = ["--fasta", fasta, "--model", tiny_model, "--window", W, "--site-probs",
            "--unit-size", 25, "--num-workers", 2]
    sat = tmp_path / "sat"
    args = [a for r in regions for a in ("--saturate", r)] + opts + ["--out", sat]
    first = score_variants_cli(*args)
    assert f"{len(snvs)} ALT alleles (0 already done); scored {len(snvs)} in" in first
    assert "genomeconv: --saturate: 4 of 76 positions skipped, their reference base being N " \
        "or another IUPAC code (the first at chr1:71)" in first

    vcf = write_vcf(tmp_path / "same.vcf", {"chr1": 200, "chr2": 100},
                    [(c, p, ".", r, a) for c, p, r, a in snvs])
    via_vcf = tmp_path / "vcf"
    score_variants_cli(vcf, *opts, "--out", via_vcf)
    got, want = variant_rows(sat), variant_rows(via_vcf)
    assert [tuple(r[k] for k in VARIANT_KEY) for r in got] == snvs
    assert got == want  # every column, floats compared with ==
    assert {r["status"] for r in got} == {"ok"} and all(r["id"] is None for r in got)
    for part in [*sat.glob("part-*.parquet"), *via_vcf.glob("part-*.parquet")]:
        assert pq.read_schema(part).remove_metadata() == schema.VARIANTS
    by_key = {tuple(r[k] for k in VARIANT_KEY): r for r in got}
    masked = [r for r in got if r["chrom"] == "chr1" and 41 <= r["pos"] <= 60]
    assert len(masked) == 3 * 20 and all(r["ref"].isupper() and r["llr"] is not None
                                        for r in masked)
    first_base = by_key[snvs[0]]  # chr1:1, the contig's first base: window shifted inside
    assert (first_base["window_start"], first_base["window_end"]) == (0, W)
    assert first_base["p_ref"] is None and first_base["llr_rev"] is not None
    last = [r for r in got if r["chrom"] == "chr2" and r["pos"] == 100]
    assert len(last) == 3 and all((r["window_start"], r["window_end"]) == (100 - W, 100)
                                  for r in last)

    # resume: a lost part (a killed unit) and a crashed temp file; then a larger region
    parts = sorted(sat.glob("part-*.parquet"))
    lost = pq.read_table(parts[1]).num_rows
    parts[1].unlink()
    (sat / ".tmp-crashed").write_bytes(b"partial")
    again = score_variants_cli(*args)
    assert f"({len(snvs) - lost} already done); scored {lost} in" in again
    assert variant_rows(sat) == want and not (sat / ".tmp-crashed").exists()
    wider = score_variants_cli(*args[:-2], "--saturate", "chr2:90-100", "--out", sat)
    more = expected_snvs(genome, [("chr2", 90, 92)])
    assert f"({len(snvs)} already done); scored {len(more)} in" in wider
    # the same manifest, whichever input: the VCF finds its alleles written already
    again = score_variants_cli(vcf, *opts, "--out", sat)
    assert f"({len(snvs)} already done); scored 0 in" in again
    assert len(variant_rows(sat)) == len(snvs) + len(more)


def test_refusal_names_the_snvs_and_the_estimate_and_force_runs(ray_local, tiny_model, genome,
                                                                tmp_path):
    """A tiny --max-hours refuses before Ray and before OUT exists (message: SNV count, windows,
    h:mm), also for a k-mer model and without the reverse strand; --force runs it."""
    from genomeconv.pipelines.variants import score_variants

    fasta = write_fasta(tmp_path / "ref.fa", genome)
    sat = Saturation.from_regions(["chr2:1-30"], fasta)
    assert (len(sat), sat.positions, sat.skipped, sat.note) == (90, 30, 0, None)
    out = tmp_path / "out"
    # per position its REF window and 3 ALT windows at half a window each (they run from
    # their first difference), per strand
    for model, rc, windows in ((tiny_model, True, 5 * 30), ("kmer:2", False, 5 * 15)):
        with pytest.raises(InputError) as err:
            score_variants(
                VariantOptions(
                    variants=sat,
                    fasta=fasta,
                    out=out,
                    model=model,
                    window=W,
                    strands="both" if rc else "fwd",
                    max_hours=1e-9,
                )
            )
        text = str(err.value)
        assert re.search(rf"^--saturate chr2:1-30: 90 SNVs would take about \d+:\d\d \(h:mm; "
                         rf"{windows} model windows of {W} bp, [\d.e+-]+ ms each, 1 "
                         r"worker\(s\)\), more than --max-hours 1e-09: .* pass --force$",
                         text), text
        assert not out.exists()
    line = assert_one_line_error(run_cli("score-variants", "--saturate", "chr2:1-30", "--fasta",
                                         fasta, "--model", tiny_model, "--window", W, "--out",
                                         out, "--max-hours", "1e-9"),
                                 "90 SNVs would take about", "pass --force")
    assert "150 model windows" in line and not out.exists()
    forced = score_variants_cli("--saturate", "chr2:1-30", "--fasta", fasta, "--model",
                                tiny_model, "--window", W, "--out", out, "--max-hours", "0")
    assert "scored 90 in" in forced and pq.read_table(out).num_rows == 90
    summary = score_variants(
        VariantOptions(
            variants=sat, fasta=fasta, out=tmp_path / "ok", model="kmer:2", window=W, max_hours=1.0
        )
    )  # within the limit: runs
    assert summary.tally["rows"] == 90
    as_list = score_variants(
        VariantOptions(
            variants=list(sat), fasta=fasta, out=tmp_path / "list", model="kmer:2", window=W
        )
    )
    assert as_list.tally["rows"] == 90
    assert variant_rows(tmp_path / "list") == variant_rows(tmp_path / "ok")


def test_one_line_errors(tiny_model, genome, tmp_path):
    fasta = write_fasta(tmp_path / "ref.fa", genome)
    vcf = write_vcf(tmp_path / "v.vcf", {"chr1": 200}, [("chr1", 5, ".", genome["chr1"][4], "A")])
    base = ["score-variants", "--fasta", fasta, "--model", tiny_model, "--out", tmp_path / "o"]
    cases = [
        ([], ["exactly one of VARIANTS or --saturate"]),
        ([vcf, "--saturate", "chr1:1-5"], ["exactly one of VARIANTS or --saturate"]),
        (["--saturate", "chr1:9-3"], ["--saturate: invalid region 'chr1:9-3'"]),
        (["--saturate", "chr7:1-3"], ["--saturate chr7:1-3: unknown contig 'chr7'", fasta]),
        (["--saturate", "chr1:190-201"], ["--saturate chr1:190-201: runs past the end of chr1 "
                                          "(200 bp)", fasta]),
        (["--saturate", "chr2:101"], ["--saturate chr2:101: runs past the end of chr2"]),
        (["--saturate", "chr1:1-5", "--region", "chr1:1-3"], ["--region and --genes"]),
    ]
    for extra, texts in cases:
        assert_one_line_error(run_cli(*base, *extra), *texts)
    assert not (tmp_path / "o").exists()


def test_regions_resolve_merge_and_open_ends(genome, tmp_path):
    """Ensembl names resolve to the FASTA's; overlapping and adjacent regions merge, so each
    position is mutated once; `chr2` is the whole contig, `chr2:91` runs to its end; the ALTs of a
    position come in A, C, G, T order without the reference base."""
    fasta = write_fasta(tmp_path / "ref.fa", genome)
    sat = Saturation.from_regions(["2:5-10", "chr2:8-12", "chr2:13-14", "chr1:3-3"], fasta)
    assert sat.describe() == "chr2:5-14, chr1:3-3"
    snvs = [(v.chrom, v.pos, v.ref, v.alt, v.id) for v in sat]
    want = expected_snvs(genome, [("chr2", 5, 14)]) + expected_snvs(genome, [("chr1", 3, 3)])
    assert snvs == [(*key, None) for key in want]
    assert [a for _, p, _, a, _ in snvs if p == 5] == [b for b in "ACGT"
                                                       if b != genome["chr2"][4]]
    whole = Saturation.from_regions(["chr2"], fasta)
    assert (whole.positions, len(whole)) == (100, 300)
    tail = Saturation.from_regions(["chr2:91"], fasta)
    assert [v.pos for v in tail][::3] == list(range(91, 101))
    masked = Saturation.from_regions(["chr1:41-90"], fasta)
    assert (masked.positions, masked.skipped) == (46, 4)
    assert masked.note.endswith("(the first at chr1:71)")
