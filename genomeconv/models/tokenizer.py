"""HyenaDNA's character vocabulary (also the k-mer family's), vectorized through a 256-entry
lookup table.

Ids: [CLS]0 [SEP]1 [BOS]2 [MASK]3 [PAD]4 [RESERVED]5 [UNK]6 A7 C8 G9 T10 N11. Soft-masked
(lowercase) bases are upper-cased first (the original maps lowercase to [UNK]); IUPAC ambiguity
codes (R Y S W K M B D H V) become N; anything else (including U, gaps and spaces) is an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from genomeconv.errors import InputError

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
BASES = "ACGTN"
VOCAB: dict[str, int] = {**{t: i for i, t in enumerate(SPECIAL_TOKENS)},
                         **{b: 7 + i for i, b in enumerate(BASES)}}
PAD_ID = VOCAB["[PAD]"]
IUPAC_AMBIGUOUS = "RYSWKMBDHV"

_INVALID = -1


def _lookup_table() -> np.ndarray:
    table = np.full(256, _INVALID, dtype=np.int64)
    for ch in BASES:
        table[ord(ch)] = table[ord(ch.lower())] = VOCAB[ch]
    for ch in IUPAC_AMBIGUOUS:
        table[ord(ch)] = table[ord(ch.lower())] = VOCAB["N"]
    return table


_TABLE = _lookup_table()


def tokenize(seq: str | bytes) -> torch.LongTensor:
    """DNA string -> LongTensor (L,) of HyenaDNA ids; InputError naming the first bad position."""
    if isinstance(seq, str):
        try:
            seq = seq.encode("ascii")
        except UnicodeEncodeError as exc:
            raise InputError(f"invalid character {seq[exc.start]!r} at position {exc.start} "
                             "(expected A, C, G, T, N or an IUPAC code)") from None
    codes = np.frombuffer(seq, dtype=np.uint8)
    ids = _TABLE[codes]
    bad = np.flatnonzero(ids == _INVALID)
    if bad.size:
        pos = int(bad[0])
        raise InputError(f"invalid character {chr(codes[pos])!r} at position {pos} "
                         "(expected A, C, G, T, N or an IUPAC code)")
    return torch.from_numpy(ids)



def tokenize_rows(seqs: Sequence[str]) -> torch.LongTensor:
    """DNA strings -> (B, longest) ids, shorter rows right-padded with [PAD]; one vectorized
    lookup over the joined strings (a batch of short reads costs one call, not one per read)."""
    lengths = torch.tensor([len(s) for s in seqs])
    valid = torch.arange(int(lengths.max()) if len(seqs) else 0)[None, :] < lengths[:, None]
    ids = torch.full(valid.shape, PAD_ID, dtype=torch.long)
    ids[valid] = tokenize("".join(seqs))  # row-major: the sequences one after the other
    return ids
