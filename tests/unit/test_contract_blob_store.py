"""The BlobStore contract on every implementation: local files, memory, S3 (moto)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.adapters.local_blob import LocalBlobStore
from pipeline.adapters.memory_blob import InMemoryBlobStore
from pipeline.adapters.s3_blob import S3BlobStore
from pipeline.testing.aws import mocked_aws
from pipeline.testing.contracts.blob_store import BlobStoreContract


class TestLocalBlobStore(BlobStoreContract):
    @pytest.fixture
    def blob_store(self, tmp_path: Path) -> LocalBlobStore:
        return LocalBlobStore(tmp_path / "blobs")


class TestInMemoryBlobStore(BlobStoreContract):
    @pytest.fixture
    def blob_store(self) -> InMemoryBlobStore:
        return InMemoryBlobStore()


class TestS3BlobStoreOnMoto(BlobStoreContract):
    @pytest.fixture
    def blob_store(self) -> Iterator[S3BlobStore]:
        with mocked_aws() as aws:
            yield S3BlobStore(aws.client("s3"), aws.bucket, prefix="docs")
