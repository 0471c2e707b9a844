"""genomeconv.pipelines."""
