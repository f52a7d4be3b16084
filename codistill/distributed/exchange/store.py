"""Where snapshots live: a local directory or any fsspec URL (s3://, gs://, az://, file://, memory://).

The exchange protocol needs four operations, each available on every store: put a whole object, get a whole object,
list one folder, delete an object. Nothing relies on rename (object stores have none): a version is published by
writing its data first and its manifest last, and a reader only opens versions whose manifest it has listed. A put
is all-or-nothing on an object store (an object appears whole or not at all); on a local disk it is a temp file,
fsync and rename, so a reader never sees half a file either. Listings are always fresh (a client-side listing cache
would hide new versions); a listing that lags behind the writes (eventual consistency) only delays a version, since
nothing is read before its manifest is seen, and the manifest is written after its data.

Credentials and endpoints come from each filesystem's own configuration (environment variables such as
AWS_ACCESS_KEY_ID / AWS_ENDPOINT_URL, ~/.aws, gcloud, fsspec's config files); a URL carrying credentials is
refused, so no secret reaches a log line or a run record.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from codistill.io.checkpoint import atomic_write

T = TypeVar("T")

# protocol -> (package that implements it, the codistill extra that installs it)
PACKAGES = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
            "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure")}


class StoreError(ValueError):
    """The exchange URL cannot be used (one line, naming the fix)."""


def protocol(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def check_url(url: str, key: str = "distill.exchange_dir") -> None:
    """Fail fast (before any process group): credentials in the URL, or the protocol's package missing."""
    parts = urlsplit(url) if "://" in url else None
    if parts is not None and (parts.username or parts.password):
        raise StoreError(f"{key} must not carry credentials: give them through the filesystem's own configuration "
                         "(e.g. AWS_ACCESS_KEY_ID / ~/.aws for s3://), never in the URL")
    proto = protocol(url)
    if proto in PACKAGES:
        package, extra = PACKAGES[proto]
        if importlib.util.find_spec(package) is None:
            raise StoreError(f"{key}={proto}://... needs the {package} package: pip install 'codistill[{extra}]'")
        return
    import fsspec

    try:
        fsspec.get_filesystem_class(proto)
    except ValueError:
        raise StoreError(f"{key}={url!r}: fsspec knows no protocol {proto!r}") from None
    except ImportError as e:
        raise StoreError(f"{key}={proto}://... needs a package fsspec could not import: {e}") from None


def bounded(call: Callable[[], T], timeout_s: float, what: str) -> T:
    """`call()` in a daemon thread, waited for at most `timeout_s` (an unreachable endpoint may retry for minutes)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, name="codistill-exchange-probe", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise TimeoutError(f"{what}: no answer within {timeout_s:g} s (is the endpoint reachable?)")
    if "error" in box:
        raise box["error"]
    return box["value"]


class Store:
    """One exchange root: relative names like "group0/step000000050.json" below a directory or URL prefix."""

    def __init__(self, url: str | Path) -> None:
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        self.url = str(url)
        # a fresh instance: it reads the credentials and endpoint the environment holds now
        self.fs, self.root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = self.root.rstrip("/")

    def __str__(self) -> str:
        return self.url

    def path(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def makedirs(self, name: str = "") -> None:
        if self.local:
            Path(self.path(name)).mkdir(parents=True, exist_ok=True)
        else:
            try:
                self.fs.makedirs(self.path(name), exist_ok=True)
            except FileExistsError:
                pass

    def put(self, name: str, data: bytes) -> None:
        """All-or-nothing: a reader sees the old object, none, or the whole new one."""
        if self.local:
            atomic_write(Path(self.path(name)), data)
        else:
            self.fs.pipe_file(self.path(name), data)

    def get(self, name: str) -> bytes:
        if self.local:
            return Path(self.path(name)).read_bytes()
        return self.fs.cat_file(self.path(name))

    def exists(self, name: str) -> bool:
        if self.local:
            return Path(self.path(name)).exists()
        self.fs.invalidate_cache(self.path(name))
        return self.fs.exists(self.path(name))

    def list(self, folder: str) -> list[str]:
        """Names in `folder` (fresh, not cached); [] when it does not exist."""
        if self.local:
            p = Path(self.path(folder))
            return [c.name for c in p.iterdir()] if p.is_dir() else []
        full = self.path(folder)
        self.fs.invalidate_cache(full)
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(full, detail=False)]
        except FileNotFoundError:
            return []

    def remove(self, name: str) -> None:
        if self.local:
            Path(self.path(name)).unlink(missing_ok=True)
            return
        try:
            self.fs.rm_file(self.path(name))
        except FileNotFoundError:
            pass
