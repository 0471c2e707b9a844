"""Figures of genomeconv outputs (`genomeconv plot`): tracks, mutagenesis heat maps, variant-score
distributions and ROC curves, embedding PCAs and training curves.

Contract: each module reads one kind of output read-only (the Parquet views of `genomeconv query`,
through inputs.py, or a training run's summary.json / history.jsonl) and returns a matplotlib
`Figure` built without pyplot, so nothing depends on a display or a global backend; `figures.save`
writes it as PNG, SVG or PDF by the output file's extension, never inside an output folder. The
artists that draw data carry a gid naming what they show, so tests inspect the returned figure's
data arrays, never pixels. A missing column, an empty region or a mixed input is an `InputError`
naming it. Coordinates are shown 1-based, as genome browsers show them; the files keep their own
conventions (track positions 0-based, variant POS 1-based).
"""
