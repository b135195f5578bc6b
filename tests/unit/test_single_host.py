"""file:// blobs and SQLite are single-host: said before a remote deployment starts, and
in the reason of a document whose stored file another host's worker cannot see."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.app.intake import claim_own, submit_file
from pipeline.app.stages import dispatch
from pipeline.domain.models import Status
from pipeline.ports.services import Services
from pipeline.settings import single_host_note
from tests.conftest import embedded_settings


def test_a_remote_broker_with_local_blobs_and_sqlite_gets_a_note(tmp_path: Path) -> None:
    remote = embedded_settings(tmp_path, broker_url="redis://redis.internal:6379/0", eager=False)

    note = single_host_note(remote)

    assert note is not None
    assert "blobs (file://" in note and "the SQLite database" in note and "s3://" in note


def test_no_note_when_workers_can_share_everything_or_run_here(tmp_path: Path) -> None:
    shared = embedded_settings(
        tmp_path,
        broker_url="redis://redis.internal:6379/0",
        blob_url="s3://bucket/docs",
        database_url="postgresql://db.internal/docpipe",
    )
    here = embedded_settings(tmp_path, broker_url="redis://127.0.0.1:6379/0")

    assert single_host_note(shared) is None
    assert single_host_note(here) is None
    assert single_host_note(embedded_settings(tmp_path)) is None  # memory:// (eager)


def test_a_stored_file_this_worker_cannot_see_fails_with_the_single_host_reason(
    services: Services, tmp_path: Path
) -> None:
    project = services.store.ensure_project("p")
    source = tmp_path / "note.txt"
    source.write_text("The Buyer shall pay the Seller within thirty days.")
    submission = submit_file(services, source, project)
    # What a worker on another host sees: its own, empty folder of the same name.
    shutil.rmtree(tmp_path / "blobs")
    claim_own(services, submission.document_uuid, worker="test")
    dispatch(services, submission.document_uuid)

    document = services.store.get_document(submission.document_uuid)
    assert document.status is Status.OCR_FAILED
    assert document.error_message is not None
    assert "is missing" in document.error_message
    assert "is a folder on one host" in document.error_message
