"""DNA language models behind one interface (models/base.py): the families (models/families/:
HyenaDNA, the k-mer baseline), loading (checkpoints.py), bounded-memory inference and pooling."""

from genomeconv.models.base import POOLINGS, LanguageModel, NoEmbeddingsError, pool
from genomeconv.models.checkpoints import load, save
from genomeconv.models.families.hyena import HyenaConfig, HyenaDNA
from genomeconv.models.families.kmer import KmerModel

__all__ = ["HyenaConfig", "HyenaDNA", "KmerModel", "LanguageModel", "NoEmbeddingsError",
           "POOLINGS", "load", "pool", "save"]
