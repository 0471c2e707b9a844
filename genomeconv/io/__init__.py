"""Genomic inputs through pysam and Biopython, as coordinates and sequences: no models, no Ray.

Contract: readers yield coordinates first and sequences on request, so that plans stay small (an
`Interval` or a `ReadRef` is enough to fetch a sequence again in a worker). Intervals are 0-based
half-open, region strings samtools style (1-based, closed), VCF POS 1-based; every conversion
between these and every strand rule (reverse complements, chr1/1 and chrM/MT contig aliases) lives
in regions.py. FASTA (plain, gzip, bgzip), GenBank, EMBL and GFF3+FASTA files are read as indexed
references (fasta.py, seqrecords.py), a derived copy made once in the cache (cache.py) where a file
cannot be indexed as it is; annotations.py reads GTF/GFF3 genes and features and BED intervals,
reads.py BAM/CRAM/unaligned BAM records, variants.py VCF/BCF and tables one row per ALT allele,
saturation.py the SNVs of regions. A bad input raises an error naming the file and, where there is
one, the line or record; sequences come back upper-cased.
"""
