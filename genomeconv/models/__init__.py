"""DNA language models behind one interface: every pipeline holds a `LanguageModel` (base.py) and
names no family.

Contract: a family subclasses `LanguageModel` in its own module under families/ and registers itself
there (`base.register`); `load(model)` (checkpoints.py) resolves a folder, a release layout, a hub
id or the bundled model and dispatches on the family config.json names. A model tokenizes with its
own vocabulary (`tokenize`, right-padded rows), returns hidden states of the final norm or of a
named layer (`layers`, `layer_width`, `check_layer`), next-token log-likelihoods and the next-base
distribution over A, C, G, T in bounded memory without autograd, states the sizes that plan work
(d_model, max_seq_len, receptive_field, work_per_base) and its identity (model_id, config_sha256),
and writes itself with `save` (half-precision tensors as float32). Families that train are
nn.Modules whose `forward(ids, layer=)` returns hidden states with autograd (`freeze`,
`checkpoint_activations`); families without embeddings (the k-mer baseline) say so
(`has_embeddings`) and commands refuse them before any work. `pool` is the one pooling (mean, max,
last over each row's own length). heads.py holds the fine-tuned variant classifier and its files;
inference.py HyenaDNA's bounded-memory forward for megabase inputs; tokenizer.py the shared
character vocabulary; weights.py the file readers.
"""

from genomeconv.models.base import POOLINGS, LanguageModel, NoEmbeddingsError, pool
from genomeconv.models.checkpoints import load, save
from genomeconv.models.families.hyena import HyenaConfig, HyenaDNA
from genomeconv.models.families.kmer import KmerModel

__all__ = ["HyenaConfig", "HyenaDNA", "KmerModel", "LanguageModel", "NoEmbeddingsError",
           "POOLINGS", "load", "pool", "save"]
