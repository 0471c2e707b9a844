"""genomeconv.io."""
