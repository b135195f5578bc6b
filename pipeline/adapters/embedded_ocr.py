"""The embedded default's OCR engine: Textract's asynchronous job shape, run locally.

Text layers and DOCX/TXT/EML come from the local parsers; image-only PDF pages
go through local OCR (pipeline.adapters.local_ocr) when the `ocr` extra is
installed. Faults from the FaultInjector port reach it, so scenarios can make
it fail like Textract does.

Job records are Redis hashes, so a job started by one worker process can be
polled by another (the OCR task reschedules itself and may land anywhere).
Like Textract, the same client request token gives back the same job and a
new token a new one, and a document it cannot read ends as a FAILED job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import redis
from redis.exceptions import WatchError

from pipeline.adapters.local_ocr import (
    LocalScanReader,
    RecognisedPageCache,
    enable_local_ocr_hint,
    missing_extra_reason,
)
from pipeline.adapters.parsers import (
    DEFAULT_LIMITS,
    ExtractionLimits,
    extract_pdf_pages,
    pdf_page_count,
)
from pipeline.domain.models import FileType, OcrJob, stable_uuid
from pipeline.domain.pages import join_pages
from pipeline.errors import EmptyDocument, MalformedResponse, PermanentError, UnsupportedFileType
from pipeline.ports import BlobStore, Cache, Clock, FaultInjector, OcrRequest

JOB_KEY = "docpipe:fake_ocr:job:{job_id}"
JOB_TTL_SECONDS = 24 * 60 * 60
ENGINE_NAME = "fake-textract"
#: Field maps written with HSET (redis-py types the mapping's key invariantly).
_Fields = dict[Any, str]


class EmbeddedOcrEngine:
    """`OcrEngine` with Textract's start/poll shape, reading the PDF text layer.

    `polls_until_done` is the number of the poll that finishes the job (1: the
    first poll already answers); it is stored with the job at start, so every
    process polling it agrees. `job_seconds` (client request token -> seconds)
    simulates Textract's processing time: the job also stays IN_PROGRESS until
    that long after its start has passed on the clock. Polls never wait.
    `limits` bound the pages and text it reads (a job over them fails, as
    Textract fails a document over its own limits). `scans` reads the pages that
    have no text layer with local OCR (the `[ocr]` extra); without it such
    pages fail the job with a reason that says how to enable it. The OCR runs
    in `poll`, i.e. in the process of the `ocr` queue's worker, never in `start`;
    with `page_cache` each recognised page is kept there (`page_cache_ttl_s`), so
    a poll redelivered after its worker died resumes at the first unread page.
    """

    def __init__(
        self,
        blobs: BlobStore,
        redis: redis.Redis,
        *,
        polls_until_done: int = 1,
        clock: Clock | None = None,
        latency_seconds: float = 0.0,
        faults: FaultInjector | None = None,
        job_seconds: Callable[[str], float] | None = None,
        limits: ExtractionLimits = DEFAULT_LIMITS,
        scans: LocalScanReader | None = None,
        page_cache: Cache | None = None,
        page_cache_ttl_s: int = 12 * 3600,
    ) -> None:
        if polls_until_done < 1:
            raise ValueError("polls_until_done must be at least 1")
        if latency_seconds < 0:
            raise ValueError("latency_seconds must not be negative")
        self._blobs = blobs
        self._redis = redis
        self._polls_until_done = polls_until_done
        self._clock = clock
        self._latency = latency_seconds
        self._faults = faults
        self._job_seconds = job_seconds
        self._limits = limits
        self._scans = scans
        self._page_cache = page_cache
        self._page_cache_ttl_s = page_cache_ttl_s

    def start(self, request: OcrRequest) -> str:
        """Start (or, for a token already seen, find) the job for this request."""
        self._before("start", request.document_uuid)
        job_id = job_id_for(request.client_request_token)
        key = JOB_KEY.format(job_id=job_id)
        existing = self._load(job_id)
        if existing is not None:
            _check_same_request(existing, request)
            return job_id
        if request.file_type.lower().lstrip(".") != FileType.PDF.value:
            raise UnsupportedFileType(
                f"OCR engine reads PDF documents only (got file type '{request.file_type}')"
            )
        try:
            self._blobs.size(request.storage_key)
        except KeyError:
            raise PermanentError(
                f"invalid S3 object: no object under key '{request.storage_key}' "
                "(check the storage key; was the upload deleted?)"
            ) from None
        created_at = self._now()
        duration = self._job_seconds(request.client_request_token) if self._job_seconds else 0.0
        record: _Fields = {
            "job_id": job_id,
            "client_request_token": request.client_request_token,
            "document_uuid": request.document_uuid,
            "storage_key": request.storage_key,
            "file_type": request.file_type,
            "state": OcrJob.IN_PROGRESS,
            "polls": "0",
            "polls_until_done": str(self._polls_until_done),
            # Full precision (repr round-trips): rounded to milliseconds, a job
            # without processing time could be "ready" up to 0.5 ms in the future,
            # and a poll within that window answered IN_PROGRESS with 0 pages.
            "created_at": repr(created_at),
            "ready_at": repr(created_at + duration),
        }
        with self._redis.pipeline(transaction=True) as pipe:
            # WATCH makes creation atomic across processes: the whole record
            # appears at once, and a process that loses the race keeps the
            # winner's job (same token, same job).
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                if not pipe.exists(key):
                    pipe.multi()
                    pipe.hset(key, mapping=record)
                    pipe.expire(key, JOB_TTL_SECONDS)
                    pipe.execute()
                    return job_id
                pipe.unwatch()
            except WatchError:
                pass
        winner = self._load(job_id)
        if winner is not None:
            _check_same_request(winner, request)
        return job_id

    def poll(self, job_id: str) -> OcrJob:
        """Count the poll; answer IN_PROGRESS until the job's turn, then the result.

        Injected bad answers: "empty" is a finished job with no text, "malformed"
        raises `MalformedResponse` (as the real adapter does for an unreadable answer).
        """
        record = self._load(job_id)
        if record is None or "storage_key" not in record:
            raise PermanentError(
                f"unknown OCR job id '{job_id}' (never started, or expired after 1 day)"
            )
        response = self._before("poll", record["document_uuid"])
        key = JOB_KEY.format(job_id=job_id)
        polls = int(cast(Any, self._redis.hincrby(key, "polls", 1)))
        if response == "malformed":
            # What the Textract adapter raises for an answer it cannot read.
            raise MalformedResponse(f"OCR job {job_id}: response without a job status (injected)")
        if response == "empty":
            # A finished job that found no text; not stored, so the next poll is normal.
            return OcrJob(
                job_id=job_id,
                state=OcrJob.SUCCEEDED,
                metadata={"engine": ENGINE_NAME, "polls": polls},
            )
        state = record.get("state", OcrJob.IN_PROGRESS)
        if state != OcrJob.IN_PROGRESS:
            return _job_from_record(job_id, record)
        running = float(record.get("ready_at", "0")) > self._now()
        if polls < int(record["polls_until_done"]) or running:
            return OcrJob(
                job_id=job_id,
                state=OcrJob.IN_PROGRESS,
                metadata={"engine": ENGINE_NAME, "polls": polls},
            )
        result = self._run(record, polls)
        self._redis.hset(key, mapping=result)
        record.update(result)
        return _job_from_record(job_id, record)

    # --- internals -------------------------------------------------------------------

    def _run(self, record: dict[str, str], polls: int) -> _Fields:
        """Read the blob and its text layer; a document it cannot read fails the job."""
        try:
            data = self._blobs.get(record["storage_key"])
        except KeyError:
            return _failed(f"invalid S3 object: '{record['storage_key']}' no longer exists", polls)
        try:
            pages = extract_pdf_pages(data, self._limits)
        except EmptyDocument as exc:
            # No page has a text layer: a scan, unless the PDF has no pages at all.
            count = pdf_page_count(data) or 0
            if not count:
                return _failed(f"UNSUPPORTED_DOCUMENT: {exc}", polls)
            pages = [""] * count
        except PermanentError as exc:
            return _failed(f"UNSUPPORTED_DOCUMENT: {exc}", polls)
        scanned = sum(1 for page in pages if not page.strip())
        ocr_pages, ocr_seconds, ocr_cpu_seconds = "0", "0", "0"
        if scanned and self._scans is None and scanned == len(pages):
            return _failed(
                f"UNSUPPORTED_DOCUMENT: {missing_extra_reason(len(pages), scanned)}", polls
            )
        # Without the extra a mixed PDF keeps its text pages, as it always did, and
        # records which pages it could not read and what would read them.
        recorded: _Fields = {}
        if scanned and self._scans is None:
            recorded = {
                "pages_without_text": ",".join(
                    str(number) for number, page in enumerate(pages, 1) if not page.strip()
                ),
                "scanned_pages_hint": enable_local_ocr_hint(),
            }
        if scanned and self._scans is not None:
            try:
                resume = (
                    RecognisedPageCache(
                        self._page_cache, record["document_uuid"], self._page_cache_ttl_s
                    )
                    if self._page_cache is not None
                    else None
                )
                scan = self._scans.read(data, pages, resume)
            except PermanentError as exc:
                return _failed(f"UNSUPPORTED_DOCUMENT: {exc}", polls)
            pages = scan.pages
            ocr_pages = str(len(scan.ocr_pages))
            ocr_seconds, ocr_cpu_seconds = f"{scan.seconds:.2f}", f"{scan.cpu_seconds:.2f}"
            recorded["ocr_pages_from_cache"] = str(scan.pages_from_cache)
            if not any(page.strip() for page in pages):
                return _failed(
                    "UNSUPPORTED_DOCUMENT: PDF has no text layer and local OCR found no text "
                    f"at or above confidence {self._scans.min_confidence:g} "
                    f"({len(pages)} page(s))",
                    polls,
                )
        return {
            "state": OcrJob.SUCCEEDED,
            "text": join_pages(pages),
            "pages": str(len(pages)),
            "ocr_pages": ocr_pages,
            "ocr_seconds": ocr_seconds,
            "ocr_cpu_seconds": ocr_cpu_seconds,
            "completed_polls": str(polls),
        } | recorded

    def _load(self, job_id: str) -> dict[str, str] | None:
        raw = cast(dict[Any, Any], self._redis.hgetall(JOB_KEY.format(job_id=job_id)))
        if not raw:
            return None
        return {_text(k): _text(v) for k, v in raw.items()}

    def _before(self, operation: str, document_uuid: str | None) -> str | None:
        """Consult the faults (which may raise) and wait; returns a bad-answer kind, if any."""
        delay = self._latency
        response: str | None = None
        if self._faults is not None:
            effect = self._faults.before("ocr", operation, document_uuid)
            delay += effect.latency_s
            response = effect.response
        if self._clock is not None and delay > 0:
            self._clock.sleep(delay)
        return response

    def _now(self) -> float:
        return self._clock.now() if self._clock is not None else time.time()


def job_id_for(client_request_token: str) -> str:
    """The job id a token maps to (stable, so the same token finds the same job)."""
    return stable_uuid("fake-ocr", client_request_token)


def _check_same_request(record: dict[str, str], request: OcrRequest) -> None:
    """Textract's IdempotentParameterMismatch: one token, one document."""
    recorded = record.get("storage_key")
    if recorded is not None and recorded != request.storage_key:
        raise PermanentError(
            f"client request token '{request.client_request_token}' was already used for "
            f"object '{recorded}'; use a new token per request"
        )


def _failed(reason: str, polls: int) -> _Fields:
    return {"state": OcrJob.FAILED, "error": reason, "completed_polls": str(polls)}


def _job_from_record(job_id: str, record: dict[str, str]) -> OcrJob:
    metadata: dict[str, Any] = {
        "engine": ENGINE_NAME,
        "polls": int(record.get("completed_polls", record.get("polls", "0"))),
    }
    if int(record.get("ocr_pages", "0")):
        metadata["ocr_pages"] = int(record["ocr_pages"])
        metadata["ocr_seconds"] = float(record.get("ocr_seconds", "0"))
        metadata["ocr_cpu_seconds"] = float(record.get("ocr_cpu_seconds", "0"))
        metadata["ocr_pages_from_cache"] = int(record.get("ocr_pages_from_cache", "0"))
    if record.get("pages_without_text"):
        # Page numbers (1-based) that have no text layer and were not OCR'd.
        skipped = [int(number) for number in record["pages_without_text"].split(",")]
        metadata["pages_without_text"] = skipped
        metadata["skipped_scanned_pages"] = len(skipped)
        metadata["scanned_pages_hint"] = record.get("scanned_pages_hint", "")
    return OcrJob(
        job_id=job_id,
        state=record["state"],
        text=record.get("text", ""),
        pages=int(record.get("pages", "0")),
        error=record.get("error"),
        metadata=metadata,
    )


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
