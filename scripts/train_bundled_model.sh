#!/usr/bin/env bash
# Train the bundled default model (genomeconv/models/bundled/) with `genomeconv pretrain` on the
# public genomes in ../shared/data: phage lambda (NC_001416.1) + Klebsiella pneumoniae MGH 78578
# (CP000647.1-CP000652.1). The last 2% of every record is held out for validation perplexity and
# compared with order-0..10 Markov baselines fitted on the same training bases.
# Usage: scripts/train_bundled_model.sh [DATA_DIR] [WORK_DIR]   (about 45 min on 2 CPU cores)
set -euo pipefail
DATA=${1:-/work/shared/data}
WORK=${2:-/tmp/gc_bundled}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORK"
# FastaFile needs random access: concatenate the records into one plain FASTA.
{ cat "$DATA/lambda_virus.fa"; gzip -dc "$DATA/klebsiella_pneumoniae_MGH78578.fna.gz"; } > "$WORK/genome.fa"
rm -f "$WORK/genome.fa.fai"
export DS_ACCELERATOR=cpu
# One thread per process: on a shared 2-core machine, 2 OpenMP threads ran 5x slower (spin waits).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# The shipped weights came from three resumed stages (720, 2,900, then 6,500 steps): each stage
# extends the cosine learning-rate schedule to its new end, so one 6,500-step run would follow a
# slightly different curve. Stage i: STEPS:EVAL_EVERY:SAVE_EVERY.
for stage in 720:120:120 2900:725:145 6500:1625:325; do
  IFS=: read -r steps eval_every save_every <<<"$stage"
  genomeconv pretrain "$WORK/genome.fa" --out "$WORK/run" \
      --d-model 64 --n-layer 2 --seq-len 1024 --warmup-lengths 256,512 --warmup-steps 25 \
      --steps "$steps" --batch-size 4 --lr 4e-3 --val-fraction 0.02 --val-windows 32 \
      --eval-every "$eval_every" --save-every "$save_every" --kmer-baseline 10 --seed 0 \
      --deepspeed-config zero0_fp32 --resume
done
DEST="$REPO/genomeconv/models/bundled"
mkdir -p "$DEST"
cp "$WORK/run/model/config.json" "$WORK/run/model/model.safetensors" "$DEST/"
{ cat "$WORK/run/model/MODEL_CARD.md"; cat <<'CARD'
## Data provenance

- `lambda_virus.fa`: Enterobacteria phage lambda, complete genome (NC_001416.1), 48,502 bp, from
  the Debian package `bowtie2-examples` (GPL-3+ packaging of public NCBI data).
- `klebsiella_pneumoniae_MGH78578.fna.gz`: Klebsiella pneumoniae subsp. pneumoniae MGH 78578,
  chromosome CP000647.1 and plasmids CP000648.1-CP000652.1 (5.69 Mbp), from the Debian package
  `kleborate-examples` (public NCBI GenBank assemblies).
- Held out: the last 2% of every record (never sampled for training); validation windows are
  non-overlapping 1024-bp tiles of it, each scored on both strands, by the model and by the
  Markov baselines alike.

Reproduce: `scripts/train_bundled_model.sh` (this is a small demo model for offline use, not a
replacement for the public HyenaDNA checkpoints).
CARD
} > "$DEST/MODEL_CARD.md"
cp "$WORK/run/summary.json" "$DEST/training_summary.json"
chmod 644 "$DEST"/*
echo "bundled model written to $DEST"
