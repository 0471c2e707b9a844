"""Parquet schemas and file metadata shared by every genomeconv output.

Every output is keyed, never row-aligned to an input:
- embeddings: one row per item (region, gene, BED interval or read), keyed by `item_id` and its
  coordinates (chrom, start, end, strand; 0-based half-open on the reference).
- per-base embeddings: one row per (item_id, position); position is 0-based on the reference, so a
  minus-strand item's first row is its highest reference position.
- variants: one row per ALT allele, keyed by (chrom, pos, ref, alt) with VCF's 1-based pos.
- track: one row per reference position, keyed by (chrom, position), position 0-based.
Every file carries metadata: genomeconv version, model id and config hash, the command, the
schema version, the output kind (which `genomeconv query` uses to name its views) and the hash of
the folder's run manifest (pipelines/manifest.py). `nonfinite` marks rows whose values are NaN or
infinite; they exist only when a run was asked to keep them (--keep-nonfinite).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = "3"  # 3: variants' finetuned_score -> named p_<class> columns (fine-tuned)

KEY_VERSION = b"genomeconv.version"
KEY_MODEL = b"genomeconv.model"
KEY_MODEL_SHA = b"genomeconv.model_config_sha256"
KEY_FAMILY = b"genomeconv.family"  # the model's family (hyenadna, kmer, evo2)
KEY_WEIGHTS = b"genomeconv.model_weights_sha256"  # its checkpoint files' hash (the manifest's)
KEY_COMMAND = b"genomeconv.command"
KEY_SCHEMA = b"genomeconv.schema_version"
KEY_KIND = b"genomeconv.kind"
KEY_MANIFEST = b"genomeconv.manifest_sha256"  # the run manifest a part was written under
KEY_FINETUNED = b"genomeconv.finetuned"  # JSON: a fine-tuned model's classes and LM columns
KEY_EMPTY_COLUMNS = b"genomeconv.empty_columns"  # JSON {column: why it is null in every row}
KEY_LAYER = b"genomeconv.layer"  # embed --layer: the layer embedded (absent: the final norm)

ITEM_KEYS = pa.schema([
    ("item_id", pa.string()),
    ("seq_name", pa.string()),
    ("chrom", pa.string()),
    ("start", pa.int64()),
    ("end", pa.int64()),
    ("strand", pa.string()),
    ("gene_id", pa.string()),
    ("gene_name", pa.string()),
    ("read_name", pa.string()),
])


def embeddings_schema(d_model: int) -> pa.Schema:
    """One pooled embedding per item: keys, length, fraction of N, pooling, embedding."""
    return pa.schema([
        *ITEM_KEYS,
        ("length", pa.int64()),
        ("n_fraction", pa.float32()),
        ("pooling", pa.string()),
        ("embedding", pa.list_(pa.float32(), d_model)),
        ("nonfinite", pa.bool_()),  # the model gave NaN/inf for this item (--keep-nonfinite)
    ])


def per_base_schema(d_model: int, dtype: str = "float32") -> pa.Schema:
    """One row per nucleotide: item_id, reference position (0-based), embedding."""
    value = {"float32": pa.float32(), "float16": pa.float16()}[dtype]
    return pa.schema([
        ("item_id", pa.string()),
        ("position", pa.int64()),
        ("embedding", pa.list_(value, d_model)),
    ])


VARIANTS = pa.schema([
    ("chrom", pa.string()),
    ("pos", pa.int64()),
    ("ref", pa.string()),
    ("alt", pa.string()),
    ("id", pa.string()),
    ("status", pa.string()),
    ("ref_match", pa.bool_()),
    ("window_start", pa.int64()),
    ("window_end", pa.int64()),
    ("llr_fwd", pa.float64()),
    ("llr_rev", pa.float64()),
    ("llr", pa.float64()),
    ("emb_cosine", pa.float64()),
    ("emb_l2", pa.float64()),
    ("p_ref", pa.float64()),
    ("p_alt", pa.float64()),
    ("model", pa.string()),
    ("contig", pa.string()),     # the FASTA contig the variant was matched to (chr1 <-> 1)
    ("nonfinite", pa.bool_()),   # a score is NaN/inf (written only with --keep-nonfinite)
])


TRACK_MEASURES = ("logp_ref", "entropy", "llr_site_A", "llr_site_C", "llr_site_G", "llr_site_T")
TRACK_STRANDS = ("", "_fwd", "_rev")  # the mean of the strands, forward, reverse


def track_columns(strands: Sequence[str] = TRACK_STRANDS) -> list[str]:
    """The measure columns of a track, by strand suffix ("" the mean, "_fwd", "_rev")."""
    return [m + s for s in strands for m in TRACK_MEASURES]


TRACK = pa.schema([
    ("chrom", pa.string()),
    ("position", pa.int64()),    # 0-based
    ("ref", pa.string()),        # the reference base, upper case
    ("context_fwd", pa.int32()),  # bases before the position in its forward window
    ("context_rev", pa.int32()),  # bases after it in its reverse-strand window
    *((c, pa.float32()) for c in track_columns()),
    ("nonfinite", pa.bool_()),   # a measure is NaN/inf (written only with --keep-nonfinite)
])


def variants_schema(probability_columns: Sequence[str] = ()) -> pa.Schema:
    """VARIANTS, plus a fine-tuned model's class-probability columns (`p_<class>`, float64; see
    models/heads.py) at the end."""
    return pa.schema([*VARIANTS, *((c, pa.float64()) for c in probability_columns)])


def file_metadata(model: Any, command: str, kind: str, manifest_sha256: str | None = None, *,
                  empty_columns: dict[str, str] | None = None,
                  layer: str | None = None, weights_sha256: str | None = None
                  ) -> dict[bytes, bytes]:
    """Metadata for one output file: version, model family, id and config hash, the checkpoint's
    `weights_sha256` (manifest.model_fingerprint) when known, command, schema, kind, the hash of
    the run manifest it belongs to (a rerun counts a part only when it matches), `empty_columns`
    ({column: reason}) for columns the model cannot fill, and the `layer` whose hidden states it
    holds when not the final norm.

    `model` is a genomeconv models.LanguageModel (anything with `family`, `model_id` and
    `config_sha256`).
    """
    import genomeconv

    meta = {
        KEY_VERSION: genomeconv.__version__.encode(),
        KEY_FAMILY: str(model.family).encode(),
        KEY_MODEL: str(model.model_id).encode(),
        KEY_MODEL_SHA: str(model.config_sha256).encode(),
        KEY_COMMAND: command.encode(),
        KEY_SCHEMA: SCHEMA_VERSION.encode(),
        KEY_KIND: kind.encode(),
    }
    if weights_sha256 is not None:
        meta[KEY_WEIGHTS] = weights_sha256.encode()
    if manifest_sha256 is not None:
        meta[KEY_MANIFEST] = manifest_sha256.encode()
    if empty_columns:
        meta[KEY_EMPTY_COLUMNS] = json.dumps(empty_columns, sort_keys=True).encode()
    if layer is not None:
        meta[KEY_LAYER] = layer.encode()
    return meta
