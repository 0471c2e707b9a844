"""Zero-shot variant-effect scores with a causal DNA language model: `genomeconv score-variants`.

Windows. W bases (default: the model's maximum length, capped at 32,768 on CPU and 131,072 on
CUDA). For a variant at 1-based POS, pos0 = POS - 1 and the reference window is
[pos0 - W//2, pos0 - W//2 + W) (0-based, half-open): the variant's first REF base sits at index
W//2, as in GPN. Bases past either contig end are N (`n_padded` counts them).

Alleles (VCF anchor-base convention, REF and ALT both start at POS). The ALT window is the
reference window with REF replaced by ALT, then cut or extended on the right to W bases from the
genome: alt = (g[start:pos0] + ALT + g[pos0 + len(REF):])[:W]. Both windows have W bases and share
the prefix g[start:pos0].

Scores (natural log):
- llr_fwd = sum_t log p(alt_t | alt_<t) - sum_t log p(ref_t | ref_<t) over the W-1 predicted
  positions of the windows;
- llr_rev = the same on the reverse complements of both windows (for odd W and an SNV, exactly
  llr_fwd of the reverse-complemented variant on the reverse-complemented genome); llr = the mean
  of the two (llr_fwd when the reverse strand is turned off);
- emb_cosine = 1 - cos(a, b) and emb_l2 = |a - b| between the mean-pooled final hidden states
  (after ln_f) of the forward ref and alt windows;
- p_ref, p_alt (with site_probs): the model's probabilities of the REF and ALT base at the site
  given the W//2 bases before it (SNVs only).

Statuses (one output row per input ALT allele, always): ok; ref_mismatch (REF differs from the
FASTA, ref_match = false); unknown_contig; out_of_contig (REF runs past the contig end);
symbolic_alt (<DEL>, breakends); spanning_deletion (*); missing_alt (.). Only "ok" rows have
scores. Output columns: schema.VARIANTS plus `contig` (the FASTA name a variant was matched to,
chr1 <-> 1 resolved automatically) and `n_padded` (N bases in the reference window).

Efficiency: identical window sequences (the shared reference window of the ALTs at one position,
REF == ALT, repeated variants) run through the model once per work unit; windows are batched.
Work items are sorted by (chrom, pos), so the ALTs of one position normally fall in one unit;
units are scored by Ray actors (model loaded once each) and written as one Parquet part each; a
rerun skips finished units (runtime.plan_units / finished_units / write_part) and refuses an
output directory whose parts were made with another model or other settings.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from genomeconv.io.regions import reverse_complement
from genomeconv.io.variants import Variant, allele_kind, iter_variants
from genomeconv.pipelines import runtime, schema

if TYPE_CHECKING:
    from genomeconv.io.fasta import FastaFile

CPU_WINDOW_CAP = 32_768
CUDA_WINDOW_CAP = 131_072
TOKENS_PER_BATCH = 1 << 17  # default batch size = max(1, this // window)
KEY_SETTINGS = b"genomeconv.variants.settings"  # extra file metadata: how the scores were made
SKIP_STATUS = {"symbolic": "symbolic_alt", "star": "spanning_deletion", "missing": "missing_alt"}



def default_window(max_seq_len: int, device: str | None = None) -> int:
    """The default window: the model's maximum length, capped (32,768 on CPU, 131,072 on CUDA)."""
    cap = CUDA_WINDOW_CAP if str(device or "cpu").startswith("cuda") else CPU_WINDOW_CAP
    return int(min(max_seq_len, cap))


def window_start(pos: int, window: int) -> int:
    """0-based start of the window for a 1-based POS: the variant lands at index window // 2."""
    return pos - 1 - window // 2


def alt_window(padded: str, offset: int, ref: str, alt: str, window: int) -> str:
    """The ALT window: REF at `offset` of `padded` replaced by ALT, cut to `window` bases.

    padded holds the reference from the window start with at least window + len(ref) - len(alt)
    bases, so deletions are extended on the right from the genome and insertions are cut there.
    """
    return (padded[:offset] + alt + padded[offset + len(ref):])[:window]


@dataclass
class PlannedVariant:
    """One input ALT allele with its status and, when it can be scored, its two windows."""

    variant: Variant
    contig: str | None = None
    status: str = "ok"
    ref_match: bool | None = None
    window_start: int | None = None
    window_end: int | None = None
    n_padded: int = 0
    ref_seq: str | None = None
    alt_seq: str | None = None


def plan_variant(variant: Variant, fasta: FastaFile, window: int,
                 contigs: dict[str, str | None]) -> PlannedVariant:
    """Resolve the contig, check REF against the FASTA and build the windows of one variant.

    contigs: a cache of resolved names (input name -> FASTA name or None), filled as variants
    are planned.
    """
    pv = PlannedVariant(variant)
    if variant.chrom not in contigs:
        try:
            contigs[variant.chrom] = fasta.resolve(variant.chrom)
        except KeyError:  # UnknownContigError
            contigs[variant.chrom] = None
    pv.contig = contigs[variant.chrom]
    if pv.contig is None:
        pv.status = "unknown_contig"
        return pv
    pos0 = variant.pos - 1
    if pos0 + len(variant.ref) > fasta.length(pv.contig):
        pv.status = "out_of_contig"
        return pv
    pv.ref_match = fasta.fetch(pv.contig, pos0, pos0 + len(variant.ref)) == variant.ref
    kind = allele_kind(variant.ref, variant.alt)
    if not pv.ref_match:
        pv.status = "ref_mismatch"
    elif kind in SKIP_STATUS:
        pv.status = SKIP_STATUS[kind]
    if pv.status != "ok":
        return pv
    start = window_start(variant.pos, window)
    extra = max(0, len(variant.ref) - len(variant.alt))
    padded, left, right = fasta.fetch_padded(pv.contig, start, start + window + extra)
    pv.window_start, pv.window_end = start, start + window
    pv.n_padded = left + max(0, right - extra)  # N bases inside the W-base reference window
    pv.ref_seq = padded[:window]
    pv.alt_seq = alt_window(padded, pos0 - start, variant.ref, variant.alt, window)
    return pv


def embedding_distances(ref: np.ndarray, alt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distance (1 - cosine similarity) and L2 distance between rows of (N, d) arrays."""
    ref = ref.astype(np.float64)
    alt = alt.astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(alt, axis=1)
    cosine = 1.0 - np.einsum("nd,nd->n", ref, alt) / np.where(norms > 0, norms, np.nan)
    return cosine, np.linalg.norm(ref - alt, axis=1)


@dataclass
class WindowScores:
    """Per-sequence model outputs: summed log-likelihood, mean-pooled hidden, site log-prob."""

    loglik: float
    pooled: np.ndarray | None
    site_logp: float | None


def default_unit_size(model: Any, window: int, rc: bool) -> int:
    """ALT alleles per work unit: `runtime.unit_bases` of the model in window tokens, at two
    windows (ref, alt) per allele and strand, so a unit is the same work whatever the window."""
    per_allele = 2 * window * (2 if rc else 1)
    bases = runtime.unit_bases(model.d_model, model.config.n_layer)
    return max(1, min(runtime.UNIT_MAX_ITEMS, bases // per_allele))


def default_batch_size(window: int) -> int:
    """Windows per forward pass: about TOKENS_PER_BATCH tokens, at least one window."""
    return max(1, TOKENS_PER_BATCH // window)


def run_windows(model: Any, seqs: Sequence[str], *, site: int | None, pooled: bool,
                batch_size: int, dtype: Any = None) -> list[WindowScores]:
    """Run equal-length sequences through the model in batches (one bounded-memory forward each).

    site: the token index whose log-probability to keep (its prediction from the tokens before
    it), or None. pooled: keep the mean of the final hidden states. dtype: the compute dtype of
    `inference.hidden_and_loglik` (None: the model's).
    """
    import torch

    from genomeconv.models import inference, tokenize

    out: list[WindowScores] = []
    device = next(model.parameters()).device
    with torch.inference_mode():
        for i in range(0, len(seqs), batch_size):
            ids = torch.stack([tokenize(s) for s in seqs[i:i + batch_size]]).to(device)
            hidden, loglik = inference.hidden_and_loglik(model, ids, dtype=dtype)
            loglik = loglik.double().cpu()
            sums = loglik.sum(dim=1).numpy()
            sites = (loglik[:, site - 1].numpy() if site is not None and site >= 1
                     else [None] * len(sums))
            means = (inference.pool(hidden, "mean").double().cpu().numpy() if pooled
                     else [None] * len(sums))
            for s, p, m in zip(sums, sites, means):
                out.append(WindowScores(float(s), m, None if p is None else float(p)))
    return out


def score_planned(model: Any, planned: Sequence[PlannedVariant], *, window: int, rc: bool = True,
                  site_probs: bool = True, batch_size: int | None = None, dtype: Any = None,
                  head: Any = None) -> list[dict[str, Any]]:
    """Score planned variants (those with status "ok"); one output row per planned variant.

    Identical sequences among all ref and alt windows run through the model once. `head` (a
    fine-tuned genomeconv.pipelines.train.VariantHead) adds `finetuned_score` from the same
    mean-pooled forward ref and alt hidden states.
    """
    batch_size = batch_size or default_batch_size(window)
    run = functools.partial(run_windows, model, batch_size=batch_size, dtype=dtype)
    scored = [pv for pv in planned if pv.status == "ok"]
    fwd = _unique(s for pv in scored for s in (pv.ref_seq, pv.alt_seq))
    fwd_out = dict(zip(fwd, run(fwd, site=window // 2 if site_probs else None, pooled=True)))
    rev_out: dict[str, WindowScores] = {}
    if rc:
        rev = [reverse_complement(s) for s in fwd]
        rev_out = dict(zip(fwd, run(rev, site=None, pooled=False)))
    if scored:
        ref_pooled = np.stack([fwd_out[pv.ref_seq].pooled for pv in scored])
        alt_pooled = np.stack([fwd_out[pv.alt_seq].pooled for pv in scored])
        cosine, l2 = embedding_distances(ref_pooled, alt_pooled)
        finetuned = head.score(ref_pooled, alt_pooled) if head is not None else None
    rows, k = [], 0
    for pv in planned:
        row = _base_row(pv, model.model_id)
        if pv.status == "ok":
            r, a = fwd_out[pv.ref_seq], fwd_out[pv.alt_seq]
            row["llr_fwd"] = a.loglik - r.loglik
            if rc:
                row["llr_rev"] = rev_out[pv.alt_seq].loglik - rev_out[pv.ref_seq].loglik
                row["llr"] = 0.5 * (row["llr_fwd"] + row["llr_rev"])
            else:
                row["llr"] = row["llr_fwd"]
            row["emb_cosine"], row["emb_l2"] = float(cosine[k]), float(l2[k])
            if finetuned is not None:
                row["finetuned_score"] = float(finetuned[k])
            if site_probs and pv.variant.kind == "snv":
                row["p_ref"], row["p_alt"] = math.exp(r.site_logp), math.exp(a.site_logp)
            k += 1
        rows.append(row)
    return rows


def _unique(seqs: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(seqs))


def _base_row(pv: PlannedVariant, model_id: str) -> dict[str, Any]:
    v = pv.variant
    return {"chrom": v.chrom, "pos": v.pos, "ref": v.ref, "alt": v.alt, "id": v.id,
            "status": pv.status, "ref_match": pv.ref_match, "window_start": pv.window_start,
            "window_end": pv.window_end, "llr_fwd": None, "llr_rev": None, "llr": None,
            "emb_cosine": None, "emb_l2": None, "p_ref": None, "p_alt": None,
            "model": model_id, "contig": pv.contig, "n_padded": pv.n_padded,
            "finetuned_score": None}


def item_ids(variants: Sequence[Variant]) -> list[str]:
    """Stable, unique work-item ids: chrom, zero-padded pos, ref, alt and the occurrence number of
    that key in the input, so sorting groups the ALTs of a position and ids survive reordering."""
    seen: Counter[tuple] = Counter()
    ids = []
    for v in variants:
        key = (v.chrom, v.pos, v.ref, v.alt)
        ids.append(f"{v.chrom}\t{v.pos:012d}\t{v.ref}\t{v.alt}\t{seen[key]}")
        seen[key] += 1
    return ids


_UNIT_FIELDS = ("chrom", "pos", "ref", "alt", "id")


class UnitScorer:
    """Ray Data actor: loads the model and opens the FASTA once, then scores whole work units
    (one row of the input batch each) and writes each as one Parquet part."""

    def __init__(self, *, model: str | None, fasta: str, window: int, rc: bool, site_probs: bool,
                 batch_size: int | None, device: str | None, dtype: str | None, out: str,
                 metadata: dict[bytes, bytes]) -> None:
        from genomeconv.io.fasta import FastaFile
        from genomeconv.models import load

        self.model = load(model, device=device)
        self.head = fine_tuned_head(model)
        self.dtype = runtime.compute_dtype(dtype)
        self.fasta = FastaFile(fasta)
        self.window, self.rc, self.site_probs = window, rc, site_probs
        self.batch_size, self.out, self.metadata = batch_size, out, metadata

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Score every unit in the batch; return one summary row per unit."""
        summaries = []
        for unit in batch.to_pylist():
            variants = [Variant(*(unit[f][i] for f in _UNIT_FIELDS), source="", line=0)
                        for i in range(len(unit["pos"]))]
            summaries.append(self.score_unit(unit["unit_id"], variants))
        return pa.Table.from_pylist(summaries)

    def score_unit(self, unit_id: str, variants: Sequence[Variant]) -> dict[str, Any]:
        """Score one unit, write its part, return its row count, statuses and contig renamings."""
        contigs: dict[str, str | None] = {}
        planned = [plan_variant(v, self.fasta, self.window, contigs) for v in variants]
        rows = score_planned(self.model, planned, window=self.window, rc=self.rc,
                             site_probs=self.site_probs, batch_size=self.batch_size,
                             dtype=self.dtype, head=self.head)
        runtime.write_part(pa.Table.from_pylist(rows, schema=schema.VARIANTS), self.out, unit_id,
                           self.metadata)
        renamed = {c: r for c, r in contigs.items() if r is not None and r != c}
        return {"unit_id": unit_id, "rows": len(rows),
                "statuses": json.dumps(Counter(r["status"] for r in rows)),
                "renamed": json.dumps(renamed)}


def fine_tuned_head(model: str | None) -> Any:
    """The head saved by `genomeconv finetune` in a model directory, or None."""
    if model is None or not Path(model).is_dir():
        return None
    from genomeconv.pipelines.train import load_head

    return load_head(model)


def check_resumable(out: str | Path, done: set[str], metadata: dict[bytes, bytes]) -> None:
    """Refuse to add parts to `out` when its finished parts were scored with another model or
    other settings (window, strands, site probabilities, dtype, FASTA): the rows would mix."""
    import pyarrow.parquet as pq

    if not done:
        return
    part = Path(out) / f"part-{min(done)}.parquet"
    old = pq.read_schema(part).metadata or {}
    for key in (schema.KEY_MODEL, schema.KEY_MODEL_SHA, KEY_SETTINGS):
        if old.get(key) != metadata[key]:
            raise ValueError(
                f"{out} holds parts scored with {key.decode()} = "
                f"{(old.get(key) or b'(none)').decode()}, but this run has "
                f"{metadata[key].decode()}; pass a new --out (or rerun with the same settings "
                "to resume)")


@dataclass
class RunSummary:
    """What a `score_variants` run did."""

    variants: int  # ALT alleles in the (restricted) input
    units: int
    units_skipped: int  # already finished by an earlier run
    rows_written: int
    statuses: dict[str, int]
    renamed_contigs: dict[str, str]
    seconds: float
    out: str


def score_variants(variants: str | Path, fasta: str | Path, out: str | Path, *,
                   model: str | None = None, window: int | None = None,
                   region: str | None = None, genes: Sequence[str] | None = None,
                   gtf: str | Path | None = None, address: str | None = None,
                   num_workers: int = 1, device: str | None = None, dtype: str | None = None,
                   site_probs: bool = False, rc: bool = True, batch_size: int | None = None,
                   unit_size: int | None = None, command: str = "genomeconv score-variants"
                   ) -> RunSummary:
    """Score every ALT allele of a VCF/BCF or table against a FASTA; write Parquet parts to `out`.

    Runs on Ray (local unless `address`/RAY_ADDRESS), `num_workers` actors each loading the model
    once, `unit_size` alleles per work unit and part (default `default_unit_size`, fewer when
    that leaves a worker idle); resumes:
    units whose part already exists in `out` are skipped.
    """
    import ray.data

    from genomeconv.models import load

    t0 = time.perf_counter()
    runtime.compute_dtype(dtype)  # fail before starting Ray
    probe = load(model, device="cpu")
    head = fine_tuned_head(model)
    window = window or (head.window if head is not None
                        else default_window(probe.max_seq_len, device))
    if window < 2:
        raise ValueError(f"--window must be at least 2 (got {window})")
    metadata = schema.file_metadata(probe, command, kind="variants")
    metadata[KEY_SETTINGS] = json.dumps({"window": window, "rc": rc, "site_probs": site_probs,
                                         "dtype": dtype, "fasta": str(fasta)}).encode()
    unit_alleles = default_unit_size(probe, window, rc)
    del probe
    found = list(iter_variants(variants, region=region, genes=genes, gtf=gtf))
    by_id = dict(zip(item_ids(found), found))
    units = runtime.plan_units(list(by_id), unit_size or runtime.per_worker(
        unit_alleles, len(by_id), num_workers))
    done = runtime.finished_units(out)
    check_resumable(out, done, metadata)
    todo = [u for u in units if u.unit_id not in done]
    results: list[dict[str, Any]] = []
    if todo:
        runtime.connect(address)
        items = [{"unit_id": u.unit_id,
                  **{f: [getattr(by_id[i], f) for i in u.item_ids] for f in _UNIT_FIELDS}}
                 for u in todo]
        gpu = str(device or "").startswith("cuda")
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            UnitScorer, batch_size=1, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=max(1, min(num_workers, len(todo)))),
            num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0,
            fn_constructor_kwargs=dict(model=model, fasta=str(fasta), window=window, rc=rc,
                                       site_probs=site_probs, batch_size=batch_size,
                                       device=device, dtype=dtype, out=str(out),
                                       metadata=metadata))
        results = ds.take_all()
    statuses: Counter[str] = Counter()
    renamed: dict[str, str] = {}
    for r in results:
        statuses.update(json.loads(r["statuses"]))
        renamed.update(json.loads(r["renamed"]))
    return RunSummary(variants=len(found), units=len(units), units_skipped=len(units) - len(todo),
                      rows_written=sum(r["rows"] for r in results), statuses=dict(statuses),
                      renamed_contigs=renamed, seconds=time.perf_counter() - t0, out=str(out))
