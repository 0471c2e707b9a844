"""Evo 2 (StripedHyena 2; Arc Institute, 2025): the configuration (config.py, with the published
configs in configs/), byte tokens (tokenizer.py), modules (layers.py, model.py), bounded-memory
inference with carried per-block state (inference.py), its peak-memory formula (memory.py) and
the checkpoint layouts (layouts.py);
registered as the "evo2" family, with the hub ids of the published checkpoints."""

from genomeconv.models.base import Family, Layout, register
from genomeconv.models.families.evo2 import layouts
from genomeconv.models.families.evo2.config import Evo2Config
from genomeconv.models.families.evo2.model import Evo2

__all__ = ["Evo2", "Evo2Config"]

register(Family("evo2", layouts.load_saved, layouts=(
    Layout("config.yml + NAME.pt or NAME.pt.part0, part1, ... (Evo 2 release; the published "
           "names need no config.yml)", layouts.is_release, layouts.load_release),),
    hub_files=layouts.HUB_FILES))
