"""Figures of genomeconv outputs (`genomeconv plot`): tracks, mutagenesis heat maps, variant-score
distributions and ROC curves, embedding PCAs and training curves.

Each module reads one kind of output read-only (the Parquet views of `genomeconv query`, or a
training run's summary.json) and returns a matplotlib `Figure` built without pyplot, so nothing
depends on a display or a global backend; `figures.save` writes it as PNG, SVG or PDF by the output
file's extension. Tests inspect the returned figure's artists (their data arrays), never pixels.
Coordinates are shown 1-based, as genome browsers show them; the files keep their own conventions
(track positions 0-based, variant POS 1-based).
"""
