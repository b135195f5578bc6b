"""Intake: rows first, committed, then the message (REFERENCE.md failure 8).

The file goes to blob storage under a key derived from the document uuid,
never from the user's file name. The Celery task id is chosen before the
message is sent and written with the `ocr_queued` status in the same commit,
so no worker can run ahead of a row it cannot see, and nothing written after
the enqueue can overwrite a later status.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.bootstrap import Services
from pipeline.domain.models import SourceDocument, Stage, Status
from pipeline.errors import ConfigurationError

_MAX_EXTENSION = 10


@dataclass(frozen=True)
class Submission:
    file: str
    document_uuid: str


def collect_files(paths: Iterable[Path]) -> list[Path]:
    """Files named, and files below folders named (recursively), skipping hidden ones."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                )
            )
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigurationError(f"no such file or directory: {path}")
    return found


def storage_key(document_uuid: str, file_name: str) -> str:
    extension = Path(file_name).suffix.lower().lstrip(".")
    suffix = f".{extension}" if extension.isalnum() and len(extension) <= _MAX_EXTENSION else ""
    return f"documents/{document_uuid}/original{suffix}"


def submit_file(services: Services, path: Path, project_uuid: str) -> Submission:
    """Store the file and create its rows; oversized files are recorded, not uploaded."""
    size = path.stat().st_size
    document_uuid = str(uuid.uuid4())
    key = storage_key(document_uuid, path.name)
    if size <= services.settings.max_file_bytes:
        services.blobs.put(key, path.read_bytes())
    services.store.create_document(
        SourceDocument(
            uuid=document_uuid,
            project_uuid=project_uuid,
            original_file_name=path.name,
            file_type=Path(path.name).suffix.lower().lstrip("."),
            storage_key=key,
            size_bytes=size,
        )
    )
    services.store.enqueue(document_uuid)
    return Submission(file=str(path), document_uuid=document_uuid)


def claim_own(services: Services, document_uuid: str, worker: str) -> bool:
    """Claim this document's queue row, so no queue processor enqueues it again."""
    settings = services.settings
    claimed = services.store.claim(
        worker,
        limit=1,
        stale_after=settings.queue_stale_after_s,
        max_attempts=settings.queue_max_attempts,
        documents=[document_uuid],
    )
    return bool(claimed)


def dispatch(services: Services, document_uuid: str) -> str:
    """Mark the document queued (one commit with its task id), then send its first task."""
    from pipeline.stages import mark
    from pipeline.tasks import send_stage

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
    send_stage(Stage.OCR, document_uuid, document.processing_version, task_id=task_id)
    return task_id


def submit_all(services: Services, paths: Sequence[Path], project_name: str) -> list[Submission]:
    project_uuid = services.store.ensure_project(project_name)
    return [submit_file(services, path, project_uuid) for path in paths]


def submit_and_dispatch(services: Services, path: Path, project_uuid: str) -> Submission:
    """The direct path (`docpipe run`): store, claim its own queue row, send."""
    submission = submit_file(services, path, project_uuid)
    claim_own(services, submission.document_uuid, worker="docpipe-run")
    dispatch(services, submission.document_uuid)
    return submission
