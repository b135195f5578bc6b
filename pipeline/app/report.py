"""Run reports: one row per document plus totals, as a table or one JSON object."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.app.document_ids import short_uuid
from pipeline.app.intake import SkippedPath, Submission
from pipeline.ports.services import Services


def skipped_pages_note(ocr_metadata: Mapping[str, Any]) -> str | None:
    """A short note for a document completed without its scanned pages, or None.

    Reads what the OCR job recorded (`pages_without_text`, `scanned_pages_hint`):
    a mixed PDF read without local OCR keeps only its text-layer pages.
    """
    pages = ocr_metadata.get("pages_without_text")
    if not isinstance(pages, list) or not pages:
        return None
    numbers = ", ".join(str(page) for page in pages)
    hint = ocr_metadata.get("scanned_pages_hint") or "install 'docpipe[ocr]'"
    label = "page" if len(pages) == 1 else "pages"
    return f"{len(pages)} scanned page(s) not read ({label} {numbers}): {hint}"


def document_row(services: Services, submission: Submission) -> dict[str, Any]:
    store = services.store
    document = store.get_document(submission.document_uuid)
    counts = store.counts(submission.document_uuid)
    try:
        category: str | None = str(store.get_document_node(submission.document_uuid).category)
    except KeyError:
        category = None
    return {
        "file": submission.file,
        "document_uuid": document.uuid,
        "short_uuid": short_uuid(document.uuid),
        "already_processed": submission.already_processed,
        "reprocessed": submission.reprocessed,
        "status": str(document.status),
        "error": document.error_message,
        "category": category,
        "chunks": counts.chunks,
        "mentions": counts.mentions,
        "canonical_entities": counts.canonical_entities,
        "relationships": counts.relationships,
        # A mixed PDF read without local OCR: its scanned pages are missing from the text.
        "skipped_scanned_pages": len(document.ocr_metadata.get("pages_without_text") or []),
        "note": skipped_pages_note(document.ocr_metadata),
    }


def skipped_rows(skipped: Sequence[SkippedPath]) -> list[dict[str, str]]:
    return [{"path": entry.path, "reason": entry.reason} for entry in skipped]


def build_report(
    services: Services,
    submissions: Sequence[Submission],
    elapsed_s: float,
    *,
    skipped: Sequence[SkippedPath] = (),
) -> dict[str, Any]:
    """Rows, totals and the paths left out (`skipped`: symbolic links out of the folders...)."""
    rows = [document_row(services, s) for s in submissions]
    statuses = Counter(row["status"] for row in rows)
    completed = statuses.get("completed", 0)
    totals: dict[str, Any] = {
        "documents": len(rows),
        "completed": completed,
        "failed": len(rows) - completed,
        "by_status": dict(sorted(statuses.items())),
        "chunks": sum(r["chunks"] for r in rows),
        "mentions": sum(r["mentions"] for r in rows),
        "canonical_entities": sum(r["canonical_entities"] for r in rows),
        "relationships": sum(r["relationships"] for r in rows),
        "skipped_scanned_pages": sum(r["skipped_scanned_pages"] for r in rows),
        "elapsed_s": round(elapsed_s, 3),
        "documents_per_hour": round(len(rows) / elapsed_s * 3600, 1) if elapsed_s > 0 else None,
        "mode": services.settings.describe()["mode"],
        "database": services.settings.describe()["database_url"],
        "skipped": len(skipped),
        "already_processed": sum(1 for s in submissions if s.already_processed),
        "reprocessed": sum(1 for s in submissions if s.reprocessed),
    }
    return {"documents": rows, "totals": totals, "skipped": skipped_rows(skipped)}
