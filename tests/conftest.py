import os

os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

# In-process trainers: one intra-op thread, as the subprocess helpers set OMP_NUM_THREADS=1. The tiny test models
# gain nothing from more threads, and on a small shared machine oversubscription makes them ~10x slower.
torch.set_num_threads(1)
