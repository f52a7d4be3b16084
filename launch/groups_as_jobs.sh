#!/usr/bin/env bash
# Each group as its own torchrun job, exchanging snapshots through a shared directory (the paper's protocol).
# Groups never wait for each other: a slow or dead group only makes its peers' teacher copies staler.
#
#   NUM_GROUPS=2 REPLICAS=2 EXCHANGE_DIR=/shared/exp1/exchange launch/groups_as_jobs.sh experiment=anil_fmnist
#   NUM_GROUPS=2 EXCHANGE_DIR=s3://my-bucket/exp1 launch/groups_as_jobs.sh experiment=anil_fmnist   # object store
#
# Here the G jobs start on this machine in the background; on a cluster, submit one job per group with the same
# command line (one torchrun per group, `topology.group_id=g`) and the same EXCHANGE_DIR: a directory on a shared
# filesystem, or an fsspec URL (s3://, gs://, az://) every group's machines reach, so the groups can live in
# different clusters. Credentials and endpoints come from the filesystem's own configuration (AWS_* variables,
# ~/.aws, gcloud), never from the URL.
# Each group writes its own run directory, RUN_ROOT/group<g>; with logger=wandb their runs share one wandb
# group (logger.group). Extra arguments go to every group's codistill-train.
set -euo pipefail

NUM_GROUPS="${NUM_GROUPS:-2}"
REPLICAS="${REPLICAS:-1}"
RUN_ROOT="${RUN_ROOT:-outputs/groups_as_jobs/$(date +%Y-%m-%d_%H-%M-%S)}"
EXCHANGE_DIR="${EXCHANGE_DIR:-$RUN_ROOT/exchange}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
case "$EXCHANGE_DIR" in
    *://*) ;;  # an object store: nothing to create (the first job writes its run.json)
    *) mkdir -p "$EXCHANGE_DIR" ;;
esac

pids=()
for (( g = 0; g < NUM_GROUPS; g++ )); do
    torchrun --standalone --nnodes=1 --nproc-per-node="$REPLICAS" -m codistill.train \
        topology.groups="$NUM_GROUPS" topology.group_id="$g" \
        distill.exchange=filesystem distill.exchange_dir="$EXCHANGE_DIR" \
        hydra.run.dir="$RUN_ROOT/group$g" logger.group="$(basename "$RUN_ROOT")" "$@" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
done
exit "$status"
