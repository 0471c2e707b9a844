"""HyenaDNA (Nguyen et al., 2023): the architecture (model.py) and its checkpoint layouts
(layouts.py); registered as the "hyena" family. Bounded-memory inference: models/inference.py."""

from genomeconv.models.base import Family, Layout, register
from genomeconv.models.families.hyena import layouts
from genomeconv.models.families.hyena.model import HyenaConfig, HyenaDNA

__all__ = ["HyenaConfig", "HyenaDNA"]

register(Family("hyena", layouts.load_saved, layouts=(
    Layout("config.json + model.safetensors (HyenaDNA -hf)", layouts.is_hf, layouts.load_hf),
    Layout("config.json + weights.ckpt (HyenaDNA original release)", layouts.is_original,
           layouts.load_original))))
