"""One function per stage: the only place stage logic lives.

Each takes the services and a document id (plus the processing version the
message was sent for), is idempotent, and says what comes next. A stage that
finds its document stale, finished or already taken over by a later stage
does nothing (a duplicate delivery); one that finds it at its own step runs
again and rewrites identical rows (a redelivery after a crash).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache

from pipeline.app.policy import record_progress
from pipeline.domain.categorize import categorize
from pipeline.domain.chunking import chunk_text
from pipeline.domain.cleaning import clean_text, derive_title
from pipeline.domain.entities import build_mentions, parse_llm_entities
from pipeline.domain.graph import stage_relationships
from pipeline.domain.models import (
    INTAKE_PDF_PAGES,
    PROGRESS_ORDER,
    Chunk,
    DocumentNode,
    Fence,
    FileType,
    Mention,
    OcrJob,
    SourceDocument,
    Stage,
    Status,
    progress_rank,
    stable_uuid,
)
from pipeline.domain.packing import plan_packs
from pipeline.domain.resolution import resolve_mentions
from pipeline.errors import (
    DocumentTooLarge,
    EmptyDocument,
    MalformedResponse,
    PermanentError,
    StaleDelivery,
)
from pipeline.ports import LlmAnswer, OcrRequest, StartedRecord
from pipeline.ports.services import Services

log = logging.getLogger(__name__)

#: Bump when stage logic changes what it caches: old cache entries then miss.
CACHE_SCHEMA = "1"
#: The cache key part of a document's LLM usage record (`llm_usage_key`).
LLM_USAGE = "llm_usage"


@dataclass(frozen=True)
class StageResult:
    """What the task layer does next: chain a stage, poll OCR again, or nothing."""

    next_stage: Stage | None = None
    poll_job_id: str | None = None
    #: Polls made so far; travels in the next poll's message.
    polls: int = 0
    skipped: bool = False
    detail: str = ""


SKIPPED = StageResult(skipped=True)

#: Highest status at which a stage may still (re)run; above it a later stage owns the document.
_CEILING: dict[Stage, Status] = {
    Stage.OCR: Status.OCR_COMPLETE,
    Stage.DOCUMENT_NODE: Status.TEXT_PROCESSING,
    Stage.CHUNKING: Status.TEXT_PROCESSING,
    Stage.ENTITY_EXTRACTION: Status.ENTITY_EXTRACTION,
    Stage.ENTITY_RESOLUTION: Status.ENTITY_RESOLUTION,
    Stage.RELATIONSHIPS: Status.GRAPH_BUILDING,
}


#: The claim of the delivery running on this thread (greenlet under gevent), so the task
#: layer can fence the failure it records too (`claimed_fence`).
_delivery = threading.local()


def carried_past(document: SourceDocument, stage: Stage) -> bool:
    """Whether the document ended, or a later stage owns it: a verdict of `stage` is stale."""
    return document.status.is_terminal or progress_rank(document.status) > progress_rank(
        _CEILING[stage]
    )


def forget_claim() -> None:
    """Forget the last delivery's claim; the task layer calls it before each stage."""
    _delivery.fence = None
    _delivery.started = None
    _delivery.deferred = None


def started_with_lock(started: StartedRecord | None) -> None:
    """The "started" the task layer's lock acquisition wrote for this delivery's stage
    (`StateTracker.acquire_counted_and_record_started`): `begin` keeps it if it claims
    the document, and undoes it if not, instead of writing its own."""
    _delivery.started = started


@cache  # a few values per stage, asked on every broker delivery
def state_before_claim(stage: Stage) -> tuple[str, ...]:
    """The state hash's `{stage}_status` values that say a delivery of `stage` will claim
    the document (an absent one too): "started" (a delivery before it) and the statuses
    before the stage runs (OCR's queued). What the lock acquisition's "started" replaces;
    a guess the claim checks (`begin`), not a rule: a finished value only costs a write."""
    running = progress_rank(stage.running_status)
    return ("started", *(str(s) for s in PROGRESS_ORDER if progress_rank(s) < running))


def _take_started(document_uuid: str, stage: Stage) -> StartedRecord | None:
    """The acquisition's "started" for this stage of this document, taken once."""
    started: StartedRecord | None = getattr(_delivery, "started", None)
    _delivery.started = None
    if started is None or (started.document_uuid, started.stage) != (document_uuid, str(stage)):
        return None
    return started


def claimed_fence() -> Fence | None:
    """The claim `begin` made for the stage that last ran here, if it got that far, at any
    status (`Fence.claim_only`): what fences the delivery's verdict, a failure or a dead
    letter, which may come after its own transitions."""
    fence: Fence | None = getattr(_delivery, "fence", None)
    return None if fence is None else fence.claim_only()


def begin(
    services: Services, stage: Stage, document_uuid: str, version: int, *, text: bool = False
) -> SourceDocument | None:
    """Load the document and claim it for this delivery, or None for a duplicate delivery.

    Its OCR text (`raw_text`) is read only with `text`: the stages that use it ask.

    The claim (read, judged and updated in one transaction) moves the
    document to the stage's status and gives it a fresh fencing token: every
    write of this delivery passes `Fence.of(document)` and commits only while
    the document is still there. A later delivery of the same stage (a redelivery while this one
    stalls) claims it anew, and this one's writes are refused (StaleDelivery).
    """

    def claim_status(document: SourceDocument) -> Status | None:
        """The status to claim the document at; None leaves it (a duplicate delivery)."""
        if document.processing_version != version or document.status.is_terminal:
            return None
        if progress_rank(document.status) > progress_rank(_CEILING[stage]):
            return None
        if progress_rank(document.status) < progress_rank(stage.running_status):
            return stage.running_status
        return document.status

    started = _take_started(document_uuid, stage)
    claimed: SourceDocument | None = None
    try:
        # The read, this judgement and the claim are one transaction: nothing can move
        # the document in between.
        claimed = services.store.read_and_claim(
            document_uuid, stage=str(stage), judge=claim_status, with_text=text
        )
    except KeyError:
        log.warning("%s: document %s no longer exists; dropping the task", stage, document_uuid)
        return None
    finally:
        if claimed is None and started is not None:
            # Written with the lock, before this claim: a delivery that claims nothing
            # leaves the state hash as it found it.
            services.state.unrecord_started(started)
    if claimed is None:
        return None
    _delivery.fence = Fence.of(claimed)
    if started is None:
        # One write: "started" replaces every field a write of the claimed status would set.
        services.state.record(document_uuid, str(stage), "started")
    return claimed


def mark(
    services: Services,
    document: SourceDocument,
    stage: Stage,
    status: Status,
    *,
    error: str | None = None,
    metadata: dict[str, object] | None = None,
    celery_task_id: str | None = None,
    fence: Fence | None = None,
) -> bool:
    """Record a transition in the database (with history) and the Redis state hash.

    With a `fence` (a stage delivery's own transition) it commits only while
    that delivery still holds the document (else StaleDelivery).
    """
    changed = services.store.advance_status(
        document.uuid,
        status,
        stage=str(stage),
        processing_version=document.processing_version,
        error_message=error,
        celery_task_id=celery_task_id,
        fence=fence,
    )
    if changed:
        state_meta = dict(metadata or {})
        if error:
            state_meta["error"] = error
        deferred: dict[tuple[str, str], DeferredState] | None = getattr(_delivery, "deferred", None)
        if deferred is None:
            services.state.record(document.uuid, str(stage), str(status), state_meta or None)
        else:
            key = (document.uuid, str(stage))
            earlier = deferred.get(key)
            kept = state_meta or (earlier.metadata if earlier is not None else None)
            deferred[key] = DeferredState(str(status), kept or None)
    return changed


@dataclass(frozen=True)
class DeferredState:
    """A transition's state-hash write held back (`deferring_state_writes`): the status,
    and the metadata of the last transition that had some (the hash keeps it likewise)."""

    status: str
    metadata: dict[str, object] | None


@contextmanager
def deferring_state_writes(services: Services) -> Iterator[None]:
    """Hold back the state-hash writes of the stage's own transitions (`mark`) while it runs.

    A finished stage's last state write (its status "completed") goes with its lock's
    release, and replaces what those writes set but their metadata: the task layer
    makes them one round trip (`take_deferred_states`; issue 15). A stage that raises
    has them written on its way out, as `mark` would have; if Redis cannot take them
    then, the stage's own failure decides what follows (the hash only informs).
    """
    _delivery.deferred = {}
    try:
        yield
    except BaseException:
        for (document_uuid, stage), held in take_deferred_states().items():
            try:
                services.state.record(document_uuid, stage, held.status, held.metadata)
            except Exception as exc:
                log.warning("%s %s: state hash not written (%s)", stage, document_uuid, exc)
        raise


def take_deferred_states() -> dict[tuple[str, str], DeferredState]:
    """The state writes `deferring_state_writes` held back, by (document, stage); ends it."""
    deferred: dict[tuple[str, str], DeferredState] | None = getattr(_delivery, "deferred", None)
    _delivery.deferred = None
    return deferred or {}


def cache_key(document: SourceDocument, *parts: str) -> str:
    return ":".join((f"v{CACHE_SCHEMA}.{document.processing_version}", document.uuid, *parts))


# --- stage 1: OCR / text extraction ------------------------------------------------


def start_ocr(services: Services, document_uuid: str, version: int, attempt: str) -> StageResult:
    # The text of an earlier OCR of this version, reused when its cache entry says so.
    document = begin(services, Stage.OCR, document_uuid, version, text=True)
    if document is None:
        return SKIPPED
    if document.size_bytes > services.settings.max_file_bytes:
        raise DocumentTooLarge.over_limit(
            f"file is {document.size_bytes:,} bytes",
            "max_file_bytes",
            services.settings.max_file_bytes,
            "bytes",
        )
    intake_pages = document.ocr_metadata.get(INTAKE_PDF_PAGES)
    if isinstance(intake_pages, int) and intake_pages > services.settings.max_pdf_pages:
        # Counted at intake, where the file was kept from the upload.
        raise DocumentTooLarge.over_limit(
            f"PDF has {intake_pages:,} pages",
            "max_pdf_pages",
            services.settings.max_pdf_pages,
            "pages",
        )
    cached = services.cache.get(cache_key(document, "ocr"))
    if cached is not None and document.raw_text is not None:
        return _finish_ocr(services, document, document.raw_text, dict(document.ocr_metadata))

    try:
        data = services.blobs.get(document.storage_key)
    except KeyError:
        hint = ""
        if services.settings.blob_url.startswith("file://"):
            # The usual cause: a worker on another host, with its own folder of that name.
            hint = (
                f" ({services.settings.blob_url} is a folder on one host: every worker must "
                "share it, or use DOCPIPE_BLOB_URL=s3://BUCKET/PREFIX)"
            )
        raise PermanentError(f"the stored file {document.storage_key} is missing{hint}") from None
    file_type = services.parser.detect_file_type(document.original_file_name, data)
    if file_type is FileType.PDF:
        pages = services.parser.page_count(data)
        if pages is not None and pages > services.settings.max_pdf_pages:
            # Textract's asynchronous limit; refused before a job is started (and paid for).
            raise DocumentTooLarge.over_limit(
                f"PDF has {pages:,} pages",
                "max_pdf_pages",
                services.settings.max_pdf_pages,
                "pages",
            )
        token = stable_uuid(document.uuid, "ocr", document.processing_version, attempt)
        job_id = services.ocr.start(
            OcrRequest(
                document_uuid=document.uuid,
                storage_key=document.storage_key,
                file_type=str(file_type),
                client_request_token=token,
            )
        )
        services.store.record_ocr_job(document.uuid, job_id, token, OcrJob.IN_PROGRESS)
        return StageResult(poll_job_id=job_id, detail="ocr job started")
    extracted = services.parser.extract(file_type, data, document.uuid)
    return _finish_ocr(
        services,
        document,
        extracted.text,
        {"method": extracted.method, "pages": extracted.pages},
    )


def poll_ocr(
    services: Services, document_uuid: str, version: int, job_id: str, polls: int
) -> StageResult:
    """One poll; the task reschedules itself with a countdown while the job runs."""
    document = begin(services, Stage.OCR, document_uuid, version)
    if document is None:
        return SKIPPED
    job = services.ocr.poll(job_id)
    services.store.update_ocr_job(job_id, job.state, polls + 1)
    if job.state == OcrJob.IN_PROGRESS:
        if polls + 1 >= services.settings.ocr_max_polls:
            raise PermanentError(
                f"OCR job {job_id} still running after {polls + 1} polls; giving up"
            )
        return StageResult(poll_job_id=job_id, polls=polls + 1, detail="ocr job in progress")
    if job.state == OcrJob.FAILED:
        raise PermanentError(f"OCR job failed: {job.error or 'no reason given'}")
    metadata: dict[str, object] = {"method": "ocr", "pages": job.pages, "job_id": job_id}
    metadata.update(job.metadata)
    return _finish_ocr(services, document, job.text, metadata)


def _finish_ocr(
    services: Services, document: SourceDocument, text: str, metadata: dict[str, object]
) -> StageResult:
    if not text.strip():
        raise EmptyDocument("no text could be extracted from the document")
    limit = services.settings.max_extracted_chars
    if len(text) > limit:
        # The local parsers stop at the limit themselves; an OCR engine's text is
        # bounded here, before it is stored and chunked.
        raise DocumentTooLarge.over_limit(
            f"the extracted text has {len(text):,} characters",
            "max_extracted_chars",
            limit,
            "characters",
        )
    fence = Fence.of(document)
    services.store.save_raw_text(document.uuid, text, metadata, fence=fence)
    services.cache.set(cache_key(document, "ocr"), "1", services.settings.cache_ttl_s)
    mark(services, document, Stage.OCR, Status.OCR_COMPLETE, metadata=metadata, fence=fence)
    return StageResult(next_stage=Stage.DOCUMENT_NODE)


# --- stages 2 and 3: document node and chunking ----------------------------------------


def create_document_node(services: Services, document_uuid: str, version: int) -> StageResult:
    document = begin(services, Stage.DOCUMENT_NODE, document_uuid, version, text=True)
    if document is None:
        return SKIPPED
    if document.raw_text is None:
        # Failure 7: never start on a document whose OCR has not produced text.
        raise PermanentError("document node started before OCR produced any text")
    cleaned = clean_text(document.raw_text)
    if not cleaned:
        raise EmptyDocument("the document's text is empty after cleaning")
    node = DocumentNode(
        uuid=document.uuid,
        project_uuid=document.project_uuid,
        title=derive_title(document.original_file_name, cleaned),
        category=categorize(cleaned, document.original_file_name),
        cleaned_text=cleaned,
    )
    services.store.save_document_node(node, fence=Fence.of(document))
    return StageResult(next_stage=Stage.CHUNKING)


def chunk_document(services: Services, document_uuid: str, version: int) -> StageResult:
    document = begin(services, Stage.CHUNKING, document_uuid, version)
    if document is None:
        return SKIPPED
    node = services.store.get_document_node(document_uuid)
    settings = services.settings
    spans = chunk_text(
        node.cleaned_text, min_chars=settings.chunk_min_chars, max_chars=settings.chunk_max_chars
    )
    if len(spans) > settings.max_chunks_per_document:
        # Checked before any row is written: every later stage grows with the chunks.
        raise DocumentTooLarge.over_limit(
            f"the text makes {len(spans):,} chunks",
            "max_chunks_per_document",
            settings.max_chunks_per_document,
            "chunks per document",
        )
    chunks = [
        Chunk(
            uuid=stable_uuid(document_uuid, "chunk", span.index),
            document_uuid=document_uuid,
            chunk_index=span.index,
            start=span.start,
            end=span.end,
            text=span.text,
        )
        for span in spans
    ]
    services.store.replace_chunks(document_uuid, chunks, fence=Fence.of(document))
    return StageResult(next_stage=Stage.ENTITY_EXTRACTION, detail=f"{len(chunks)} chunks")


# --- stages 4 and 5: entities ------------------------------------------------------


def extract_entities(services: Services, document_uuid: str, version: int) -> StageResult:
    """Entities of every chunk: cached answers first, the misses in packed LLM requests.

    Consecutive uncached chunks share one request up to `llm_pack_tokens`
    (pipeline.domain.packing); each chunk's answer is verified against that
    chunk and cached on its own, so a retry sends only what is still missing.
    A chunk whose answer in a pack is malformed is asked again alone, once;
    a malformed answer to a request of one chunk raises as before.
    """
    document = begin(services, Stage.ENTITY_EXTRACTION, document_uuid, version)
    if document is None:
        return SKIPPED
    extractor = services.extractor
    settings = services.settings
    chunks = services.store.get_chunks(document_uuid)
    keys = [
        cache_key(document, "llm", extractor.model, hashlib.sha256(c.text.encode()).hexdigest())
        for c in chunks
    ]
    payloads = {
        position: cached
        for position, cached in enumerate(services.cache.get_many(keys))
        if cached is not None
    }
    misses = [position for position in range(len(chunks)) if position not in payloads]
    packs = plan_packs(
        [chunks[position].text for position in misses],
        settings.llm_pack_tokens,
        extractor.request_tokens,
    )
    # Which pack answers each missing chunk; packs run lazily, in chunk order, so an
    # oversized document stops (max_mentions_per_document) before paying for the rest.
    pack_of = {misses[i]: number for number, pack in enumerate(packs) for i in pack}
    usage = LlmUsage()
    mentions: list[Mention] = []
    try:
        for position, chunk in enumerate(chunks):
            if position not in payloads:
                members = [misses[i] for i in packs[pack_of[position]]]
                _run_pack(services, document, chunks, keys, members, payloads, usage)
            entities = parse_llm_entities(payloads[position], chunk.text)
            mentions.extend(build_mentions(document_uuid, chunk, entities))
            if len(mentions) > settings.max_mentions_per_document:
                # Resolution and relationship staging grow with the mentions; stop here.
                raise DocumentTooLarge.over_limit(
                    f"the text holds more than {settings.max_mentions_per_document:,} "
                    "entity mentions",
                    "max_mentions_per_document",
                    settings.max_mentions_per_document,
                    "mentions per document",
                )
    finally:
        if usage.calls:
            add_llm_usage(services, document, usage)
    services.store.replace_mentions(document_uuid, mentions, fence=Fence.of(document))
    return StageResult(
        next_stage=Stage.ENTITY_RESOLUTION,
        detail=f"{len(mentions)} mentions, {usage.calls} LLM calls",
    )


def _run_pack(
    services: Services,
    document: SourceDocument,
    chunks: list[Chunk],
    keys: list[str],
    members: list[int],
    payloads: dict[int, str],
    usage: LlmUsage,
) -> None:
    """One request for the chunks at `members`; each good answer is cached at once."""
    extractor = services.extractor
    # A rate-limited extractor (pipeline/app/rate_limited.py) waits for its slot here.
    answer = extractor.extract_many([chunks[m].text for m in members])
    usage.add(answer)
    malformed: list[int] = []
    for member, payload in zip(members, answer.payloads, strict=True):
        try:
            # Parse before caching: a malformed answer raises and is never cached (failure 10).
            parse_llm_entities(payload, chunks[member].text)
        except MalformedResponse:
            if len(members) == 1:
                raise
            malformed.append(member)
            continue
        services.cache.set(keys[member], payload, services.settings.cache_ttl_s)
        payloads[member] = payload
    # The pack's good answers are cached first: if a chunk asked again alone fails once
    # more, the task's retry sends only what is still missing.
    for member in malformed:
        chunk = chunks[member]
        log.info(
            "chunk %d of %s: malformed answer in a pack of %d; asking for it alone",
            chunk.chunk_index,
            document.uuid,
            len(members),
        )
        alone = extractor.extract_many([chunk.text])
        usage.add(alone)
        payload = alone.payloads[0]
        parse_llm_entities(payload, chunk.text)
        services.cache.set(keys[member], payload, services.settings.cache_ttl_s)
        payloads[member] = payload
    # Kept even if a later pack fails: the retry budget counts this as progress.
    record_progress()


@dataclass
class LlmUsage:
    """LLM requests and tokens one delivery of entity extraction spent."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, answer: LlmAnswer) -> None:
        self.calls += 1
        self.prompt_tokens += answer.prompt_tokens
        self.completion_tokens += answer.completion_tokens


def llm_usage_key(document: SourceDocument) -> str:
    """Where a document's LLM usage (all deliveries of this version) is kept."""
    return cache_key(document, LLM_USAGE)


def add_llm_usage(services: Services, document: SourceDocument, usage: LlmUsage) -> None:
    """Add one delivery's LLM usage to the document's (read by `docpipe load`).

    Read-modify-write is safe here: one delivery at a time holds the document's
    entity-extraction lock.
    """
    key = llm_usage_key(document)
    total = read_llm_usage(services.cache.get(key))
    total.calls += usage.calls
    total.prompt_tokens += usage.prompt_tokens
    total.completion_tokens += usage.completion_tokens
    services.cache.set(key, json.dumps(asdict(total)), services.settings.cache_ttl_s)


def read_llm_usage(raw: str | None) -> LlmUsage:
    if raw is None:
        return LlmUsage()
    data = json.loads(raw)
    return LlmUsage(
        calls=int(data["calls"]),
        prompt_tokens=int(data["prompt_tokens"]),
        completion_tokens=int(data["completion_tokens"]),
    )


def resolve_entities(services: Services, document_uuid: str, version: int) -> StageResult:
    document = begin(services, Stage.ENTITY_RESOLUTION, document_uuid, version)
    if document is None:
        return SKIPPED
    mentions = services.store.get_mentions(document_uuid)
    resolution = resolve_mentions(
        document_uuid, mentions, fuzzy_threshold=services.settings.fuzzy_threshold
    )
    services.store.replace_canonical_entities(
        document_uuid,
        resolution.entities,
        resolution.mention_canonical,
        fence=Fence.of(document),
    )
    return StageResult(next_stage=Stage.RELATIONSHIPS)


# --- stage 6: relationship staging -------------------------------------------------


def build_relationships(services: Services, document_uuid: str, version: int) -> StageResult:
    document = begin(services, Stage.RELATIONSHIPS, document_uuid, version)
    if document is None:
        return SKIPPED
    store = services.store
    node = store.get_document_node(document_uuid)
    chunks = store.get_chunks(document_uuid)
    mentions = store.get_mentions(document_uuid)
    entities = store.get_canonical_entities(document_uuid)
    relationships = stage_relationships(node, chunks, mentions, entities)
    fence = Fence.of(document)
    store.replace_relationships(document_uuid, relationships, fence=fence)
    # The graph sink is outside the database transaction: the fence is checked right
    # before it (a delivery that loses its claim during the write itself still writes;
    # MERGE on stable ids keeps that write identical to the winner's).
    store.check_fence(fence)
    services.graph.write(node, chunks, mentions, entities, relationships)
    # Completing also closes the queue row, in the same commit.
    mark(services, document, Stage.RELATIONSHIPS, Status.COMPLETED, fence=fence)
    return StageResult()


def fail(
    services: Services,
    document_uuid: str,
    version: int,
    stage: Stage,
    status: Status,
    reason: str,
    *,
    fence: Fence | None = None,
) -> None:
    """Record a terminal failure with its readable reason; other documents go on.

    With the failing delivery's `fence`, an overtaken delivery cannot fail a document
    its successor carries on (StaleDelivery, nothing recorded).
    """
    try:
        document = services.store.get_document(document_uuid)
    except KeyError:
        return
    if document.processing_version != version:
        return
    mark(services, document, stage, status, error=reason, fence=fence)


def dead_letter(
    services: Services,
    document_uuid: str,
    version: int,
    stage: Stage,
    reason: str,
    *,
    task_name: str,
    retries: int,
    fence: Fence | None = None,
) -> bool:
    """Dead-letter the document (terminal status and dead letter in one commit); `reason` says why.

    False, with nothing written, when the document already ended or was reset to a
    new version, or a later stage owns it: the verdict is a duplicate delivery's (a
    copy restored after the visibility timeout), and a dead letter beside a
    document carried on would be false. With the deciding delivery's `fence`, an
    overtaken delivery's verdict writes nothing too (False).
    """
    try:
        document = services.store.get_document(document_uuid)
    except KeyError:
        return False
    if document.processing_version != version or carried_past(document, stage):
        log.warning(
            "%s %s: already %s; the duplicate's verdict is dropped: %s",
            stage,
            document_uuid,
            document.status,
            reason,
        )
        return False
    try:
        moved = services.store.dead_letter(
            document_uuid,
            stage=str(stage),
            processing_version=version,
            task_name=task_name,
            error=reason,
            retries=retries,
            fence=fence,
        )
    except StaleDelivery as stale:
        log.warning("%s %s: stale delivery, dead letter discarded: %s", stage, document_uuid, stale)
        return False
    if moved:
        log.warning("%s %s dead-lettered: %s", stage, document_uuid, reason)
        status = str(Status.DEAD_LETTERED)
        services.state.record(document_uuid, str(stage), status, {"error": reason})
    return moved


STAGE_FUNCTIONS = {
    Stage.DOCUMENT_NODE: create_document_node,
    Stage.CHUNKING: chunk_document,
    Stage.ENTITY_EXTRACTION: extract_entities,
    Stage.ENTITY_RESOLUTION: resolve_entities,
    Stage.RELATIONSHIPS: build_relationships,
}


def dispatch(services: Services, document_uuid: str) -> str:
    """Mark the document queued (one commit with its task id), then send its first task.

    Returns the task id. The send goes through the services' dispatcher (Celery
    in every mode but the simulator's), after the commit: rows first.
    """
    document = services.store.get_document(document_uuid)
    task_id = str(uuid.uuid4())
    mark(
        services,
        document,
        Stage.OCR,
        Status.OCR_QUEUED,
        metadata={"task_id": task_id},
        celery_task_id=task_id,
    )
    services.dispatcher.send_stage(
        Stage.OCR, document_uuid, document.processing_version, task_id=task_id
    )
    return task_id
