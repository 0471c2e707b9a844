"""`genomeconv plot training`: loss curves of a `genomeconv pretrain` or `finetune` run.

Both pipelines (pipelines/train.py) write OUT/summary.json when they finish (and, as they go,
OUT/history.jsonl, read when the summary is missing: a run still going or stopped), with
`history`: one record per step (pretrain: train_loss, and val_nll / val_ppl at each evaluation
step) or per epoch (finetune: train_loss, and the validation accuracy, auroc and auprc), and for
pretraining with
--kmer-baseline the order-k Markov baseline's held-out NLL and perplexity, drawn as horizontal
lines. Losses are natural-log cross-entropies (nats per base for pretraining).
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from genomeconv.errors import InputError
from genomeconv.plots import figures

SUMMARY = "summary.json"
HISTORY = "history.jsonl"  # pipelines/train.py: records as they happen, for unfinished runs
FINETUNE_METRICS = ("auroc", "auprc", "accuracy")
TITLE_WIDTH = 110  # characters a title line (the command that made the run)


def read_summary(run: str | Path) -> dict[str, Any]:
    """The summary of a training output folder (or its summary.json), checked for a history; for
    a run still going or stopped (no summary.json yet), its history.jsonl as the history, with
    `unfinished` set."""
    path = Path(run)
    if path.is_dir():
        if not (path / SUMMARY).is_file() and (path / HISTORY).is_file():
            return _read_history(path / HISTORY)
        path = path / SUMMARY
    if not path.is_file():
        raise InputError(f"no {SUMMARY} or {HISTORY}: not a genomeconv pretrain/finetune output",
                         path=path)
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not JSON ({exc})", path=path) from None
    return _checked(summary, path)


def _read_history(path: Path) -> dict[str, Any]:
    """The records of history.jsonl (a line cut short by a killed run is left out)."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return _checked({"history": records, "unfinished": True}, path)


def _checked(summary: Any, path: Path) -> dict[str, Any]:
    """`summary` when it holds a history of records with step or epoch and train_loss."""
    history = summary.get("history") if isinstance(summary, dict) else None
    if not isinstance(history, list) or not history or not all(
            isinstance(r, dict) and "train_loss" in r and ("step" in r or "epoch" in r)
            for r in history):
        raise InputError("no training history (a list of records with step or epoch and "
                         "train_loss)", path=path)
    return summary


def _series(history: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    """The (x, y) points of the records that have a finite `y`."""
    pairs = [(r[x], r[y]) for r in history
             if isinstance(r.get(y), (int, float)) and math.isfinite(r[y])]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def training_figure(run: str | Path) -> Figure:
    """Pretraining: training loss per step and held-out NLL, then held-out perplexity (k-mer
    baseline lines when recorded). Fine-tuning: training loss per epoch, then the validation
    metrics, the best epoch marked."""
    summary = read_summary(run)
    history = summary["history"]
    pretrain = "step" in history[0]
    x = "step" if pretrain else "epoch"
    fig, (loss_ax, metric_ax) = figures.new_figure(2, height=2.8, width=8.0)
    loss_ax.plot(*_series(history, x, "train_loss"), label="training loss", gid="train_loss")
    if pretrain:
        loss_ax.plot(*_series(history, x, "val_nll"), marker="o", label="held-out NLL",
                     gid="val_nll")
        metric_ax.plot(*_series(history, x, "val_ppl"), marker="o", label="held-out perplexity",
                       gid="val_ppl")
        baseline = summary.get("kmer_baseline")
        if baseline:
            order = baseline.get("order")
            loss_ax.axhline(baseline["val_nll"], linestyle="--", color="0.4", gid="kmer_val_nll",
                            label=f"order-{order} Markov baseline (held-out)")
            metric_ax.axhline(baseline["val_ppl"], linestyle="--", color="0.4",
                              gid="kmer_val_ppl", label=f"order-{order} Markov baseline")
        loss_ax.set_ylabel("loss (nats/base)")
        metric_ax.set_ylabel("perplexity")
    else:
        for name in FINETUNE_METRICS:
            points = _series(history, x, name)
            if points[0]:
                metric_ax.plot(*points, marker="o", label=f"validation {name}", gid=name)
        if isinstance(summary.get("best"), (int, float)) and math.isfinite(summary["best"]):
            best = next((r[x] for r in history if summary["best"] in
                         (r.get("auroc"), r.get("accuracy"))), None)
            if best is not None:
                metric_ax.axvline(best, color="0.6", linestyle=":", label=f"best epoch ({best})",
                                  gid="best")
        loss_ax.set_ylabel("training loss (nats)")
        metric_ax.set_ylabel("validation metric")
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    metric_ax.set_xlabel(x)
    kind = "pretraining" if pretrain else "fine-tuning"
    if summary.get("unfinished"):
        kind += f" (unfinished: {len(history)} {x}s so far)"
    title = f"{kind}: {summary.get('command', Path(run))}"
    fig.suptitle(textwrap.fill(title, TITLE_WIDTH, subsequent_indent="    "), fontsize="small")
    return fig
