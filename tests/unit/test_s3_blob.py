"""S3BlobStore against moto's S3 in-process, and its error translation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.stub import Stubber
from moto import mock_aws

from pipeline.adapters.aws import build_client
from pipeline.adapters.s3_blob import S3BlobStore
from pipeline.errors import PermanentError, TransientError
from pipeline.harness.localstack import free_port
from tests.conftest import SAMPLES

BUCKET = "docpipe-test"


@pytest.fixture
def s3(aws_env: None) -> Iterator[Any]:
    with mock_aws():
        client = build_client("s3", region="us-east-1", endpoint_url=None, max_attempts=1)
        client.create_bucket(Bucket=BUCKET)
        yield client


def test_put_get_size_delete_round_trip_under_a_prefix(s3: Any) -> None:
    blobs = S3BlobStore(s3, BUCKET, prefix="/docs/")
    data = next(SAMPLES.glob("*.pdf")).read_bytes()

    blobs.put("documents/a/original.pdf", data)

    assert blobs.get("documents/a/original.pdf") == data
    assert blobs.size("documents/a/original.pdf") == len(data)
    listed = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
    assert [o["Key"] for o in listed] == ["docs/documents/a/original.pdf"]
    blobs.delete("documents/a/original.pdf")
    with pytest.raises(KeyError):
        blobs.get("documents/a/original.pdf")


@pytest.mark.parametrize("operation", ["get", "size"])
def test_a_missing_key_is_a_key_error(s3: Any, operation: str) -> None:
    blobs = S3BlobStore(s3, BUCKET)
    with pytest.raises(KeyError):
        getattr(blobs, operation)("no/such/key")


def test_a_missing_bucket_is_permanent(s3: Any) -> None:
    blobs = S3BlobStore(s3, "no-such-bucket-here")
    with pytest.raises(PermanentError, match="NoSuchBucket"):
        blobs.put("k", b"x")
    with pytest.raises(PermanentError, match="NoSuchBucket"):
        blobs.get("k")


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("SlowDown", 503, TransientError),
        ("InternalError", 500, TransientError),
        ("ServiceUnavailable", 503, TransientError),
        ("RequestTimeout", 400, TransientError),
        ("AccessDenied", 403, PermanentError),
        ("NoSuchBucket", 404, PermanentError),
        ("InvalidObjectState", 403, PermanentError),
    ],
)
def test_service_errors_are_translated(
    s3: Any, code: str, status: int, expected: type[Exception]
) -> None:
    blobs = S3BlobStore(s3, BUCKET)
    with Stubber(s3) as stub:
        stub.add_client_error("get_object", service_error_code=code, http_status_code=status)
        with pytest.raises(expected, match=code) as raised:
            blobs.get("k")
    assert not isinstance(raised.value, KeyError)


def test_an_unreachable_endpoint_is_transient(aws_env: None) -> None:
    client = build_client(
        "s3",
        region="us-east-1",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        max_attempts=1,
        connect_timeout_s=1,
        read_timeout_s=1,
    )
    with pytest.raises(TransientError, match="cannot reach"):
        S3BlobStore(client, BUCKET).put("k", b"x")


def test_a_bucket_is_required() -> None:
    with pytest.raises(ValueError, match="bucket"):
        S3BlobStore(object(), "")
