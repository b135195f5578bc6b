"""Finding documents again, as a user does: short uuids, `docpipe documents`, re-runs, status.

Subprocesses in a fresh working directory (the embedded SQLite file under
.docpipe/), except where a store is needed to set up a state (a dead letter)
or a collision of uuid prefixes no random run would produce.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.adapters.sql import SqlDocumentStore, create_store
from pipeline.app.document_ids import SHORT_LENGTH, resolve_document_uuid
from pipeline.app.intake import Submission, submit_and_dispatch, submit_unless_known
from pipeline.bootstrap import Services
from pipeline.cli import main
from pipeline.domain.models import SourceDocument, Status
from pipeline.errors import UserFacingError
from tests.conftest import GOOD, docpipe

BROKEN_PDF = b"%PDF-1.7\n1 0 obj <<"


def listed(cwd: Path, *args: str) -> list[dict[str, object]]:
    result = docpipe(cwd, "documents", "--json", *args)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)["documents"]
    return rows


def store_of(cwd: Path) -> SqlDocumentStore:
    return create_store(f"sqlite:///{cwd / '.docpipe' / 'docpipe.db'}")


def test_running_the_same_files_again_reports_them_instead_of_adding_documents(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "good.txt").write_text(GOOD)
    (inbox / "broken.pdf").write_bytes(BROKEN_PDF)
    first = docpipe(tmp_path, "run", "inbox", "--json")
    assert first.returncode == 1, first.stderr  # broken.pdf fails
    uuids = {
        Path(r["file"]).name: r["document_uuid"] for r in json.loads(first.stdout)["documents"]
    }

    # The same bytes under another name are the same document too.
    (inbox / "good copy.txt").write_text(GOOD)
    again = docpipe(tmp_path, "run", "inbox", "--json")
    assert again.returncode == 1, again.stderr  # the failed document still counts as failed
    report = json.loads(again.stdout)
    rows = {Path(r["file"]).name: r for r in report["documents"]}
    assert {name: r["document_uuid"] for name, r in rows.items()} == {
        **uuids,
        "good copy.txt": uuids["good.txt"],
    }
    assert all(r["already_processed"] and not r["reprocessed"] for r in rows.values())
    assert rows["broken.pdf"]["status"] == "ocr_failed" and rows["broken.pdf"]["error"]
    assert report["totals"]["already_processed"] == 3
    assert len(listed(tmp_path)) == 2

    human = docpipe(tmp_path, "run", "inbox/good.txt")
    assert human.returncode == 0, human.stderr
    assert "completed (already processed)" in human.stdout
    assert "--reprocess" in human.stdout

    # --reprocess: the same document in a new processing version, not a new one.
    (inbox / "broken.pdf").write_bytes(BROKEN_PDF)
    redo = docpipe(tmp_path, "run", "inbox/good.txt", "--reprocess", "--json")
    assert redo.returncode == 0, redo.stderr
    (row,) = json.loads(redo.stdout)["documents"]
    assert (row["document_uuid"], row["reprocessed"], row["status"]) == (
        uuids["good.txt"],
        True,
        "completed",
    )
    shown = docpipe(tmp_path, "run", "inbox/good.txt", "--reprocess")
    assert shown.returncode == 0 and "completed (reprocessed)" in shown.stdout
    versions = {r["document_uuid"]: r["processing_version"] for r in listed(tmp_path)}
    assert versions == {uuids["good.txt"]: 3, uuids["broken.pdf"]: 1}


def test_documents_lists_short_uuids_that_status_and_reset_accept(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text(GOOD)
    (tmp_path / "broken.pdf").write_bytes(BROKEN_PDF)
    run = docpipe(tmp_path, "run", "good.txt", "broken.pdf")
    assert run.returncode == 1
    rows = listed(tmp_path)
    short = {str(r["file"]): str(r["short_uuid"]) for r in rows}
    assert all(len(s) == SHORT_LENGTH for s in short.values())
    # The run table shows the same short uuids.
    assert all(s in run.stdout for s in short.values())

    failed = listed(tmp_path, "--status", "ocr_failed")
    assert [(r["file"], r["status"]) for r in failed] == [("broken.pdf", "ocr_failed")]
    assert failed[0]["error"] and failed[0]["updated_at"]
    table = docpipe(tmp_path, "documents")
    assert table.returncode == 0 and short["good.txt"] in table.stdout
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z", table.stdout)

    status = docpipe(tmp_path, "status", short["good.txt"])
    assert status.returncode == 0, status.stderr
    full = next(str(r["document_uuid"]) for r in rows if r["file"] == "good.txt")
    assert full in status.stdout and "completed" in status.stdout
    # Timestamps on the row and on each history line; the Redis state is named.
    assert "created 20" in status.stdout and "history (UTC):" in status.stdout
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3}Z  v1  ocr\s+ocr_queued", status.stdout)
    assert "redis state (fakeredis://): none" in status.stdout

    reset = docpipe(tmp_path, "reset", short["broken.pdf"], "--json")
    assert reset.returncode == 0, reset.stderr
    assert json.loads(reset.stdout)["reset"] == [
        next(str(r["document_uuid"]) for r in rows if r["file"] == "broken.pdf")
    ]


def test_status_of_a_short_unknown_or_bad_uuid_exits_2_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text(GOOD)
    assert docpipe(tmp_path, "run", "good.txt").returncode == 0
    for given, message in [
        ("0a1b", "too short"),
        ("ffffffff", "no document ffffffff"),
        ("not-a-uuid-at-all", "no document"),
    ]:
        result = docpipe(tmp_path, "status", given)
        assert result.returncode == 2, given
        assert message in result.stderr and "Traceback" not in result.stderr


def test_an_ambiguous_prefix_is_refused_and_names_the_candidates(tmp_path: Path) -> None:
    store = create_store(f"sqlite:///{tmp_path / 'ids.db'}")
    project = store.ensure_project("p")
    for uuid in ("abcdef01-0000-4000-8000-000000000001", "abcdef01-0000-4000-8000-000000000002"):
        store.create_document(SourceDocument(uuid, project, "a.txt", "txt", f"k/{uuid}", 1))
    with pytest.raises(UserFacingError, match="ambiguous: it matches abcdef01-0000"):
        resolve_document_uuid(store, "abcdef01")
    with pytest.raises(UserFacingError, match="ambiguous"):
        resolve_document_uuid(store, "abcdef01-0000-4000-8000-00000000000")
    assert resolve_document_uuid(store, "ABCDEF01-0000-4000-8000-000000000002") == (
        "abcdef01-0000-4000-8000-000000000002"
    )
    store.close()


def test_dlq_list_shows_a_short_uuid_that_dlq_replay_accepts_and_history_shows_the_replay(
    tmp_path: Path,
) -> None:
    (tmp_path / "good.txt").write_text(GOOD)
    run = docpipe(tmp_path, "run", "good.txt", "--json")
    assert run.returncode == 0, run.stderr
    (row,) = json.loads(run.stdout)["documents"]
    document_uuid = row["document_uuid"]
    # The state a dead letter leaves (scenarios make real ones; this is the row it writes).
    store = store_of(tmp_path)
    store.force_status(
        document_uuid, Status.DEAD_LETTERED, stage="entity_extraction", bump_version=False
    )
    store.add_dead_letter(
        document_uuid, "pipeline.extract_entities", "entity_extraction", "boom", 5
    )
    store.close()

    letters = docpipe(tmp_path, "dlq", "list")
    assert letters.returncode == 0, letters.stderr
    assert row["short_uuid"] in letters.stdout

    replay = docpipe(tmp_path, "dlq", "replay", row["short_uuid"], "--json")
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["replayed"] == [document_uuid]
    status = docpipe(tmp_path, "status", row["short_uuid"], "--json")
    payload = json.loads(status.stdout)
    assert payload["status"] == "completed"
    stages = [(h["stage"], h["status"]) for h in payload["history"]]
    assert ("entity_extraction (dlq replay)", "entity_extraction") in stages


def test_status_shows_the_redis_state_hash_with_its_timestamps(
    make_services: Callable[..., Services], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A named fakeredis server is shared in-process: the state the run wrote is shown."""
    services = make_services()
    path = tmp_path / "good.txt"
    path.write_text(GOOD)
    project = services.store.ensure_project("p")
    document_uuid = submit_and_dispatch(services, path, project).document_uuid
    settings = services.settings
    for key, value in {
        "DATABASE_URL": settings.database_url,
        "BLOB_URL": settings.blob_url,
        "REDIS_URL": settings.redis_url,
    }.items():
        monkeypatch.setenv(f"DOCPIPE_{key}", value)
    result = CliRunner().invoke(main, ["status", document_uuid[:SHORT_LENGTH]])
    assert result.exit_code == 0, result.output
    assert f"redis state ({settings.redis_url}), last status completed:" in result.output
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3}Z  relationship_staging\s+completed", result.output)


def test_two_runs_of_one_new_file_at_once_make_one_document(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both runs look the file up before either has created it; one document results."""
    path = tmp_path / "memo.txt"
    path.write_text(GOOD)
    project = services.store.ensure_project("race")
    both_looked = threading.Barrier(2)
    look_up = services.store.find_by_content

    def look_up_together(project_uuid: str, digest: str) -> SourceDocument | None:
        found = look_up(project_uuid, digest)
        both_looked.wait(timeout=10)  # neither has created it yet
        return found

    monkeypatch.setattr(services.store, "find_by_content", look_up_together)
    results: list[Submission] = []
    runs = [
        threading.Thread(
            target=lambda: results.append(submit_unless_known(services, path, project))
        )
        for _ in range(2)
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=60)

    submissions = sorted(results, key=lambda s: s.already_processed)
    assert [s.already_processed for s in submissions] == [False, True]
    assert len({s.document_uuid for s in submissions}) == 1
    (document,) = services.store.list_documents()
    assert services.store.get_document(document.uuid).status is Status.COMPLETED
    assert [p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == ["original.txt"]
