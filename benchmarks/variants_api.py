"""`score_variants` of whichever checkout a benchmark process imports (BENCH_TREE: the tree
before or after issue 27's options objects), for bench_variants.py and bench_saturate.py.

They import it as `variants_api`, from their own folder (Python puts a script's folder first on
sys.path), not as `benchmarks.variants_api`: that would resolve in BENCH_TREE, and a tree from
before this module has none.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any


def score_variants(variants: Any, fasta: str | Path, out: str | Path, **options: Any) -> Any:
    """score_variants of the checkout under test, one worker, overwriting: through one
    VariantOptions where it takes one, else its keyword API."""
    from genomeconv.pipelines import variants as pipeline

    if next(iter(inspect.signature(pipeline.score_variants).parameters)) == "variants":
        return pipeline.score_variants(variants, fasta, out, num_workers=1, overwrite=True,
                                       **options)
    from genomeconv.pipelines.options import VariantOptions

    return pipeline.score_variants(VariantOptions(variants=variants, fasta=Path(fasta),
                                                  out=Path(out), num_workers=1, overwrite=True,
                                                  **options))
