"""Variant classification heads: the module fine-tuning trains and the files it saves them in.

A head reads [pool(ref), pool(alt), pool(alt) - pool(ref)] (`head_features`): the mean over each
window's own positions (models.base.pool with the windows' lengths) of the hidden states of a
variant's forward ref and alt windows, of the final norm or of the layer named at finetune time
(`--layer`, recorded in head.json so that score-variants reads the same layer). Binary heads
have one logit, P(positive class); the positive class is chosen at finetune time
(`--positive-label`; default the minority label) and stored last in `classes`. Multi-class
heads have one logit per class (softmax).

Files, next to the backbone of a fine-tuned model folder: head.safetensors (tensors `0.weight`,
`0.bias`, `2.weight`, `2.bias` of Linear(3 w, hidden) -> GELU -> Linear(hidden, n_out), w the
layer's width; or `0.weight`, `0.bias` when hidden = 0) and head.json: format, classes, n_out,
hidden, input_dim, pooling, features, layer (null: the final norm), window, label,
positive_label (binary), freeze (the --freeze spec), and base_model ({"model",
"model_weights_sha256", "model_config_sha256"} of the model fine-tuning started from). Folders
written before positive_label/freeze/base_model/layer existed still load (`VariantHead.legacy`;
no layer: the final norm).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genomeconv.errors import InputError
from genomeconv.models.base import LanguageModel, pool

HEAD_FORMAT = "genomeconv-variant-head"
RESERVED_COLUMNS = frozenset({"p_ref", "p_alt"})  # site probabilities of score-variants


def make_head(d_in: int, n_out: int, hidden: int) -> nn.Sequential:
    """Linear(d_in, hidden) -> GELU -> Linear(hidden, n_out), or one Linear when hidden = 0."""
    if hidden == 0:
        return nn.Sequential(nn.Linear(d_in, n_out))
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))


def head_features(ref: torch.Tensor, alt: torch.Tensor) -> torch.Tensor:
    """(N, w) pooled ref and alt hidden states -> (N, 3 w): [ref, alt, alt - ref]."""
    return torch.cat([ref, alt, alt - ref], dim=1)


class VariantClassifier(nn.Module):
    """A backbone + head on `head_features` of its `layer`'s hidden states (None: the final
    norm's). The backbone is a trainable models.LanguageModel: an nn.Module whose
    `forward(ids, layer=)` returns hidden states with autograd."""

    def __init__(self, model: LanguageModel, n_out: int, hidden: int,
                 layer: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.head = make_head(3 * model.layer_width(layer), n_out, hidden)

    def forward(self, ref_ids: torch.Tensor, alt_ids: torch.Tensor, ref_lengths: torch.Tensor,
                alt_lengths: torch.Tensor) -> torch.Tensor:
        """Logits of right-padded ref and alt windows (B, L) of the given lengths (B,)."""
        hidden = self.model(torch.cat([ref_ids, alt_ids]), layer=self.layer).float()
        ref, alt = pool(hidden, "mean", torch.cat([ref_lengths, alt_lengths])).chunk(2)
        return self.head(head_features(ref, alt))


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(N, 1) binary logits -> (N, 2) [P(negative), P(positive)]; (N, C) -> softmax."""
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits for one output, cross-entropy for several."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
    return nn.functional.cross_entropy(logits, labels)


def order_classes(labels: Sequence[str], classes: Sequence[str],
                  positive_label: str | None) -> list[str]:
    """Class order of a head: for two classes the positive one last (`positive_label`, default
    the minority label, ties broken towards the label that sorts last); else `classes`."""
    classes = list(classes)
    if len(classes) != 2:
        if positive_label is not None:
            raise InputError(f"--positive-label applies to two classes; the label has "
                             f"{len(classes)}: {classes}")
        return classes
    if positive_label is None:
        counts = Counter(labels)
        positive_label = min(reversed(classes), key=lambda c: counts[c])
    if positive_label not in classes:
        raise InputError(f"--positive-label {positive_label!r} is not one of the labels "
                         f"{classes}")
    return [c for c in classes if c != positive_label] + [positive_label]


def column_names(classes: Sequence[str]) -> list[str]:
    """Output column of each class probability: `p_<class>`, the class lower-cased with every
    run of characters other than [a-z0-9] replaced by `_` (SQL engines such as DuckDB fold
    case); a name that is empty, a site-probability column or already taken gets `_<index>`."""
    out: list[str] = []
    for i, c in enumerate(classes):
        name = "p_" + (re.sub(r"[^a-z0-9]+", "_", str(c).lower()).strip("_") or str(i))
        if name in RESERVED_COLUMNS or name in out:
            name = f"{name}_{i}"
        out.append(name)
    return out


def probability_columns(classes: Sequence[str]) -> list[str]:
    """The columns a head with these classes writes: `p_<positive class>` for a binary head
    (its positive class is last), one `p_<class>` per class otherwise."""
    names = column_names(classes)
    return names[-1:] if len(classes) == 2 else names


@dataclass
class VariantHead:
    """A fine-tuned head read back from a model directory; `predict` gives class probabilities
    from the mean-pooled hidden states (of `layer`) of the forward ref and alt windows."""

    head: nn.Sequential
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def window(self) -> int:
        return int(self.meta["window"])

    @property
    def layer(self) -> str | None:
        """The layer whose hidden states the head reads (None: the final norm's)."""
        return self.meta.get("layer")

    @property
    def legacy(self) -> bool:
        """Written before the base model and freeze spec were recorded."""
        return "freeze" not in self.meta or not isinstance(self.meta.get("base_model"), dict)

    @property
    def columns(self) -> list[str]:
        """The probability columns it writes: P(positive class) for a binary head, one per
        class otherwise."""
        return probability_columns(self.classes)

    @torch.no_grad()
    def predict(self, ref_pooled: np.ndarray, alt_pooled: np.ndarray) -> np.ndarray:
        """(N, d) ref and alt pooled hidden states -> (N, n_classes) probabilities."""
        ref = torch.as_tensor(np.asarray(ref_pooled), dtype=torch.float32)
        alt = torch.as_tensor(np.asarray(alt_pooled), dtype=torch.float32)
        return probabilities(self.head(head_features(ref, alt))).numpy()

    def scores(self, ref_pooled: np.ndarray, alt_pooled: np.ndarray) -> dict[str, np.ndarray]:
        """Column name -> probabilities of the variants (see `columns`)."""
        probs = self.predict(ref_pooled, alt_pooled)
        if len(self.classes) == 2:
            return {self.columns[0]: probs[:, 1]}
        return {c: probs[:, i] for i, c in enumerate(self.columns)}


def save_head(head: nn.Module, meta: dict[str, Any], directory: Path) -> None:
    """Write head.safetensors + head.json next to a saved backbone."""
    from safetensors.torch import save_file

    state = {k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(directory / "head.safetensors"))
    text = json.dumps({"format": HEAD_FORMAT, **meta}, indent=2)
    (directory / "head.json").write_text(text + "\n")


def load_head(directory: str | Path) -> VariantHead | None:
    """The fine-tuned head of a model directory, or None when it has none."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / "head.json").is_file():
        return None
    try:
        meta = json.loads((directory / "head.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON ({exc})", path=directory / "head.json") from None
    if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
        raise InputError(f"unknown head format "
                         f"{meta.get('format') if isinstance(meta, dict) else meta!r}",
                         path=directory / "head.json")
    try:
        head = make_head(meta["input_dim"], meta["n_out"], meta["hidden"])
        head.load_state_dict(load_file(str(directory / "head.safetensors")))
    except (KeyError, TypeError, RuntimeError, OSError, SafetensorError) as exc:
        raise InputError(f"unreadable fine-tuned head ({' '.join(str(exc).split())[:300]})",
                         path=directory) from None
    return VariantHead(head.eval(), meta)
