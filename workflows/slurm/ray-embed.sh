#!/bin/bash
#SBATCH --job-name=genomeconv-embed
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --gpus-per-node=1
#SBATCH --mem=64G
#SBATCH --time=04:00:00
#SBATCH --exclusive
#SBATCH --output=genomeconv-embed-%j.log
#
# A Ray cluster across the allocated nodes (head on the first, one worker per other node), then
# `genomeconv embed` with one model actor per GPU. Submit with:
#   sbatch workflows/slurm/ray-embed.sh /shared/genome.fa /shared/genes.gtf /shared/embeddings_out
# Needs genomeconv installed in $GENOMECONV_VENV (default ./.venv) on a filesystem every node sees.
#
# Security: Ray's servers listen on the nodes' cluster addresses only (the dashboard on 127.0.0.1);
# token authentication is on with a token made for this job (RAY_AUTH_TOKEN, passed to every srun
# step through the environment); every node uses a per-job temp dir, so other users' Ray instances
# on the same nodes are untouched. The script stops only the Ray processes it started.
set -euo pipefail

INPUT=${1:?usage: sbatch ray-embed.sh GENOME.fa GENES.gtf OUT_DIR}
GTF=${2:?usage: sbatch ray-embed.sh GENOME.fa GENES.gtf OUT_DIR}
OUT=${3:?usage: sbatch ray-embed.sh GENOME.fa GENES.gtf OUT_DIR}
VENV=${GENOMECONV_VENV:-.venv}
# shellcheck disable=SC1091
source "$VENV/bin/activate"

mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD=${NODES[0]}
HEAD_IP=$(srun --nodes=1 --ntasks=1 -w "$HEAD" hostname --ip-address | awk '{print $1}')
PORT=$((6379 + SLURM_JOB_ID % 1000))
GPUS=${SLURM_GPUS_ON_NODE:-1}
TMP=/tmp/ray_${SLURM_JOB_ID}
export RAY_AUTH_MODE=token
RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(16))')
export RAY_AUTH_TOKEN RAY_USAGE_STATS_ENABLED=0

STEPS=()
cleanup() {
    # Ending the srun steps signals their `ray start --block`, which stops its own Ray processes.
    for pid in "${STEPS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait || true
}
trap cleanup EXIT

srun --nodes=1 --ntasks=1 -w "$HEAD" \
    ray start --head --block --node-ip-address="$HEAD_IP" --port="$PORT" \
    --dashboard-host=127.0.0.1 --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="$GPUS" \
    --temp-dir="$TMP" &
STEPS+=($!)
sleep 20

for node in "${NODES[@]:1}"; do
    srun --nodes=1 --ntasks=1 -w "$node" \
        ray start --block --address="$HEAD_IP:$PORT" \
        --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="$GPUS" --temp-dir="$TMP" &
    STEPS+=($!)
done

python - "$HEAD_IP:$PORT" "${#NODES[@]}" <<'EOF'
import sys, time
import ray
ray.init(address=sys.argv[1])
deadline = time.time() + 300
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]):
    if time.time() > deadline:
        sys.exit("Ray workers did not join within 300 s")
    time.sleep(5)
print("ray cluster:", ray.cluster_resources())
EOF

WORKERS=$(( ${#NODES[@]} * GPUS ))
genomeconv embed "$INPUT" --gtf "$GTF" --out "$OUT" --address "$HEAD_IP:$PORT" \
    --num-workers "$WORKERS" --gpus-per-worker 1 --dtype bfloat16
