"""DNA language models: HyenaDNA, its tokenizer, checkpoints and bounded-memory inference."""

from genomeconv.models.hyena import HyenaConfig, HyenaDNA
from genomeconv.models.checkpoints import load, save
from genomeconv.models.tokenizer import VOCAB, tokenize

__all__ = ["HyenaConfig", "HyenaDNA", "VOCAB", "load", "save", "tokenize"]
