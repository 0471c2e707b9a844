"""The k-mer baseline family: an order-k Markov model of DNA, counted on both strands.

p(x_t | x_{t-m..t-1}) = (c(context + x_t) + a) / (c(context) + 5 a) over the alphabet A C G T N,
with m = min(k, t): positions with fewer than k bases before them in their window use the order
that fits, so the model scores exactly the positions a causal model scores (t = 1..L-1).
c counts (m+1)-mers in the fitted sequences and their reverse complements (both strands, never
across the end of a sequence); c(context) sums c(context + x) over x, so each distribution sums
to one. Soft-masked bases count as bases, IUPAC ambiguity codes as N (models/tokenizer.py).

The counts of every order 0..k are kept as dense tables of 5^(m+1) integers (`counts.m` in
model.safetensors), so MAX_ORDER bounds the folder (order 8: 20 MB). The model has no hidden
states: `has_embeddings` is False and commands that need embeddings refuse it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genomeconv.errors import InputError
from genomeconv.models.base import Family, LanguageModel, Suffixes, register
from genomeconv.models.tokenizer import VOCAB, tokenize, tokenize_rows

ALPHABET = 5  # A C G T N
FIRST_BASE_ID = VOCAB["A"]  # ids A7 C8 G9 T10 N11 -> symbols 0..4
COMPLEMENT = np.array([3, 2, 1, 0, 4], dtype=np.int64)  # A<->T, C<->G, N
MAX_ORDER = 8
FIT_CHUNK = 1 << 22  # bases counted at a time


def symbols(ids: np.ndarray) -> np.ndarray:
    """Token ids (A7 C8 G9 T10 N11) -> symbols 0..4 (int64); InputError for other ids."""
    sym = np.asarray(ids, dtype=np.int64) - FIRST_BASE_ID
    if sym.size and (sym.min() < 0 or sym.max() >= ALPHABET):
        raise InputError("a k-mer model reads bases only (A, C, G, T, N), not special tokens")
    return sym


def kmer_codes(sym: np.ndarray, n: int) -> np.ndarray:
    """Base-5 codes of every n-mer along the last axis of `sym` (length len - n + 1)."""
    m = sym.shape[-1] - n + 1
    codes = np.zeros((*sym.shape[:-1], max(m, 0)), dtype=np.int64)
    for i in range(n if m > 0 else 0):
        codes = codes * ALPHABET + sym[..., i:i + m]
    return codes


def _reverse_complement_index(n: int) -> np.ndarray:
    """For each n-mer code, the code of its reverse complement."""
    digits = np.stack(np.unravel_index(np.arange(ALPHABET ** n), (ALPHABET,) * n), axis=-1)
    return kmer_codes(COMPLEMENT[digits[:, ::-1]], n)[:, 0]


def count_kmers(sequences: Iterable[str], order: int) -> list[np.ndarray]:
    """(m+1)-mer counts, m = 0..order, of the sequences and their reverse complements."""
    counts = [np.zeros(ALPHABET ** (m + 1), dtype=np.int64) for m in range(order + 1)]
    for seq in sequences:
        for start in range(0, len(seq), FIT_CHUNK):  # chunks overlap by `order` bases
            sym = symbols(tokenize(seq[start:start + FIT_CHUNK + order]).numpy())
            starts = min(FIT_CHUNK, len(sym))  # n-mers starting in this chunk only
            for m in range(order + 1):
                counts[m] += np.bincount(kmer_codes(sym, m + 1)[:starts],
                                         minlength=ALPHABET ** (m + 1))
    return [c + c[_reverse_complement_index(m + 1)] for m, c in enumerate(counts)]


class KmerModel(LanguageModel):
    """Order-k Markov model with pseudocount `pseudocount` (see the module docstring)."""

    family = "kmer"
    has_embeddings = False

    def __init__(self, counts: list[np.ndarray], pseudocount: float = 1.0,
                 source: dict[str, Any] | None = None, model_id: str = "untrained") -> None:
        self.order = len(counts) - 1
        self.counts = [np.asarray(c, dtype=np.int64) for c in counts]
        self.pseudocount = float(pseudocount)
        self.source = dict(source or {})
        self.model_id = model_id
        self._logp = []
        for c in self.counts:  # log p(x | context) indexed by the (m+1)-mer code
            table = c.reshape(-1, ALPHABET).astype(np.float64)
            total = table.sum(axis=1, keepdims=True)
            self._logp.append(np.log((table + self.pseudocount)
                                     / (total + ALPHABET * self.pseudocount)).reshape(-1))

    @classmethod
    def fit(cls, sequences: Iterable[str], order: int, *, pseudocount: float = 1.0,
            source: dict[str, Any] | None = None) -> "KmerModel":
        """Count the sequences (both strands); `source` says what was fitted (config.json)."""
        check_order(order)
        return cls(count_kmers(sequences, order), pseudocount, source)

    def tokenize(self, seqs: Sequence[str]) -> torch.Tensor:
        """HyenaDNA's ids (models/tokenizer.py): the tables count its A C G T N symbols."""
        return tokenize_rows(seqs)

    @property
    def d_model(self) -> int:
        return 0

    @property
    def max_seq_len(self) -> int:
        return 2 ** 31 - 1  # any length: the window is the caller's choice

    @property
    def receptive_field(self) -> int:
        return self.order

    def config_dict(self) -> dict[str, Any]:
        return {"order": self.order, "pseudocount": self.pseudocount, "alphabet": "ACGTN",
                "source": self.source}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"counts.{m}": torch.from_numpy(c.copy()) for m, c in enumerate(self.counts)}

    def log_likelihoods(self, ids: torch.Tensor, *, with_hidden: bool = False,
                        chunk_size: int | None = None, dtype: torch.dtype | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log p(x_t | x_<t) for t = 1..L-1, (B, L-1) float64 (exact counts, no rounding to
        float32); chunk_size and dtype do not apply."""
        if with_hidden:
            self.require_embeddings("hidden states")
        sym = symbols(ids.cpu().numpy())
        L, k = sym.shape[1], self.order
        out = np.empty((sym.shape[0], max(L - 1, 0)), dtype=np.float64)
        for t in range(1, min(k, L)):  # short contexts at the window start
            out[:, t - 1] = self._logp[t][kmer_codes(sym[:, :t + 1], t + 1)[:, 0]]
        if L > k:
            first = max(k, 1)  # codes predict positions k..L-1; position 0 is never predicted
            out[:, first - 1:] = self._logp[k][kmer_codes(sym, k + 1)[:, first - k:]]
        return torch.from_numpy(out), None

    def log_likelihoods_shared(self, ids: torch.Tensor, parent: torch.Tensor,
                               start: torch.Tensor, *, pooled: bool = False,
                               chunk_size: int | None = None, dtype: torch.dtype | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Shared rows from `order` bases before their start on: position t reads only the
        `order` bases before it (the same float64 numbers as `log_likelihoods`)."""
        if pooled:
            self.require_embeddings("pooled hidden states")
        plan = Suffixes.plan(ids, parent, start, self.order)
        full, _ = self.log_likelihoods(ids[plan.full])
        packed, _ = self.log_likelihoods(plan.packed(ids))
        return plan.loglik(full, packed), None

    def base_log_probs(self, ids: torch.Tensor, *, chunk_size: int | None = None,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
        """log p(x_t = b | x_<t) for t = 1..L-1, b in A C G T, (B, L-1, 4) float64 (exact
        counts; the remaining mass is N's); chunk_size and dtype do not apply."""
        sym = symbols(ids.cpu().numpy())
        L, k = sym.shape[1], self.order
        out = np.empty((sym.shape[0], max(L - 1, 0), 4), dtype=np.float64)
        bases = np.arange(4)  # A C G T are symbols 0..3
        for t in range(1, min(k, L)):  # short contexts at the window start: order t
            context = kmer_codes(sym[:, :t], t)[:, 0]
            out[:, t - 1] = self._logp[t][context[:, None] * ALPHABET + bases]
        first = max(k, 1)  # positions k..L-1 see k bases (order 0: no context)
        if L > first:
            context = kmer_codes(sym[:, first - k:L - 1], k) if k else np.zeros((len(sym), L - 1),
                                                                              dtype=np.int64)
            out[:, first - 1:] = self._logp[k][context[..., None] * ALPHABET + bases]
        return torch.from_numpy(out)


def check_order(order: Any, path: Path | None = None) -> int:
    """`order` as an int in 0..MAX_ORDER, else an InputError saying why."""
    if not isinstance(order, int) or isinstance(order, bool) or not 0 <= order <= MAX_ORDER:
        raise InputError(f"k-mer order {order!r} must be an integer from 0 to {MAX_ORDER} "
                         f"(tables of 5^(k+1) counts)", path=path)
    return order


def parse_spec(spec: str | None) -> int | None:
    """The order of a `kmer:K` model spec, or None for any other --model value."""
    if spec is None or not str(spec).startswith("kmer:"):
        return None
    text = str(spec)[len("kmer:"):]
    if not text.isdigit():
        raise InputError(f"--model {spec}: write kmer:K with K the Markov order (0 to "
                         f"{MAX_ORDER}), e.g. kmer:6")
    return check_order(int(text))


def load_saved(values: dict[str, Any], state: dict[str, torch.Tensor], directory: Path,
               model_id: str, device: Any = None, dtype: Any = None) -> KmerModel:
    """The "kmer" family's loader (checkpoints.load): config and count tables checked; device
    and dtype do not apply (counts live in numpy)."""
    config_path, weights = directory / "config.json", directory / "model.safetensors"
    order = check_order(values.get("order"), config_path)
    a = values.get("pseudocount")
    if not isinstance(a, (int, float)) or isinstance(a, bool) or not (math.isfinite(a) and a > 0):
        raise InputError(f"config value pseudocount = {a!r} is not a positive number",
                         path=config_path)
    counts = []
    for m in range(order + 1):
        c = state.get(f"counts.{m}")
        if c is None or c.dtype != torch.int64 or tuple(c.shape) != (ALPHABET ** (m + 1),):
            raise InputError(f"counts.{m} is missing or not {ALPHABET ** (m + 1)} int64 counts "
                             f"(order {order})", path=weights)
        if bool((c < 0).any()):
            raise InputError(f"counts.{m} holds negative counts", path=weights)
        counts.append(c.numpy())
    extra = sorted(set(state) - {f"counts.{m}" for m in range(order + 1)})
    if extra:
        raise InputError(f"unexpected tensors {extra[:3]} for an order-{order} k-mer model",
                         path=weights)
    source = values.get("source") if isinstance(values.get("source"), dict) else {}
    return KmerModel(counts, float(a), source, model_id)


register(Family("kmer", load_saved))
