"""A stage delivery's state-hash writes ride on its lock's round trips (issue 15).

The task layer counts the delivery, takes the lock and writes "started" to the
state hash in one script; `stages.begin` keeps that write when its claim takes
the document, undoes it when the claim refuses (a duplicate), and writes
"started" itself when the hash showed the stage past it (a reprocessed version).
The stage's own transitions' writes are held back and made with the last write
and the lock's release; a stage that raises has them written as it fails.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import Retry

from pipeline.app import stages
from pipeline.app.intake import submit_all
from pipeline.app.stages import StageResult
from pipeline.bootstrap import Services
from pipeline.domain.models import Fence, Stage, Status
from pipeline.errors import TransientError
from pipeline.runtime.tasks import run_stage

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
STAGE = Stage.DOCUMENT_NODE
#: Where a finished delivery of the stage leaves the document (a later stage owns it).
PAST_THE_STAGE = Status.ENTITY_EXTRACTION


class DeliveredTask:
    """What `run_stage` uses of a bound Celery task, as a worker delivers it."""

    name = "docpipe.document_node"

    def __init__(self, task_id: str) -> None:
        self.request = SimpleNamespace(id=task_id, retries=0, is_eager=False, kwargs={})

    def retry(self, **options: Any) -> Retry:
        raise Retry(exc=options.get("exc"))


class RoundTrips:
    """The commands the services' Redis client ran, one per round trip; a script's first
    run (answered NOSCRIPT, then loaded) counts once, as every later run costs."""

    def __init__(self, services: Services) -> None:
        self.commands: list[str] = []
        execute = services.redis.execute_command

        def counted(*args: Any, **options: Any) -> Any:
            answer = execute(*args, **options)
            if args[0] != "SCRIPT LOAD":
                self.commands.append(str(args[0]))
            return answer

        services.redis.execute_command = counted  # type: ignore[method-assign]


def _document(services: Services) -> tuple[str, int]:
    (submitted,) = submit_all(services, [SAMPLES / "affidavit_of_jane_holloway.txt"], "p")
    document = services.store.get_document(submitted.document_uuid)
    return document.uuid, document.processing_version


def _deliver(
    services: Services,
    task_id: str,
    document: tuple[str, int],
    seen: dict[str, Any],
    *,
    finish: Status | None = None,
) -> str:
    """One delivery of the stage, its body noting what the state hash showed after `begin`;
    with `finish`, it moves the document on to that status, past the stage."""

    def body(s: Services) -> StageResult:
        claimed = stages.begin(s, STAGE, *document)
        seen["state"] = s.state.get(document[0])
        if claimed is None:
            return stages.SKIPPED
        if finish is not None:
            stages.mark(s, claimed, STAGE, finish, fence=Fence.of(claimed))
        return StageResult()

    return run_stage(DeliveredTask(task_id), STAGE, *document, body)  # type: ignore[arg-type]


def test_a_claiming_delivery_writes_started_in_its_lock_round_trip(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    document = _document(services)
    trips = RoundTrips(services)
    seen: dict[str, Any] = {}

    assert _deliver(services, "task-1", document, seen) == "ok"

    assert seen["state"]["document_node_status"] == "started"
    assert seen["state"]["last_status"] == "started"
    # The acquisition (count, lock, "started"), the HGETALL above, the last write with
    # the release: no round trip of its own for "started". Then the attempt's finished
    # mark, which a real Redis gets without waiting (`HotScripts.send`; fakeredis waits).
    assert trips.commands == ["EVALSHA", "HGETALL", "EVALSHA", "EVALSHA"]
    assert services.state.get(document[0])["document_node_status"] == "completed"


def test_a_duplicate_of_a_finished_stage_leaves_the_state_hash_as_it_was(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    document = _document(services)
    assert _deliver(services, "task-1", document, {}, finish=PAST_THE_STAGE) == "ok"
    before = services.state.get(document[0])
    trips = RoundTrips(services)
    seen: dict[str, Any] = {}

    assert _deliver(services, "task-2", document, seen) == "skipped"

    # The acquisition, the HGETALL in the body, the lock's release: nothing undone.
    assert trips.commands == ["EVALSHA", "HGETALL", "EVALSHA"]
    assert seen["state"] == before == services.state.get(document[0])


def test_a_refused_claim_undoes_the_started_of_its_lock(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    document = _document(services)
    assert _deliver(services, "task-1", document, {}, finish=PAST_THE_STAGE) == "ok"
    # Redis lost the hash (restarted without its data): the duplicate's lock acquisition
    # cannot tell that the stage is past, and writes "started" before its claim refuses.
    services.redis.flushdb()
    seen: dict[str, Any] = {}

    assert _deliver(services, "task-2", document, seen) == "skipped"

    assert seen["state"] == {} == services.state.get(document[0])


def test_a_stage_the_hash_shows_finished_still_records_its_start(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    document = _document(services)
    # What a previous processing version of the document left in the hash.
    services.state.record(document[0], str(STAGE), "completed")
    seen: dict[str, Any] = {}

    assert _deliver(services, "task-1", document, seen) == "ok"

    assert seen["state"]["document_node_status"] == "started"


def test_a_finishing_transition_is_written_with_the_lock_release(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    document = _document(services)
    trips = RoundTrips(services)

    def finishing(s: Services) -> StageResult:
        claimed = stages.begin(s, STAGE, *document)
        assert claimed is not None
        fence = Fence.of(claimed)
        stages.mark(s, claimed, STAGE, PAST_THE_STAGE, metadata={"nodes": 1}, fence=fence)
        return StageResult()

    assert run_stage(DeliveredTask("task-1"), STAGE, *document, finishing) == "ok"  # type: ignore[arg-type]

    # The acquisition with "started", then the transition's write with the release, and
    # the attempt's finished mark (not waited for on a real Redis).
    assert trips.commands == ["EVALSHA", "EVALSHA", "EVALSHA"]
    state = services.state.get(document[0])
    assert state["document_node_status"] == "completed" and state["last_status"] == "completed"
    assert state["document_node_metadata"] == '{"nodes": 1}'


def test_a_stage_that_raises_after_a_transition_has_its_state_written(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    document = _document(services)

    def raising(s: Services) -> StageResult:
        claimed = stages.begin(s, STAGE, *document)
        assert claimed is not None
        stages.mark(
            s, claimed, STAGE, PAST_THE_STAGE, metadata={"nodes": 1}, fence=Fence.of(claimed)
        )
        raise TransientError("the graph timed out after the transition")

    with pytest.raises(Retry):
        run_stage(DeliveredTask("task-1"), STAGE, *document, raising)  # type: ignore[arg-type]

    state = services.state.get(document[0])
    assert state["document_node_status"] == str(PAST_THE_STAGE)
    assert state["document_node_metadata"] == '{"nodes": 1}'
