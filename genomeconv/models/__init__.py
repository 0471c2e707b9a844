"""DNA language models behind one interface (models/base.py): HyenaDNA, the k-mer baseline,
their tokenizer, checkpoints and HyenaDNA's bounded-memory inference."""

from genomeconv.models.base import POOLINGS, LanguageModel, NoEmbeddingsError, pool
from genomeconv.models.hyena import HyenaConfig, HyenaDNA
from genomeconv.models.kmer import KmerModel
from genomeconv.models.checkpoints import load, save
from genomeconv.models.tokenizer import VOCAB, tokenize

__all__ = ["HyenaConfig", "HyenaDNA", "KmerModel", "LanguageModel", "NoEmbeddingsError",
           "POOLINGS", "VOCAB", "load", "pool", "save", "tokenize"]
