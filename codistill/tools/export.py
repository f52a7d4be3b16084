"""`codistill-export CKPT OUT_DIR`: one group's model for deployment, with no trace of training.

Writes OUT_DIR/model.pt, a plain dictionary (state_dict, the model config, and the input it expects), loadable with
`torch.load(..., weights_only=True)` and rebuilt by `load_model`; and OUT_DIR/model.pt2, a `torch.export` program
with a dynamic batch dimension (`torch.export.load(path).module()`), where the model can be exported. Neither holds
an optimizer, teacher copies, peers or the run's config beyond the model's own.

Inputs are what the model saw in training: what the run's held-out dataset yields (for the built-in image datasets,
pixels scaled to [0, 1], then standardised with the dataset's mean and std). model.pt records their shape and dtype.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from codistill.components import cohort, instantiate
from codistill.io.checkpoint import atomic_save
from codistill.tools.checkpoints import CheckpointError, held_out, read, rebuild

log = logging.getLogger("codistill")


def export(ckpt_path: Path, out_dir: Path, data_root: Optional[str] = None) -> dict[str, Path]:
    """Write model.pt (always) and model.pt2 (when torch.export can trace the model); return what was written."""
    ckpt = read(ckpt_path)
    model = rebuild(ckpt)
    example, _ = next(held_out(ckpt["config"]["data"], data_root).batches(2, 2))
    written = {}
    plain = {
        "state_dict": model.state_dict(),
        "model_config": cohort.Cohort.from_record(ckpt["config"]).models()[int(ckpt["group"])],
        "input_shape": list(example.shape[1:]) if isinstance(example, torch.Tensor) else None,
        "input_dtype": str(example.dtype).removeprefix("torch.") if isinstance(example, torch.Tensor) else None,
        "trained_steps": int(ckpt["step"]),
        "group": int(ckpt["group"]),
    }
    plain["model_config"] = OmegaConf.to_container(plain["model_config"], resolve=True)
    written["model"] = out_dir / "model.pt"
    atomic_save(plain, written["model"])
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        written["program"] = out_dir / "model.pt2"
        torch.export.save(program, written["program"])
    except Exception as e:  # some models cannot be traced; the plain model is still usable
        log.warning("torch.export failed, model.pt2 not written: %s: %s", type(e).__name__, e)
    return written


def load_model(path: Path) -> nn.Module:
    """Rebuild the plain nn.Module from an exported model.pt, in eval mode (its class must be importable)."""
    plain = torch.load(path, map_location="cpu", weights_only=True)
    model = instantiate.build(plain["model_config"], "model")
    model.load_state_dict(plain["state_dict"], strict=True)
    return model.eval()


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="codistill-export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="one group's final.pt")
    parser.add_argument("out_dir", type=Path, help="directory for model.pt and model.pt2")
    parser.add_argument("--data-root", default=None, help="the dataset's directory, if not where the run found it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="codistill-export: %(message)s")
    try:
        written = export(args.checkpoint, args.out_dir, args.data_root)
    except (CheckpointError, FileNotFoundError) as e:
        parser.exit(2, f"codistill-export: error: {e}\n")
    for path in written.values():
        print(path)


if __name__ == "__main__":
    sys.exit(main())
