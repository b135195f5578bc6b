"""`BlobStore` on a local directory: the embedded default, shared by worker processes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


class LocalBlobStore:
    """Objects are files under `root`; keys with '/' become subdirectories.

    Writes go to a temporary file in the target directory and are renamed into
    place, so a reader in another process sees the old object or the new one,
    never half a file.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(root).resolve()
        self._root.mkdir(parents=True, exist_ok=True)

    @property
    def root(self) -> Path:
        return self._root

    def path_for(self, key: str) -> Path:
        """The file for `key`; ValueError when the key could escape the root."""
        if not key or "\x00" in key or "\\" in key:
            raise ValueError(f"invalid blob key {key!r}: empty, or contains NUL or backslash")
        if key.startswith("/") or (len(key) > 1 and key[1] == ":"):
            raise ValueError(f"invalid blob key {key!r}: keys must be relative")
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"invalid blob key {key!r}: empty, '.' or '..' path segment")
        path = self._root.joinpath(*parts)
        if not path.resolve().is_relative_to(self._root):
            raise ValueError(f"invalid blob key {key!r}: resolves outside the store")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        """Raises KeyError when there is no object under `key`."""
        path = self.path_for(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None

    def size(self, key: str) -> int:
        """Raises KeyError when there is no object under `key`."""
        path = self.path_for(key)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise KeyError(key) from None
        if not path.is_file():
            raise KeyError(key)
        return stat.st_size

    def delete(self, key: str) -> None:
        """Deleting a missing key is not an error (as on S3)."""
        path = self.path_for(key)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            path.unlink()
