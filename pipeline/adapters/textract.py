"""`TextractOcrEngine`: the OcrEngine port on Amazon Textract's asynchronous text detection.

`start()` points StartDocumentTextDetection at the S3 object with the
request's client request token (a new token per attempt, so a retry never
gets an old failed job back - failure 11). `poll()` makes one
GetDocumentTextDetection round (following NextToken when the job is done) and
never waits: the OCR task reschedules itself with a countdown.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from typing import Any, NoReturn

from pipeline.adapters.aws import error_code, error_message, translate
from pipeline.domain.models import FileType, OcrJob
from pipeline.domain.pages import join_pages
from pipeline.errors import MalformedResponse, PermanentError, TransientError, UnsupportedFileType
from pipeline.ports import OcrRequest

ENGINE_NAME = "textract"
_TOKEN_RE = re.compile(r"^[a-zA-Z0-9-_]{1,64}$")
_JOB_TAG_RE = re.compile(r"[^a-zA-Z0-9_.\-:]")
#: The largest page of results GetDocumentTextDetection returns.
MAX_RESULTS = 1000
#: A job's results are fetched in at most this many calls (a guard against a token loop).
MAX_RESULT_PAGES = 10_000

TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "InternalServerError",
    }
)
PERMANENT_CODES = frozenset(
    {
        "UnsupportedDocumentException",
        "DocumentTooLargeException",
        "InvalidS3ObjectException",
        "BadDocumentException",
        "InvalidParameterException",
        "InvalidJobIdException",
        "IdempotentParameterMismatchException",
        "AccessDeniedException",
        "InvalidKMSKeyException",
    }
)


def client_request_token(token: str) -> str:
    """A token Textract accepts (1-64 of `[a-zA-Z0-9-_]`); others are hashed, still unique."""
    if _TOKEN_RE.fullmatch(token):
        return token
    return hashlib.sha256(token.encode()).hexdigest()


class TextractOcrEngine:
    """Start and poll Textract jobs on objects in `bucket` (under `prefix`, like the blobs)."""

    def __init__(
        self, client: Any, bucket: str, *, prefix: str = "", min_confidence: float = 80.0
    ) -> None:
        if not bucket:
            raise ValueError("an S3 bucket name is required")
        if not 0 <= min_confidence <= 100:
            raise ValueError("min_confidence must be between 0 and 100")
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.min_confidence = min_confidence

    def start(self, request: OcrRequest) -> str:
        if request.file_type.lower().lstrip(".") != FileType.PDF.value:
            raise UnsupportedFileType(
                f"Textract is used for PDF documents only (got file type '{request.file_type}')"
            )
        name = f"{self.prefix}{request.storage_key.lstrip('/')}"
        try:
            response = self._client.start_document_text_detection(
                DocumentLocation={"S3Object": {"Bucket": self.bucket, "Name": name}},
                ClientRequestToken=client_request_token(request.client_request_token),
                JobTag=_JOB_TAG_RE.sub("-", request.document_uuid)[:64] or "docpipe",
            )
        except Exception as exc:
            _raise(exc, f"Textract start on s3://{self.bucket}/{name}")
        job_id = response.get("JobId") if isinstance(response, dict) else None
        if not job_id:
            raise MalformedResponse("Textract StartDocumentTextDetection answered without a JobId")
        return str(job_id)

    def poll(self, job_id: str) -> OcrJob:
        """One status check; when the job is done, every result page (NextToken)."""
        response = self._get(job_id, None)
        status = _status(job_id, response)
        if status == "IN_PROGRESS":
            return OcrJob(job_id=job_id, state=OcrJob.IN_PROGRESS, metadata={"engine": ENGINE_NAME})
        if status == "FAILED":
            reason = str(response.get("StatusMessage") or "Textract gave no reason")
            return OcrJob(
                job_id=job_id,
                state=OcrJob.FAILED,
                error=reason,
                metadata={"engine": ENGINE_NAME},
            )
        if status not in ("SUCCEEDED", "PARTIAL_SUCCESS"):
            raise MalformedResponse(f"Textract job {job_id}: unknown job status {status!r}")
        blocks: list[dict[str, Any]] = list(response.get("Blocks") or [])
        warnings: list[Any] = list(response.get("Warnings") or [])
        pages = _page_count(response)
        calls = 1
        token = response.get("NextToken")
        while token:
            if calls >= MAX_RESULT_PAGES:
                raise MalformedResponse(f"Textract job {job_id}: NextToken did not end")
            response = self._get(job_id, str(token))
            calls += 1
            blocks.extend(response.get("Blocks") or [])
            warnings.extend(response.get("Warnings") or [])
            pages = max(pages, _page_count(response))
            token = response.get("NextToken")
        texts, kept, dropped = self._page_texts(blocks, pages)
        metadata: dict[str, Any] = {
            "engine": ENGINE_NAME,
            "pages": len(texts),
            "lines": kept,
            "low_confidence_lines_dropped": dropped,
            "min_confidence": self.min_confidence,
            "result_pages": calls,
            "model_version": str(response.get("DetectDocumentTextModelVersion", "")),
        }
        if status == "PARTIAL_SUCCESS" or warnings:
            metadata["partial"] = status == "PARTIAL_SUCCESS"
            metadata["warnings"] = [str(w) for w in warnings][:20]
        return OcrJob(
            job_id=job_id,
            state=OcrJob.SUCCEEDED,
            text=join_pages(texts) if kept else "",
            pages=len(texts),
            metadata=metadata,
        )

    # --- internals -------------------------------------------------------------------

    def _get(self, job_id: str, next_token: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"JobId": job_id, "MaxResults": MAX_RESULTS}
        if next_token:
            kwargs["NextToken"] = next_token
        try:
            response = self._client.get_document_text_detection(**kwargs)
        except Exception as exc:
            _raise(exc, f"Textract job {job_id}")
        if not isinstance(response, dict):
            raise MalformedResponse(f"Textract job {job_id}: answer is not an object")
        return response

    def _page_texts(self, blocks: list[dict[str, Any]], pages: int) -> tuple[list[str], int, int]:
        """LINE blocks at or above the confidence floor, by page, then top, then left."""
        lines: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
        kept = dropped = 0
        for block in blocks:
            if block.get("BlockType") != "LINE":
                continue
            if float(block.get("Confidence", 0.0)) < self.min_confidence:
                dropped += 1
                continue
            box = (block.get("Geometry") or {}).get("BoundingBox") or {}
            page = int(block.get("Page", 1))
            text = str(block.get("Text", ""))
            lines[page].append((float(box.get("Top", 0.0)), float(box.get("Left", 0.0)), text))
            kept += 1
        count = max([pages, *lines.keys()]) if lines or pages else 0
        texts = ["\n".join(text for _, _, text in sorted(lines[n])) for n in range(1, count + 1)]
        return texts, kept, dropped


def _status(job_id: str, response: dict[str, Any]) -> str:
    status = response.get("JobStatus")
    if not isinstance(status, str) or not status:
        raise MalformedResponse(f"Textract job {job_id}: response without a job status")
    return status


def _page_count(response: dict[str, Any]) -> int:
    pages = (response.get("DocumentMetadata") or {}).get("Pages", 0)
    return pages if isinstance(pages, int) else 0


def _raise(exc: Exception, what: str) -> NoReturn:
    """Textract's error vocabulary in ours; unknown 4xx codes are permanent, 5xx transient."""
    code = error_code(exc)
    if code in TRANSIENT_CODES:
        raise TransientError(f"{what}: {code}: {error_message(exc)}") from exc
    if code in PERMANENT_CODES:
        raise PermanentError(f"{what}: {code}: {error_message(exc)}") from exc
    translated = translate(exc, what)
    if translated is None:
        raise exc
    raise translated from exc
