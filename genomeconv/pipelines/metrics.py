"""Training metrics: AUROC, AUPRC (average precision), accuracy, and the order-k Markov baseline.

Classification metrics follow the usual definitions (sklearn's `roc_auc_score` and
`average_precision_score`): AUROC counts tied scores as half a win; average precision is
sum_n (R_n - R_{n-1}) P_n over distinct score thresholds. Multi-class values are the macro mean
of one-vs-rest values over the classes present in `labels`.

The Markov baseline predicts base x_t from the k bases before it with add-one (Laplace) counts
over the alphabet A, C, G, T, N. Positions with fewer than k bases of context in their window use
the order that fits (t bases at position t), so it scores exactly the positions a causal model
scores within the same windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from genomeconv.models.families.kmer import ALPHABET
from genomeconv.models.families.kmer import kmer_codes as _kmer_codes
from genomeconv.models.families.kmer import symbols as _symbols


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve for binary labels (1 = positive); NaN without both classes."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0  # average 1-based rank of each tie group
    rank_sum = mid_rank[inverse][labels].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision); NaN without positives."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # end of each threshold group
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0, tp]) / n_pos
    return float(np.sum(recall_gain * precision))


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """accuracy, auroc and auprc for integer labels (N,) and class probabilities (N, C)."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    accuracy = float(np.mean(probs.argmax(axis=1) == labels)) if len(labels) else float("nan")
    if probs.shape[1] == 2:
        return {"accuracy": accuracy, "auroc": auroc(labels == 1, probs[:, 1]),
                "auprc": average_precision(labels == 1, probs[:, 1])}
    present = [c for c in range(probs.shape[1]) if np.any(labels == c)]
    roc = [auroc(labels == c, probs[:, c]) for c in present]
    prc = [average_precision(labels == c, probs[:, c]) for c in present]
    return {"accuracy": accuracy, "auroc": float(np.nanmean(roc)) if roc else float("nan"),
            "auprc": float(np.nanmean(prc)) if prc else float("nan")}


class MarkovBaseline:
    """Order-0..max_order Markov models with add-one smoothing, fitted on token-id sequences."""

    def __init__(self, sequences: Sequence[np.ndarray], max_order: int) -> None:
        """Count every (j+1)-mer, j = 0..max_order, in `sequences` (pass both strands)."""
        self.max_order = max_order
        self.tables: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        syms = [_symbols(s) for s in sequences]
        for j in range(max_order + 1):
            codes = np.concatenate([_kmer_codes(s, j + 1) for s in syms])
            full, full_counts = np.unique(codes, return_counts=True)
            ctx, starts = np.unique(full // ALPHABET, return_index=True)
            ctx_counts = np.add.reduceat(full_counts, starts) if len(full) else full_counts
            self.tables.append((full, full_counts, ctx, ctx_counts))

    @staticmethod
    def _lookup(keys: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
        if len(keys) == 0:
            return np.zeros(len(query), dtype=np.int64)
        idx = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        return np.where(keys[idx] == query, counts[idx], 0)

    def window_logprob(self, ids: np.ndarray, order: int) -> np.ndarray:
        """log p(x_t | x_{t-k..t-1}) for t = 1..L-1 of one window, k = min(order, t)."""
        sym = _symbols(ids)
        out = np.empty(len(sym) - 1, dtype=np.float64)
        for t in range(1, min(order, len(sym))):  # short contexts at the window start
            out[t - 1] = self._logp(sym[:t + 1], t)[0]
        if len(sym) > order:
            full = self._logp(sym, order)  # predicts positions order..L-1
            out[max(order, 1) - 1:] = full[1:] if order == 0 else full
        return out

    def _logp(self, sym: np.ndarray, k: int) -> np.ndarray:
        full, full_counts, ctx, ctx_counts = self.tables[k]
        codes = _kmer_codes(sym, k + 1)
        num = self._lookup(full, full_counts, codes) + 1.0
        den = self._lookup(ctx, ctx_counts, codes // ALPHABET) + float(ALPHABET)
        return np.log(num / den)

    def mean_nll(self, windows: Sequence[np.ndarray], order: int) -> float:
        """Mean negative log-likelihood (nats per predicted base) over windows."""
        logp = np.concatenate([self.window_logprob(w, order) for w in windows])
        return float(-logp.mean())

    def choose_order(self, windows: Sequence[np.ndarray]) -> tuple[int, dict[int, float]]:
        """The order with the lowest mean NLL on `windows`, and the NLL of each order."""
        nll = {k: self.mean_nll(windows, k) for k in range(self.max_order + 1)}
        return min(nll, key=nll.get), nll
