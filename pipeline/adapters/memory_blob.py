"""An in-memory `BlobStore` for unit tests and single-process simulation."""

from __future__ import annotations


class InMemoryBlobStore:
    """Dict-backed object storage; a missing key raises KeyError like the other stores."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}

    def put(self, key: str, data: bytes) -> None:
        self._objects[key] = bytes(data)

    def get(self, key: str) -> bytes:
        return self._objects[key]

    def size(self, key: str) -> int:
        return len(self._objects[key])

    def delete(self, key: str) -> None:
        """Deleting a missing key is not an error (as on S3)."""
        self._objects.pop(key, None)

    def keys(self) -> list[str]:
        """Stored keys, sorted (for assertions on state)."""
        return sorted(self._objects)
