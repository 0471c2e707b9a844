"""The model interface every pipeline uses, the family registry, and pooling.

A pipeline holds a `LanguageModel` and calls only what is declared here: tokenization (each
family has its own vocabulary), hidden states of the final norm or of a named layer in bounded
memory (families with embeddings), next-token log-likelihoods and the next-base distribution,
the sizes that plan the work (d_model, max_seq_len, receptive_field), the identity written
into outputs (model_id, config_sha256) and `save`. No pipeline names a family.

Families register themselves: each is one module (or subpackage) under `models/families/` that
subclasses `LanguageModel` and calls `register(Family(...))` when imported; `checkpoints.load`
imports every module there, so adding a family touches one file. A `Family` says how to load
genomeconv's own folders of it (config.json names the family) and which release layouts and
hub ids it reads.

Saved folders in genomeconv's own layout: config.json ({"format": "genomeconv-<family>",
"format_version": 1, "family", "config", "config_sha256", ...}) + model.safetensors (+ an
optional MODEL_CARD.md). Folders written before families existed have no "family": HyenaDNA.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import save_file

from genomeconv.errors import InputError

FORMAT_VERSION = 1
POOLINGS = ("mean", "max", "last")
TRACK_BASES = "ACGT"  # the bases of `base_log_probs`, in its column order
_BASE_CODES = np.full(256, -1, dtype=np.int8)
for _i, _b in enumerate(TRACK_BASES):
    _BASE_CODES[ord(_b)] = _BASE_CODES[ord(_b.lower())] = _i


def folder_format(family: str) -> str:
    """The config.json "format" of a family's folders ("genomeconv-hyena", "genomeconv-kmer")."""
    return f"genomeconv-{family}"


def config_sha256(config: dict[str, Any]) -> str:
    """Stable hash of a config dict (sorted-key compact JSON)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def pool(hidden: torch.Tensor, pooling: str = "mean",
         lengths: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L, d) -> (B, d) by "mean", "max" or "last" over positions: the one definition used
    by `embed`, score-variants' embedding distances and fine-tuning heads. With `lengths` (B,),
    over each row's first lengths[b] positions only, so right padding never enters a pooled
    vector (an item's embedding does not depend on what it was batched with)."""
    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {', '.join(POOLINGS)} (got {pooling!r})")
    if lengths is not None:
        return _pool_masked(hidden, pooling, lengths.to(hidden.device))
    if pooling == "mean":
        return hidden.mean(dim=1)
    if pooling == "max":
        return hidden.amax(dim=1)
    return hidden[:, -1]


def _pool_masked(hidden: torch.Tensor, pooling: str, lengths: torch.Tensor) -> torch.Tensor:
    """`pool` over each row's first lengths[b] positions (a masked sum, max or gather)."""
    if pooling == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]
    if pooling == "max":
        return hidden.masked_fill(~valid[..., None], float("-inf")).amax(dim=1)
    return torch.bmm(valid[:, None, :].to(hidden.dtype), hidden)[:, 0] / lengths[:, None]


def base_codes(seq: str) -> np.ndarray:
    """A, C, G, T (either case) -> 0..3, the column of `base_log_probs` that scores the base;
    anything else -> -1. The same for every family, whatever its token ids."""
    return _BASE_CODES[np.frombuffer(seq.encode("ascii", "replace"), dtype=np.uint8)]


@dataclass(frozen=True)
class Suffixes:
    """How the rows of a `log_likelihoods_shared` call split (see its contract): `full` (F,)
    rows computed in full (no parent, or nothing shared), and the rows `rows` (S,) that share
    the positions before `start` with the full row `parent` (indices into `full`), computed
    from `first` = start - context on (at least 0): `context` positions before the first that
    may differ are what a family's suffix computation still reads (a short convolution's
    inputs, a k-mer's context; at least one, the hidden state predicting position `start`).
    `packed` lays each such row's positions first .. L-1 out left-aligned, right-padded to the
    longest (causal: padding never reaches a real position), ordered by (parent, first), so
    rows that read the same positions of the same parent lie side by side; `loglik` and
    `pooled` put the full and packed results back together per row."""

    L: int
    full: torch.Tensor
    rows: torch.Tensor
    parent: torch.Tensor
    start: torch.Tensor
    first: torch.Tensor

    @classmethod
    def plan(cls, ids: torch.Tensor, parent: torch.Tensor, start: torch.Tensor,
             context: int) -> "Suffixes":
        """Check the arguments against the contract (ValueError naming what is wrong) and
        split the rows."""
        N, L = ids.shape
        parent, start = parent.to(ids.device).long(), start.to(ids.device).long()
        if parent.shape != (N,) or start.shape != (N,):
            raise ValueError(f"parent and start must be ({N},), got {tuple(parent.shape)} and "
                             f"{tuple(start.shape)}")
        if bool(((parent < -1) | (parent >= N) | (start < 0) | (start > L)).any()):
            raise ValueError(f"parent must lie in [-1, {N}) and start in [0, {L}]")
        shared = (parent >= 0) & (start > 0)
        if bool((shared & (parent[parent.clamp(min=0)] >= 0)).any()):
            raise ValueError("a parent row must have no parent itself (parent -1)")
        rows, full = shared.nonzero()[:, 0], (~shared).nonzero()[:, 0]
        before = torch.arange(L, device=ids.device) < start[rows, None]
        if bool(((ids[rows] != ids[parent[rows]]) & before).any()):
            raise ValueError("a row differs from its parent before its start")
        local = torch.full((N,), -1, dtype=torch.long, device=ids.device)
        local[full] = torch.arange(len(full), device=ids.device)
        first = (start - max(1, context)).clamp(min=0)
        rows = rows[torch.argsort(local[parent[rows]] * (L + 1) + first[rows], stable=True)]
        return cls(L, full, rows, local[parent[rows]], start[rows], first[rows])

    @property
    def width(self) -> int:
        """Positions per packed row: the longest suffix (0 without shared rows)."""
        return self.L - int(self.first.min()) if len(self.rows) else 0

    def positions(self) -> torch.Tensor:
        """(S, width): the window position each packed position holds (padding: L - 1)."""
        j = torch.arange(self.width, device=self.first.device)
        return (self.first[:, None] + j).clamp(max=self.L - 1)

    def packed(self, ids: torch.Tensor) -> torch.Tensor:
        """(S, width) ids of the shared rows from `first` on, right-padded with their last."""
        return ids[self.rows[:, None], self.positions()]

    def loglik(self, full: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        """(N, L-1) log-likelihoods from the full rows' (F, L-1) and the packed rows' (S,
        width-1): a shared row's positions t < start from its parent, the others from its
        packed row (position t is its packed position t - first)."""
        out = full.new_empty(len(self.full) + len(self.rows), self.L - 1)
        out[self.full] = full
        if len(self.rows):
            t = torch.arange(1, self.L, device=full.device)
            from_parent = full[self.parent[:, None], t - 1]
            j = (t - self.first[:, None]).clamp(min=1, max=max(1, self.width - 1))
            from_row = packed[torch.arange(len(self.rows), device=full.device)[:, None],
                              j - 1] if packed.shape[1] else from_parent
            out[self.rows] = torch.where(t < self.start[:, None], from_parent, from_row)
        return out

    def pooled(self, full: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        """(N, d) float64 means over each window's L positions of the final hidden states,
        from the full rows' (F, L, d) and the packed rows' (S, width, d): a shared row's sum is
        its parent's sum over the positions before `first` plus its packed row's."""
        sums = full.double().cumsum(dim=1)
        out = sums.new_empty(len(self.full) + len(self.rows), full.shape[-1])
        out[self.full] = sums[:, -1]
        if len(self.rows):
            before = torch.where((self.first > 0)[:, None], sums[self.parent, self.first - 1], 0)
            valid = torch.arange(self.width, device=full.device) < self.L - self.first[:, None]
            out[self.rows] = before + (packed.double() * valid[..., None]).sum(dim=1)
        return out / self.L


def layer_patterns(names: Sequence[str]) -> str:
    """Layer names with block numbers folded ("blocks.N.mlp.l3 (N 0-24)"), so that every valid
    name of a 32-block model fits one error line."""
    patterns: dict[str, list[int]] = {}
    for name in names:
        found = re.search(r"\.(\d+)(?=\.|$)", name)
        key = name if found is None else name[:found.start(1)] + "N" + name[found.end(1):]
        patterns.setdefault(key, []).extend([] if found is None else [int(found.group(1))])
    def ranges(n: list[int]) -> str:
        runs: list[list[int]] = []
        for i in sorted(set(n)):
            if runs and i == runs[-1][1] + 1:
                runs[-1][1] = i
            else:
                runs.append([i, i])
        return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)

    return ", ".join(f"{k} (N {ranges(n)})" if n else k for k, n in patterns.items())


class NoEmbeddingsError(InputError):
    """A command that needs hidden states was given a family that has none (e.g. k-mer)."""


class LanguageModel(ABC):
    """What pipelines may use of a DNA language model; token ids come from its own `tokenize`.

    `has_embeddings` says whether `hidden_states` exists (a k-mer model has none); commands that
    need embeddings check it before any work starts (`require_embeddings`).
    """

    family: ClassVar[str]
    has_embeddings: ClassVar[bool]
    model_id: str

    @abstractmethod
    def tokenize(self, seqs: Sequence[str]) -> torch.Tensor:
        """DNA strings -> token ids (B, L) int64 in this family's vocabulary, L the longest;
        shorter rows are padded on the right (a causal model never reads them from an earlier
        position; pooling takes the true lengths). InputError naming the first bad character."""

    @property
    def layers(self) -> tuple[str, ...]:
        """The names `hidden_states(layer=)` accepts (module names as in the family's released
        checkpoints); empty without embeddings."""
        return ()

    def layer_width(self, layer: str | None = None) -> int:
        """The last dimension of `hidden_states(layer=layer)` (d_model unless the family's
        named module is wider), so that heads on a layer's embeddings are sized before a run."""
        self.check_layer(layer)
        return self.d_model

    def check_layer(self, layer: str | None) -> None:
        """InputError (one line, listing the valid names) when `layer` is not a layer name."""
        if layer is not None and layer not in self.layers:
            raise InputError(f"--layer {layer!r}: {self.model_id} has no such layer (valid: "
                             f"{layer_patterns(self.layers) or 'none'})")

    @property
    @abstractmethod
    def d_model(self) -> int:
        """Width of the hidden states (0 without embeddings)."""

    @property
    @abstractmethod
    def max_seq_len(self) -> int:
        """The longest input the model was built for."""

    @property
    def variant_window(self) -> int:
        """score-variants' default window (before the CPU/GPU cap): the longest input the
        model was built for, unless the family's published variant recipe uses another."""
        return self.max_seq_len

    @property
    def receptive_field(self) -> int | None:
        """How many bases before a position can change the model's prediction there (None:
        unbounded or unknown). Past it, more context changes nothing, so per-base outputs
        computed in overlapping pieces with at least this much overlap equal one pass over the
        whole sequence (pipelines/track.py)."""
        return None

    @property
    def work_per_base(self) -> int:
        """Relative compute per base, so that pipelines size work units by work whatever the
        model (runtime.unit_bases): HyenaDNA's d_model x n_layer; cheap families keep 1."""
        return 1

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """The family's config as plain JSON values (what config.json stores)."""

    @property
    def config_sha256(self) -> str:
        """Hash of the config, written into every output file's metadata."""
        return config_sha256(self.config_dict())

    @abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors `save` writes to model.safetensors (CPU, contiguous)."""

    def hidden_states(self, ids: torch.Tensor, *, layer: str | None = None,
                      chunk_size: int | None = None, dtype: torch.dtype | None = None
                      ) -> torch.Tensor:
        """ids (B, L) -> hidden states (B, L, width) float32 in bounded memory: the final norm's
        output (layer None), or the output of the module named `layer` (one of `layers`; its
        width may differ from d_model); chunk_size: positions per pointwise chunk; dtype:
        compute dtype (None: the model's)."""
        raise NoEmbeddingsError(f"{self.model_id}: the {self.family} family has no embeddings")

    @abstractmethod
    def log_likelihoods(self, ids: torch.Tensor, *, with_hidden: bool = False,
                        chunk_size: int | None = None, dtype: torch.dtype | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log p(x_t | x_<t) for t = 1..L-1 as (B, L-1), hidden states (B, L, d) when
        with_hidden else None); options as for `hidden_states`. No autograd."""

    def log_likelihoods_shared(self, ids: torch.Tensor, parent: torch.Tensor,
                               start: torch.Tensor, *, pooled: bool = False,
                               chunk_size: int | None = None, dtype: torch.dtype | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`log_likelihoods` of windows some of which repeat the start of another (a variant's
        ALT window and its REF window), computing only what differs where the family can.

        ids (N, L): windows of one length. parent (N,) int: -1 for a row computed in full, else
        the index of a row whose own parent is -1 (its REF window); start (N,) int: for a row
        with a parent, a position at or before the first where it differs from that parent
        (ids[i, :start[i]] == ids[parent[i], :start[i]]; the first differing position itself
        for the most savings; 0 shares nothing). Other arguments as for `log_likelihoods`.
        Returns (log p(x_t | x_<t) for t = 1..L-1 as (N, L-1), and with `pooled` the mean of
        the final hidden states over each row's L positions as (N, d) float64, else None),
        equal to `log_likelihoods(ids)` and `pool(hidden, "mean")` within float rounding and
        independent of which other rows are in the call. ValueError when the arguments break
        this contract (a parent with a parent, a row differing from its parent before start).

        Why: for a causal model the activations of every layer at positions before `start` are
        the parent's, so a family computes a shared row from `start` on only, taking what it
        reads of the prefix from its parent's pass in the same call. HyenaDNA does (per
        layer: the parent's residual stream before start, the long convolution by linearity,
        parent's output + filter * (row - parent), the difference zero before start); a
        k-mer model reads `order` bases back; Evo 2 would keep the prefix's attention keys
        and values and carry its filters' state. This default computes every row in full,
        as any model whose output is not causal must."""
        Suffixes.plan(ids, parent, start, 1)
        loglik, hidden = self.log_likelihoods(ids, with_hidden=pooled, chunk_size=chunk_size,
                                              dtype=dtype)
        return loglik, None if hidden is None else pool(hidden.double(), "mean")

    @abstractmethod
    def base_log_probs(self, ids: torch.Tensor, *, chunk_size: int | None = None,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
        """The next-base distribution at every predicted position: log p(x_t = b | x_<t) for
        t = 1..L-1 and b in A, C, G, T (TRACK_BASES), as (B, L-1, 4); the entries of the
        model's full next-token distribution (mass on N or special tokens is not renormalized
        away), so column `ids[:, t]` of it is `log_likelihoods` at t. Per-base tracks and site
        scores read it; options as for `hidden_states`. No autograd."""

    def freeze(self, blocks: int) -> None:
        """Fine-tuning: stop gradients to the input embedding and the first `blocks` blocks
        (InputError for families that cannot be fine-tuned, or too many blocks)."""
        raise InputError(f"{self.model_id}: the {self.family} family cannot be fine-tuned")

    def checkpoint_activations(self) -> None:
        """Training: recompute each block's activations in the backward pass instead of storing
        them (InputError for families that cannot be trained)."""
        raise InputError(f"{self.model_id}: the {self.family} family cannot be trained")

    def require_embeddings(self, command: str) -> None:
        """A one-line NoEmbeddingsError when this family has no hidden states."""
        if not self.has_embeddings:
            raise NoEmbeddingsError(
                f"{command} needs embeddings (hidden states), which the {self.family} model "
                f"{self.model_id} does not have; use a neural model (e.g. the bundled HyenaDNA)")

    def save(self, directory: str | Path, *, card: str | None = None,
             extra: dict[str, Any] | None = None) -> None:
        """Write config.json (naming the family) + model.safetensors (+ MODEL_CARD.md when
        `card` is given); `extra`: further top-level config.json entries. Floating tensors held
        in bfloat16/float16 (a model trained in mixed precision) are written as float32, so a
        saved folder never depends on the dtype its model last ran in."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.float() if v.is_floating_point() and v.element_size() < 4 else v
                   for k, v in self.state_tensors().items()}
        save_file(tensors, str(directory / "model.safetensors"))
        meta = {"format": folder_format(self.family), "format_version": FORMAT_VERSION,
                "family": self.family, "config": self.config_dict(),
                "config_sha256": self.config_sha256, **(extra or {})}
        (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        if card is not None:
            (directory / "MODEL_CARD.md").write_text(card)


# A family's loader of genomeconv folders: (config values, tensors, the model folder, model id,
# device, dtype).
Loader = Callable[[dict[str, Any], dict[str, torch.Tensor], Path, str, Any, Any], LanguageModel]


@dataclass(frozen=True)
class Layout:
    """A checkpoint layout a family reads besides genomeconv's folders (a public release's).
    `detect(folder)` says whether a folder holds it; `load(folder, model_id, device, dtype)`
    reads it; `describe` names its files for messages."""

    describe: str
    detect: Callable[[Path], bool]
    load: Callable[[Path, str, Any, Any], LanguageModel]


@dataclass(frozen=True)
class Family:
    """A model family: its name (config.json's "family"), the loader of its genomeconv folders,
    the release layouts it reads, and the hub ids it knows with the files to download for each
    (other hub ids download the files of every layout's generic pattern, see checkpoints)."""

    name: str
    load_saved: Loader
    layouts: tuple[Layout, ...] = ()
    hub_files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> None:
    """Make folders whose config.json names `family.name` (and its layouts and hub ids) load
    through it; called once by each family's module when it is imported."""
    FAMILIES[family.name] = family


def family_loader(family: Any, path: Path) -> Loader:
    """The loader of a saved folder's family (InputError naming the known ones)."""
    if not isinstance(family, str) or family not in FAMILIES:
        raise InputError(f"unknown model family {family!r} (known: {', '.join(sorted(FAMILIES))})",
                         path=path)
    return FAMILIES[family].load_saved
