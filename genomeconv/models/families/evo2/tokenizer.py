"""Evo 2's byte-level tokens: a character's ASCII code is its id (A 65, C 67, G 71, T 84, N 78),
no BOS, vocabulary 512 (ids above 255 are never produced).

The official tokenizer (vortex's CharLevelTokenizer) passes every byte through. genomeconv
upper-cases letters first: soft-masking (lowercase repeats) is an annotation of the bases, not
other symbols, and `base_log_probs` scores the A, C, G, T columns (65, 67, 71, 84), which a
lowercase base would not be. N and the IUPAC codes keep their own (uppercase) byte, as the
official tokenizer gives them. Anything but an ASCII letter (digits, gaps, spaces, non-ASCII) is
refused, naming the first one: DNA inputs have none, and a stray byte would be scored as a token.
Rows are right-padded with id 1 (the evo2 package's pad id), which a causal model never reads
from an earlier position.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from genomeconv.errors import InputError

PAD_ID = 1
BASE_IDS = {b: ord(b) for b in "ACGT"}


def tokenize_rows(seqs: Sequence[str]) -> torch.LongTensor:
    """DNA strings -> (B, longest) int64 byte ids, upper-cased, right-padded with PAD_ID; one
    vectorized pass over the joined strings."""
    joined = "".join(seqs)
    try:
        codes = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError as exc:
        raise InputError(f"invalid character {joined[exc.start]!r} at position "
                         f"{_in_row(seqs, exc.start)} (Evo 2 reads DNA letters)") from None
    upper = codes & 0xDF  # ASCII letters: clear the lowercase bit
    bad = np.flatnonzero((upper < ord("A")) | (upper > ord("Z")))
    if bad.size:
        pos = int(bad[0])
        raise InputError(f"invalid character {chr(codes[pos])!r} at position "
                         f"{_in_row(seqs, pos)} (Evo 2 reads DNA letters)")
    lengths = torch.tensor([len(s) for s in seqs])
    valid = torch.arange(int(lengths.max()) if len(seqs) else 0)[None, :] < lengths[:, None]
    ids = torch.full(valid.shape, PAD_ID, dtype=torch.long)
    ids[valid] = torch.from_numpy(upper.astype(np.int64))
    return ids


def _in_row(seqs: Sequence[str], pos: int) -> str:
    """Position `pos` of the joined strings as "i of sequence r" (0-based)."""
    for row, s in enumerate(seqs):
        if pos < len(s):
            return f"{pos} of sequence {row}" if len(seqs) > 1 else str(pos)
        pos -= len(s)
    return str(pos)
