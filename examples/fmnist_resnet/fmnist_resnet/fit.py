"""Train the ResNet from Python with codistill.fit: the model and datasets are objects, not config entries.

    python -m fmnist_resnet.fit IMAGES_DIR [key=value ...]    # any codistill override, e.g. trainer.max_steps=300

The same run as `python -m codistill.train --config-dir conf model=resnet data=fmnist_images ...`, without YAML.
"""

from __future__ import annotations

import functools
import sys

import codistill
from fmnist_resnet.data import ImageFolder
from fmnist_resnet.models import ResNet


def main(argv: list[str]) -> None:
    if not argv or "=" in argv[0]:
        sys.exit("usage: python -m fmnist_resnet.fit IMAGES_DIR [key=value ...]")
    root, overrides = argv[0], argv[1:]
    result = codistill.fit(
        overrides,
        model=functools.partial(ResNet, in_channels=1, num_classes=10, widths=(16, 32, 64)),  # one call per group
        train_data=ImageFolder(root, "train", augment=True),
        eval_data=ImageFolder(root, "test"),
    )
    print("per-group accuracy:", [round(g["eval/acc"], 4) for g in result["per_group"]])
    print("ensemble accuracy:", round(result["run"]["ensemble/acc"], 4))


if __name__ == "__main__":
    main(sys.argv[1:])
