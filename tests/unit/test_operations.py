"""Operator use cases (queue processor, admin, dead letters) and their commands, embedded."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner, Result
from kombu.exceptions import OperationalError

from fakes.faults import FaultRule, RedisFaultInjector
from pipeline.app import admin, dead_letters, queue_processor, stages
from pipeline.app.intake import claim_own, dispatch, submit_all
from pipeline.bootstrap import Services
from pipeline.cli import DocpipeGroup
from pipeline.cli.ops import COMMANDS
from pipeline.domain.models import QUEUES, QueueStatus, Stage, Status
from pipeline.runtime.broker import purge_queues

MakeServices = Callable[..., Services]
#: Queue stale windows on the wall clock: long enough for a claim and a look at
#: the queue on a loaded machine (50-200 ms windows failed under load, random order).
STALE_WINDOW_S = 1.0

TEXT = (
    "SETTLEMENT AGREEMENT\n\nThis Settlement Agreement is entered into on March 3, 2023 between "
    "Jane R. Holloway and Meridian Capital Partners LLC of Chicago, Illinois. Meridian shall pay "
    "$1,250,000.00 to Ms. Holloway within thirty days.\n"
)


def submit(services: Services, tmp_path: Path, count: int, prefix: str = "doc") -> list[str]:
    """`count` text documents with pending queue rows (nothing dispatched)."""
    folder = tmp_path / "inbox"
    folder.mkdir(exist_ok=True)
    paths = []
    for n in range(count):
        path = folder / f"{prefix}{n}.txt"
        path.write_text(TEXT)
        paths.append(path)
    return [s.document_uuid for s in submit_all(services, paths, "ops-test")]


def status(services: Services, document_uuid: str) -> Status:
    return services.store.get_document(document_uuid).status


def queue_rows(services: Services, document_uuid: str) -> list[QueueStatus]:
    return [e.status for e in services.store.queue_entries(document_uuid)]


@pytest.fixture
def ocr_sends(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts OCR messages per document (every stage is still sent for real)."""
    import pipeline.runtime.tasks

    sent: Counter[str] = Counter()
    real = pipeline.runtime.tasks.send_stage

    def counting(stage: Stage, document_uuid: str, version: int, **kwargs: Any) -> None:
        if stage is Stage.OCR:
            sent[document_uuid] += 1
        real(stage, document_uuid, version, **kwargs)

    monkeypatch.setattr(pipeline.runtime.tasks, "send_stage", counting)
    return sent


def faulty(
    make_services: MakeServices, base: Services, *rules: FaultRule
) -> tuple[Services, RedisFaultInjector]:
    """Services on the same database and Redis as `base`, with faults armed."""
    injector = RedisFaultInjector(base.redis, rules)
    injector.arm()
    return make_services(faults=injector, redis_url=base.settings.redis_url), injector


def healthy(make_services: MakeServices, base: Services) -> Services:
    """New services without faults on the same database and Redis (the fault is gone)."""
    return make_services(redis_url=base.settings.redis_url)


# --- the queue processor -----------------------------------------------------------------


def test_queue_processor_dispatches_each_pending_row_once_and_documents_complete(
    services: Services, tmp_path: Path, ocr_sends: Counter[str]
) -> None:
    uuids = submit(services, tmp_path, 3)

    first = queue_processor.process_queue_once(services, "w1", batch=2)
    second = queue_processor.process_queue_once(services, "w2", batch=2)

    assert first == uuids[:2] and second == uuids[2:]
    assert queue_processor.process_queue_once(services, "w1", batch=2) == []
    assert ocr_sends == Counter({u: 1 for u in uuids})
    for document_uuid in uuids:
        assert status(services, document_uuid) is Status.COMPLETED
        assert queue_rows(services, document_uuid) == [QueueStatus.COMPLETED]
        (entry,) = services.store.queue_entries(document_uuid)
        assert entry.attempts == 1
        document = services.store.get_document(document_uuid)
        history = services.store.history(document_uuid)
        assert history[0].status is Status.OCR_QUEUED
        assert history[0].celery_task_id == document.celery_task_id is not None


def test_a_failing_dispatch_is_tried_at_most_max_attempts_then_row_and_document_fail(
    make_services: MakeServices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.runtime.tasks

    services = make_services(queue_stale_after_s=0.05)
    (document_uuid,) = submit(services, tmp_path, 1)
    attempts: list[str] = []

    def broker_down(stage: Stage, uuid: str, version: int, **kwargs: Any) -> None:
        attempts.append(uuid)
        raise OperationalError("Error 111 connecting to redis://:hunter2@broker:6379/0")

    monkeypatch.setattr(pipeline.runtime.tasks, "send_stage", broker_down)
    outcomes = []
    for _ in range(5):
        outcomes.append(queue_processor.process_queue_batch(services, "w", batch=5))
        time.sleep(0.06)  # the claim goes stale

    assert len(attempts) == services.settings.queue_max_attempts == 3
    assert [bool(o.errors) for o in outcomes] == [True, True, True, False, False]
    assert all(not o.dispatched for o in outcomes)
    assert "hunter2" not in json.dumps([o.as_dict() for o in outcomes])
    (entry,) = services.store.queue_entries(document_uuid)
    assert entry.status is QueueStatus.FAILED and entry.attempts == 3
    document = services.store.get_document(document_uuid)
    assert document.status is Status.OCR_FAILED
    assert document.error_message is not None
    assert document.error_message.startswith("ocr: could not dispatch: OperationalError")
    assert "hunter2" not in document.error_message

    # The failure is visible to `reset --failed`; with the broker back it completes.
    monkeypatch.undo()
    assert admin.reset(services, failed=True) == [document_uuid]
    assert queue_processor.process_queue_once(services, "w", batch=5) == [document_uuid]
    assert status(services, document_uuid) is Status.COMPLETED


def test_a_row_whose_claimers_keep_dying_fails_after_max_attempts(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = make_services(queue_stale_after_s=0.05)
    (document_uuid,) = submit(services, tmp_path, 1)
    for n in range(3):
        assert len(services.store.claim(f"dies-{n}", 1, 0.05, 3)) == 1
        time.sleep(0.06)

    assert queue_processor.process_queue_once(services, "w", batch=5) == []
    assert queue_rows(services, document_uuid) == [QueueStatus.FAILED]
    # Still pending without an open row: `migrate` queues it again.
    assert admin.migrate(services) == [document_uuid]
    assert queue_processor.process_queue_once(services, "w", batch=5) == [document_uuid]
    assert status(services, document_uuid) is Status.COMPLETED


def test_a_stale_claim_is_reclaimed_and_dispatched_again(
    make_services: MakeServices, tmp_path: Path, ocr_sends: Counter[str]
) -> None:
    services = make_services(queue_stale_after_s=STALE_WINDOW_S)
    before_mark, after_mark = submit(services, tmp_path, 2)
    # One processor died right after claiming, another after committing ocr_queued.
    assert claim_own(services, before_mark, worker="dead-1")
    assert claim_own(services, after_mark, worker="dead-2")
    document = services.store.get_document(after_mark)
    stages.mark(services, document, Stage.OCR, Status.OCR_QUEUED, celery_task_id="lost-task")

    assert queue_processor.process_queue_once(services, "w", batch=5) == []  # claims still fresh
    time.sleep(STALE_WINDOW_S + 0.05)
    assert sorted(queue_processor.process_queue_once(services, "w", batch=5)) == sorted(
        [before_mark, after_mark]
    )

    assert ocr_sends == Counter({before_mark: 1, after_mark: 1})
    for document_uuid, dead in ((before_mark, "dead-1"), (after_mark, "dead-2")):
        assert status(services, document_uuid) is Status.COMPLETED
        (entry,) = services.store.queue_entries(document_uuid)
        assert entry.status is QueueStatus.COMPLETED and entry.attempts == 2
        assert entry.last_error == f"stale claim by {dead} reclaimed"
    assert services.store.get_document(after_mark).celery_task_id != "lost-task"


def test_finished_and_in_flight_documents_are_not_dispatched_again(
    services: Services, tmp_path: Path, ocr_sends: Counter[str]
) -> None:
    done, failed, busy, queued = submit(services, tmp_path, 4)
    force = services.store.force_status
    force(done, Status.COMPLETED, stage="test", bump_version=False)
    force(failed, Status.ENTITY_FAILED, stage="test", bump_version=False)
    force(busy, Status.TEXT_PROCESSING, stage="test", bump_version=False)
    force(queued, Status.OCR_QUEUED, stage="test", bump_version=False)

    outcome = queue_processor.process_queue_batch(services, "w", batch=10)

    assert outcome.dispatched == [queued]
    assert outcome.closed == {done: "completed", failed: "failed"}
    assert outcome.in_flight == [busy]
    assert ocr_sends == Counter({queued: 1})
    assert queue_rows(services, done) == [QueueStatus.COMPLETED]
    assert queue_rows(services, failed) == [QueueStatus.FAILED]
    assert queue_rows(services, busy) == [QueueStatus.PROCESSING]  # its stage closes it
    assert status(services, busy) is Status.TEXT_PROCESSING


@pytest.mark.parametrize(
    ("ran", "stuck_in", "sent_again"),
    [
        (1, Status.OCR_COMPLETE, Stage.DOCUMENT_NODE),
        (3, Status.TEXT_PROCESSING, Stage.DOCUMENT_NODE),
        (4, Status.ENTITY_EXTRACTION, Stage.ENTITY_EXTRACTION),
    ],
)
def test_a_document_whose_message_was_lost_mid_pipeline_is_resumed_once_stale(
    make_services: MakeServices, tmp_path: Path, ran: int, stuck_in: Status, sent_again: Stage
) -> None:
    """The stages ran, the message for the next one never arrived (a broker restart)."""
    services = make_services(queue_stale_after_s=STALE_WINDOW_S)
    (lost,) = submit(services, tmp_path, 1)
    (reference,) = submit(services, tmp_path, 1, prefix="reference")
    assert claim_own(services, reference, worker="scenario")
    dispatch(services, reference)  # eager: runs to the end
    steps: list[Callable[[], object]] = [
        lambda: stages.start_ocr(services, lost, 1, "attempt-1"),
        *(
            (lambda function=function: function(services, lost, 1))
            for function in stages.STAGE_FUNCTIONS.values()
        ),
    ]
    for step in steps[:ran]:
        step()
    assert status(services, lost) is stuck_in
    # Claimed after the stages ran, right before the first look: claimed
    # earlier, a slow first run of the stages (cold imports, a loaded machine,
    # a random test order that runs this first) outlived the stale window.
    assert claim_own(services, lost, worker="scenario")

    fresh = queue_processor.process_queue_batch(services, "w", batch=5)
    assert fresh.resumed == {} and fresh.claimed == []  # the claim is still fresh
    time.sleep(STALE_WINDOW_S + 0.05)
    outcome = queue_processor.process_queue_batch(services, "w", batch=5)

    assert outcome.resumed == {lost: str(sent_again)}
    assert status(services, lost) is Status.COMPLETED
    assert queue_rows(services, lost) == [QueueStatus.COMPLETED]
    # Resuming re-ran stages whose rows existed: nothing is duplicated.
    assert services.store.counts(lost) == services.store.counts(reference)


def test_a_progressing_document_outlives_many_stale_windows_without_using_attempts(
    make_services: MakeServices, tmp_path: Path
) -> None:
    """A long stage (a Textract backlog) must not fail its healthy queue row."""
    services = make_services(queue_stale_after_s=STALE_WINDOW_S, queue_max_attempts=3)
    (busy,) = submit(services, tmp_path, 1)
    assert claim_own(services, busy, worker="runner")
    for _ in range(4):  # more stale windows than attempts
        time.sleep(STALE_WINDOW_S + 0.05)
        # Progress: the stage moved the document (its row's updated_at is fresh).
        services.store.force_status(busy, Status.TEXT_PROCESSING, stage="test", bump_version=False)
        outcome = queue_processor.process_queue_batch(services, "w", batch=5)
        assert outcome.in_flight == [busy] and outcome.resumed == {}
    (entry,) = services.store.queue_entries(busy)
    assert (entry.status, entry.attempts) == (QueueStatus.PROCESSING, 1)


def test_run_queue_processor_stops_when_idle_or_told_to(services: Services, tmp_path: Path) -> None:
    import threading

    uuids = submit(services, tmp_path, 5)
    stop = threading.Event()
    dispatched = queue_processor.run_queue_processor(
        services, "loop", batch=2, interval_s=0.01, stop=stop, max_idle_cycles=2
    )
    assert dispatched == uuids
    stop.set()
    assert queue_processor.run_queue_processor(services, "loop", 2, 0.01, stop) == []


# --- migrate and reset -----------------------------------------------------------------


def _snapshot(services: Services) -> object:
    documents = [(d.uuid, d.status, d.processing_version) for d in services.store.list_documents()]
    rows = [
        (e.uuid, e.document_uuid, e.status, e.attempts)
        for d in services.store.list_documents()
        for e in services.store.queue_entries(d.uuid)
    ]
    return documents, rows


def test_migrate_requeues_exactly_the_resumable_statuses_and_is_idempotent(
    services: Services, tmp_path: Path
) -> None:
    uuids = submit(services, tmp_path, len(Status))
    by_status = dict(zip(Status, uuids, strict=True))
    # The ocr_processing document left derived rows behind in an earlier run.
    stale = by_status[Status.OCR_PROCESSING]
    claim_own(services, stale, "old-pipeline")
    dispatch(services, stale)
    assert services.store.counts(stale).chunks > 0
    for wanted, document_uuid in by_status.items():
        services.store.force_status(document_uuid, wanted, stage="old", bump_version=False)
        # The old system had no queue rows for these documents.
        services.store.finish_queue_entry(document_uuid, QueueStatus.CANCELLED)
    resumable = {by_status[s] for s in (Status.PENDING, Status.OCR_PROCESSING, Status.OCR_FAILED)}

    before = _snapshot(services)
    assert set(admin.migrate(services, dry_run=True)) == resumable
    assert _snapshot(services) == before

    assert set(admin.migrate(services)) == resumable

    for wanted, document_uuid in by_status.items():
        document = services.store.get_document(document_uuid)
        open_rows = [
            e for e in services.store.queue_entries(document_uuid) if e.status == "pending"
        ]
        if document_uuid in resumable:
            assert document.status is Status.PENDING
            assert len(open_rows) == 1
            bumped = wanted is not Status.PENDING
            assert document.processing_version == (2 if bumped else 1)
        else:
            assert (document.status, document.processing_version) == (wanted, 1)
            assert open_rows == []
    assert services.store.counts(stale).chunks == 0

    after = _snapshot(services)
    assert admin.migrate(services) == []
    assert _snapshot(services) == after

    assert set(queue_processor.process_queue_once(services, "w", batch=50)) == resumable
    assert {u for u in resumable if status(services, u) is Status.COMPLETED} == resumable


def test_reset_failed_brings_failed_documents_back_and_they_complete(
    make_services: MakeServices, tmp_path: Path
) -> None:
    base = make_services()
    # The fake LLM does not know the document: one document per fault, in turn.
    (refused,) = submit(base, tmp_path, 1, prefix="refused")
    broken, _ = faulty(make_services, base, FaultRule(port="llm", kind="permanent"))
    queue_processor.process_queue_once(broken, "w", batch=10)
    (lost,) = submit(base, tmp_path, 1, prefix="lost")
    broken, _ = faulty(make_services, base, FaultRule(port="llm", kind="transient"))
    queue_processor.process_queue_once(broken, "w", batch=10)
    (fine,) = submit(base, tmp_path, 1, prefix="fine")
    queue_processor.process_queue_once(healthy(make_services, base), "w", batch=10)
    assert [status(broken, u) for u in (refused, lost, fine)] == [
        Status.ENTITY_FAILED,
        Status.DEAD_LETTERED,
        Status.COMPLETED,
    ]
    assert len(broken.store.dead_letters()) == 1

    services = healthy(make_services, base)
    assert sorted(admin.reset(services, failed=True)) == sorted([refused, lost])

    assert services.store.dead_letters() == []
    for document_uuid in (refused, lost):
        document = services.store.get_document(document_uuid)
        assert (document.status, document.processing_version) == (Status.PENDING, 2)
        assert services.store.counts(document_uuid).chunks == 0
        assert queue_rows(services, document_uuid) == [QueueStatus.FAILED, QueueStatus.PENDING]
    assert sorted(queue_processor.process_queue_once(services, "w", batch=10)) == sorted(
        [refused, lost]
    )
    for document_uuid in (refused, lost):
        assert status(services, document_uuid) is Status.COMPLETED
        assert services.store.counts(document_uuid).mentions > 0
    assert services.store.get_document(fine).processing_version == 1


def test_reset_by_uuid_reprocesses_and_rejects_bad_selections(
    services: Services, tmp_path: Path
) -> None:
    (document_uuid,) = submit(services, tmp_path, 1)
    queue_processor.process_queue_once(services, "w", batch=1)
    counts = services.store.counts(document_uuid)

    with pytest.raises(ValueError):
        admin.reset(services)
    with pytest.raises(ValueError):
        admin.reset(services, [document_uuid], failed=True)
    with pytest.raises(KeyError):
        admin.reset(services, [document_uuid, "no-such-document"])
    assert status(services, document_uuid) is Status.COMPLETED

    assert admin.reset(services, [document_uuid, document_uuid]) == [document_uuid]
    assert queue_processor.process_queue_once(services, "w", batch=1) == [document_uuid]
    document = services.store.get_document(document_uuid)
    assert (document.status, document.processing_version) == (Status.COMPLETED, 2)
    assert services.store.counts(document_uuid) == counts


# --- dead letters ----------------------------------------------------------------------


def test_dead_letters_are_listed_replayed_once_the_fault_is_gone_and_purged(
    make_services: MakeServices, tmp_path: Path
) -> None:
    base = make_services()
    first, second = submit(base, tmp_path, 2)
    broken, injector = faulty(make_services, base, FaultRule(port="llm", kind="transient"))
    queue_processor.process_queue_once(broken, "w", batch=10)
    retries = broken.settings.max_retries
    assert injector.calls() == [2 * (retries + 1)]

    letters = dead_letters.dlq_list(broken)
    assert {letter["document_uuid"] for letter in letters} == {first, second}
    for letter in letters:
        assert letter["stage"] == "entity_extraction"
        assert letter["status"] == "dead_lettered"
        assert letter["retries"] == retries
        assert str(letter["file"]).endswith(".txt")

    # Replayed while the fault still fires: dead-lettered again, nothing lost.
    assert dead_letters.dlq_replay(broken, [first]) == [first]
    assert status(broken, first) is Status.DEAD_LETTERED
    assert len(dead_letters.dlq_list(broken)) == 2
    # ... and the history says so: the replay, then the second dead letter.
    history = [(h.stage, h.status) for h in broken.store.history(first)]
    assert history[-2:] == [
        ("entity_extraction (dlq replay)", Status.ENTITY_EXTRACTION),
        ("entity_extraction", Status.DEAD_LETTERED),
    ]

    services = healthy(make_services, base)
    assert dead_letters.dlq_replay(services, [first]) == [first]
    document = services.store.get_document(first)
    assert (document.status, document.processing_version) == (Status.COMPLETED, 1)
    assert services.store.counts(first).mentions > 0
    # The history shows the replay, under its name, with the dead letter it replaced.
    entries = services.store.history(first)
    (replay,) = [h for h in entries if h.stage == "entity_extraction (dlq replay)"]
    assert replay.status is Status.ENTITY_EXTRACTION
    assert replay.error_message and "replays the dead letter of" in replay.error_message
    assert Status.DEAD_LETTERED not in [h.status for h in entries]
    assert entries[-1].status is Status.COMPLETED
    # Each replay had an open queue row (the queue processor watches it), closed by its
    # outcome: the first run's, the replay dead-lettered again, the replay that completed.
    assert queue_rows(services, first) == [
        QueueStatus.FAILED,
        QueueStatus.FAILED,
        QueueStatus.COMPLETED,
    ]
    assert [letter["document_uuid"] for letter in dead_letters.dlq_list(services)] == [second]

    # A letter whose document has moved on is not replayed.
    services.store.add_dead_letter(first, "pipeline.extract_entities", "entity_extraction", "x", 5)
    assert dead_letters.dlq_replay(services) == [second]
    assert status(services, second) is Status.COMPLETED
    assert dead_letters.dlq_purge(services) == 1
    assert dead_letters.dlq_list(services) == []
    assert dead_letters.dlq_purge(services, []) == 0


def test_a_replay_whose_message_is_lost_is_sent_again_by_the_queue_processor(
    make_services: MakeServices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.runtime.tasks

    base = make_services()
    (document_uuid,) = submit(base, tmp_path, 1)
    broken, _ = faulty(make_services, base, FaultRule(port="llm", kind="transient"))
    queue_processor.process_queue_once(broken, "w", batch=10)
    assert status(broken, document_uuid) is Status.DEAD_LETTERED
    services = make_services(redis_url=base.settings.redis_url, queue_stale_after_s=STALE_WINDOW_S)

    real = pipeline.runtime.tasks.send_stage

    def broker_down(stage: Stage, uuid: str, version: int, **kwargs: Any) -> None:
        raise OperationalError("Error 111 connecting to redis://broker:6379/0")

    monkeypatch.setattr(pipeline.runtime.tasks, "send_stage", broker_down)
    with pytest.raises(OperationalError):
        dead_letters.dlq_replay(services, [document_uuid])
    # Replayed in the database, its message lost: no letter left to replay, but a queue
    # row the queue processor watches.
    assert status(services, document_uuid) is Status.ENTITY_EXTRACTION
    assert dead_letters.dlq_list(services) == []
    assert queue_rows(services, document_uuid) == [QueueStatus.FAILED, QueueStatus.PENDING]

    monkeypatch.setattr(pipeline.runtime.tasks, "send_stage", real)
    # Within the stale window the replay counts as in flight; after it, it is sent again.
    assert queue_processor.process_queue_batch(services, "w", batch=5).in_flight == [document_uuid]
    time.sleep(STALE_WINDOW_S + 0.1)
    resumed = queue_processor.process_queue_batch(services, "w", batch=5).resumed
    assert resumed == {document_uuid: str(Stage.ENTITY_EXTRACTION)}
    assert status(services, document_uuid) is Status.COMPLETED
    assert queue_rows(services, document_uuid) == [QueueStatus.FAILED, QueueStatus.COMPLETED]


def test_purge_queues_empties_every_docpipe_queue() -> None:
    app = Celery("purge-test", broker="memory://")
    app.conf.task_always_eager = False
    # kombu's memory transport is one broker per process: another test may have left messages.
    purge_queues(app)
    for queue in ("ocr", "ocr", "graph", "entity"):
        app.send_task("pipeline.start_ocr", args=("doc", 1), queue=queue)
    assert purge_queues(app) == {"ocr": 2, "text": 0, "entity": 1, "graph": 1}
    assert purge_queues(app) == dict.fromkeys(QUEUES, 0)


# --- the commands ----------------------------------------------------------------------

Invoke = Callable[..., Result]


@pytest.fixture
def docpipe(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Invoke]:
    """Runs the ops commands with settings (env) pointing at `services`' database and Redis."""
    settings = services.settings
    monkeypatch.chdir(tmp_path)
    for key, value in {
        "DATABASE_URL": settings.database_url,
        "BLOB_URL": settings.blob_url,
        "REDIS_URL": settings.redis_url,
        "BROKER_URL": "memory://",
        "EAGER": "true",
        "OCR_POLL_INTERVAL_S": "0",
        "RETRY_BACKOFF_BASE_S": "0",
    }.items():
        monkeypatch.setenv(f"DOCPIPE_{key}", value)
    # docpipe's own group: it renders usage, configuration and connection errors (exit 2).
    group = DocpipeGroup("docpipe", commands={c.name: c for c in COMMANDS if c.name})

    def invoke(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(group, list(args), input=input)

    yield invoke


def test_cli_queue_processor_once_and_until_empty(
    services: Services, tmp_path: Path, docpipe: Invoke
) -> None:
    uuids = submit(services, tmp_path, 2)

    result = docpipe("queue-processor", "--once", "--json", "--worker", "cli-1")

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {
        "worker",
        "claimed",
        "dispatched",
        "closed",
        "in_flight",
        "resumed",
        "errors",
    }
    assert payload["worker"] == "cli-1"
    assert payload["dispatched"] == uuids == payload["claimed"]
    assert all(status(services, u) is Status.COMPLETED for u in uuids)

    more = submit(services, tmp_path, 1, prefix="more")
    result = docpipe("queue-processor", "--until-empty", "--interval", "0", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dispatched"] == more

    result = docpipe("queue-processor", "--once")
    assert result.exit_code == 0 and "dispatched 0" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["reset"],
        ["reset", "some-uuid", "--failed"],
        ["reset", "no-such-document"],
        ["dlq", "replay"],
        ["dlq", "replay", "x", "--all"],
        ["dlq", "replay", "no-such-letter"],
        ["dlq", "purge"],
        ["dlq", "purge", "no-such-letter", "--yes"],
        ["queue-processor", "--batch", "0"],
        ["migrate", "--database-url", "mysql://nope/db"],
        ["queue-processor", "--once", "--database-url", "sqlite://"],
    ],
)
def test_cli_usage_errors_exit_2(
    docpipe: Invoke, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    if "sqlite://" in args:  # broker mode with in-process settings: refused before anything runs
        monkeypatch.setenv("DOCPIPE_EAGER", "false")
    result = docpipe(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["queue-processor"],
        ["migrate"],
        ["reset"],
        ["purge"],
        ["dlq"],
        ["dlq", "list"],
        ["dlq", "replay"],
        ["dlq", "purge"],
    ],
)
def test_cli_help(docpipe: Invoke, args: list[str]) -> None:
    result = docpipe(*args, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.stdout and len(result.stdout.splitlines()) > 5


def test_cli_dead_letters_migrate_and_reset(
    make_services: MakeServices, services: Services, tmp_path: Path, docpipe: Invoke
) -> None:
    (document_uuid,) = submit(services, tmp_path, 1)
    broken, _ = faulty(make_services, services, FaultRule(port="llm", kind="transient"))
    queue_processor.process_queue_once(broken, "w", batch=1)
    assert status(services, document_uuid) is Status.DEAD_LETTERED

    listed = json.loads(docpipe("dlq", "list", "--json").stdout)
    assert listed["count"] == 1
    (letter,) = listed["dead_letters"]
    assert set(letter) == {
        "document_uuid", "task_name", "stage", "error", "retries", "created_at", "file", "status",
    }  # fmt: skip
    assert letter["document_uuid"] == document_uuid
    assert "dead letters (1)" in docpipe("dlq", "list").stdout

    declined = docpipe("dlq", "purge", "--all", input="n\n")
    assert declined.exit_code == 1
    assert len(services.store.dead_letters()) == 1

    result = docpipe("dlq", "replay", document_uuid, "--json")  # the CLI's services: no faults
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"replayed": [document_uuid], "skipped": [], "count": 1}
    assert status(services, document_uuid) is Status.COMPLETED

    result = docpipe("migrate", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"touched": [], "count": 0, "dry_run": False}

    result = docpipe("reset", document_uuid, "--json")
    assert json.loads(result.stdout) == {"reset": [document_uuid], "count": 1}
    assert status(services, document_uuid) is Status.PENDING
    assert docpipe("reset", "--failed", "--json").exit_code == 0

    services.store.add_dead_letter(document_uuid, "t", "entity_extraction", "e", 1)
    result = docpipe("dlq", "purge", "--all", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"removed": 1}


def test_cli_purge_asks_unless_yes(docpipe: Invoke) -> None:
    declined = docpipe("purge", input="n\n")
    assert declined.exit_code == 1
    assert "Delete every waiting message" in declined.output

    result = docpipe("purge", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "broker": "memory://",
        "purged": dict.fromkeys(QUEUES, 0),
        "total": 0,
    }
