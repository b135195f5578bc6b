"""The `BlobStore` contract: what stages may rely on from any object store."""

from __future__ import annotations

import pytest

from pipeline.ports import BlobStore

#: A few bytes that are not text: stores must keep bytes, not decode them.
BINARY = bytes(range(256)) * 3


class BlobStoreContract:
    """Subclasses provide a `blob_store` fixture: an empty store."""

    def test_put_then_get_and_size_round_trip_bytes(self, blob_store: BlobStore) -> None:
        blob_store.put("documents/a/original.pdf", BINARY)

        assert blob_store.get("documents/a/original.pdf") == BINARY
        assert blob_store.size("documents/a/original.pdf") == len(BINARY)

    def test_an_empty_object_is_an_object(self, blob_store: BlobStore) -> None:
        blob_store.put("documents/empty.txt", b"")

        assert blob_store.get("documents/empty.txt") == b""
        assert blob_store.size("documents/empty.txt") == 0

    def test_put_replaces_the_object(self, blob_store: BlobStore) -> None:
        blob_store.put("k/one", b"first version, longer")
        blob_store.put("k/one", b"second")

        assert blob_store.get("k/one") == b"second"
        assert blob_store.size("k/one") == 6

    def test_keys_are_independent(self, blob_store: BlobStore) -> None:
        blob_store.put("a/x", b"x")
        blob_store.put("a/y", b"y")
        blob_store.delete("a/x")

        assert blob_store.get("a/y") == b"y"
        with pytest.raises(KeyError):
            blob_store.get("a/x")

    @pytest.mark.parametrize("operation", ["get", "size"])
    def test_a_missing_key_is_a_key_error(self, blob_store: BlobStore, operation: str) -> None:
        with pytest.raises(KeyError):
            getattr(blob_store, operation)("never/written")

    def test_a_deleted_object_is_gone(self, blob_store: BlobStore) -> None:
        blob_store.put("documents/gone.pdf", b"%PDF-1.7")
        blob_store.delete("documents/gone.pdf")

        with pytest.raises(KeyError):
            blob_store.get("documents/gone.pdf")
        with pytest.raises(KeyError):
            blob_store.size("documents/gone.pdf")

    def test_deleting_a_missing_key_is_not_an_error(self, blob_store: BlobStore) -> None:
        """As on S3 (DeleteObject is idempotent): a retried cleanup must not fail."""
        blob_store.delete("never/written")
        blob_store.put("once/there", b"x")
        blob_store.delete("once/there")
        blob_store.delete("once/there")

        with pytest.raises(KeyError):
            blob_store.get("once/there")

    def test_a_key_with_unicode_and_spaces_round_trips(self, blob_store: BlobStore) -> None:
        key = "documents/Zoë Müller/affidavit (signed).pdf"
        blob_store.put(key, b"signed")

        assert blob_store.get(key) == b"signed"
