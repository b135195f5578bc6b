"""A Textract simulator on top of moto: jobs that read the S3 object's real text.

moto's Textract is canned (SUCCEEDED at once, empty Blocks, no NextToken, the
request token ignored). The simulator replaces moto's Textract request
handlers for StartDocumentTextDetection and GetDocumentTextDetection - the
handler, not only `TextractBackend`, because moto's handler drops
ClientRequestToken, NextToken and MaxResults before the backend sees them.
Jobs then:

- read the object from moto's S3 and answer its PDF text layer as LINE blocks
  with confidences and geometry, shuffled within each result page, plus
  low-confidence noise lines an adapter must drop; pages without a text layer
  (scans) are read by the local OCR engine when the `[ocr]` extra is installed,
  its LINE blocks answered as they come (every confidence: the adapter filters);
- paginate with NextToken (`max_results` blocks per answer, small by default);
- stay IN_PROGRESS for the first `polls_until_done - 1` status polls;
- keep Textract's idempotency: one client request token, one job;
- fail or throttle on demand: `inject()` queues AWS error codes per operation,
  `fail_documents` makes jobs end FAILED, and a `FaultInjector` (port
  "textract", operations "start" and "get") can do either across processes.

It patches moto's classes in *this* process. In-process that serves
`moto.mock_aws()`; for worker processes, install it in the process hosting a
`ThreadedMotoServer(ip_address="127.0.0.1")` (see `moto_server()`) and point
the workers at that endpoint. This is moto's internal API: moto is pinned
exactly in pyproject.toml.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pipeline.adapters.local_ocr import LocalScanReader, local_ocr_installed
from pipeline.adapters.parsers import extract_pdf_pages, pdf_page_count
from pipeline.domain.models import stable_uuid
from pipeline.errors import PermanentError, TransientError
from pipeline.ports import FaultInjector

FAULT_PORT = "textract"
#: What a simulated job says when the object is not a readable PDF (as Textract does).
UNSUPPORTED_MESSAGE = "UNSUPPORTED_DOCUMENT: Request has unsupported document format"
NOISE_TEXTS = ("~ ~", "|||", ". ,", "::")
_SERVER_ERRORS = frozenset({"InternalServerError"})
_lock = threading.RLock()
_installed: TextractSimulator | None = None


@dataclass
class SimJob:
    job_id: str
    token: str
    bucket: str
    key: str
    document: str | None
    account: str = ""
    polls: int = 0
    status: str = "IN_PROGRESS"
    message: str | None = None
    blocks: list[dict[str, Any]] = field(default_factory=list)
    pages: int = 0


class SimulatedError(Exception):
    """An AWS error code the simulator answers with (turned into moto's JSON error)."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(message or f"simulated {code}")
        self.code = code


class TextractSimulator:
    """Install with `with TextractSimulator(...) as sim:` (or `install()`/`uninstall()`)."""

    def __init__(
        self,
        *,
        polls_until_done: int = 1,
        max_results: int = 7,
        noise_lines_per_page: int = 1,
        noise_confidence: float = 41.5,
        faults: FaultInjector | None = None,
        seed: int = 0,
        local_ocr: bool = True,
    ) -> None:
        if polls_until_done < 1:
            raise ValueError("polls_until_done must be at least 1")
        if max_results < 1:
            raise ValueError("max_results must be at least 1")
        self.polls_until_done = polls_until_done
        self.max_results = max_results
        self.noise_lines_per_page = noise_lines_per_page
        self.noise_confidence = noise_confidence
        self.faults = faults
        self.seed = seed
        #: Reads scanned pages (None: without the `[ocr]` extra, a scan reads as no text).
        self.scan_reader = (
            LocalScanReader(min_confidence=0.0) if local_ocr and local_ocr_installed() else None
        )
        #: Object keys (or substrings of them) whose jobs end FAILED with this message.
        self.fail_documents: dict[str, str] = {}
        self.jobs: dict[str, SimJob] = {}
        self.calls: dict[str, int] = {"start": 0, "get": 0}
        self._tokens: dict[str, str] = {}
        self._errors: dict[str, list[SimulatedError]] = {"start": [], "get": []}
        self._saved: dict[str, Any] = {}

    # --- installing -------------------------------------------------------------------

    def install(self) -> TextractSimulator:
        global _installed
        from moto.textract.responses import TextractResponse

        with _lock:
            if _installed is not None:
                raise RuntimeError("a TextractSimulator is already installed in this process")
            simulator = self

            def start(handler: Any) -> str:
                return simulator._handle(handler, "start")

            def get(handler: Any) -> str:
                return simulator._handle(handler, "get")

            for name, method in (
                ("start_document_text_detection", start),
                ("get_document_text_detection", get),
            ):
                self._saved[name] = TextractResponse.__dict__[name]
                setattr(TextractResponse, name, method)
            _installed = self
        return self

    def uninstall(self) -> None:
        global _installed
        from moto.textract.responses import TextractResponse

        with _lock:
            if _installed is not self:
                return
            for name, method in self._saved.items():
                setattr(TextractResponse, name, method)
            self._saved.clear()
            _installed = None

    def __enter__(self) -> TextractSimulator:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()

    # --- scripting ------------------------------------------------------------------------

    def inject(self, operation: str, code: str, *, times: int = 1, message: str = "") -> None:
        """Answer the next `times` calls of "start" or "get" with this AWS error code."""
        if operation not in self._errors:
            raise ValueError(f"operation must be 'start' or 'get', not {operation!r}")
        with _lock:
            self._errors[operation].extend(SimulatedError(code, message) for _ in range(times))

    # --- the handlers -----------------------------------------------------------------------

    def _handle(self, handler: Any, operation: str) -> str:
        from moto.core.exceptions import JsonRESTError

        params = json.loads(handler.body or "{}")
        try:
            with _lock:
                self.calls[operation] += 1
                queued = self._errors[operation]
                if queued:
                    raise queued.pop(0)
            if operation == "start":
                return json.dumps(self._start(handler, params))
            return json.dumps(self._get(params))
        except SimulatedError as exc:
            error = JsonRESTError(exc.code, str(exc))
            error.code = 500 if exc.code in _SERVER_ERRORS else 400
            raise error from None

    def _fault(self, operation: str, document: str | None) -> str | None:
        """Consult the FaultInjector: its errors become AWS error codes."""
        if self.faults is None:
            return None
        try:
            effect = self.faults.before(FAULT_PORT, operation, document)
        except TransientError as exc:
            raise SimulatedError("ThrottlingException", str(exc)) from None
        except PermanentError as exc:
            if operation == "start":
                raise SimulatedError("UnsupportedDocumentException", str(exc)) from None
            return f"permanent:{exc}"
        if effect.latency_s > 0:
            time.sleep(effect.latency_s)
        return effect.response

    def _start(self, handler: Any, params: dict[str, Any]) -> dict[str, Any]:
        location = (params.get("DocumentLocation") or {}).get("S3Object") or {}
        bucket, key = str(location.get("Bucket", "")), str(location.get("Name", ""))
        if not bucket or not key:
            raise SimulatedError("InvalidParameterException", "DocumentLocation.S3Object needed")
        token = str(params.get("ClientRequestToken") or "")
        document = params.get("JobTag")
        fault = self._fault("start", document)
        if fault is not None and fault.startswith("permanent:"):
            raise SimulatedError("UnsupportedDocumentException", fault.partition(":")[2])
        with _lock:
            if token and token in self._tokens:
                job = self.jobs[self._tokens[token]]
                if (job.bucket, job.key) != (bucket, key):
                    raise SimulatedError(
                        "IdempotentParameterMismatchException",
                        "the client request token was used with another document",
                    )
                return {"JobId": job.job_id}
        if _read_object(handler.current_account, bucket, key) is None:
            raise SimulatedError(
                "InvalidS3ObjectException",
                "Unable to get object metadata from S3. Check object key, region and/or "
                "access permissions.",
            )
        job_id = hashlib.sha256(f"{token or stable_uuid(time.time())}:{key}".encode()).hexdigest()
        with _lock:
            job = SimJob(job_id, token, bucket, key, document, str(handler.current_account))
            self.jobs[job_id] = job
            if token:
                self._tokens[token] = job_id
        return {"JobId": job_id}

    def _get(self, params: dict[str, Any]) -> dict[str, Any]:
        job_id = str(params.get("JobId", ""))
        with _lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise SimulatedError("InvalidJobIdException", "An invalid job identifier was passed.")
        next_token = params.get("NextToken")
        if next_token:
            return self._result_page(job, str(next_token), params.get("MaxResults"))
        fault = self._fault("get", job.document)
        with _lock:
            job.polls += 1
            if fault == "malformed":
                return {"DocumentMetadata": {"Pages": 1}}  # no JobStatus
            if fault == "empty":
                return {"JobStatus": "SUCCEEDED", "Blocks": [], "DocumentMetadata": {"Pages": 1}}
            if job.status == "IN_PROGRESS" and fault is not None and fault.startswith("permanent:"):
                job.status, job.message = "FAILED", fault.partition(":")[2]
            if job.status == "IN_PROGRESS" and job.polls >= self.polls_until_done:
                self._finish(job)
            if job.status == "IN_PROGRESS":
                return {"JobStatus": "IN_PROGRESS"}
            if job.status == "FAILED":
                return {"JobStatus": "FAILED", "StatusMessage": job.message}
        return self._result_page(job, None, params.get("MaxResults"))

    def _finish(self, job: SimJob) -> None:
        for fragment, message in self.fail_documents.items():
            if fragment in job.key:
                job.status, job.message = "FAILED", message
                return
        data = _read_object(job.account, job.bucket, job.key)
        if data is None:
            job.status, job.message = "FAILED", "INVALID_S3_OBJECT: the object no longer exists"
            return
        try:
            pages = extract_pdf_pages(data)
        except PermanentError as exc:
            if "no text layer" in str(exc):
                pages = [""] * max(pdf_page_count(data) or 1, 1)  # a scan
            else:
                job.status, job.message = "FAILED", f"{UNSUPPORTED_MESSAGE} ({exc})"
                return
        blocks = self.blocks_for(pages, job.job_id)
        if self.scan_reader is not None and any(not page.strip() for page in pages):
            try:
                scan = self.scan_reader.read(data, pages)
            except PermanentError as exc:
                job.status, job.message = "FAILED", f"{UNSUPPORTED_MESSAGE} ({exc})"
                return
            for line in scan.lines:
                block = line.as_block()
                block["Id"] = stable_uuid("sim-ocr", job.job_id, line.page, line.top, line.text)
                blocks.append(block)
        job.blocks = blocks
        job.pages = len(pages)
        job.status = "SUCCEEDED"

    def _result_page(self, job: SimJob, token: str | None, max_results: object) -> dict[str, Any]:
        offset = 0
        if token is not None:
            prefix, _, number = token.partition(":")
            if prefix != job.job_id[:16] or not number.isdigit() or job.status != "SUCCEEDED":
                raise SimulatedError("InvalidParameterException", "invalid NextToken")
            offset = int(number)
        size = self.max_results
        if isinstance(max_results, int) and max_results > 0:
            size = min(size, max_results)
        blocks = job.blocks[offset : offset + size]
        answer: dict[str, Any] = {
            "JobStatus": "SUCCEEDED",
            "DocumentMetadata": {"Pages": job.pages},
            "DetectDocumentTextModelVersion": "1.0-sim",
            "Blocks": _shuffled(blocks, f"{self.seed}:{job.job_id}:{offset}"),
        }
        if offset + size < len(job.blocks):
            answer["NextToken"] = f"{job.job_id[:16]}:{offset + size}"
        return answer

    # --- blocks ------------------------------------------------------------------------------

    def blocks_for(self, pages: list[str], job_id: str = "") -> list[dict[str, Any]]:
        """PAGE and LINE blocks for these page texts, with noise lines below the floor."""
        rng = random.Random(f"{self.seed}:{job_id}")
        blocks: list[dict[str, Any]] = []
        for number, text in enumerate(pages, 1):
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            blocks.append(_block("PAGE", number, None, 99.9, 0.0, 0.0, 1.0))
            slots = len(lines) + self.noise_lines_per_page + 1
            for index, line in enumerate(lines):
                top = (index + 1) / slots
                confidence = round(rng.uniform(88.0, 99.9), 3)
                blocks.append(_block("LINE", number, line, confidence, top, 0.08, 0.8))
            for noise in range(self.noise_lines_per_page):
                top = (len(lines) + noise + 1) / slots
                text_ = NOISE_TEXTS[(number + noise) % len(NOISE_TEXTS)]
                blocks.append(_block("LINE", number, text_, self.noise_confidence, top, 0.6, 0.1))
        return blocks


def _block(
    kind: str, page: int, text: str | None, confidence: float, top: float, left: float, width: float
) -> dict[str, Any]:
    block: dict[str, Any] = {
        "BlockType": kind,
        "Id": stable_uuid("sim-block", kind, page, top, left, text),
        "Page": page,
        "Confidence": confidence,
        "Geometry": {
            "BoundingBox": {"Top": top, "Left": left, "Width": width, "Height": 0.012},
        },
    }
    if text is not None:
        block["Text"] = text
    return block


def _shuffled(blocks: list[dict[str, Any]], seed: str) -> list[dict[str, Any]]:
    """Result pages in scrambled order: an adapter must order lines by geometry itself."""
    copy = list(blocks)
    random.Random(seed).shuffle(copy)
    return copy


def _read_object(account: str, bucket: str, key: str) -> bytes | None:
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[account or DEFAULT_ACCOUNT_ID]["aws"]
    try:
        found = backend.get_object(bucket, key)
    except Exception:  # moto raises MissingBucket / MissingKey
        return None
    if found is None:
        return None
    value: bytes = found.value
    return value


@contextmanager
def moto_server(simulator: TextractSimulator | None = None) -> Iterator[str]:
    """A moto server on a free loopback port with the simulator installed; yields its URL.

    The server runs in a thread of this process, so the simulator's patches
    (and its scripted errors) apply to requests from any process.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        if simulator is None:
            yield f"http://{host}:{port}"
        else:
            with simulator:
                yield f"http://{host}:{port}"
    finally:
        server.stop()
