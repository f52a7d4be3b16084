#!/usr/bin/env bash
# One node, G x R processes under torchrun (gloo on CPU, nccl on GPUs). Every argument goes to codistill-train.
#
#   NPROC=4 launch/single_node.sh topology.groups=2 trainer.max_steps=2000
#   NPROC=8 launch/single_node.sh experiment=anil_fmnist topology.groups=2      # 2 groups x 4 replicas
#
# NPROC (default: the number of visible GPUs, else 2) must be a multiple of topology.groups.
set -euo pipefail

if [[ -z "${NPROC:-}" ]]; then
    NPROC=$(python -c "import torch; print(torch.cuda.device_count() or 2)")
fi
# One thread per process unless told otherwise: G x R processes share the node's cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

exec torchrun --standalone --nnodes=1 --nproc-per-node="$NPROC" -m codistill.train "$@"
