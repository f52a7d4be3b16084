"""Write Fashion-MNIST as an image folder: OUT_DIR/{train,test}/<label>/<index>.pgm.

    python -m fmnist_resnet.write_images OUT_DIR                  # all 60k + 10k images (~20 s)
    python -m fmnist_resnet.write_images OUT_DIR --per-class 20   # the first 20 of each class per split

It stands in for a user's own image files; the source is codistill's Fashion-MNIST loader (Debian's
dataset-fashion-mnist), so nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import torch

from codistill.components.data import fashion_mnist
from fmnist_resnet.pgm import write_pgm


def write_split(images: torch.Tensor, labels: torch.Tensor, out: Path, per_class: Optional[int]) -> int:
    """Write uint8 `images` [N, 1, H, W] to out/<label>/, at most `per_class` a label (None: all); return how many."""
    written: dict[int, int] = {}
    for index, (image, label) in enumerate(zip(images.numpy(), labels.tolist())):
        if per_class is not None and written.get(label, 0) >= per_class:
            continue
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        write_pgm(folder / f"{index:05d}.pgm", image[0])
        written[label] = written.get(label, 0) + 1
    return sum(written.values())


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--per-class", type=int, default=None, help="images per class and split (default: all)")
    parser.add_argument("--root", default=None, help="directory of the Fashion-MNIST IDX files (default: Debian's)")
    args = parser.parse_args(argv)
    if args.per_class is not None and args.per_class < 1:
        parser.error(f"--per-class {args.per_class} must be >= 1")
    splits = fashion_mnist.load(args.root)
    for name, images, labels in (("train", splits.train_x, splits.train_y), ("test", splits.test_x, splits.test_y)):
        count = write_split(images, labels, args.out_dir / name, args.per_class)
        print(f"{count} images in {args.out_dir / name}")


if __name__ == "__main__":
    main()
