"""Intake: rows first, committed, then the message (REFERENCE.md failure 8).

The file goes to blob storage under a key derived from the document uuid,
never from the user's file name. The Celery task id is chosen before the
message is sent and written with the `ocr_queued` status in the same commit,
so no worker can run ahead of a row it cannot see, and nothing written after
the enqueue can overwrite a later status.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.app.stages import dispatch as dispatch  # intake's public name for it, too
from pipeline.domain.models import INTAKE_PDF_PAGES, SourceDocument
from pipeline.errors import ConfigurationError
from pipeline.ports.services import Services

_MAX_EXTENSION = 10


@dataclass(frozen=True)
class Submission:
    file: str
    document_uuid: str
    #: The project already had a document with these bytes; it was not processed again.
    already_processed: bool = False
    #: The project already had it and `--reprocess` ran it again (a new processing version).
    reprocessed: bool = False


@dataclass(frozen=True)
class SkippedPath:
    """A path found under a folder given but not submitted, and why (shown in the run report)."""

    path: str
    reason: str


@dataclass(frozen=True)
class CollectedFiles:
    files: list[Path]
    skipped: list[SkippedPath]


def scan_paths(paths: Iterable[Path], *, follow_symlinks: bool = False) -> CollectedFiles:
    """Files named, and files below folders named (recursively), skipping hidden ones.

    A symbolic link found below a folder is followed only when its target lies
    inside one of the folders given (a link to `/etc/passwd` planted in an inbox
    would otherwise be uploaded and sent to the LLM); links to folders are never
    descended (no cycles, no file twice). Every link left out is reported in
    `skipped` with its reason. `follow_symlinks=True` follows every link, file
    or folder, wherever it points. A path named directly (a link included) is
    the caller's explicit choice and is always used; a folder named through a
    link is bounded by the folder it resolves to.
    """
    given = list(paths)
    for path in given:
        if not path.exists():
            raise ConfigurationError(f"no such file or directory: {path}")
    roots = [path.resolve() for path in given if path.is_dir()]
    found: list[Path] = []
    skipped: list[SkippedPath] = []
    for path in given:
        if path.is_dir():
            _scan_folder(path, roots, follow_symlinks, found, skipped)
        elif path.is_file():
            found.append(path)
        else:
            skipped.append(SkippedPath(str(path), "not a regular file"))
    return CollectedFiles(found, skipped)


def collect_files(paths: Iterable[Path], *, follow_symlinks: bool = False) -> list[Path]:
    """The files of `scan_paths` (what is skipped is dropped silently: harness use)."""
    return scan_paths(paths, follow_symlinks=follow_symlinks).files


def _inside(target: Path, roots: Sequence[Path]) -> bool:
    return any(target == root or target.is_relative_to(root) for root in roots)


def _scan_folder(
    folder: Path,
    roots: Sequence[Path],
    follow_symlinks: bool,
    found: list[Path],
    skipped: list[SkippedPath],
) -> None:
    visited = {folder.resolve()}  # folders entered through links: no cycles
    pending = [folder]
    files: list[Path] = []
    while pending:
        current = pending.pop()
        try:
            entries = sorted(current.iterdir())
        except OSError as exc:
            skipped.append(SkippedPath(str(current), f"cannot read the folder ({exc.strerror})"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_symlink():
                try:
                    target = entry.resolve(strict=True)
                except (OSError, RuntimeError):  # missing target, or a loop of links
                    skipped.append(SkippedPath(str(entry), "broken symbolic link"))
                    continue
                if target.is_dir():
                    if not follow_symlinks:
                        if not _inside(target, roots):
                            skipped.append(
                                SkippedPath(
                                    str(entry),
                                    f"symbolic link to a folder outside the folders given "
                                    f"({target}); use --follow-symlinks to include it",
                                )
                            )
                        # A link to a folder inside: its files are collected where they are.
                        continue
                    if target not in visited:
                        visited.add(target)
                        pending.append(entry)
                    continue
                if not follow_symlinks and not _inside(target, roots):
                    skipped.append(
                        SkippedPath(
                            str(entry),
                            f"symbolic link to a file outside the folders given ({target}); "
                            "use --follow-symlinks to include it",
                        )
                    )
                    continue
                if target.is_file():
                    files.append(entry)
                else:
                    skipped.append(SkippedPath(str(entry), "not a regular file"))
            elif entry.is_dir():
                pending.append(entry)
            elif entry.is_file():
                files.append(entry)
            else:
                skipped.append(SkippedPath(str(entry), "not a regular file (device, pipe...)"))
    found.extend(sorted(files))


def storage_key(document_uuid: str, file_name: str) -> str:
    extension = Path(file_name).suffix.lower().lstrip(".")
    suffix = f".{extension}" if extension.isalnum() and len(extension) <= _MAX_EXTENSION else ""
    return f"documents/{document_uuid}/original{suffix}"


def content_sha256(path: Path) -> str:
    """sha256 of the file's bytes, read in blocks (a file may be far over the upload limit)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def submit_file(
    services: Services,
    path: Path,
    project_uuid: str,
    *,
    document_uuid: str | None = None,
    unless_known: bool = False,
) -> Submission:
    """Store the file and create its rows; files over a limit are recorded, not uploaded.

    Over a limit: the size, or for a PDF its page count (read from the page tree
    here, before the upload); the OCR stage then fails the document with the reason.
    `document_uuid` is a fresh uuid4 unless given (the simulator derives it from
    its seed, so a replayed run has the same rows). With `unless_known`, a file
    whose bytes the project got meanwhile (another run of the same file) creates
    nothing: the submission names that document, `already_processed`.
    """
    size = path.stat().st_size
    document_uuid = document_uuid or str(uuid.uuid4())
    key = storage_key(document_uuid, path.name)
    intake_metadata: dict[str, object] = {}
    if size <= services.settings.max_file_bytes:
        data = path.read_bytes()
        pages = services.parser.page_count(data) if path.suffix.lower() == ".pdf" else None
        if pages is not None and pages > services.settings.max_pdf_pages:
            intake_metadata[INTAKE_PDF_PAGES] = pages
        else:
            services.blobs.put(key, data)
    holder = services.store.create_document(
        SourceDocument(
            uuid=document_uuid,
            project_uuid=project_uuid,
            original_file_name=path.name,
            file_type=Path(path.name).suffix.lower().lstrip("."),
            storage_key=key,
            size_bytes=size,
            ocr_metadata=intake_metadata,
            content_sha256=content_sha256(path),
        ),
        unless_content_known=unless_known,
    )
    if holder != document_uuid:
        if INTAKE_PDF_PAGES not in intake_metadata and size <= services.settings.max_file_bytes:
            services.blobs.delete(key)  # our upload; the holder has its own
        return Submission(file=str(path), document_uuid=holder, already_processed=True)
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


def submit_all(services: Services, paths: Sequence[Path], project_name: str) -> list[Submission]:
    project_uuid = services.store.ensure_project(project_name)
    return [submit_file(services, path, project_uuid) for path in paths]


def submit_and_dispatch(
    services: Services, path: Path, project_uuid: str, *, unless_known: bool = False
) -> Submission:
    """The direct path (`docpipe run`): store, claim its own queue row, send."""
    submission = submit_file(services, path, project_uuid, unless_known=unless_known)
    if submission.already_processed:
        return submission
    claim_own(services, submission.document_uuid, worker="docpipe-run")
    dispatch(services, submission.document_uuid)
    return submission


def submit_unless_known(
    services: Services, path: Path, project_uuid: str, *, reprocess: bool = False
) -> Submission:
    """`docpipe run`: a file whose bytes the project already has is not a new document.

    Same sha256 in the same project: the existing document is reported with its
    current status (completed, or failed with its reason) and nothing is sent.
    With `reprocess` that document goes back to pending in a new processing
    version (derived rows cleared, as `docpipe reset` does) and runs again; it
    is still one document. Other files are submitted and dispatched as new.
    """
    known = services.store.find_by_content(project_uuid, content_sha256(path))
    if known is None:
        # Atomic with the insert: a concurrent run of the same file may have won.
        return submit_and_dispatch(services, path, project_uuid, unless_known=True)
    if not reprocess:
        return Submission(file=str(path), document_uuid=known.uuid, already_processed=True)
    reprocess_document(services, known.uuid)
    claim_own(services, known.uuid, worker="docpipe-run")
    dispatch(services, known.uuid)
    return Submission(file=str(path), document_uuid=known.uuid, reprocessed=True)


def reprocess_document(services: Services, document_uuid: str) -> None:
    """`docpipe run --reprocess` of a file the project has: reset it and give it a queue row.

    The caller (the run itself) claims that row and dispatches the document.
    """
    services.store.requeue_new_version(document_uuid, stage="reprocess")
