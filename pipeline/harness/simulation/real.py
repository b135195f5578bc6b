"""The scenario path: the real stage functions and fakes under the scheduler, in virtual time.

Services are built as for an eager run (in-memory SQLite, in-process
fakeredis, memory blobs) but with a `VirtualClock`: the fakes' latencies
advance it instead of waiting. The task layer's policy (pipeline.runtime.tasks:
the per-document-and-stage lock owned by the task id, the redelivery guard,
dead letters, terminal failures) is reproduced here around direct calls of
the stage functions, as pipeline/app/monolith.py calls them; the retry decision
is pipeline.app.policy's own (seeded jitter), with the attempts without progress
carried on the message. Fault delays (`timeout`) and windows run on the
virtual clock too.

The stage function runs to the end when the task starts; its duration is
the virtual time it slept, and its lock is held until it finishes in
virtual time. Its database writes are committed when it ends
(pipeline.harness.simulation.effects): a delivery that outlives the visibility
timeout writes after its redelivery, as between real processes, and the
store's fence refuses it. A killed worker's writes made before the kill
are committed at the kill: the worst case for exactly-once.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn, cast

import redis
from celery.exceptions import Reject, Retry

from fakes.faults import ACTIVE_FAULTS_KEY, SharedFaultInjector, WorkerKilled
from fakes.faulty_ports import consult, unfaulted
from pipeline.app import stages
from pipeline.app.intake import claim_own, submit_file
from pipeline.app.policy import (
    ProgressMeter,
    decide,
    metered,
    readable,
    redelivered_too_often,
    retry_countdown,
)
from pipeline.app.queue_processor import give_up
from pipeline.app.stages import StageResult
from pipeline.bootstrap import Services, build_services
from pipeline.domain.models import Fence, Stage, Status, stable_uuid
from pipeline.errors import LockUnavailable, StaleDelivery, TransientError
from pipeline.harness.simulation.clock import VirtualClock, VirtualRateLimiter
from pipeline.harness.simulation.effects import install as install_deferred_store
from pipeline.harness.simulation.engine import (
    DiedFinishing,
    IntakeFailed,
    Message,
    Outcome,
    OutcomeKind,
    Send,
)
from pipeline.harness.simulation.faultboard import FaultBoard
from pipeline.harness.simulation.model import POLL_OCR, START_OCR
from pipeline.ports import FaultInjector
from pipeline.runtime.tasks import (
    RETRYABLE,
    mark_retry_published,
    poll_step,
    retry_published,
    retry_task,
    stage_lock_name,
    with_siblings_progress,
)
from pipeline.settings import Settings, settings_over_environment

_runs = itertools.count(1)


@dataclass(frozen=True)
class Attempt:
    """One delivery of one task as the executor saw it: the retry budget's evidence.

    `progressed` is the stage's own report (pipeline.app.policy.record_progress),
    measured apart from the policy's decision, so an invariant can judge the
    decision against it (a dead letter needs max_retries + 1 attempts in a row
    without progress, or the ceiling of attempts).
    """

    doc: int
    task: str
    task_id: str
    retries: int
    progressed: bool
    #: "ok", "retry", "dead_letter", "failed", "killed", "locked" (lock held elsewhere),
    #: "unrecorded" (its dead letter or failure could not be recorded: run again to record it).
    result: str


def sim_settings(**overrides: Any) -> Settings:
    """Settings for a simulated run: everything in process, nothing shared between runs."""
    values: dict[str, Any] = {
        "database_url": "sqlite://",
        "blob_url": "memory://",
        "redis_url": f"fakeredis://sim-{next(_runs)}",
        "eager": True,
        "fault_injection": False,
        "project_name": "sim",
    }
    values.update(overrides)
    return settings_over_environment(values)


class StageExecutor:
    """`Executor` running pipeline/app/stages.py with the task layer's policy."""

    def __init__(
        self,
        files: Sequence[Path],
        settings: Settings,
        *,
        seed: int = 0,
        faults: FaultInjector | None = None,
        clock: VirtualClock | None = None,
    ) -> None:
        self.files = list(files)
        self.seed = seed
        self.clock = clock or VirtualClock()
        #: Where the fault rules and counters live (one process: a dict, not Redis); whoever
        #: installs faults for this run installs them here (pipeline.harness.simulation.faultboard).
        self.fault_board = FaultBoard()
        if faults is None and settings.fault_injection:
            # What workers follow, but a kill_worker fault raises instead of killing us.
            faults = SharedFaultInjector(
                self.fault_board.as_redis(), simulated=True, clock=self.clock
            )
        self.limiter = VirtualRateLimiter(
            self.clock,
            limit=settings.llm_rate_limit_calls,
            window_seconds=settings.llm_rate_limit_window_s,
            token_limit=settings.llm_rate_limit_tokens,
        )
        self.faults = faults
        self.dispatcher = RecordingDispatcher()
        self.services: Services = build_services(
            settings,
            faults=faults,
            clock=self.clock,
            rate_limiter=self.limiter,
            dispatcher=self.dispatcher,
        )
        self.deferred = install_deferred_store(self.services)
        #: The store as the simulator itself reads it (is the document complete?): without
        #: the scenario's faults, which are the pipeline's to meet.
        self.observer = unfaulted(self.services).store
        self.rng = random.Random(seed)
        self.project = self.services.store.ensure_project(settings.project_name)
        self.uuids: dict[int, str] = {}
        self.versions: dict[int, int] = {}
        #: Failed dispatches per document (the queue processor gives up after a few).
        self.intake_failures: dict[int, int] = {}
        #: Every delivery that ran stage code (or was refused the lock), in virtual-time order.
        self.attempts: list[Attempt] = []
        #: (task id, retries) of the attempts a delivery of which published its successor or
        #: its retry: the mark the task layer keeps on the attempt's count of deliveries,
        #: lost with Redis as it is.
        self.finished_attempts: set[tuple[str, int]] = set()
        #: Whether the delivery starting now found Redis restarted (a `redis.server` fault).
        self._restarted = False

    @property
    def settings(self) -> Settings:
        return self.services.settings

    def adopt(self, doc: int, document_uuid: str) -> None:
        """A document submitted by someone else (the scenario runner) gets this index."""
        self.uuids[doc] = document_uuid

    def submit(self, doc: int, now: float) -> list[Send]:
        """Queue the document for OCR through intake, as `docpipe run` does; submits files first.

        A document not adopted is submitted from `files` (intake.submit_file)
        with a uuid derived from the seed (reproducible rows) and claimed; then
        stages.dispatch marks it queued and sends its first stage through the
        Dispatcher port, which here hands the message to the broker model.
        """
        self.clock.set(now)
        try:
            if doc not in self.uuids:
                path = self.files[doc % len(self.files)]
                document_uuid = stable_uuid("sim", self.seed, doc)
                submit_file(self.services, path, self.project, document_uuid=document_uuid)
                self.uuids[doc] = document_uuid
                claim_own(self.services, document_uuid, worker="sim")
            document = self.services.store.get_document(self.uuids[doc])
            self.versions[doc] = document.processing_version
            stages.dispatch(self.services, self.uuids[doc])
        except (TransientError, redis.RedisError, WorkerKilled) as exc:
            # `docpipe run` reports the error; the claimed queue row goes stale and the
            # queue processor dispatches the document again - queue_max_attempts times in
            # all, then it fails the document (a fault that fails every dispatch in lockstep
            # resubmitted it forever, and the schedule never ended).
            self.dispatcher.take()
            reason = f"{type(exc).__name__}: {exc}"
            failures = self.intake_failures[doc] = self.intake_failures.get(doc, 0) + 1
            if failures < self.settings.queue_max_attempts:
                raise IntakeFailed(reason, self.settings.queue_stale_after_s) from None
            if doc in self.uuids:
                with contextlib.suppress(WorkerKilled):  # the queue processor died: row exhausted
                    give_up(self.services, self.uuids[doc], f"could not dispatch: {reason}")
                if not self._settled(doc):
                    # give_up could not record it either: a later cycle's claim fails the
                    # exhausted row and its never-dispatched document (work_queue.claim).
                    raise IntakeFailed(reason, self.settings.queue_stale_after_s) from None
            return []
        return [self._send(doc, sent) for sent in self.dispatcher.take()]

    def _settled(self, doc: int) -> bool:
        """Whether the document reached a status no queue processor needs to act on."""
        try:
            return self.services.store.get_document(self.uuids[doc]).status.is_terminal
        except (TransientError, redis.RedisError, WorkerKilled):
            return False

    def _send(self, doc: int, sent: SentStage) -> Send:
        task = START_OCR if sent.stage is Stage.OCR else str(sent.stage)
        # The version it carries: a stale twin (a `stale_version` fault) carries an old one.
        return Send(task=task, queue=sent.stage.queue, doc=doc, version=sent.version)

    def _consult(self, port: str, operation: str, doc: int) -> str | None:
        """The process-level faults (a port of the scenario catalogue the scheduler owns)."""
        if self.faults is None:
            return None
        return consult(self.faults, self.clock, port, operation, self.uuids.get(doc))

    def dies_holding(self, message: Message, now: float) -> bool:
        """Whether a `worker.countdown` fault kills the worker holding this retry."""
        self.clock.set(now)
        try:
            self._consult("worker", "countdown", message.doc)
        except WorkerKilled:
            return True
        return False

    def _restart_redis(self) -> None:
        """Redis lost what it held in memory: locks, state hash, caches, delivery counts.

        The fault injector's own keys are the experiment's, not the deployment's: kept
        (they live on the fault board; an injector given by the caller may keep them here).
        """
        self.finished_attempts.clear()
        client = self.services.redis
        keep = (ACTIVE_FAULTS_KEY, "docpipe:faults:")
        for key in list(client.scan_iter()):
            name = key.decode() if isinstance(key, bytes) else str(key)
            if not name.startswith(keep):
                client.delete(name)

    def attempt_finished(self, message: Message) -> None:
        """A delivery of the message's attempt finished its stage and published what follows
        (`Outcome.finished_stage`), as the engine saw it end: its later copies end at their
        start, as the task layer's."""
        self.finished_attempts.add((message.id, message.retries))

    def _stage(self, message: Message) -> Stage:
        return Stage.OCR if message.task in (START_OCR, POLL_OCR) else Stage(message.task)

    def run(self, message: Message, start: float, delivery: int) -> Outcome:
        """Run the delivery now; its fenced writes are committed when it ends.

        The stage runs to the end at `start` (its duration is the virtual time
        it slept) with its fenced writes held back (pipeline.harness.simulation.effects);
        they are replayed at start + duration, where the store's fence decides:
        a delivery that a redelivery overtook meanwhile writes nothing and ends
        as "skipped", sending nothing - as `pipeline.runtime.tasks.run_stage` acks it.
        """
        with self.deferred.deferring() as pending:
            try:
                outcome = self._run_at_start(message, start, delivery)
            except WorkerKilled as killed:
                # Killed outside the stage call (a dispatcher or task-layer write).
                outcome = Outcome(self.clock.now() - start, "worker_lost", detail=str(killed))
            except (TransientError, redis.RedisError) as exc:
                # Recording the failure or dead letter failed (database or Redis down): as
                # the task layer (`_retry_recording`), the task runs again later.
                countdown = retry_countdown(self.settings, message.retries, rng=self.rng)
                detail = f"could not record the outcome ({exc}); retry in {countdown:.3f}s"
                duration = self.clock.now() - start
                try:
                    outcome = self._publish_retry(message, countdown, None, exc, duration, detail)
                except WorkerKilled as killed:  # killed while publishing that retry
                    outcome = Outcome(duration, "worker_lost", detail=str(killed))
            if outcome.kind not in ("worker_lost", "requeued"):
                try:
                    self._consult("worker", "ack", message.doc)
                except WorkerKilled as killed:
                    # Its side effects are done and its sends out (the task layer publishes
                    # the next stage, and Celery's `task.retry` its retry, before the ack);
                    # only the ack dies with it, so the message comes back as well.
                    outcome = Outcome(
                        outcome.duration,
                        "worker_lost",
                        outcome.sends,
                        detail=str(killed),
                        finished_stage=outcome.finished_stage,
                    )
            outcome.redis_restarted = self._restarted
        if not pending:
            return outcome
        stage = self._stage(message)
        uuid = self.uuids[message.doc]

        def at_end(now: float) -> Outcome:
            self.clock.set(now)
            try:
                self.deferred.apply(pending)
            except StaleDelivery as stale:
                if outcome.kind == "worker_lost":
                    # Overtaken: the task layer's stage raised StaleDelivery and sent nothing.
                    return Outcome(0.0, "worker_lost", detail=outcome.detail)
                return Outcome(
                    0.0, "skipped", detail=f"stale delivery: {stale}", on_finish=outcome.on_finish
                )
            kind = outcome.kind
            if stage is Stage.RELATIONSHIPS and kind == "ok" and not outcome.sends:
                # The completing transition was one of the deferred writes.
                status = self.observer.statuses([uuid])[uuid]
                kind = "completed" if status is Status.COMPLETED else "ok"
            return Outcome(
                0.0,
                kind,
                outcome.sends,
                outcome.detail,
                outcome.on_finish,
                finished_stage=outcome.finished_stage,
            )

        return Outcome(
            outcome.duration,
            "ok",
            detail=outcome.detail,
            resume=at_end,
            redis_restarted=outcome.redis_restarted,
        )

    def _run_at_start(self, message: Message, start: float, delivery: int) -> Outcome:
        self.clock.set(start)
        self.limiter.prune("llm", start - self.settings.llm_rate_limit_window_s)
        stage = self._stage(message)
        uuid = self.uuids[message.doc]
        version = message.version if message.version is not None else self.versions[message.doc]
        services = self.services
        self._restarted = self._consult("redis", "server", message.doc) == "restart"
        if self._restarted:
            self._restart_redis()
        if self._consult("worker", "start", message.doc) == "outlive_visibility":
            # A pool without time limits: the task hangs past the visibility timeout.
            self.clock.sleep(self.settings.visibility_timeout_s + 1.0)
        if (message.id, message.retries) in self.finished_attempts:
            # As the task layer: a copy of an attempt whose successor or retry another
            # delivery published (a restore made while it ran) is no poison task.
            detail = "a copy of an attempt that published its successor or its retry"
            return Outcome(self.clock.now() - start, "skipped", detail=detail)
        if delivery > self.settings.max_redeliveries:
            if retry_published(self.services.redis, message.id, message.retries):
                # As the task layer: a surplus copy leaves the document to the retry
                # another delivery of this attempt published.
                detail = "redelivered too often, a surplus copy: its attempt's retry is out"
                return Outcome(self.clock.now() - start, "skipped", detail=detail)
            recorded = self._dead_letter(message, stage, redelivered_too_often(message.retries))
            if not recorded:
                return Outcome(0.0, "skipped", detail=DUPLICATE_VERDICT)
            return Outcome(0.0, "dead_lettered", detail="redelivered too often")
        step = poll_step(int(message.args[1])) if message.task == POLL_OCR else ""
        lock_name = stage_lock_name(uuid, version, stage, step)
        stages.forget_claim()
        token: str | None = None
        meter = ProgressMeter()
        try:
            token = services.locks.acquire(lock_name, self.settings.lock_ttl_s, owner=message.id)
            if token is None:
                raise LockUnavailable(f"another worker holds the {stage} lock")
            with metered() as meter:
                result = self._call(message, stage, uuid, version)
        except WorkerKilled as killed:
            # SIGKILL: no release, no status, no retry; the broker redelivers the message.
            self._attempted(message, meter.progressed, "killed")
            return Outcome(self.clock.now() - start, "worker_lost", detail=str(killed))
        except redis.RedisError as exc:
            # As the task layer: Redis unreachable is retried; the lock is left to expire.
            duration = self.clock.now() - start
            with self._unrecorded(message, meter.progressed):
                outcome = self._retry(message, stage, exc, meter.progressed, duration)
            self._attempted(message, meter.progressed, _ended(outcome))
            return outcome
        except TransientError as exc:
            _release_now(services, lock_name, token)
            duration = self.clock.now() - start
            with self._unrecorded(message, meter.progressed):
                outcome = self._retry(message, stage, exc, meter.progressed, duration)
            ended = "locked" if isinstance(exc, LockUnavailable) else _ended(outcome)
            self._attempted(message, meter.progressed, ended)
            return outcome
        except Exception as exc:  # the task layer records any other failure on the row
            _release_now(services, lock_name, token)
            reason = readable(stage, exc)
            # Fenced like the task layer's: committed at the end, refused if overtaken.
            fence = stages.claimed_fence()
            with self._unrecorded(message, meter.progressed):
                stages.fail(
                    services, uuid, version, stage, stage.failed_status, reason, fence=fence
                )
            self._attempted(message, meter.progressed, "failed")
            return Outcome(self.clock.now() - start, "failed", detail=reason)
        duration = self.clock.now() - start
        self._attempted(message, meter.progressed, "ok")
        release = _releaser(services, lock_name, token)
        if result.skipped:
            return Outcome(duration, "skipped", on_finish=release)
        sends: list[Send] = []
        try:
            if result.poll_job_id is not None:
                sends.append(
                    Send(
                        task=POLL_OCR,
                        queue=Stage.OCR.queue,
                        doc=message.doc,
                        args=(result.poll_job_id, result.polls),
                        countdown=self.settings.ocr_poll_interval_s,
                    )
                )
            elif result.next_stage is not None:
                # Not the task layer's `record_and_release`: the lock is held until the
                # stage's end in virtual time (the outcome's on_finish), while a failed
                # state write must be decided now (a retry). Its faults act as the same.
                services.state.record(uuid, str(stage), "completed")
                sends.extend(self._publish(result.next_stage, message, version))
        except WorkerKilled:
            raise
        except Exception as exc:
            # As the task layer: the stage committed but its successor was not published;
            # retrying re-runs the idempotent stage, which publishes again. Released now,
            # not as the outcome's finish: a kill here is a kill of the running task.
            _release_now(services, lock_name, token)
            duration = self.clock.now() - start
            try:
                outcome = self._retry(
                    message, stage, exc, meter.progressed, duration, retryable=(Exception,)
                )
            except (TransientError, redis.RedisError):
                # Its verdict could not be recorded either (see `_unrecorded`).
                self.attempts[-1] = replace(self.attempts[-1], result="unrecorded")
                raise
            self.attempts[-1] = replace(self.attempts[-1], result=_ended(outcome))
            return outcome
        if stage is Stage.RELATIONSHIPS and not sends:
            status = self.observer.statuses([uuid])[uuid]
            kind: OutcomeKind = "completed" if status is Status.COMPLETED else "ok"
            return Outcome(duration, kind, on_finish=release, finished_stage=True)
        return Outcome(
            duration, "ok", sends, detail=result.detail, on_finish=release, finished_stage=True
        )

    @contextlib.contextmanager
    def _unrecorded(self, message: Message, progressed: bool) -> Iterator[None]:
        """Log the attempt as "unrecorded" when its verdict cannot be recorded (the database
        or Redis down): the task layer's `_retry_recording` runs the task again, keeping
        its count of attempts without progress, to reach and record the verdict then."""
        try:
            yield
        except (TransientError, redis.RedisError):
            self._attempted(message, progressed, "unrecorded")
            raise

    def _attempted(self, message: Message, progressed: bool, result: str) -> None:
        self.attempts.append(
            Attempt(
                doc=message.doc,
                task=message.task,
                task_id=message.id,
                retries=message.retries,
                progressed=progressed,
                result=result,
            )
        )

    def _publish(self, stage: Stage, message: Message, version: int) -> list[Send]:
        """The next stage's message, through the dispatcher's faults (as FaultyDispatcher)."""
        send = Send(str(stage), stage.queue, message.doc, version=message.version)
        response = self._consult("dispatcher", "send_stage", message.doc)
        if response == "duplicate":
            return [send, Send(str(stage), stage.queue, message.doc, version=message.version)]
        if response == "stale_version":
            return [send, Send(str(stage), stage.queue, message.doc, version=version - 1)]
        return [send]

    def _call(self, message: Message, stage: Stage, uuid: str, version: int) -> StageResult:
        if message.task == START_OCR:
            attempt = f"{message.id}:{message.retries}"
            return stages.start_ocr(self.services, uuid, version, attempt)
        if message.task == POLL_OCR:
            job_id, polls = message.args
            return stages.poll_ocr(self.services, uuid, version, str(job_id), int(polls))
        return stages.STAGE_FUNCTIONS[stage](self.services, uuid, version)

    def _retry(
        self,
        message: Message,
        stage: Stage,
        exc: Exception,
        progressed: bool,
        duration: float,
        *,
        retryable: tuple[type[BaseException], ...] = RETRYABLE,
    ) -> Outcome:
        """pipeline.app.policy's decision, as the task layer applies it."""
        stalled, progressed = with_siblings_progress(
            self.services.redis, message.id, message.retries, message.stalled, progressed
        )
        decision = decide(
            stage,
            exc,
            attempt=message.retries,
            stalled=stalled,
            progressed=progressed,
            settings=self.settings,
            retryable=retryable,
            rng=self.rng,
        )
        if decision.action == "dead_letter":
            if isinstance(exc, LockUnavailable):
                # Another task holds this very step: it carries the document on (as the task layer).
                return Outcome(duration, "skipped", detail=str(exc))
            fence = stages.claimed_fence()
            if not self._dead_letter(message, stage, decision.error, fence=fence):
                return Outcome(duration, "skipped", detail=DUPLICATE_VERDICT)
            return Outcome(duration, "dead_lettered", detail=str(exc))
        detail = f"{exc}; retry in {decision.countdown:.3f}s ({decision.stalled} without progress)"
        countdown, stalled = decision.countdown, decision.stalled
        return self._publish_retry(message, countdown, stalled, exc, duration, detail)

    def _publish_retry(
        self,
        message: Message,
        countdown: float,
        stalled: int | None,
        exc: Exception,
        duration: float,
        detail: str,
    ) -> Outcome:
        """The retry as the task layer publishes it (`retry_task`, run here with a simulated
        task): sent; requeued when it could not be published; dropped if the task layer let
        Celery's rejection through."""
        task = SimulatedTask(
            message, lambda: self._consult("dispatcher", "send_retry", message.doc)
        )
        max_retries = self.settings.max_task_attempts
        try:
            retry_task(cast(Any, task), countdown, exc, max_retries=max_retries, stalled=stalled)
        except Retry:
            if task.sent is None:  # pragma: no cover - SimulatedTask raises Retry once sent
                raise

            # As the task layer (`_marking_retried`): this attempt's retry is marked out, and
            # the attempt finished, once the simulated broker takes it at the delivery's end,
            # not now: a delivery that dies first has published nothing, and a copy that saw
            # the mark would leave the document to a retry that never came (`docpipe explore`).
            def mark() -> None:
                mark_retry_published(self.services.redis, message.id, message.retries)
                self.attempt_finished(message)

            sent = replace(task.sent, on_published=mark)
            return Outcome(duration, "retry", [sent], detail=detail)
        except Reject as rejected:
            unsent = f"{detail}; the retry could not be published ({rejected})"
            if getattr(rejected, "requeue", False):
                return Outcome(duration, "requeued", detail=f"{unsent}: requeued")
            # Rejected without requeue: the broker drops the message, nothing carries it on.
            return Outcome(duration, "skipped", detail=f"{unsent}: rejected, dropped")
        raise RuntimeError("the task layer neither retried nor rejected")  # pragma: no cover

    def _dead_letter(
        self, message: Message, stage: Stage, text: str, *, fence: Fence | None = None
    ) -> bool:
        """The task layer's dead letter (`stages.dead_letter`): False, nothing written, for a
        duplicate's verdict or an overtaken delivery's."""
        return stages.dead_letter(
            self.services,
            self.uuids[message.doc],
            self.versions[message.doc],
            stage,
            text,
            task_name=message.task,
            retries=message.retries,
            fence=fence,
        )

    def rows_digest(self) -> dict[str, Any]:
        """Per document: status and row counts, for exactly-once checks and reports."""
        out: dict[str, Any] = {}
        for doc, uuid in sorted(self.uuids.items()):
            counts = self.observer.counts(uuid)
            status = self.observer.statuses([uuid])[uuid]
            out[str(doc)] = {
                "status": status.value,
                "chunks": counts.chunks,
                "mentions": counts.mentions,
                "canonical_entities": counts.canonical_entities,
                "relationships": counts.relationships,
            }
        digest = hashlib.sha256(repr(sorted(out.items())).encode()).hexdigest()[:16]
        return {"documents": out, "digest": digest}


class SimulatedTask:
    """What the task layer's retry (`retry_task`) uses of a bound Celery task, in the simulator.

    `retry` publishes as Celery's `Task.retry` does: the same task id with one
    more retry and the given kwargs, then raises Retry; a publish that fails
    (`publish` raises: a `dispatcher.send_retry` fault, the broker down past
    the publish policy) raises Reject(requeue=False), as Celery does. Celery's
    own retry cap is not modelled: the policy's ceiling (`max_task_attempts`)
    stops a chain first.
    """

    def __init__(self, message: Message, publish: Callable[[], object]) -> None:
        self.request = SimpleNamespace(
            id=message.id, retries=message.retries, kwargs={"stalled": message.stalled}
        )
        self.name = message.task
        self._message = message
        self._publish = publish
        #: The retry message, once published.
        self.sent: Send | None = None

    def retry(
        self, *, kwargs: dict[str, Any], exc: Exception, countdown: float, **_: Any
    ) -> NoReturn:
        try:
            self._publish()
        except (TransientError, redis.RedisError) as failed:
            raise Reject(failed, requeue=False) from None
        self.sent = self._message.retry(countdown, stalled=int(kwargs.get("stalled", 0)))
        raise Retry(exc=exc)


#: The detail of a dead-letter verdict that found the document already ended: as a
#: skipped stage, the attempt had nothing left to do.
DUPLICATE_VERDICT = "dead letter not recorded: the document had already ended"


def _ended(outcome: Outcome) -> str:
    """An attempt's result for the retry-budget evidence, from the policy's outcome."""
    if outcome.kind == "skipped" and outcome.detail == DUPLICATE_VERDICT:
        return "ok"
    return "dead_letter" if outcome.kind == "dead_lettered" else "retry"


@dataclass(frozen=True)
class SentStage:
    stage: Stage
    document_uuid: str
    version: int
    task_id: str | None


class RecordingDispatcher:
    """The `Dispatcher` port in the simulator: sends are kept for the broker model."""

    def __init__(self) -> None:
        self._sent: list[SentStage] = []

    def send_stage(
        self, stage: Stage, document_uuid: str, version: int, *, task_id: str | None = None
    ) -> None:
        self._sent.append(SentStage(stage, document_uuid, version, task_id))

    def take(self) -> list[SentStage]:
        """The sends since the last call, oldest first."""
        sent, self._sent = self._sent, []
        return sent


def _release_now(services: Services, name: str, token: str | None) -> None:
    """Release before a retry or failure, as the task layer's `_release`: Redis being down
    is not the task's failure (the lock expires); a kill still kills."""
    if token is None:
        return
    with contextlib.suppress(redis.RedisError):
        services.locks.release(name, token)


def _releaser(services: Services, name: str, token: str | None) -> Any:
    def release() -> None:
        if token is None:
            return
        # As the task layer: Redis being down is not the task's failure (the lock expires).
        with contextlib.suppress(redis.RedisError):
            try:
                services.locks.release(name, token)
            except WorkerKilled as killed:
                raise DiedFinishing(str(killed)) from None

    return release
