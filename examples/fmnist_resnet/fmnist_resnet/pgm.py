"""Binary PGM ("P5") files, 8-bit grey: an image format numpy reads and writes without an imaging library."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_pgm(path: Path, image: np.ndarray) -> None:
    """Write a 2-D uint8 array as a P5 file."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"a PGM image is a 2-D uint8 array, not {image.dtype} of shape {image.shape}")
    height, width = image.shape
    path.write_bytes(b"P5\n%d %d\n255\n" % (width, height) + image.tobytes())


def read_pgm(path: Path) -> np.ndarray:
    """Read an 8-bit P5 file (header: magic, width, height, maxval, whitespace-separated; no comments)."""
    data = path.read_bytes()
    parts = data.split(maxsplit=4)
    if len(parts) < 5 or parts[0] != b"P5" or int(parts[3]) > 255:
        raise ValueError(f"{path} is not an 8-bit binary PGM (P5) file")
    width, height = int(parts[1]), int(parts[2])
    pixels = np.frombuffer(data, dtype=np.uint8, count=width * height, offset=len(data) - width * height)
    return pixels.reshape(height, width)
