"""Where derived copies of datasets live (an extracted corpus, uint8 arrays of a slow-to-parse file).

The cache is `$CODISTILL_CACHE`, else `$XDG_CACHE_HOME/codistill`, else `~/.cache/codistill`. Files are written
atomically, so ranks that build the same cache entry at once never read a torn file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def cache_dir() -> Path:
    if "CODISTILL_CACHE" in os.environ:
        return Path(os.environ["CODISTILL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "codistill"


def atomic_write(path: Path, write: Callable[[object], None]) -> None:
    """Call `write(binary_file)` on a temp file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
