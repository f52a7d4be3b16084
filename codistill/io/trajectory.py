"""What fixes a run's trajectory, recorded in every training checkpoint; a resume that changes it is refused.

A resume continues bit for bit only if the data stream, the schedule and the model are those the checkpoint was
written with. The stream is a pure function of (seed, group, step) and the data options, the exchange schedule of
the burn-in and K, the state's layout of the model and topology.vectorize. A resume that changes one of them stops
with one line naming the key and both values, unless trainer.resume_allow_changes names the key. The burn-in is
recorded resolved (its default is 10% of trainer.max_steps; the trainer writes the resolved value into the config it
saves): a resume that raises trainer.max_steps keeps it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from codistill.errors import ConfigError

BURN_IN = "distill.burn_in_steps"
# Keys no allowance can change: their state does not load into the other layout.
FIXED = {"topology.vectorize": "the optimizer state of stacked groups does not load into per-group optimizers "
                               "(or back)"}
KEYS = ("seed", "trainer.batch_size", BURN_IN, "distill.exchange_every", "distill.mode", "topology.vectorize",
        "data.partition", "data.train", "data.train_examples", "data.label_noise", "data.exclude_classes",
        "data.validation_examples", "data.jitter", "data.collate_fn", "model", "model_per_group")


def _get(config: Mapping[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def record(config: Mapping[str, Any]) -> dict[str, str]:
    """The trajectory-fixing values of a config (a plain dict, its burn-in resolved), each as canonical JSON."""
    return {key: json.dumps(_get(config, key), sort_keys=True, default=str) for key in KEYS}


def written(path: Path, manifest_name: str) -> Optional[dict[str, str]]:
    """The trajectory a checkpoint directory's manifest recorded (None: written before trajectories were)."""
    return json.loads((path / manifest_name).read_text()).get("trajectory")


def adopt_burn_in(distill: Any, recorded: Optional[Mapping[str, str]]) -> None:
    """A resume with the default burn-in (null) keeps the checkpoint's resolved one, whatever trainer.max_steps is."""
    if recorded and BURN_IN in recorded and distill.burn_in_steps is None:
        distill.burn_in_steps = int(json.loads(recorded[BURN_IN]))


def check(config: Mapping[str, Any], allowed_changes: Sequence[str], recorded: Optional[Mapping[str, str]],
          path: Any) -> None:
    """Raise a one-line ConfigError if `config` (resolved, a plain dict) changes a recorded value that
    `allowed_changes` (trainer.resume_allow_changes) does not name."""
    if not recorded:  # a checkpoint from before trajectories were recorded
        return
    now = record(config)
    allowed = set(allowed_changes)
    unknown = sorted(allowed - set(KEYS))
    if unknown:
        raise ConfigError(f"trainer.resume_allow_changes names {unknown[0]}, which no checkpoint records: choose "
                          f"from {', '.join(KEYS)}")
    for key in KEYS:
        if key in recorded and recorded[key] != now[key] and (key in FIXED or key not in allowed):
            why = (f"it cannot change on resume: {FIXED[key]}" if key in FIXED else
                   f"resume with the same value, or allow the change with trainer.resume_allow_changes=[{key}]")
            was = "by another model, " if key.startswith("model") else ""
            raise ConfigError(f"resume checkpoint {path} was written {was}with {key}={_short(recorded[key])}, this run "
                              f"has {key}={_short(now[key])}: {why}")


def _short(value: str, limit: int = 160) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."
