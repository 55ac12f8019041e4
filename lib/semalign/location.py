"""Where a store lives: a local directory, or any fsspec URL (`s3://bucket/prefix`, `gs://...`, `memory://...`),
and the few file operations the store needs, each as durable and atomic as that medium allows.

A local path (or `file://` URL) gets POSIX guarantees: writes are fsynced, a file is replaced by renaming a
fsynced temporary over it, a directory removed by renaming it aside first. An object store has no fsync and
no rename, but every put is atomic and durable once it returns, so a replacement is one put. Credentials and
endpoints come from each backend's own configuration (for s3fs: AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ~/.aws;
for gcsfs: GOOGLE_APPLICATION_CREDENTIALS), never from params.yaml.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import fsspec
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.storage import FsspecStore, LocalStore

from semalign.errors import SemalignError


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Location:
    """The directory `root` on file system `fs`; `url` is how the user named it (used in messages)."""

    fs: fsspec.AbstractFileSystem
    root: str
    url: str

    @classmethod
    def of(cls, where: str | Path) -> Location:
        """The location of a local path or an fsspec URL; an unknown protocol or missing backend raises."""
        url = str(where)
        try:
            fs, root = fsspec.core.url_to_fs(url)
        except (ValueError, ImportError) as err:
            raise SemalignError(
                f"cannot open store location {url!r} ({err}); install the fsspec backend of its "
                "protocol (s3fs for s3://, gcsfs for gs://) or use a local path"
            ) from err
        return cls(fs, root.rstrip("/"), url)

    def __str__(self) -> str:
        return self.url

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def child(self, name: str) -> str:
        """The full path (on `fs`) of `name` under the root."""
        return f"{self.root}/{name}"

    def refresh(self) -> None:
        """Forget cached listings, so files other processes wrote since are seen (object stores cache
        them)."""
        self.fs.invalidate_cache()

    def exists(self, name: str = "") -> bool:
        return self.fs.exists(self.child(name) if name else self.root)

    def entries(self) -> list[str]:
        """Names directly under the root (none when it does not exist)."""
        self.refresh()
        if not self.fs.exists(self.root):
            return []
        return [path.rstrip("/").rsplit("/", 1)[-1] for path in self.fs.ls(self.root, detail=False)]

    def read_text(self, name: str) -> str:
        return self.fs.cat_file(self.child(name)).decode("utf-8")

    def glob(self, pattern: str) -> list[str]:
        """Names under the root matching `pattern` (e.g. "progress*.jsonl"), sorted."""
        self.refresh()
        return sorted(path.rsplit("/", 1)[-1] for path in self.fs.glob(self.child(pattern)))

    def write_atomic(self, name: str, text: str) -> None:
        """Replace `name` by `text` so that a crash leaves either the old or the new content, durably."""
        path = self.child(name)
        if not self.is_local:
            self.fs.pipe_file(path, text.encode("utf-8"))
            return
        tmp = path + ".tmp"
        Path(tmp).write_text(text, encoding="utf-8")
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(self.root)

    def remove(self, name: str) -> None:
        """Remove file `name` if it exists."""
        if self.fs.exists(self.child(name)):
            self.fs.rm_file(self.child(name))

    def make_durable(self, name: str) -> None:
        """Make the file `name` (written by zarr) and its directory entry survive a crash (a no-op on object
        stores, where a finished put already has)."""
        if self.is_local:
            path = self.child(name)
            _fsync(path)
            _fsync(os.path.dirname(path))

    def remove_tree(self, keep_last: str) -> None:
        """Remove the root and everything under it. Locally it is renamed aside first, so a crash leaves
        nothing half-deleted at the root; on an object store `keep_last` is deleted after everything else,
        so a crash leaves it to say what the remains are."""
        if self.is_local:
            stale = self.root + ".stale"
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(self.root, stale)
            shutil.rmtree(stale)
            return
        self.refresh()
        last = self.child(keep_last)
        others = [path for path in self.fs.find(self.root) if path != last]
        if others:
            self.fs.rm(others)
        self.remove(keep_last)
        self.refresh()

    def size(self) -> tuple[int, int]:
        """(bytes, files) under the root."""
        self.refresh()
        sizes = self.fs.find(self.root, detail=True).values()
        return sum(int(entry["size"]) for entry in sizes), len(sizes)

    def zarr_store(self, read_only: bool) -> zarr.abc.store.Store:
        """The zarr store at the root (a LocalStore for local paths, an FsspecStore otherwise)."""
        if self.is_local:
            return LocalStore(self.root, read_only=read_only)
        return FsspecStore.from_url(self.url, read_only=read_only)
