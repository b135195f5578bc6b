"""Two queue processors at once on PostgreSQL: every document is enqueued exactly once.

No worker consumes the broker here, so the `ocr` list in Redis holds exactly
what the processors sent; each message names its document.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from pipeline.app.intake import submit_file
from pipeline.bootstrap import build_services
from pipeline.domain.models import QUEUES, QueueStatus, Status
from pipeline.harness.localstack import RedisServer
from pipeline.runtime.broker import purge_queues
from pipeline.settings import Settings
from tests.conftest import REPO

pytestmark = pytest.mark.integration

DOCUMENTS = 200
BROKER_DB, STATE_DB = 2, 3

# Each processor waits for the other at a Redis barrier, then loops until idle.
PROCESSOR = """
import json, sys, threading, time
import redis
from pipeline.bootstrap import start
from pipeline.app.queue_processor import run_queue_processor
from pipeline.settings import get_settings

worker, barrier_url = sys.argv[1], sys.argv[2]
settings = get_settings()
assert not settings.eager
services = start(settings)
gate = redis.Redis.from_url(barrier_url)
gate.incr("test:processors_ready")
deadline = time.monotonic() + 60
while int(gate.get("test:processors_ready") or 0) < 2:
    if time.monotonic() > deadline:
        sys.exit("the other queue processor never started")
    time.sleep(0.005)
dispatched = run_queue_processor(
    services, worker, batch=5, interval_s=0.05, stop=threading.Event(), max_idle_cycles=3
)
print(json.dumps(dispatched))
"""


def _message(raw: bytes) -> tuple[str, str, list[Any]]:
    """(task name, task id, args) of a message as kombu's Redis transport stores it."""
    envelope = json.loads(raw)
    headers = envelope["headers"]
    body = json.loads(base64.b64decode(envelope["body"]))
    args, _kwargs, _embed = body
    return headers["task"], headers["id"], args


def test_two_queue_processors_enqueue_every_document_exactly_once(
    postgres_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    broker = redis_server.client(BROKER_DB)
    state = redis_server.client(STATE_DB)
    broker.flushdb()
    state.flushdb()
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=postgres_url,
        blob_url=f"file://{tmp_path / 'blobs'}",
        redis_url=redis_server.url(STATE_DB),
        broker_url=redis_server.url(BROKER_DB),
        eager=False,
    )
    services = build_services(settings)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    project_uuid = services.store.ensure_project("queue-processor-test")
    uuids = []
    for n in range(DOCUMENTS):
        path = inbox / f"doc{n:03}.txt"
        path.write_text(f"Document {n}: Jane Holloway paid Meridian Capital $1,000.\n")
        uuids.append(submit_file(services, path, project_uuid).document_uuid)

    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "HOME": str(tmp_path),
        "DOCPIPE_UNDER_TEST": "1",
        "DOCPIPE_ALLOW_CLOUD": "false",
        "DOCPIPE_DATABASE_URL": postgres_url,
        "DOCPIPE_BROKER_URL": redis_server.url(BROKER_DB),
        "DOCPIPE_REDIS_URL": redis_server.url(STATE_DB),
        "DOCPIPE_BLOB_URL": f"file://{tmp_path / 'blobs'}",
        "DOCPIPE_EAGER": "false",
    }
    processors = {
        name: subprocess.Popen(
            [sys.executable, "-c", PROCESSOR, name, redis_server.url(STATE_DB)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("qp-1", "qp-2")
    }
    dispatched: dict[str, list[str]] = {}
    for name, process in processors.items():
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err
        assert "Traceback" not in err, err
        dispatched[name] = json.loads(out.strip().splitlines()[-1])

    # The processors shared the work, and no document was dispatched by both.
    assert all(dispatched.values()), {k: len(v) for k, v in dispatched.items()}
    assert not set(dispatched["qp-1"]) & set(dispatched["qp-2"])
    assert sorted(dispatched["qp-1"] + dispatched["qp-2"]) == sorted(uuids)

    messages = [_message(raw) for raw in broker.lrange("ocr", 0, -1)]
    assert {task for task, _, _ in messages} == {"pipeline.start_ocr"}
    sent = Counter(args[0] for _, _, args in messages)
    assert sent == Counter(dict.fromkeys(uuids, 1))
    assert all(args[1] == 1 for _, _, args in messages)
    for queue in QUEUES:
        if queue != "ocr":
            assert broker.llen(queue) == 0, queue

    task_ids = {args[0]: task_id for _, task_id, args in messages}
    for document_uuid in uuids:
        document = services.store.get_document(document_uuid)
        assert document.status is Status.OCR_QUEUED
        assert document.celery_task_id == task_ids[document_uuid]
        (entry,) = services.store.queue_entries(document_uuid)
        assert entry.status is QueueStatus.PROCESSING and entry.attempts == 1
        assert entry.claimed_by in processors

    # The rollback plan's purge empties every docpipe queue on the broker.
    app = Celery("purge-test", broker=redis_server.url(BROKER_DB))
    try:
        assert purge_queues(app) == {"ocr": DOCUMENTS, "text": 0, "entity": 0, "graph": 0}
    finally:
        app.close()
    assert broker.llen("ocr") == 0

    services.store.close()  # type: ignore[attr-defined]
    services.redis.close()
    broker.close()
    state.close()
