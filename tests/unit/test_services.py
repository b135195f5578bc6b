"""The services seam: bootstrap.start, the Dispatcher port, Services.close()."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.app.dead_letters import dlq_replay
from pipeline.app.intake import claim_own, dispatch, submit_all
from pipeline.bootstrap import discard_fake_redis_server, redis_client, start, use_services
from pipeline.domain.models import Stage, Status
from pipeline.ports.services import close_current_services, current_services
from pipeline.runtime import celery_app
from tests.conftest import embedded_settings


class RecordingDispatcher:
    """A Dispatcher that only records: what application code sends, with no Celery."""

    def __init__(self) -> None:
        self.sent: list[tuple[Stage, str, int, str | None]] = []

    def send_stage(
        self, stage: Stage, document_uuid: str, version: int, *, task_id: str | None = None
    ) -> None:
        self.sent.append((stage, document_uuid, version, task_id))


class ClosingGraph:
    closed = 0

    def close(self) -> None:
        self.closed += 1


def test_start_builds_configures_and_installs_the_services(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, eager=True)
    try:
        services = start(settings)

        assert current_services() is services
        assert celery_app.app.conf.task_always_eager is True
    finally:
        use_services(None)
        services.close()


def test_dispatch_and_dlq_replay_send_through_the_services_dispatcher(tmp_path: Path) -> None:
    services = start(embedded_settings(tmp_path))
    recorder = RecordingDispatcher()
    services = dataclasses.replace(services, dispatcher=recorder)
    try:
        path = tmp_path / "a.txt"
        path.write_text("Jane Holloway paid Meridian Capital $1,000.\n")
        [submission] = submit_all(services, [path], "seams")
        document_uuid = submission.document_uuid
        claim_own(services, document_uuid, worker="test")

        task_id = dispatch(services, document_uuid)

        document = services.store.get_document(document_uuid)
        assert document.status is Status.OCR_QUEUED
        assert document.celery_task_id == task_id
        assert recorder.sent == [(Stage.OCR, document_uuid, 1, task_id)]

        services.store.add_dead_letter(document_uuid, "t", str(Stage.CHUNKING), "boom", 3)
        services.store.force_status(
            document_uuid, Status.DEAD_LETTERED, stage="test", bump_version=False
        )

        assert dlq_replay(services) == [document_uuid]
        assert recorder.sent[-1] == (Stage.CHUNKING, document_uuid, 1, None)
    finally:
        use_services(None)
        services.close()


def test_close_releases_the_sql_pool_the_graph_and_redis(tmp_path: Path) -> None:
    services = start(embedded_settings(tmp_path))
    use_services(None)
    graph = ClosingGraph()
    services = dataclasses.replace(services, graph=graph)  # type: ignore[arg-type]
    services.store.ensure_project("seams")
    engine = services.store.engine  # type: ignore[attr-defined]
    assert engine.pool.checkedin() > 0

    services.close()

    assert engine.pool.checkedin() == 0
    assert graph.closed == 1


def test_close_current_services_closes_and_forgets_what_the_process_installed(
    tmp_path: Path,
) -> None:
    services = dataclasses.replace(start(embedded_settings(tmp_path)), graph=ClosingGraph())  # type: ignore[arg-type]
    use_services(services)

    close_current_services()
    close_current_services()  # nothing installed any more: nothing closed twice

    assert services.graph.closed == 1  # type: ignore[attr-defined]
    use_services(None)


def test_a_discarded_fake_redis_server_forgets_its_data(tmp_path: Path) -> None:
    url = embedded_settings(tmp_path).redis_url
    redis_client(url).set("key", "value")
    assert redis_client(url).get("key") == b"value"

    discard_fake_redis_server(url)

    assert redis_client(url).get("key") is None
