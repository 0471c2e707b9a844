"""Models fitted on a run's own reference: `--model kmer:K` (the order-K Markov baseline).

The driver fits the model once on the FASTA (both strands, every record) and saves it as a
genomeconv folder in the cache (io/cache.py: one entry per FASTA version and order, reused by
later runs); workers load that small folder instead of refitting, and the run manifest hashes its
weight files like any other model's. Outputs report the model as "kmer:K".
"""

from __future__ import annotations

from pathlib import Path

from genomeconv.io import cache


def fit_kmer(fasta: str | Path, order: int, directory: str | Path) -> None:
    """Fit an order-`order` k-mer model on every record of `fasta` and save it to `directory`
    (what `genomeconv pretrain --family kmer` writes)."""
    from genomeconv.io.fasta import FastaFile, readable_fasta
    from genomeconv.models.families.kmer import KmerModel

    with FastaFile(readable_fasta(fasta)) as fa:
        names, sizes = fa.references, fa.lengths
        source = {"fasta": Path(fasta).name, "records": len(names), "bases": int(sum(sizes))}
        model = KmerModel.fit((fa.fetch(name) for name in names), order, source=source)
    card = (f"# Order-{order} k-mer (Markov) model\n\nCounts of {order + 1}-mers and shorter on "
            f"both strands of {source['fasta']} ({source['records']} records, "
            f"{source['bases']:,} bases), pseudocount {model.pseudocount:g}.\n")
    model.save(directory, card=card)


def resolve_model(model: str | None, fasta: str | Path) -> tuple[str | None, str | None]:
    """(the model folder or id to load, the model id outputs report): a `kmer:K` spec becomes
    the cached folder of that model fitted on `fasta` and the id "kmer:K"; anything else is
    returned as it is, with no id of its own."""
    from genomeconv.models.families.kmer import parse_spec

    order = parse_spec(model)
    if order is None:
        return model, None
    folder = cache.derived(fasta, f"kmer{order}", lambda d: fit_kmer(fasta, order, d),
                           describe=f"order-{order} k-mer model")
    return str(folder), f"kmer:{order}"
