"""The OcrEngine contract on every implementation: the embedded engine (with local OCR
when the [ocr] extra is installed) and Textract on the Textract simulator (moto)."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest

from pipeline.adapters.embedded_ocr import EmbeddedOcrEngine
from pipeline.adapters.local_ocr import LocalScanReader, local_ocr_installed
from pipeline.adapters.memory_blob import InMemoryBlobStore
from pipeline.adapters.s3_blob import S3BlobStore
from pipeline.adapters.textract import TextractOcrEngine
from pipeline.testing.aws import simulated_textract
from pipeline.testing.contracts.ocr import OcrEngineContract, OcrSetup


class TestEmbeddedOcrEngine(OcrEngineContract):
    @pytest.fixture
    def ocr(self) -> OcrSetup:
        blobs = InMemoryBlobStore()
        scans = LocalScanReader() if local_ocr_installed() else None
        engine = EmbeddedOcrEngine(
            blobs,
            fakeredis.FakeRedis(server=fakeredis.FakeServer()),
            polls_until_done=2,
            scans=scans,
        )
        return OcrSetup(engine=engine, blobs=blobs)


class TestTextractOnTheSimulator(OcrEngineContract):
    @pytest.fixture
    def ocr(self) -> Iterator[OcrSetup]:
        with simulated_textract(polls_until_done=2, max_results=5) as (aws, _simulator):
            blobs = S3BlobStore(aws.client("s3"), aws.bucket, prefix="docs")
            engine = TextractOcrEngine(aws.client("textract"), aws.bucket, prefix="docs")
            yield OcrSetup(engine=engine, blobs=blobs)
