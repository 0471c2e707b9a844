"""`genomeconv track`: per-base measures of a causal DNA model's next-base distribution over
regions, genes, BED intervals or whole genomes, as keyed Parquet (kind `track`) and bigWig.

Measures (natural log), at each position p with reference base r (upper-cased), per strand, from
`LanguageModel.base_log_probs` (the model's full next-token distribution):
- logp_ref = log p(r | the bases before p on that strand): the per-base term that
  score-variants sums into llr;
- entropy = -sum_b q_b log q_b over A, C, G, T with q the distribution renormalized over those
  four bases (nats, 0 to log 4 = 1.386): how unsure the model is at p;
- llr_site_X = log p(X) - log p(r) for X in A, C, G, T (0 where X is r): the site log-ratio of
  the SNV r>X from one context, what score-variants' p_alt/p_ref give with --site-probs.
The reverse strand is the model reading the reverse complement: at p it predicts comp(r) from
the bases after p on the plus strand. Its values are reported for plus-strand bases (llr_site_A_rev
is the model's log-ratio of T against comp(r) on the reverse strand), so both strands answer the
same question and can be averaged. Columns: `<measure>_fwd`, `<measure>_rev` and `<measure>`, the
mean of the strands that predict p (one where the other cannot: a contig's first base has no
forward prediction, its last no reverse one; `--strands fwd` leaves the _rev columns null and
the mean is the forward value). Positions whose base is not A, C, G or T (N, IUPAC codes) have
null measures. Values are float32. Outputs are finite: where the model's log-probabilities at a
position hold NaN or infinity (a broken model) the run stops naming the position, unless
--keep-nonfinite, which writes its measures as they come (NaN or infinity, never null) with
nonfinite = true, as embed and score-variants mark their rows.

Context and pieces. The selected intervals (merged; strand plays no part) are cut into pieces on
a fixed grid of `piece_bp` bases per contig. A piece [a, b) is scored from its forward window
[max(0, a - context), b) and its reverse window, the reverse complement of
[a, min(contig end, b + context)), so every position sees at least `context` bases before it on
its strand, fewer only within `context` of a contig end; `context_fwd`/`context_rev` hold how
many bases each position saw. The default context is the model's receptive field
(LanguageModel.receptive_field: 2,051 bases for the bundled model) when that is at most
MAX_DEFAULT_CONTEXT, else max_seq_len - 1. At a context of at least the receptive field every
value equals that of one pass over the whole contig: piece, unit and chunk boundaries leave no
trace, and the manifest does not record the piece size. Below it, a position's values depend on
its piece's start (the manifest then records piece_bp; another --context or --piece-bp is
refused).

Work and resume. Pieces are grouped into work units sized by the model's work
(runtime.unit_bases) and scored by Ray actors, one Parquet part per unit under OUT/track/, one
row group run per piece (rows in position order). Each part's metadata lists its pieces
(KEY_PIECES); a part counts when its footer reads, it was written under this manifest and its row
count equals its pieces' bases, and no other part claims them (pipelines/manifest.py). A rerun
scores only the bases of the selection that no part holds yet, so another selection, unit size
or worker count writes every position exactly once. Memory per worker is one piece's windows,
whatever the contig's length.

bigWig. After the parts, OUT/bigwig/<column>.bw is written for the chosen columns (`--bigwig
mean`: the six strand means, `all`: every measure column, `none`), from every part in the folder:
chromosome sizes from the FASTA index, chromosomes in name order (UCSC's readers find a
chromosome by binary search over the names; libBigWig keeps the order it is given), sorted
0-based half-open intervals of one base (fixedStep, span 1), null and non-finite values and the
rows marked nonfinite left out; written under a temporary name and renamed. A column without a
single finite value is not written (an empty bigWig says nothing), and one note line says so.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genomeconv.errors import InputError, writing
from genomeconv.io.regions import Span, merge_spans, reverse_complement, subtract_spans
from genomeconv.models.tokenizer import tokenize
from genomeconv.pipelines import manifest, preflight, runtime, schema

if TYPE_CHECKING:
    import pyarrow as pa

    from genomeconv.models.base import LanguageModel

TRACK_DIR, BIGWIG_DIR = "track", "bigwig"
PIECE_BP = 1 << 18  # default positions per piece (at least the context: overlap at most 2x)
MAX_DEFAULT_CONTEXT = 1 << 16  # the receptive field is the default context up to this
STRANDS = ("both", "fwd")
BIGWIG_CHOICES = ("mean", "all", "none")
KEY_PIECES = b"genomeconv.track_pieces"  # JSON [[chrom, start, end], ...] of a part's pieces
KEY_TRACK = b"genomeconv.track"  # JSON: context, receptive field, pieces, strands, log base
# Space a bigWig takes: 5.2 bytes per value and a few kB measured (zlib, 10 zoom levels); libBigWig
# aborts the process when the disk fills up under it, so the space is checked first.
BIGWIG_BYTES = (8, 1 << 16)  # per value, per file
_COMPLEMENT_COLUMNS = [3, 2, 1, 0]  # reverse-strand columns A C G T -> plus-strand T G C A


@dataclass(frozen=True)
class Piece:
    """Positions [start, end) of one contig scored together from one window per strand."""

    chrom: str
    start: int
    end: int
    contig_length: int
    rank: int  # the contig's index in the FASTA: pieces sort in genome order

    @property
    def piece_id(self) -> str:
        return f"{self.rank:06d}:{self.start:012d}-{self.end:012d}"

    @property
    def length(self) -> int:
        return self.end - self.start


def default_context(model: LanguageModel) -> int:
    """The model's receptive field when it is at most MAX_DEFAULT_CONTEXT (values then equal one
    pass over the whole contig), else max_seq_len - 1."""
    field_ = model.receptive_field
    if field_ is not None and field_ <= MAX_DEFAULT_CONTEXT:
        return max(1, field_)
    return max(1, model.max_seq_len - 1)


def plan_pieces(spans: dict[str, list[Span]], sizes: dict[str, int], ranks: dict[str, int],
                piece_bp: int) -> list[Piece]:
    """Cut each contig's spans (merged first) at the multiples of `piece_bp`."""
    pieces = []
    for chrom, found in spans.items():
        for start, end in merge_spans(found):
            a = start
            while a < end:
                b = min(end, (a // piece_bp + 1) * piece_bp)
                pieces.append(Piece(chrom, a, b, sizes[chrom], ranks[chrom]))
                a = b
    return sorted(pieces, key=lambda p: (p.rank, p.start))


# --- measures (worker side) -----------------------------------------------------------------


def strand_measures(logp: np.ndarray, codes: np.ndarray,
                    predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Measures of one strand from log p(A, C, G, T) per position ((n, 4)), the reference codes
    ((n,), A0 C1 G2 T3, -1 other) and where the strand predicts a position ((n,) bool): each
    (n,) float64, NaN where undefined; a model's NaN or infinity stays in the measures."""
    logp = logp.astype(np.float64)
    ok = (codes >= 0) & predicted
    n = len(codes)
    ref = np.full(n, np.nan)
    ref[ok] = logp[ok, codes[ok]]
    top = logp.max(axis=1, keepdims=True)
    shifted = logp - top
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    logq = shifted - log_z  # log of the distribution renormalized over A C G T
    q = np.exp(logq)
    entropy = -np.where(q > 0, q * logq, 0.0).sum(axis=1)
    out = {"logp_ref": ref, "entropy": np.where(ok, entropy, np.nan)}
    for k, base in enumerate("ACGT"):
        out[f"llr_site_{base}"] = np.where(ok, logp[:, k] - ref, np.nan)
    return out


Strand = tuple[np.ndarray, np.ndarray]  # log p(A, C, G, T) rows (n, 4), predicted (n,) bool


def piece_columns(fwd: Strand, rev: Strand | None,
                  codes: np.ndarray) -> dict[str, np.ndarray]:
    """Every measure column of a piece: `<measure>_fwd`, `_rev` (all NaN without `rev`) and the
    mean of the strands that define it at each position (NaN when a defined one is NaN)."""
    has_a = (codes >= 0) & fwd[1]
    has_b = (codes >= 0) & rev[1] if rev is not None else np.zeros_like(has_a)
    f = strand_measures(fwd[0], codes, fwd[1])
    r = strand_measures(rev[0], codes, rev[1]) if rev is not None else None
    columns: dict[str, np.ndarray] = {}
    for m in schema.TRACK_MEASURES:
        a = f[m]
        b = r[m] if r is not None else np.full_like(a, np.nan)
        columns[m] = np.where(has_a & has_b, (a + b) / 2, np.where(has_a, a, b))
        columns[m + "_fwd"], columns[m + "_rev"] = a, b
    return columns


@dataclass(frozen=True)
class TrackConfig:
    """Everything a TrackActor needs (small and picklable)."""

    model: str | None
    fasta: str
    out: str
    context: int
    strands: str = "both"
    chunk_size: int | None = None
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    command: str = "genomeconv track"
    keep_nonfinite: bool = False
    manifest_sha256: str | None = None
    token: manifest.RunToken | None = None
    settings: str = "{}"  # KEY_TRACK's JSON


class TrackActor(runtime.UnitActor):
    """Ray Data actor: loads the model and opens the FASTA once, then scores whole units."""

    item_type = Piece

    def __init__(self, config: TrackConfig) -> None:
        import torch

        from genomeconv.io.fasta import FastaFile
        from genomeconv.models import load

        if config.threads:
            torch.set_num_threads(config.threads)
        self.cfg = config
        self.model: LanguageModel = load(config.model, device=config.device)
        self.dtype = runtime.compute_dtype(config.dtype)
        self.fasta = FastaFile(config.fasta)

    def run_unit(self, unit_id: str, pieces: Sequence[Piece]) -> float:
        """Score the unit's pieces into one part (a row group run per piece); return the
        seconds spent in the model."""
        meta = schema.file_metadata(self.model, self.cfg.command, "track",
                                    self.cfg.manifest_sha256)
        meta[KEY_PIECES] = json.dumps([[p.chrom, p.start, p.end] for p in pieces]).encode()
        meta[KEY_TRACK] = self.cfg.settings.encode()
        writer = runtime.PartWriter(Path(self.cfg.out) / TRACK_DIR, unit_id, schema.TRACK, meta,
                                    self.cfg.token)
        model_s = 0.0
        try:
            for piece in pieces:
                table, seconds = self.piece_table(piece)
                writer.write(table)
                model_s += seconds
            writer.commit()
        finally:
            writer.discard()
        return model_s

    def logp(self, seq: str) -> np.ndarray:
        """log p(A, C, G, T) at window indices 1..len-1 of one window, (len - 1, 4)."""
        ids = tokenize(seq)[None]
        return self.model.base_log_probs(ids, chunk_size=self.cfg.chunk_size,
                                         dtype=self.dtype)[0].cpu().numpy()

    def piece_table(self, piece: Piece) -> tuple[pa.Table, float]:
        """The piece's rows and the seconds its windows took in the model."""
        a, b = piece.start, piece.end
        positions = np.arange(a, b, dtype=np.int64)
        ref = self.fasta.fetch(piece.chrom, a, b).upper()
        codes = _base_codes(ref)
        t0 = time.perf_counter()
        ws = max(0, a - self.cfg.context)
        context_fwd = positions - ws  # the window index of each position = bases before it
        fwd = _rows(self.logp(self.fasta.fetch(piece.chrom, ws, b)), context_fwd)
        rev = context_rev = None
        if self.cfg.strands == "both":
            we = min(piece.contig_length, b + self.cfg.context)
            context_rev = we - 1 - positions
            window = reverse_complement(self.fasta.fetch(piece.chrom, a, we))
            rev = _rows(self.logp(window)[:, _COMPLEMENT_COLUMNS], context_rev)
        seconds = time.perf_counter() - t0
        columns = piece_columns(fwd, rev, codes)
        nonfinite = self.check_finite(piece, [s for s in (fwd, rev) if s is not None], positions)
        return _table(piece, positions, ref, context_fwd, context_rev, columns,
                      nonfinite), seconds

    def check_finite(self, piece: Piece, strands: Sequence[Strand],
                     positions: np.ndarray) -> np.ndarray:
        """Per position, whether the model's log-probabilities there (on a strand that predicts
        it, whatever the base) hold NaN or infinity: an error naming the first, or with
        keep_nonfinite the flags."""
        bad = np.zeros(len(positions), dtype=bool)
        for logp, predicted in strands:
            bad |= predicted & ~np.isfinite(logp).all(axis=1)
        if bad.any() and not self.cfg.keep_nonfinite:
            p = int(positions[int(bad.argmax())])
            raise InputError(f"the model gives non-finite (infinite or NaN) log-probabilities at "
                             f"{piece.chrom}:{p + 1:,}: a model that produces NaN is broken; "
                             "pass --keep-nonfinite to write such rows marked nonfinite = true",
                             path=self.model.model_id)
        return bad


def _base_codes(seq: str) -> np.ndarray:
    """A0 C1 G2 T3 (the columns of base_log_probs) per base, -1 for N and IUPAC codes: the
    tokenizer's ids shifted, so the two never disagree on what a base is."""
    from genomeconv.models.base import TRACK_BASES
    from genomeconv.models.tokenizer import VOCAB

    codes = tokenize(seq).numpy() - VOCAB[TRACK_BASES[0]]
    codes[codes >= len(TRACK_BASES)] = -1
    return codes


def _rows(logp: np.ndarray, index: np.ndarray) -> Strand:
    """A strand's rows of a window's log-probabilities for the positions at window `index`
    (row index - 1 predicts index) and where it predicts them: not where index is 0 (nothing
    before it; NaN rows there)."""
    out = np.full((len(index), 4), np.nan, dtype=np.float64)
    has = index >= 1
    out[has] = logp[index[has] - 1]
    return out, has


def _table(piece: Piece, positions: np.ndarray, ref: str, context_fwd: np.ndarray,
           context_rev: np.ndarray | None, columns: dict[str, np.ndarray],
           nonfinite: np.ndarray) -> pa.Table:
    """The piece's rows in schema.TRACK: NaN measures become nulls unless they are the model's
    own non-finite values (kept with --keep-nonfinite, flagged)."""
    import pyarrow as pa

    n = len(positions)
    data: dict[str, Any] = {
        "chrom": pa.array([piece.chrom] * n, pa.string()),
        "position": pa.array(positions),
        "ref": pa.array(list(ref), pa.string()),
        "context_fwd": pa.array(context_fwd.astype(np.int32)),
        "context_rev": (pa.array(context_rev.astype(np.int32)) if context_rev is not None
                        else pa.nulls(n, pa.int32())),
    }
    for name in schema.track_columns():
        values = columns[name]
        data[name] = pa.array(values.astype(np.float32), mask=np.isnan(values) & ~nonfinite)
    data["nonfinite"] = pa.array(nonfinite)
    return pa.table(data, schema=schema.TRACK)


# --- the driver ----------------------------------------------------------------------------


def completed_spans(out: str | Path, manifest_sha256: str) -> dict[str, list[Span]]:
    """Per contig, the positions already written under OUT by runs with this manifest: parts
    that do not count (see the module docstring) are moved aside here, before planning."""
    track_dir = Path(out) / TRACK_DIR
    done: dict[str, list[Span]] = {}
    for part in sorted(track_dir.glob(manifest.PART_GLOB)) if track_dir.is_dir() else ():
        rows, why = manifest.read_part_keys(part, manifest_sha256, ())
        pieces = _part_pieces(part) if why is None else []
        if why is None and pieces is None:
            why = "its metadata does not list its pieces"
        if why is None and rows != sum(e - s for _, s, e in pieces):
            why = f"it holds {rows} rows for {sum(e - s for _, s, e in pieces)} positions"
        if why is None:
            overlap = [(c, s, e) for c, s, e in pieces
                       if subtract_spans([(s, e)], done.get(c, [])) != [(s, e)]]
            if overlap:
                why = f"positions {overlap[0][0]}:{overlap[0][1] + 1:,}.. are in another part"
        if why is not None:
            manifest.move_aside(part, why)
            continue
        for c, s, e in pieces:
            done.setdefault(c, []).append((s, e))
    return {c: merge_spans(spans) for c, spans in done.items()}


def _part_pieces(part: Path) -> list[tuple[str, int, int]] | None:
    import pyarrow.parquet as pq

    raw = (pq.read_schema(part).metadata or {}).get(KEY_PIECES)
    try:
        return [(str(c), int(s), int(e)) for c, s, e in json.loads(raw)] if raw else None
    except (ValueError, TypeError):
        return None


def track_manifest(model: str | None, config_sha256: str, *, fasta: str, context: int,
                   piece_bp: int | None, strands: str, dtype: str | None,
                   device_type: str, model_id: str | None = None) -> manifest.Manifest:
    """The settings and inputs a `track` folder's values depend on (not which positions, nor
    the bigWig choice; piece_bp only when the context is below the receptive field);
    model_id: the id reported for a model fitted on the FASTA (`kmer:K`)."""
    fingerprint = manifest.model_fingerprint(model, config_sha256)
    if model_id is not None:
        fingerprint["model"] = model_id
    settings = {**fingerprint, "context": context,
                "piece_bp": piece_bp, "strands": strands, "dtype": dtype or "float32",
                "device_type": device_type}
    return manifest.Manifest("track", settings, {"fasta": manifest.file_fingerprint(fasta)})


def bigwig_columns(choice: str, strands: str) -> list[str]:
    """The columns `--bigwig` writes: the strand means, every defined measure column, or none."""
    if choice == "none":
        return []
    if choice == "mean":
        return schema.track_columns(("",))
    return schema.track_columns(("", "_fwd", "_rev") if strands == "both" else ("", "_fwd"))


def write_bigwigs(out: str | Path, fasta: str | Path, columns: Sequence[str],
                  address: str | None = None) -> list[Path]:
    """OUT/bigwig/<column>.bw for each column, from every track part under OUT (module
    docstring), one Ray task per file (pyBigWig holds the GIL: files are written in parallel
    only by processes); each reads the parts' row groups one at a time, in genome order."""
    import pyarrow.parquet as pq
    import ray

    from genomeconv.io.fasta import FastaFile

    folder = Path(out) / BIGWIG_DIR
    final = [folder / f"{c}.bw" for c in columns]
    for old in set(folder.glob("*.bw")) - set(final):  # other columns, of earlier parts
        old.unlink()
    if not columns:
        return []
    with FastaFile(fasta) as fa:  # names sorted: UCSC finds a chromosome by binary search
        header = sorted(zip(fa.references, fa.lengths))
    rank = {name: k for k, (name, _) in enumerate(header)}
    groups = []  # (rank, first position, part, row group)
    rows = 0
    for part in sorted((Path(out) / TRACK_DIR).glob(manifest.PART_GLOB)):
        pf = pq.ParquetFile(part)
        names = pf.schema_arrow.names
        rows += pf.metadata.num_rows
        for g in range(pf.metadata.num_row_groups):
            rg = pf.metadata.row_group(g)
            chrom = rg.column(names.index("chrom")).statistics.min
            first = rg.column(names.index("position")).statistics.min
            groups.append((rank[chrom], first, str(part), g))
    groups.sort(key=lambda x: (x[0], x[1]))
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    check_space(folder, len(columns) * (BIGWIG_BYTES[0] * rows + BIGWIG_BYTES[1]))
    runtime.connect(address)
    task = ray.remote(num_cpus=1)(write_bigwig)
    counts = ray.get([task.remote(str(path), header, [(p, g) for _, _, p, g in groups], column)
                      for path, column in zip(final, columns)])
    for path, count in zip(final, counts):
        if not count:
            manifest.note(f"{path} not written: the track holds no finite {path.stem} value "
                          "(every position null, or non-finite from the model)")
    return [path for path, count in zip(final, counts) if count]


def check_space(folder: Path, need: int) -> None:
    """InputError naming `folder` when its disk has less than `need` bytes free."""
    import shutil

    free = shutil.disk_usage(folder).free
    if free < need:
        raise InputError(f"the bigWigs need about {need / 2**20:,.1f} MiB and the disk has "
                         f"{free / 2**20:,.1f} MiB free: make room and rerun (the track parts "
                         "are complete; the rerun writes only the bigWigs)", path=folder)


def write_bigwig(path: str, header: list[tuple[str, int]], groups: list[tuple[str, int]],
                 column: str) -> int:
    """One bigWig file at `path` (written under a temporary name, then renamed): the finite
    values of `column` from the (part, row group) list, which is in genome order, except those
    of rows marked nonfinite (a broken model's, written with --keep-nonfinite). Returns how
    many values it holds; with none, no file is left at `path` (an empty bigWig says nothing)."""
    import pyarrow.parquet as pq
    import pyBigWig

    tmp = Path(path).with_name(f".tmp-{Path(path).name}-{os.getpid()}")
    bw = pyBigWig.open(str(tmp), "w")
    count = 0
    try:
        bw.addHeader(header, maxZooms=10)
        files: dict[str, Any] = {}
        for part, g in groups:
            pf = files.setdefault(part, pq.ParquetFile(part))
            rows = pf.read_row_group(g, columns=["chrom", "position", "nonfinite", column])
            values = rows.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
            values[rows.column("nonfinite").to_numpy(zero_copy_only=False)] = np.nan
            count += _add_runs(bw, rows.column("chrom")[0].as_py(),
                               rows.column("position").to_numpy(), values)
    finally:
        bw.close()
    if count:
        os.replace(tmp, path)
    else:
        tmp.unlink()
        Path(path).unlink(missing_ok=True)
    return count


def stale_bigwigs(out: str | Path, columns: Sequence[str]) -> bool:
    """Whether a wanted bigWig is missing or older than the newest track part (a run that
    stopped between its parts and its bigWigs)."""
    parts = list((Path(out) / TRACK_DIR).glob(manifest.PART_GLOB))
    newest = max((p.stat().st_mtime for p in parts), default=0.0)
    files = [Path(out) / BIGWIG_DIR / f"{c}.bw" for c in columns]
    return any(not f.exists() or f.stat().st_mtime < newest for f in files)


def _add_runs(bw: Any, chrom: str, positions: np.ndarray, values: np.ndarray) -> int:
    """Add the finite values as fixedStep runs of one-base intervals (gaps where null); returns
    how many."""
    ok = np.isfinite(values) & np.concatenate([[True], np.diff(positions) == 1])
    edges = np.flatnonzero(np.diff(np.concatenate([[0], ok.astype(np.int8), [0]])))
    for start, stop in zip(edges[::2], edges[1::2]):
        bw.addEntries(chrom, int(positions[start]), values=values[start:stop], span=1, step=1)
    return int(ok.sum())


@dataclass
class TrackSummary:
    """What a `track` run did."""

    positions: int  # selected
    positions_skipped: int  # already written by an earlier run
    positions_done: int  # scored by this run
    pieces: int
    units: int
    context: int
    seconds: float
    model_seconds: float  # in the model, summed over workers
    worker_peak_rss: int  # the largest peak resident memory of any worker (bytes)
    out: str
    outputs: list[str] = field(default_factory=list)


def track(input_path: str | Path, out: str | Path, *, regions: Sequence[str] = (),
          gtf: str | Path | None = None, genes: Sequence[str] | None = None,
          bed: str | Path | None = None, features: Sequence[str] | None = None,
          model: str | None = None, context: int | None = None, piece_bp: int | None = None,
          strands: str = "both", bigwig: str = "mean", unit_bp: int | None = None,
          chunk_size: int | None = None, address: str | None = None, num_workers: int = 1,
          gpus_per_worker: float = 0.0, device: str | None = None, dtype: str | None = None,
          overwrite: bool = False, keep_nonfinite: bool = False,
          command: str = "genomeconv track",
          on_plan: Callable[[int, int], None] | None = None,
          on_unit: Callable[[int, int], None] | None = None) -> TrackSummary:
    """Write the per-base track of the positions selected on the FASTA `input_path` (regions,
    GTF/GFF3 genes or features, BED intervals; every record when none is given) under `out`:
    OUT/track/ Parquet parts and OUT/bigwig/. Resumes by position (module docstring);
    `overwrite` removes the folder's earlier outputs first. `model` "kmer:K": an order-K Markov
    model fitted once on the FASTA."""
    from genomeconv.io.fasta import FastaFile, readable_fasta
    from genomeconv.models import load
    from genomeconv.pipelines.baselines import resolve_model
    from genomeconv.pipelines.embed import is_read_file, plan_fasta_items

    t0 = time.perf_counter()
    if strands not in STRANDS:
        raise InputError(f"--strands must be one of {', '.join(STRANDS)} (got {strands!r})")
    if bigwig not in BIGWIG_CHOICES:
        raise InputError(f"--bigwig must be one of {', '.join(BIGWIG_CHOICES)} (got {bigwig!r})")
    runtime.compute_dtype(dtype)
    if is_read_file(input_path):
        raise InputError("track needs a reference sequence (FASTA, GenBank, EMBL or GFF3 with "
                         "##FASTA), not reads", path=input_path)
    preflight.check(out, fasta=input_path, device=device, gpus_per_worker=gpus_per_worker,
                    sizes={"--context": context, "--piece-bp": piece_bp, "--unit-bp": unit_bp,
                           "--chunk-size": chunk_size},
                    num_workers=num_workers, address=address)
    model, model_id = resolve_model(model, input_path)
    probe = load(model, device="cpu", model_id=model_id)
    context = context or default_context(probe)
    piece_bp = piece_bp or max(PIECE_BP, context)
    seamless = probe.receptive_field is not None and context >= probe.receptive_field
    input_path, out = Path(input_path).resolve(), Path(out).resolve()
    if model is not None and Path(model).exists():
        model = str(Path(model).resolve())
    fasta = readable_fasta(input_path)
    items = plan_fasta_items(input_path, regions=regions, gtf=gtf, genes=genes, bed=bed,
                             features=features)
    with FastaFile(fasta) as fa:
        sizes = dict(zip(fa.references, fa.lengths))
    ranks = {c: k for k, c in enumerate(sizes)}
    wanted: dict[str, list[Span]] = {}
    for it in items:
        wanted.setdefault(it.chrom, []).append((it.start, it.end))
    wanted = {c: merge_spans(s) for c, s in wanted.items()}
    gpus = gpus_per_worker if gpus_per_worker > 0 else 0
    device = device or ("cuda" if gpus else None)
    run_manifest = track_manifest(model, probe.config_sha256, fasta=str(input_path),
                                  context=context, piece_bp=None if seamless else piece_bp,
                                  strands=strands, dtype=dtype,
                                  device_type=runtime.device_type(device), model_id=model_id)
    work_per_base = probe.work_per_base * (2 if strands == "both" else 1)
    settings = {"context": context, "receptive_field": probe.receptive_field,
                "piece_bp": piece_bp, "one_pass_values": seamless, "strands": strands,
                "log": "natural"}
    del probe
    total = sum(e - s for spans in wanted.values() for s, e in spans)
    peak_rss = done_bp = 0
    model_s = 0.0
    with manifest.open_run(out, run_manifest, part_dirs=[out / TRACK_DIR, out / BIGWIG_DIR],
                           command=command, overwrite=overwrite) as run:
        done = completed_spans(out, run_manifest.sha256)
        todo = {c: subtract_spans(s, done.get(c, [])) for c, s in wanted.items()}
        pieces = plan_pieces(todo, sizes, ranks, piece_bp)
        by_id = {p.piece_id: p for p in pieces}
        todo_bp = sum(p.length for p in pieces)
        bp = unit_bp or runtime.per_worker(runtime.unit_bases(work_per_base), todo_bp,
                                           num_workers)
        units = runtime.plan_units(list(by_id), runtime.UNIT_MAX_ITEMS,
                                   costs=[p.length for p in pieces], unit_cost=bp)
        if on_plan is not None:
            on_plan(todo_bp, len(units))
        if units:
            workers, cpus = runtime.actor_shape(address, num_workers, len(units), gpus)
            config = TrackConfig(model=model, fasta=fasta, out=str(out), context=context,
                                 strands=strands, chunk_size=chunk_size, device=device,
                                 dtype=dtype, threads=None if gpus else cpus, command=command,
                                 keep_nonfinite=keep_nonfinite,
                                 manifest_sha256=run_manifest.sha256, token=run.token,
                                 settings=json.dumps(settings))
            rows = [{"unit_id": u.unit_id,
                     "items": json.dumps([asdict(by_id[i]) for i in u.item_ids])}
                    for u in units]
            for row in runtime.map_units(rows, TrackActor, {"config": config}, workers=workers,
                                         cpus=cpus, gpus=gpus):
                done_bp += int(row["bp"])
                peak_rss = max(peak_rss, int(row["peak_rss"]))
                model_s += float(row["model_s"])
                if on_unit is not None:
                    on_unit(int(row["items"]), int(row["bp"]))
        written = bigwig_columns(bigwig, strands)
        if units or overwrite or stale_bigwigs(out, written):
            write_bigwigs(out, fasta, written, address)
    outputs = [str(out / TRACK_DIR)] + ([str(out / BIGWIG_DIR)] if written else [])
    return TrackSummary(positions=total, positions_skipped=total - todo_bp,
                        positions_done=done_bp, pieces=len(pieces), units=len(units),
                        context=context, seconds=time.perf_counter() - t0,
                        model_seconds=model_s, worker_peak_rss=peak_rss, out=str(out),
                        outputs=outputs)
