"""Worker side of `docpipe experiment`: the docpipe Celery app plus a few measuring tasks.

Start a worker with ``celery -A pipeline.harness.perf.experiment_tasks worker -Q experiment``
(pipeline/harness/perf/experiments.py does it). All tasks go to the `experiment` queue and
report what they finish with one RPUSH on the settings' Redis, which the driver
waits on; nothing here runs unless an experiment sends it.

- `io_wait`: sleeps like an I/O wait (gevent's pool patches `time.sleep`), for
  the pool comparison;
- `plain_hop`: a plain Celery task that only sends the next hop of a chain;
- `harness_hop`: the same hop through docpipe's task layer (`run_stage`: the
  redelivery counter, the per-document lock, the Redis state hash, the retry
  policy) with a stage that does only a stage's bookkeeping: `stages.begin`
  (document load, status transition with its history row, state write) and,
  on the first and last stage, the finishing transition. Its next hop is
  published where `run_stage` publishes a real stage's successor: the worker's
  services get `HopDispatcher` as their `Dispatcher`, which sends `harness_hop`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from celery import Task

from pipeline.app import stages
from pipeline.app.stages import SKIPPED, StageResult
from pipeline.bootstrap import build_services
from pipeline.domain.models import STAGE_ORDER, Stage, Status
from pipeline.ports.services import Services, set_services_factory
from pipeline.runtime import tasks
from pipeline.runtime.celery_app import app
from pipeline.settings import get_settings

__all__ = ["EXPERIMENT_QUEUE", "app"]

EXPERIMENT_QUEUE = "experiment"
IO_WAIT_TASK = "docpipe.experiment.io_wait"
PLAIN_HOP_TASK = "docpipe.experiment.plain_hop"
HARNESS_HOP_TASK = "docpipe.experiment.harness_hop"

_client: redis.Redis | None = None
_client_lock = threading.Lock()


def _counter() -> redis.Redis:
    global _client
    with _client_lock:
        if _client is None:
            _client = redis.Redis.from_url(get_settings().redis_url)
        return _client


@app.task(name=IO_WAIT_TASK)
def io_wait(seconds: float, done_key: str) -> None:
    time.sleep(seconds)
    _counter().rpush(done_key, time.time())


@app.task(name=PLAIN_HOP_TASK)
def plain_hop(hop: int, hops: int, done_key: str) -> None:
    if hop + 1 < hops:
        plain_hop.apply_async(args=(hop + 1, hops, done_key), queue=EXPERIMENT_QUEUE)
    else:
        _counter().rpush(done_key, time.time())


def null_stage(services: Services, stage: Stage, document_uuid: str, version: int) -> StageResult:
    """A stage's bookkeeping without its work; the next stage as a real stage names it."""
    document = stages.begin(services, stage, document_uuid, version)
    if document is None:
        return SKIPPED
    if stage is Stage.OCR:
        stages.mark(services, document, stage, Status.OCR_COMPLETE)
    elif stage is STAGE_ORDER[-1]:
        stages.mark(services, document, stage, Status.COMPLETED)
        return StageResult()
    return StageResult(next_stage=STAGE_ORDER[STAGE_ORDER.index(stage) + 1])


#: The chain's completion key, for `HopDispatcher` (set by the hop running on this thread).
_hop = threading.local()


class HopDispatcher:
    """The `Dispatcher` port of the experiment worker: a stage's successor is the next
    `harness_hop`, published as `tasks.send_stage` publishes a real stage's."""

    def send_stage(
        self, stage: Stage, document_uuid: str, version: int, *, task_id: str | None = None
    ) -> None:
        harness_hop.apply_async(
            args=(STAGE_ORDER.index(stage), document_uuid, version, _hop.done_key),
            queue=EXPERIMENT_QUEUE,
            task_id=task_id,
            retry_policy=tasks.RETRY_PUBLISH_POLICY,
            **tasks.WORKER_TIME_LIMITS,
        )


set_services_factory(lambda: build_services(get_settings(), dispatcher=HopDispatcher()))


@app.task(bind=True, name=HARNESS_HOP_TASK)
def harness_hop(
    self: Task[Any, Any], hop: int, document_uuid: str, version: int, done_key: str
) -> str:
    stage = STAGE_ORDER[hop]
    _hop.done_key = done_key
    outcome = tasks.run_stage(
        self,
        stage,
        document_uuid,
        version,
        lambda services: null_stage(services, stage, document_uuid, version),
    )
    if outcome == "ok" and hop + 1 == len(STAGE_ORDER):
        _counter().rpush(done_key, time.time())
    return outcome
