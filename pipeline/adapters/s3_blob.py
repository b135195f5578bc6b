"""`S3BlobStore`: the BlobStore port on Amazon S3 (or anything that speaks its API).

Keys are stored under an optional prefix; a missing object is a `KeyError`
like every other BlobStore. Vendor errors become `TransientError` (throttling,
5xx, connection) or `PermanentError` (access denied, no such bucket, ...).
A HEAD on a missing bucket answers a bare 404, which reads as a missing key.
"""

from __future__ import annotations

from typing import Any, NoReturn

from pipeline.adapters.aws import error_code, translate

_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class S3BlobStore:
    """Objects in one bucket; `client` is a boto3 S3 client built by the composition root."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        if not bucket:
            raise ValueError("an S3 bucket name is required")
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def object_key(self, key: str) -> str:
        """The S3 object name for a blob key (what Textract is pointed at)."""
        return f"{self.prefix}{key.lstrip('/')}"

    def put(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data)
        except Exception as exc:
            self._raise(exc, "put", key)

    def get(self, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.object_key(key))
            body = response["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
            return data
        except Exception as exc:
            self._raise(exc, "get", key)

    def size(self, key: str) -> int:
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            self._raise(exc, "head", key)
        return int(response["ContentLength"])

    def delete(self, key: str) -> None:
        """Deleting a missing key is not an error: S3's DeleteObject is idempotent, and so
        are the other stores (the BlobStore contract)."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            self._raise(exc, "delete", key)

    def _raise(self, exc: Exception, operation: str, key: str) -> NoReturn:
        code = error_code(exc)
        if code in _MISSING_KEY_CODES:
            raise KeyError(key) from None
        where = f"S3 {operation} s3://{self.bucket}/{self.object_key(key)}"
        translated = translate(exc, where)
        if translated is None:
            raise exc
        raise translated from exc
