"""LocalBlobStore: atomic writes on a directory shared by worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.adapters.local_blob import LocalBlobStore
from pipeline.adapters.memory_blob import InMemoryBlobStore
from pipeline.ports import BlobStore


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture(params=["local", "memory"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    return InMemoryBlobStore()


def test_put_get_size_delete_round_trip(any_store: BlobStore) -> None:
    any_store.put("projects/p1/doc-1.pdf", b"%PDF-1.7 bytes")
    assert any_store.get("projects/p1/doc-1.pdf") == b"%PDF-1.7 bytes"
    assert any_store.size("projects/p1/doc-1.pdf") == 14
    any_store.delete("projects/p1/doc-1.pdf")
    with pytest.raises(KeyError):
        any_store.get("projects/p1/doc-1.pdf")


def test_missing_key_raises_key_error(any_store: BlobStore) -> None:
    with pytest.raises(KeyError):
        any_store.get("nope")
    with pytest.raises(KeyError):
        any_store.size("nope")


def test_delete_of_a_missing_key_is_not_an_error(any_store: BlobStore) -> None:
    any_store.delete("never/written")


def test_put_replaces_an_object(any_store: BlobStore) -> None:
    any_store.put("a", b"first version, longer")
    any_store.put("a", b"second")
    assert any_store.get("a") == b"second"
    assert any_store.size("a") == 6


def test_empty_objects_are_stored(any_store: BlobStore) -> None:
    any_store.put("empty.txt", b"")
    assert any_store.get("empty.txt") == b""
    assert any_store.size("empty.txt") == 0


def test_keys_with_slashes_become_subdirectories(store: LocalBlobStore) -> None:
    store.put("projects/p1/documents/doc-1.pdf", b"x")
    assert (store.root / "projects" / "p1" / "documents" / "doc-1.pdf").read_bytes() == b"x"


def test_writes_leave_no_temporary_files(store: LocalBlobStore) -> None:
    for index in range(5):
        store.put("docs/doc.pdf", bytes([index]) * 1000)
    assert sorted(p.name for p in (store.root / "docs").iterdir()) == ["doc.pdf"]


def test_a_failed_write_keeps_the_old_object_and_no_temporary_file(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("docs/doc.pdf", b"old")

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("pipeline.adapters.local_blob.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        store.put("docs/doc.pdf", b"new")
    assert store.get("docs/doc.pdf") == b"old"
    assert [p.name for p in (store.root / "docs").iterdir()] == ["doc.pdf"]


def test_two_stores_on_one_directory_see_each_others_objects(tmp_path: Path) -> None:
    writer, reader = LocalBlobStore(tmp_path), LocalBlobStore(tmp_path)
    writer.put("shared/doc.txt", b"hello")
    assert reader.get("shared/doc.txt") == b"hello"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../outside.pdf",
        "docs/../../outside.pdf",
        "docs/..",
        "/etc/passwd",
        "C:/windows/file",
        "docs//doc.pdf",
        "./doc.pdf",
        "docs\\..\\x",
        "nul\x00byte",
    ],
)
def test_keys_that_could_escape_the_root_are_rejected(store: LocalBlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid blob key"):
        store.put(key, b"x")
    with pytest.raises(ValueError, match="invalid blob key"):
        store.get(key)


def test_a_symlink_out_of_the_root_is_rejected(store: LocalBlobStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the store"):
        store.put("link/file.pdf", b"x")
    assert not (outside / "file.pdf").exists()


def test_a_directory_is_not_an_object(store: LocalBlobStore) -> None:
    store.put("docs/doc.pdf", b"x")
    with pytest.raises(KeyError):
        store.get("docs")
    with pytest.raises(KeyError):
        store.size("docs")
