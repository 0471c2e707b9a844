"""Zero-shot variant-effect scores with a causal DNA language model: `genomeconv score-variants`.

Windows. W bases (default: the model's maximum length, capped at 32,768 on CPU and 131,072 on
CUDA). For a variant at 1-based POS, pos0 = POS - 1, the reference window is centred as in GPN:
[pos0 - W//2, pos0 - W//2 + W) (0-based, half-open), the variant's first REF base at index W//2.
Windows never score padding: where the centred window would cross a contig end it is shifted
inside the contig (the variant then sits off-centre; `window_start`/`window_end` record where the
window lies); a deletion near the right end is shifted left by len(REF) - len(ALT) more so that
its ALT window, refilled from the genome, stays inside too, unless that would push part of REF
out of the window (a deletion of a contig's last bases): REF then stays inside and the ALT window
is shorter, the genome having no bases to refill it. A contig shorter than W is one window of its
own length (the driver says so in one line). Both strands score the same windows
(the reverse strand their reverse complements), so a variant near an end scores exactly as the
same variant on a longer contig whose extra sequence lies beyond the window.

Alleles (VCF anchor-base convention, REF and ALT both start at POS). The ALT window is the
reference window with REF replaced by ALT, then cut or extended on the right to W bases from the
genome: alt = (g[start:pos0] + ALT + g[pos0 + len(REF):])[:W]. Both windows have W bases (except
the ALT window of a deletion where the contig ends first, see above) and share the prefix
g[start:pos0].

Scores (natural log):
- llr_fwd = sum_t log p(alt_t | alt_<t) - sum_t log p(ref_t | ref_<t) over the W-1 predicted
  positions of the windows;
- llr_rev = the same on the reverse complements of both windows (for odd W and an SNV, exactly
  llr_fwd of the reverse-complemented variant on the reverse-complemented genome); llr = the mean
  of the two (llr_fwd when the reverse strand is turned off);
- emb_cosine = 1 - cos(a, b) and emb_l2 = |a - b| between the mean-pooled final hidden states
  (after ln_f) of the forward ref and alt windows; null for a model without embeddings (the k-mer
  family, `--model kmer:K`: fitted once on the FASTA, see pipelines/baselines.py), the reason
  in the file metadata (schema.KEY_EMPTY_COLUMNS);
- p_ref, p_alt (with site_probs): the model's probabilities of the REF and ALT base at the site
  given the window's bases before it (W//2 unless shifted; SNVs not at a contig's first base).
- p_<class> (a model fine-tuned by `genomeconv finetune`): the head's class probabilities from
  the fine-tuned model's pooled ref and alt hidden states (of the layer it was fine-tuned on,
  head.json's "layer"); a binary head writes one column, the probability of its positive class
  (models/heads.py).

Fine-tuned models and the LM-derived columns (llr, llr_fwd, llr_rev, p_ref, p_alt): fine-tuning
with a trainable backbone (--freeze other than all) changes the hidden states under a language-
model head that was not trained with them, so those columns would not mean what they say. They
then come from the base model the fine-tune started from (recorded in head.json, loaded when its
weights are unchanged), or stay null when it cannot be loaded; `--freeze all` keeps them from the
one model. File metadata (schema.KEY_FINETUNED) names the classes, the positive class and where
the LM columns came from, with the reason (`plan_lm_columns`).

Statuses (one output row per input ALT allele, always): ok; ref_mismatch (REF differs from the
FASTA, ref_match = false); unknown_contig; out_of_contig (REF runs past the contig end);
symbolic_alt (<DEL>, breakends); spanning_deletion (*); missing_alt (.). Only "ok" rows have
scores. Output columns: schema.variants_schema (VARIANTS, plus p_<class>), with `contig` (the
FASTA name a variant was matched to, chr1 <-> 1 resolved automatically) and `nonfinite`. Scores
are finite: a NaN or infinite score stops the run with an error naming the variant (a model that
produces NaN is broken), unless keep_nonfinite, which writes it and marks the row nonfinite = true.

Saturation mutagenesis (`--saturate REGION`, io/saturation.py): `score_variants` also takes the
variants themselves (any iterable of io.variants.Variant, such as a `Saturation`) instead of a
file; they then go through exactly the planning and scoring above, so the SNVs of a region score
bit-identically to the same SNVs given as a VCF. `max_hours` refuses a saturation estimated to
take longer, before any variant is expanded or Ray starts (`check_run_time`): one forward of a
short batch of the run's first window is timed in the driver after a warm-up (on the run's
device, with one torch thread: an actor has at least one CPU), per window, times the distinct
windows the run scores (per position the shared ref window plus one per ALT, per strand, plus
the base model's pass for a fine-tuned model; an ALT window as half a window, see below),
divided by the workers. It counts every allele of the input, also those a resumed run has already
written, and leaves out Ray's start and model loads.

Shared windows (`shared_windows`, `--saturate ... --shared-windows`): every SNV of a cell of
W//2 positions takes the window centred on its cell (`grid_window`), not the one centred on it,
so one reference window serves W//2 positions and each variant lies at least W//4 from either
edge (`window_start`/`window_end` say where; the manifest records the setting).

Efficiency: identical window sequences (the shared reference window of the ALTs at one position,
REF == ALT, repeated variants) run through the model once per work unit; windows are batched.
An ALT window of the REF window's length runs beside it from their first difference on
(`LanguageModel.log_likelihoods_shared`; on the reverse strand the first difference of the
reverse complements): for an SNV its two strands together cost about one window.
Work items are sorted by (chrom, pos), so the ALTs of one position normally fall in one unit;
units are scored by Ray actors (model loaded once each) and written as one Parquet part each.
`VariantsJob` is an instance of the job skeleton (pipelines/job.py). Completion is per ALT
allele (pipelines/manifest.py): the skeleton locks OUT, checks its run manifest (another model,
weights, window, strands, site-probs, dtype or FASTA is refused; `overwrite` starts afresh),
counts the (chrom, pos, ref, alt) keys of the parts that count, drops those alleles from the plan
and only then groups the rest into units, so another --unit-bp or VCF resumes with every allele
written exactly once.
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

from genomeconv.errors import GenomeconvError, InputError
from genomeconv.io.regions import reverse_complement
from genomeconv.io.saturation import Saturation
from genomeconv.io.variants import Variant, allele_kind, iter_variants
from genomeconv.pipelines import manifest, runtime, schema
from genomeconv.pipelines.job import (Job, JobSummary, Progress, Unit, UnitActor, WorkerSetup,
                                      run_job)
from genomeconv.pipelines.options import VariantOptions

if TYPE_CHECKING:
    from genomeconv.io.fasta import FastaFile
    from genomeconv.models.heads import VariantHead
    from genomeconv.models.base import LanguageModel

CPU_WINDOW_CAP = 32_768
CUDA_WINDOW_CAP = 131_072
TOKENS_PER_BATCH = 1 << 17  # default batch size = max(1, this // window)
TIMING_TOKENS = 1 << 14  # check_run_time times a batch of about this many tokens
SKIP_STATUS = {"symbolic": "symbolic_alt", "star": "spanning_deletion", "missing": "missing_alt"}
KEY_COLUMNS = ("chrom", "pos", "ref", "alt")
SCORE_COLUMNS = ("llr_fwd", "llr_rev", "llr", "emb_cosine", "emb_l2", "p_ref", "p_alt")


def default_window(model: LanguageModel, device: str | None = None) -> int:
    """The default window: the model's (LanguageModel.variant_window), capped (32,768 on CPU,
    131,072 on CUDA)."""
    cap = CUDA_WINDOW_CAP if str(device or "cpu").startswith("cuda") else CPU_WINDOW_CAP
    return int(min(model.variant_window, cap))


def window_bounds(pos: int, ref_len: int, alt_len: int, window: int,
                  contig_len: int) -> tuple[int, int]:
    """[start, end) (0-based) of the reference window of a variant at 1-based `pos`, inside the
    contig: centred (first REF base at index window // 2) where that fits; else shifted inside,
    keeping all of REF in the window and, for a deletion, room on the right to refill its ALT
    window from the genome when the contig has it. A contig shorter than `window` is the window."""
    w = min(window, contig_len)
    pos0 = pos - 1
    extra = max(0, ref_len - alt_len)
    start = min(pos0 - w // 2, contig_len - w - extra)  # room for a deletion's refill
    start = max(start, min(pos0, pos0 + ref_len - w))  # REF inside (wins over the refill)
    start = max(0, min(start, contig_len - w))
    return start, start + w


def grid_window(pos: int, window: int, contig_len: int) -> tuple[int, int]:
    """[start, end) of the shared window of an SNV at 1-based `pos` (`shared_windows`): the
    contig is cut into cells of window // 2 positions from its first base, and every position
    of a cell shares the window centred on the cell, so it lies at least a quarter window from
    either edge; near a contig end the window is shifted inside, as `window_bounds` does."""
    w = min(window, contig_len)
    cell = max(1, w // 2)
    start = (pos - 1) // cell * cell + cell // 2 - w // 2
    start = max(0, min(start, contig_len - w))
    return start, start + w


def alt_window(bases: str, offset: int, ref: str, alt: str, window: int) -> str:
    """The ALT window: REF at `offset` of `bases` replaced by ALT, cut to `window` bases.

    bases holds the reference from the window start, window + len(ref) - len(alt) bases where the
    contig has them, so deletions are refilled on the right from the genome and insertions cut.
    """
    return (bases[:offset] + alt + bases[offset + len(ref):])[:window]


@dataclass
class PlannedVariant:
    """One input ALT allele with its status and, when it can be scored, its two windows."""

    variant: Variant
    contig: str | None = None
    status: str = "ok"
    ref_match: bool | None = None
    window_start: int | None = None
    window_end: int | None = None
    offset: int | None = None  # index of the first REF base in the windows
    ref_seq: str | None = None
    alt_seq: str | None = None


def plan_variant(variant: Variant, fasta: FastaFile, window: int,
                 contigs: dict[str, str | None], shared: bool = False) -> PlannedVariant:
    """Resolve the contig, check REF against the FASTA and build the windows of one variant.

    contigs: a cache of resolved names (input name -> FASTA name or None), filled as variants
    are planned. shared: an SNV takes the shared window of its position (`grid_window`)
    instead of the one centred on it.
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
    size = fasta.length(pv.contig)
    start, end = (grid_window(variant.pos, window, size) if shared and kind == "snv" else
                  window_bounds(variant.pos, len(variant.ref), len(variant.alt), window, size))
    extra = max(0, len(variant.ref) - len(variant.alt))
    bases = fasta.fetch(pv.contig, start, min(size, end + extra))
    pv.window_start, pv.window_end, pv.offset = start, end, pos0 - start
    pv.ref_seq = bases[:end - start]
    pv.alt_seq = alt_window(bases, pv.offset, variant.ref, variant.alt, end - start)
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
    """Per-sequence model outputs: summed log-likelihood, mean-pooled hidden, and the
    log-probability of the token at each asked-for site index (predicted from those before it)."""

    loglik: float
    pooled: np.ndarray | None
    site_logp: dict[int, float]


def alleles_per_unit(unit_bp: int, window: int, rc: bool) -> int:
    """ALT alleles per work unit of `unit_bp` bases of model input (`runtime.unit_bases` of the
    model by default): two windows (ref, alt) per allele and strand, so a unit is the same work
    whatever the window."""
    per_allele = 2 * window * (2 if rc else 1)
    return max(1, min(runtime.UNIT_MAX_ITEMS, unit_bp // per_allele))


def default_batch_size(window: int) -> int:
    """Windows per forward pass: about TOKENS_PER_BATCH tokens, at least one window."""
    return max(1, TOKENS_PER_BATCH // window)


def run_windows(model: LanguageModel, seqs: Sequence[str], *,
                sites: Sequence[Iterable[int]] | None, pooled: bool,
                parents: Sequence[int | None] | None = None,
                batch_size: int | None = None, dtype: Any = None) -> list[WindowScores]:
    """Run sequences through the model, those of one length batched together (one
    bounded-memory forward per batch); one WindowScores per sequence, in order.

    sites: per sequence, the token indices whose log-probability to keep (index 0 has none), or
    None. pooled: keep the mean of the final hidden states. parents: per sequence, the index
    of a sequence of the same length whose start it repeats (an ALT window's REF window; it
    must have no parent itself), or None: such a sequence runs beside its parent from their
    first difference on (`LanguageModel.log_likelihoods_shared`). batch_size: sequences per
    forward (None: about TOKENS_PER_BATCH tokens). dtype: the model's compute dtype (None:
    its own).
    """
    import torch

    parents = parents if parents is not None else [None] * len(seqs)
    start = [0 if p is None else _common_prefix(seqs[i], seqs[p])
             for i, p in enumerate(parents)]
    out: list[WindowScores | None] = [None] * len(seqs)
    with torch.inference_mode():
        for rows in _shared_batches(seqs, parents, start, batch_size):
            local = {i: k for k, i in enumerate(rows)}
            ids = model.tokenize([seqs[i] for i in rows])
            parent = torch.tensor([-1 if parents[i] is None else local[parents[i]]
                                   for i in rows])
            loglik, means = model.log_likelihoods_shared(
                ids, parent, torch.tensor([start[i] for i in rows]), pooled=pooled,
                dtype=dtype)
            loglik = loglik.double().cpu()
            sums = loglik.sum(dim=1).numpy()
            means = means.cpu().numpy() if pooled else [None] * len(rows)
            for k, i in enumerate(rows):
                wanted = [t for t in (sites[i] if sites is not None else ()) if t >= 1]
                out[i] = out[i] or WindowScores(float(sums[k]), means[k],
                                                {t: float(loglik[k, t - 1]) for t in wanted})
    return out  # type: ignore[return-value]


def layer_means(model: LanguageModel, seqs: Sequence[str], layer: str, *,
                batch_size: int | None = None, dtype: Any = None) -> dict[str, np.ndarray]:
    """Sequence -> the mean of its hidden states of `layer` (over its own positions, as
    fine-tuning pools them): the input of a head fine-tuned on that layer (`finetune --layer`),
    which the final hidden states of `run_windows` are not."""
    import torch

    from genomeconv.models.base import pool

    step = batch_size or default_batch_size(max(map(len, seqs), default=1))
    means: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for b in range(0, len(seqs), step):
            batch = seqs[b:b + step]
            hidden = model.hidden_states(model.tokenize(batch), layer=layer, dtype=dtype)
            lengths = torch.tensor([len(s) for s in batch])
            means.update(zip(batch, pool(hidden, "mean", lengths).double().cpu().numpy()))
    return means


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix of two strings."""
    x, y = (np.frombuffer(s.encode("ascii", "replace"), dtype=np.uint8) for s in (a, b))
    n = min(len(x), len(y))
    differ = np.flatnonzero(x[:n] != y[:n])
    return int(differ[0]) if len(differ) else n


def _shared_batches(seqs: Sequence[str], parents: Sequence[int | None], start: Sequence[int],
                    batch_size: int | None) -> list[list[int]]:
    """Indices of the sequences of each forward: one length per batch, at most `batch_size`
    sequences or a parent and one child (default: about TOKENS_PER_BATCH tokens, a sequence
    with a parent costing its positions from its start on), every sequence with a parent
    beside it. A parent and its children (by start, the last first: similar lengths side by
    side) fill batches in turn; a family that does not fit in what is left of a batch starts
    the next one, and one larger than a batch is cut, its parent repeated in each part."""
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        if p is not None:
            children.setdefault(p, []).append(i)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        if p is None:
            by_length.setdefault(len(seqs[i]), []).append(i)
    batches: list[list[int]] = []
    for length, roots in by_length.items():
        budget = TOKENS_PER_BATCH if batch_size is None else batch_size * length
        cap = batch_size or max(1, TOKENS_PER_BATCH // length)
        rows: list[int] = []
        cost = 0
        for root in roots:
            family = sorted(children.get(root, ()), key=lambda i: -start[i])
            size = length + sum(length - start[i] for i in family)
            if rows and (cost + size > budget or len(rows) + 1 + len(family) > cap):
                batches.append(rows)
                rows, cost = [], 0
            rows.append(root)
            cost += length
            for i in family:
                if len(rows) > 1 and (len(rows) >= cap or cost + length - start[i] > budget):
                    batches.append(rows)
                    rows, cost = [root], length
                rows.append(i)
                cost += length - start[i]
        if rows:
            batches.append(rows)
    return batches


def score_planned(model: LanguageModel, planned: Sequence[PlannedVariant], *, rc: bool = True,
                  site_probs: bool = True, batch_size: int | None = None, dtype: Any = None,
                  head: Any = None, lm_model: Any = None, lm_columns: bool = True,
                  keep_nonfinite: bool = False) -> list[dict[str, Any]]:
    """Score planned variants (those with status "ok"); one output row per planned variant.

    Identical sequences among all ref and alt windows run through each model once. `head` (a
    fine-tuned genomeconv.models.heads.VariantHead) adds its `p_<class>` columns from the same
    mean-pooled forward ref and alt hidden states as emb_cosine/emb_l2 (of its layer when it was
    fine-tuned on another than the final norm: `layer_means`). The LM-derived columns
    (llr*, p_ref, p_alt) come from `lm_model` when given (the base model of a fine-tuned
    backbone), else from `model`; `lm_columns=False` leaves them null. A NaN or infinite score
    raises InputError naming the variant, unless keep_nonfinite (the row is then marked
    nonfinite). A model without embeddings (the k-mer family) leaves emb_cosine and emb_l2
    null.
    """
    scored = [pv for pv in planned if pv.status == "ok"]
    fwd = _unique(s for pv in scored for s in (pv.ref_seq, pv.alt_seq))
    sites: dict[str, set[int]] = {s: set() for s in fwd}
    if site_probs:
        for pv in scored:
            sites[pv.ref_seq].add(pv.offset)
            sites[pv.alt_seq].add(pv.offset)
    site_list = [sites[s] for s in fwd] if lm_columns else None
    lm = lm_model if lm_model is not None else model
    run = functools.partial(run_windows, parents=_ref_parents(scored, fwd),
                            batch_size=batch_size, dtype=dtype)
    embeddings = model.has_embeddings
    fwd_out = dict(zip(fwd, run(model, fwd, sites=site_list if lm is model else None,
                                pooled=embeddings)))
    lm_out = fwd_out if lm is model else (
        dict(zip(fwd, run(lm, fwd, sites=site_list, pooled=False))) if lm_columns else {})
    rev_out: dict[str, WindowScores] = {}
    if rc and lm_columns:  # the reverse complements: the same parents, in their coordinates
        rev = [reverse_complement(s) for s in fwd]
        rev_out = dict(zip(fwd, run(lm, rev, sites=None, pooled=False)))
    columns = list(SCORE_COLUMNS) + (head.columns if head is not None else [])
    if scored and embeddings:
        ref_pooled = np.stack([fwd_out[pv.ref_seq].pooled for pv in scored])
        alt_pooled = np.stack([fwd_out[pv.alt_seq].pooled for pv in scored])
        cosine, l2 = embedding_distances(ref_pooled, alt_pooled)
        if head is not None and head.layer is not None:  # the head reads another layer
            means = layer_means(model, fwd, head.layer, batch_size=batch_size, dtype=dtype)
            ref_pooled = np.stack([means[pv.ref_seq] for pv in scored])
            alt_pooled = np.stack([means[pv.alt_seq] for pv in scored])
        classes = head.scores(ref_pooled, alt_pooled) if head is not None else {}
    rows, k = [], 0
    for pv in planned:
        row = _base_row(pv, model.model_id)
        row.update(dict.fromkeys(head.columns if head is not None else ()))
        if pv.status == "ok":
            if lm_columns:
                _lm_scores(row, pv, lm_out, rev_out, rc=rc, site_probs=site_probs)
            if embeddings:
                row["emb_cosine"], row["emb_l2"] = float(cosine[k]), float(l2[k])
                row.update({c: float(p[k]) for c, p in classes.items()})
            row["nonfinite"] = any(row[c] is not None and not math.isfinite(row[c])
                                   for c in columns)
            if row["nonfinite"] and not keep_nonfinite:
                v = pv.variant
                raise InputError(
                    f"the model gives non-finite (NaN or infinite) scores for variant {v.chrom}:"
                    f"{v.pos} {v.ref}>{v.alt}" + (f" ({v.id})" if v.id else "") + ": a model "
                    "that produces NaN is broken; pass --keep-nonfinite to write such rows "
                    "marked nonfinite = true", path=str(model.model_id))
            k += 1
        rows.append(row)
    return rows


def _ref_parents(scored: Sequence[PlannedVariant], seqs: Sequence[str]) -> list[int | None]:
    """Per window of `seqs`, the index of the REF window whose start it repeats (an ALT window
    of the same length that is no variant's REF window), else None: what `run_windows` shares."""
    index = {s: i for i, s in enumerate(seqs)}
    parents: list[int | None] = [None] * len(seqs)
    refs = {pv.ref_seq for pv in scored}
    for pv in scored:
        if pv.alt_seq not in refs and len(pv.alt_seq) == len(pv.ref_seq):
            parents[index[pv.alt_seq]] = index[pv.ref_seq]
    return parents


def _lm_scores(row: dict[str, Any], pv: PlannedVariant, fwd: dict[str, WindowScores],
               rev: dict[str, WindowScores], *, rc: bool, site_probs: bool) -> None:
    """Fill the LM-derived columns of one scored variant's row."""
    r, a = fwd[pv.ref_seq], fwd[pv.alt_seq]
    row["llr_fwd"] = a.loglik - r.loglik
    if rc:
        row["llr_rev"] = rev[pv.alt_seq].loglik - rev[pv.ref_seq].loglik
        row["llr"] = 0.5 * (row["llr_fwd"] + row["llr_rev"])
    else:
        row["llr"] = row["llr_fwd"]
    if site_probs and pv.variant.kind == "snv" and pv.offset in r.site_logp:
        row["p_ref"] = math.exp(r.site_logp[pv.offset])
        row["p_alt"] = math.exp(a.site_logp[pv.offset])


def _unique(seqs: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(seqs))


def _base_row(pv: PlannedVariant, model_id: str) -> dict[str, Any]:
    v = pv.variant
    return {"chrom": v.chrom, "pos": v.pos, "ref": v.ref, "alt": v.alt, "id": v.id,
            "status": pv.status, "ref_match": pv.ref_match, "window_start": pv.window_start,
            "window_end": pv.window_end, "llr_fwd": None, "llr_rev": None, "llr": None,
            "emb_cosine": None, "emb_l2": None, "p_ref": None, "p_alt": None,
            "model": model_id, "contig": pv.contig, "nonfinite": False}


def _item_id(chrom: str, pos: int, ref: str, alt: str, occurrence: int) -> str:
    return f"{chrom}\t{pos:012d}\t{ref}\t{alt}\t{occurrence}"


def item_ids(variants: Sequence[Variant]) -> list[str]:
    """Stable, unique work-item ids: chrom, zero-padded pos, ref, alt and the occurrence number of
    that key in the input, so sorting groups the ALTs of a position and ids survive reordering."""
    seen: Counter[tuple] = Counter()
    ids = []
    for v in variants:
        key = (v.chrom, v.pos, v.ref, v.alt)
        ids.append(_item_id(*key, seen[key]))
        seen[key] += 1
    return ids


def completed_variants(out: str | Path, manifest_sha256: str) -> set[str]:
    """Item ids (see `item_ids`) already written under OUT by runs with this manifest: a key
    written n times stands for its occurrences 0..n-1. Parts that do not count are moved aside."""
    counts: Counter[tuple] = Counter()
    for part in sorted(Path(out).glob(manifest.PART_GLOB)):
        keys, why = manifest.read_part_keys(part, manifest_sha256, KEY_COLUMNS)
        if why is not None:
            manifest.move_aside(part, why)
            continue
        counts.update(zip(*(keys.column(c).to_pylist() for c in KEY_COLUMNS)))
    return {_item_id(*key, k) for key, n in counts.items() for k in range(n)}


def fine_tuned_head(model: str | None) -> VariantHead | None:
    """The head saved by `genomeconv finetune` in a model directory, or None."""
    if model is None or not Path(model).is_dir():
        return None
    from genomeconv.models.heads import load_head

    return load_head(model)


@dataclass(frozen=True)
class LmPlan:
    """Where a run's LM-derived columns (llr, llr_fwd, llr_rev, p_ref, p_alt) come from:
    "model" (the scored model), "base" (`base`, the model a fine-tune started from) or "none"
    (left null); `reason` says why, for the file metadata and the user."""

    source: str
    base: str | None = None
    base_weights_sha256: str | None = None
    reason: str = ""


LM_COLUMNS = "llr, llr_fwd, llr_rev, p_ref and p_alt"


def plan_lm_columns(head: VariantHead | None) -> LmPlan:
    """The LmPlan of a model with this fine-tuned head (None: not fine-tuned)."""
    if head is None:
        return LmPlan("model")
    if head.legacy:
        return LmPlan("model", reason=f"fine-tuned before genomeconv recorded the base model and "
                      f"--freeze: {LM_COLUMNS} come from the fine-tuned backbone, whose "
                      "language-model head may no longer match it")
    freeze = head.meta["freeze"]
    if freeze == "all":
        return LmPlan("model", reason=f"backbone frozen during fine-tuning (--freeze all): "
                      f"{LM_COLUMNS} come from this model")
    base = head.meta["base_model"]
    changed = f"the backbone was fine-tuned (--freeze {freeze})"
    try:
        now = manifest.model_fingerprint(base["load"], base["model_config_sha256"])
    except (GenomeconvError, OSError, ValueError) as exc:
        return LmPlan("none", reason=f"{changed} and its base model {base['model']} cannot be "
                      f"loaded ({' '.join(str(exc).split())[:200]}): {LM_COLUMNS} left null")
    if now["model_weights_sha256"] != base["model_weights_sha256"]:
        return LmPlan("none", reason=f"{changed} and its base model {base['model']} has other "
                      f"weights now than when it was fine-tuned: {LM_COLUMNS} left null")
    return LmPlan("base", base["load"], base["model_weights_sha256"],
                  reason=f"{changed}: {LM_COLUMNS} come from its base model {base['model']}")


def finetuned_metadata(head: VariantHead, lm: LmPlan) -> dict[bytes, bytes]:
    """schema.KEY_FINETUNED of a fine-tuned model's output files: label, classes, positive
    class and probability columns of the head, and where the LM-derived columns came from."""
    meta = head.meta
    value = {"label": meta.get("label"), "classes": head.classes,
             "positive_label": head.classes[-1] if len(head.classes) == 2 else None,
             "columns": head.columns, "lm_columns": lm.source,
             "lm_model": lm.base if lm.source == "base" else None, "note": lm.reason}
    if "positive_label" not in meta and len(head.classes) == 2:
        value["note"] += ("; positive class: the label sorting last (fine-tuned before "
                          "--positive-label existed)")
    return {schema.KEY_FINETUNED: json.dumps(value).encode()}


@dataclass(frozen=True)
class ScorerConfig:
    """What a UnitScorer needs beyond job.WorkerSetup (small and picklable)."""

    fasta: str
    window: int
    strands: str = "both"
    site_probs: bool = False
    batch_size: int | None = None
    lm: LmPlan = LmPlan("model")
    shared_windows: bool = False


class UnitScorer(UnitActor):
    """The variants actor: loads the model once, and once a run a fine-tuned model's head and
    base model and the FASTA, then scores whole work units, each written as one Parquet part."""

    def open_run(self, setup: WorkerSetup, config: ScorerConfig) -> None:
        from genomeconv.io.fasta import FastaFile
        from genomeconv.models import load

        super().open_run(setup, config)
        self.head = fine_tuned_head(setup.model)
        self.lm_model = load(config.lm.base, device=setup.device) \
            if config.lm.source == "base" else None
        self.fasta = FastaFile(config.fasta)
        empty = None if self.model.has_embeddings else {
            c: f"the {self.model.family} model {self.model.model_id} has no embeddings"
            for c in ("emb_cosine", "emb_l2")}
        self.meta = self.metadata("variants", empty_columns=empty)
        if self.head is not None:
            self.meta.update(finetuned_metadata(self.head, config.lm))

    @staticmethod
    def decode_item(data: list[Any]) -> Variant:
        return Variant(*data, source="", line=0)

    def run_unit(self, unit_id: str, variants: list[Variant]) -> dict[str, Any]:
        """Score one unit, write its part; its rows, statuses, contig renamings and the
        seconds spent in the model."""
        cfg = self.cfg
        contigs: dict[str, str | None] = {}
        planned = [plan_variant(v, self.fasta, cfg.window, contigs, cfg.shared_windows)
                   for v in variants]
        t0 = time.perf_counter()
        rows = score_planned(self.model, planned, rc=cfg.strands != "fwd",
                             site_probs=cfg.site_probs, batch_size=cfg.batch_size,
                             dtype=self.dtype, head=self.head, lm_model=self.lm_model,
                             lm_columns=cfg.lm.source != "none",
                             keep_nonfinite=self.setup.keep_nonfinite)
        seconds = time.perf_counter() - t0
        if cfg.strands == "rev":  # the reverse strand's scores alone
            for row in rows:
                row["llr_fwd"], row["llr"] = None, row["llr_rev"]
        table_schema = schema.variants_schema(self.head.columns if self.head is not None else ())
        runtime.write_part(pa.Table.from_pylist(rows, schema=table_schema), self.setup.out,
                           unit_id, self.meta, self.setup.token)
        return {"model_s": seconds, "rows": len(rows),
                "statuses": Counter(r["status"] for r in rows),
                "renamed": {c: r for c, r in contigs.items() if r is not None and r != c}}


def short_contig_note(variants: Sequence[Variant], fasta: str | Path, window: int) -> str | None:
    """A one-line note naming the contigs of `variants` shorter than `window` (their variants are
    scored with the whole contig as window), or None."""
    from genomeconv.io.fasta import FastaFile

    short: dict[str, int] = {}
    with FastaFile(fasta) as fa:
        for chrom in dict.fromkeys(v.chrom for v in variants):
            try:
                size = fa.length(chrom)
            except KeyError:  # unknown contig: a status, not an error
                continue
            if size < window:
                short[fa.resolve(chrom)] = size
    if not short:
        return None
    named = ", ".join(f"{c} ({n:,} bp)" for c, n in list(short.items())[:3])
    more = f" and {len(short) - 3} more" if len(short) > 3 else ""
    return (f"--window {window:,} is longer than contig{'s' if len(short) > 1 else ''} {named}"
            f"{more}: variants there are scored with the whole contig as window")


def variants_manifest(model: str | None, config_sha256: str, *, fasta: str, window: int,
                      rc: bool, site_probs: bool, dtype: str | None,
                      device_type: str, lm: LmPlan | None = None,
                      model_id: str | None = None, strands: str = "both",
                      shared_windows: bool = False) -> manifest.Manifest:
    """The settings and inputs a `score-variants` folder's values depend on (not which
    variants, nor --keep-nonfinite: it only adds marked rows); `lm`: a fine-tuned model's;
    model_id: the id reported for a model fitted on the run's FASTA (its folder is in the cache;
    its weights are hashed). `strands` is recorded only for "rev" (`rc` says both or fwd), and
    `shared_windows` only when set, so folders written before either existed keep resuming."""
    fingerprint = manifest.model_fingerprint(model, config_sha256)
    if model_id is not None:
        fingerprint["model"] = model_id
    settings = {**fingerprint, "window": window, "rc": rc,
                "site_probs": site_probs, "dtype": dtype or "float32",
                "device_type": device_type}
    if strands == "rev":
        settings["strands"] = strands
    if lm is not None:
        settings["lm_columns"] = {"source": lm.source, "base": lm.base,
                                  "base_weights_sha256": lm.base_weights_sha256}
    if shared_windows:
        settings["shared_windows"] = True
    return manifest.Manifest("variants", settings, {"fasta": manifest.file_fingerprint(fasta)})


def seconds_per_window(model: LanguageModel, sample: str, *, batch_size: int | None,
                       count: int, dtype: Any = None) -> float:
    """Measured seconds per window of `sample`'s length: one forward of a batch of about
    TIMING_TOKENS tokens (at most the run's batch and `count` windows) after a warm-up forward of
    the same batch; with one torch thread, as a Ray actor has one CPU."""
    import torch

    batch = batch_size or default_batch_size(len(sample))
    k = max(1, min(batch, count, TIMING_TOKENS // len(sample)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = functools.partial(run_windows, model, sites=None, pooled=model.has_embeddings,
                                dtype=dtype)
        run([sample] * k, batch_size=k)  # the first call of a shape is ~3x slower
        t0 = time.perf_counter()
        run([sample] * k, batch_size=k)  # returns float64 numbers: the device has finished
        return (time.perf_counter() - t0) / k
    finally:
        torch.set_num_threads(threads)


def check_run_time(model: LanguageModel, saturation: Saturation, fasta: FastaFile, *,
                   window: int, passes: int, batch_size: int | None, num_workers: int,
                   dtype: Any, max_hours: float, shared: bool = False) -> float:
    """The estimated seconds of scoring a saturation (see the module docstring), counted without
    expanding it; InputError naming the SNV count and the estimate (h:mm) when above
    `max_hours`. passes: model windows per distinct window (strands, plus a fine-tuned model's
    base-model pass); shared: with shared windows (one reference window per cell)."""
    first = next(iter(saturation), None)
    if first is None:
        return 0.0
    sample = plan_variant(first, fasta, window, {}).ref_seq
    cell = max(1, len(sample) // 2)  # grid_window's
    refs = saturation.positions if not shared else sum(
        (iv.end - 1) // cell - iv.start // cell + 1 for iv in saturation.intervals)
    windows = round((refs + len(saturation) / 2) * passes)
    seconds = seconds_per_window(model, sample, batch_size=batch_size, count=windows,
                                 dtype=dtype) * windows / max(1, num_workers)
    if seconds > max_hours * 3600:
        minutes = round(seconds / 60)
        raise InputError(f"--saturate {saturation.describe()}: {len(saturation):,} SNVs "
                         f"would take about {minutes // 60}:{minutes % 60:02d} (h:mm; "
                         f"{windows:,} model windows of {len(sample):,} bp, "
                         f"{seconds / windows * num_workers * 1e3:.3g} ms each, {num_workers} "
                         f"worker(s)), more than --max-hours {max_hours:g}: narrow the region, "
                         f"add workers, or pass --force")
    return seconds


class VariantsJob(Job):
    """`score-variants` as an instance of the job skeleton: items are ALT alleles (of a file,
    or e.g. a Saturation), a unit's work is its alleles, its part's key (chrom, pos, ref, alt)."""

    kind, actor, noun, work_unit = "variants", UnitScorer, "ALT alleles", "alleles"

    def __init__(self, opts: VariantOptions) -> None:
        super().__init__(opts)
        self.opts: VariantOptions = opts
        self.from_file = isinstance(opts.variants, (str, Path))
        if opts.shared_windows and not isinstance(opts.variants, Saturation):
            raise InputError("--shared-windows applies to --saturate runs only")
        if not self.from_file and (opts.regions or opts.genes):
            raise InputError("--region and --genes select variants from a VARIANTS file; with "
                             "--saturate give the regions to --saturate")
        self.fasta = Path(opts.fasta).resolve()

    def check_inputs(self) -> dict[str, Any]:
        return {"fasta": self.opts.fasta, "window": self.opts.window,
                "variants": self.opts.variants if self.from_file else None}

    def resolve_model(self) -> tuple[str | None, str | None]:
        from genomeconv.pipelines.baselines import resolve_model

        return resolve_model(super().resolve_model()[0], self.fasta)

    def prepare(self, probe: LanguageModel) -> manifest.Manifest:
        o = self.opts
        model, model_id = self.model_spec
        head = fine_tuned_head(model)
        if head is not None:  # a head.json naming a layer the backbone lacks: refused here
            probe.check_layer(head.layer)
        self.window = o.window or (head.window if head is not None
                                   else default_window(probe, o.worker_device))
        if self.window < 2:  # --window is checked with the options; this is head.json's
            raise InputError(f"window {self.window} is too short (at least 2)", path=model)
        self.lm = plan_lm_columns(head)
        for text in (self.lm.reason, getattr(o.variants, "note", None)):
            if text:
                manifest.note(text)
        if o.max_hours and isinstance(o.variants, Saturation):  # before expanding it
            self.check_run_time(probe, o.variants)
        self.items = self.read_variants()
        if (text := short_contig_note(self.items, self.fasta, self.window)) is not None:
            manifest.note(text)
        self.unit_bp = o.unit_bp or runtime.unit_bases(probe.work_per_base)
        return variants_manifest(
            model, probe.config_sha256, fasta=str(self.fasta), window=self.window, rc=o.rc,
            strands=o.strands, site_probs=o.site_probs, dtype=o.dtype,
            device_type=runtime.device_type(o.worker_device),
            lm=self.lm if head is not None else None, model_id=model_id,
            shared_windows=o.shared_windows)

    def read_variants(self) -> list[Variant]:
        """The variants to score: the file's (restricted to --region/--genes), or the given."""
        from genomeconv.io.seqrecords import is_record_file

        o = self.opts
        if not self.from_file:
            return list(o.variants)
        gtf = o.gtf if o.gtf is not None or not o.genes or not is_record_file(self.fasta) \
            else self.fasta  # a GenBank/EMBL/GFF3 reference is its own annotation
        return list(iter_variants(o.variants, region=o.regions or None, genes=o.genes or None,
                                  gtf=gtf))

    def check_run_time(self, probe: LanguageModel, saturation: Saturation) -> None:
        """Refuse a saturation estimated to take longer than --max-hours (`check_run_time`),
        timed on the run's device."""
        from genomeconv.io.fasta import FastaFile
        from genomeconv.models import load

        o = self.opts
        passes = 1 + int(self.lm.source == "base") + int(o.rc and self.lm.source != "none")
        device = o.worker_device
        model, model_id = self.model_spec
        timer = probe if runtime.device_type(device) == "cpu" else load(
            model, device=device, model_id=model_id)
        with FastaFile(self.fasta) as fa:
            check_run_time(timer, saturation, fa, window=self.window, passes=passes,
                           batch_size=o.batch_size, num_workers=o.num_workers,
                           dtype=runtime.torch_dtype(o.dtype), max_hours=o.max_hours,
                           shared=o.shared_windows)

    def part_dirs(self) -> list[Path]:
        return [self.out]

    def completed(self, manifest_sha256: str) -> set[str]:
        return completed_variants(self.out, manifest_sha256)

    def plan_units(self, done: set[str], workers: int) -> list[Unit]:
        by_id = dict(zip(item_ids(self.items), self.items))
        todo = [i for i in by_id if i not in done]
        size = self.opts.unit_alleles or alleles_per_unit(self.unit_bp, self.window,
                                                          self.opts.rc)
        if self.opts.unit_bp is None and self.opts.unit_alleles is None:
            size = runtime.per_worker(size, len(todo), workers)
        return [Unit(u.unit_id, [by_id[i] for i in u.item_ids], len(u.item_ids))
                for u in runtime.plan_units(todo, size)]

    def encode_item(self, item: Variant) -> list[Any]:
        return [item.chrom, item.pos, item.ref, item.alt, item.id]

    def worker_config(self) -> ScorerConfig:
        from genomeconv.io.fasta import readable_fasta

        o = self.opts
        return ScorerConfig(fasta=readable_fasta(self.fasta), window=self.window,
                            strands=o.strands, site_probs=o.site_probs,
                            batch_size=o.batch_size, lm=self.lm,
                            shared_windows=o.shared_windows)

    def facts(self, tally: dict[str, Any]) -> dict[str, Any]:
        return {"window": self.window, **dict(sorted(tally.get("statuses", {}).items()))}

    def notes(self, tally: dict[str, Any]) -> list[str]:
        return [f"contig {name!r} matched to {fasta_name!r} in {self.opts.fasta}"
                for name, fasta_name in sorted(tally.get("renamed", {}).items())]


def score_variants(opts: VariantOptions, *, on_plan: Progress | None = None,
                   on_unit: Progress | None = None) -> JobSummary:
    """Score every ALT allele of `opts.variants` (a VCF/BCF or table, or Variants such as a
    io.saturation.Saturation) against `opts.fasta` into Parquet parts under `opts.out` (the job
    skeleton, pipelines/job.py, does the rest; resumes by allele). `--model kmer:K`: an
    order-K Markov model fitted once on the FASTA; `max_hours`: refuse a Saturation estimated
    to take longer (0: no estimate)."""
    return run_job(VariantsJob(opts), on_plan=on_plan, on_unit=on_unit)
