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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genomeconv.errors import InputError, writing
from genomeconv.io.regions import Span, merge_spans, reverse_complement, subtract_spans
from genomeconv.pipelines import manifest, runtime, schema
from genomeconv.pipelines.job import (Job, JobSummary, Progress, Unit, UnitActor, WorkerSetup,
                                      run_job)
from genomeconv.pipelines.options import TrackOptions

if TYPE_CHECKING:
    import pyarrow as pa

    from genomeconv.models.base import LanguageModel

TRACK_DIR, BIGWIG_DIR = "track", "bigwig"
PIECE_BP = 1 << 18  # default positions per piece (at least the context: overlap at most 2x)
MAX_DEFAULT_CONTEXT = 1 << 16  # the receptive field is the default context up to this
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


def piece_columns(fwd: Strand | None, rev: Strand | None,
                  codes: np.ndarray) -> dict[str, np.ndarray]:
    """Every measure column of a piece: `<measure>_fwd`, `_rev` (all NaN for a strand not
    scored, None) and the mean of the strands that define it at each position (NaN when a
    defined one is NaN)."""
    unscored = (np.full((len(codes), 4), np.nan), np.zeros(len(codes), dtype=bool))
    fwd, rev = fwd or unscored, rev or unscored
    has_a, has_b = (codes >= 0) & fwd[1], (codes >= 0) & rev[1]
    f = strand_measures(fwd[0], codes, fwd[1])
    r = strand_measures(rev[0], codes, rev[1])
    columns: dict[str, np.ndarray] = {}
    for m in schema.TRACK_MEASURES:
        a, b = f[m], r[m]
        columns[m] = np.where(has_a & has_b, (a + b) / 2, np.where(has_a, a, b))
        columns[m + "_fwd"], columns[m + "_rev"] = a, b
    return columns


@dataclass(frozen=True)
class TrackConfig:
    """What a TrackActor needs beyond job.WorkerSetup (small and picklable)."""

    fasta: str
    context: int
    strands: str = "both"
    chunk_size: int | None = None
    settings: str = "{}"  # KEY_TRACK's JSON


class TrackActor(UnitActor):
    """The track actor: loads the model once, opens the FASTA once a run, then scores whole
    units."""

    def open_run(self, setup: WorkerSetup, config: TrackConfig) -> None:
        from genomeconv.io.fasta import FastaFile

        super().open_run(setup, config)
        self.fasta = FastaFile(config.fasta)

    @staticmethod
    def decode_item(data: dict[str, Any]) -> Piece:
        return Piece(**data)

    def run_unit(self, unit_id: str, pieces: Sequence[Piece]) -> dict[str, Any]:
        """Score the unit's pieces into one part (a row group run per piece); return the
        seconds spent in the model."""
        meta = self.metadata("track")
        meta[KEY_PIECES] = json.dumps([[p.chrom, p.start, p.end] for p in pieces]).encode()
        meta[KEY_TRACK] = self.cfg.settings.encode()
        writer = runtime.PartWriter(Path(self.setup.out) / TRACK_DIR, unit_id, schema.TRACK,
                                    meta, self.setup.token)
        model_s = 0.0
        try:
            for piece in pieces:
                table, seconds = self.piece_table(piece)
                writer.write(table)
                model_s += seconds
            writer.commit()
        finally:
            writer.discard()
        return {"model_s": model_s}

    def logp(self, seq: str) -> np.ndarray:
        """log p(A, C, G, T) at window indices 1..len-1 of one window, (len - 1, 4)."""
        ids = self.model.tokenize([seq])
        return self.model.base_log_probs(ids, chunk_size=self.cfg.chunk_size,
                                         dtype=self.dtype)[0].cpu().numpy()

    def piece_table(self, piece: Piece) -> tuple[pa.Table, float]:
        """The piece's rows and the seconds its windows took in the model."""
        from genomeconv.models.base import base_codes

        a, b = piece.start, piece.end
        positions = np.arange(a, b, dtype=np.int64)
        ref = self.fasta.fetch(piece.chrom, a, b).upper()
        codes = base_codes(ref)
        t0 = time.perf_counter()
        fwd = rev = context_fwd = context_rev = None
        if self.cfg.strands != "rev":
            ws = max(0, a - self.cfg.context)
            context_fwd = positions - ws  # the window index of each position = bases before it
            fwd = _rows(self.logp(self.fasta.fetch(piece.chrom, ws, b)), context_fwd)
        if self.cfg.strands != "fwd":
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
        if bad.any() and not self.setup.keep_nonfinite:
            p = int(positions[int(bad.argmax())])
            raise InputError(f"the model gives non-finite (infinite or NaN) log-probabilities at "
                             f"{piece.chrom}:{p + 1:,}: a model that produces NaN is broken; "
                             "pass --keep-nonfinite to write such rows marked nonfinite = true",
                             path=self.model.model_id)
        return bad


def _rows(logp: np.ndarray, index: np.ndarray) -> Strand:
    """A strand's rows of a window's log-probabilities for the positions at window `index`
    (row index - 1 predicts index) and where it predicts them: not where index is 0 (nothing
    before it; NaN rows there)."""
    out = np.full((len(index), 4), np.nan, dtype=np.float64)
    has = index >= 1
    out[has] = logp[index[has] - 1]
    return out, has


def _table(piece: Piece, positions: np.ndarray, ref: str, context_fwd: np.ndarray | None,
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
        **{name: (pa.array(values.astype(np.int32)) if values is not None
                  else pa.nulls(n, pa.int32()))
           for name, values in (("context_fwd", context_fwd), ("context_rev", context_rev))},
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
    return schema.track_columns(("", "_fwd", "_rev") if strands == "both"
                                else ("", f"_{strands}"))


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


class TrackJob(Job):
    """`track` as an instance of the job skeleton: the selected positions are cut into pieces
    on a fixed grid, a unit's work is its pieces' bases, its part lists its pieces (the key:
    positions); the bigWigs are written after the parts."""

    kind, actor, noun, work_unit = "track", TrackActor, "positions", "bp"

    def __init__(self, opts: TrackOptions) -> None:
        from genomeconv.pipelines.embed import is_read_file

        super().__init__(opts)
        self.opts: TrackOptions = opts
        if is_read_file(opts.fasta):
            raise InputError("track needs a reference sequence (FASTA, GenBank, EMBL or GFF3 "
                             "with ##FASTA), not reads", path=opts.fasta)
        self.fasta = Path(opts.fasta).resolve()
        self.wanted: dict[str, list[Span]] = {}

    def check_inputs(self) -> dict[str, Any]:
        return {"fasta": self.fasta}

    def resolve_model(self) -> tuple[str | None, str | None]:
        from genomeconv.pipelines.baselines import resolve_model

        return resolve_model(super().resolve_model()[0], self.fasta)

    def selected(self) -> int:
        return sum(e - s for spans in self.wanted.values() for s, e in spans)

    def prepare(self, probe: LanguageModel) -> manifest.Manifest:
        from genomeconv.io.fasta import FastaFile, readable_fasta
        from genomeconv.pipelines.embed import plan_fasta_items

        o = self.opts
        self.context = o.context or default_context(probe)
        self.piece_bp = o.piece_bp or max(PIECE_BP, self.context)
        seamless = probe.receptive_field is not None and self.context >= probe.receptive_field
        self.readable = readable_fasta(self.fasta)
        for it in plan_fasta_items(self.fasta, regions=o.regions, gtf=o.gtf, genes=o.genes,
                                   bed=o.bed, features=o.features):
            self.wanted.setdefault(it.chrom, []).append((it.start, it.end))
        self.wanted = {c: merge_spans(s) for c, s in self.wanted.items()}
        with FastaFile(self.readable) as fa:
            self.sizes = dict(zip(fa.references, fa.lengths))
        self.unit_bp = runtime.unit_bases(probe.work_per_base * (2 if o.strands == "both" else 1))
        self.settings = {"context": self.context, "receptive_field": probe.receptive_field,
                         "piece_bp": self.piece_bp, "one_pass_values": seamless,
                         "strands": o.strands, "log": "natural"}
        model, model_id = self.model_spec
        return track_manifest(model, probe.config_sha256, fasta=str(self.fasta),
                              context=self.context, piece_bp=None if seamless else self.piece_bp,
                              strands=o.strands, dtype=o.dtype, model_id=model_id,
                              device_type=runtime.device_type(o.worker_device))

    def part_dirs(self) -> list[Path]:
        return [self.out / TRACK_DIR, self.out / BIGWIG_DIR]

    def outputs(self) -> list[str]:
        return [str(d) for d in self.part_dirs()[:1 + bool(self.bigwigs())]]

    def completed(self, manifest_sha256: str) -> dict[str, list[Span]]:
        return completed_spans(self.out, manifest_sha256)

    def plan_units(self, done: dict[str, list[Span]], workers: int) -> list[Unit]:
        todo = {c: subtract_spans(s, done.get(c, [])) for c, s in self.wanted.items()}
        ranks = {c: k for k, c in enumerate(self.sizes)}
        self.pieces = plan_pieces(todo, self.sizes, ranks, self.piece_bp)
        by_id = {p.piece_id: p for p in self.pieces}
        total = sum(p.length for p in self.pieces)
        bp = self.opts.unit_bp or runtime.per_worker(self.unit_bp, total, workers)
        units = runtime.plan_units(list(by_id), runtime.UNIT_MAX_ITEMS,
                                   costs=[p.length for p in self.pieces], unit_cost=bp)
        planned = []
        for u in units:
            pieces = [by_id[i] for i in u.item_ids]
            work = sum(p.length for p in pieces)
            planned.append(Unit(u.unit_id, pieces, work, size=work))
        return planned

    def worker_config(self) -> TrackConfig:
        o = self.opts
        return TrackConfig(fasta=self.readable, context=self.context, strands=o.strands,
                           chunk_size=o.chunk_size, settings=json.dumps(self.settings))

    def bigwigs(self) -> list[str]:
        return bigwig_columns(self.opts.bigwig, self.opts.strands)

    def finish(self, ran: bool) -> None:
        if ran or self.opts.overwrite or stale_bigwigs(self.out, self.bigwigs()):
            write_bigwigs(self.out, self.readable, self.bigwigs(), self.opts.address)

    def facts(self, tally: dict[str, Any]) -> dict[str, Any]:
        return {"pieces": len(self.pieces), "context": self.context}


def track(opts: TrackOptions, *, on_plan: Progress | None = None,
          on_unit: Progress | None = None) -> JobSummary:
    """Write the per-base track of the positions `opts` selects on its FASTA (every record
    when none is given) under `opts.out`: OUT/track/ Parquet parts and OUT/bigwig/. Resumes by
    position (module docstring); `--model kmer:K`: an order-K Markov model fitted once on the
    FASTA."""
    return run_job(TrackJob(opts), on_plan=on_plan, on_unit=on_unit)
