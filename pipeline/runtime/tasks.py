"""Celery tasks: thin entrypoints, like web views.

Load by id, take the per-document-and-stage lock, call the stage, chain the
next one. The retry decision is pipeline.app.policy's (shared with the simulator
and the monolith); the meaning of failure lives in the domain. Messages carry
ids only (claim-check): a document uuid and its version, and on a retry the
attempts in a row without progress (`stalled`, a small int).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded

from pipeline.app import stages
from pipeline.app.policy import (
    Decision,
    ProgressMeter,
    decide,
    metered,
    readable,
    redelivered_too_often,
    retry_countdown,
)
from pipeline.app.stages import StageResult
from pipeline.domain.models import Fence, Stage
from pipeline.errors import LockUnavailable, StaleDelivery, TransientError
from pipeline.ports.services import Services, current_services
from pipeline.runtime.celery_app import POLL_OCR_TASK, TASK_NAMES, app, broker_countdown
from pipeline.settings import get_settings

log = logging.getLogger(__name__)

#: `docpipe:deliveries:{task id}:{retries}`, one per task delivered: a week outlasts any
#: redelivery of one task (the visibility timeout is 80 minutes).
DELIVERIES_KEY = "docpipe:deliveries:{task_id}:{retries}"
DELIVERIES_TTL_S = 7 * 24 * 3600
#: Set once a delivery of `{task id}:{retries}` has published its retry (same TTL).
RETRIED_KEY = "docpipe:retried:{task_id}:{retries}"
#: The latest attempt (retry number) at which a failing delivery of `{task id}` made
#: durable progress (same TTL): copies of one attempt can each publish a retry, and the
#: chains they start count attempts without progress apart (`with_siblings_progress`).
PROGRESS_KEY = "docpipe:progress:{task_id}"
# Keep ARGV[1] (an attempt number, '' for none) if it is the latest, with the TTL ARGV[2];
# return the latest kept, -1 for none.
_LATEST_PROGRESS = """
local latest = tonumber(redis.call('get', KEYS[1]) or '-1')
if ARGV[1] ~= '' and tonumber(ARGV[1]) > latest then
    latest = tonumber(ARGV[1])
    redis.call('set', KEYS[1], latest, 'EX', ARGV[2])
end
return latest
"""

#: Failures worth another attempt (pipeline.app.policy decides whether one is left).
RETRYABLE: tuple[type[Exception], ...] = (
    TransientError,
    SoftTimeLimitExceeded,
    redis.RedisError,
)


def stage_lock_name(document_uuid: str, version: int, stage: Stage, step: str = "") -> str:
    """The lock of one step of work: a document's processing version, stage and step.

    A delivery that finds it held drops itself as a duplicate (`run_stage`),
    so the name must not be shared by work that is not a duplicate: a new
    processing version, or the next step of the same stage (each OCR poll is a
    step of its own). The holder may have finished with its release lost (Redis
    down: the lock lives out its TTL); its successor must not wait on it.
    """
    name = f"{document_uuid}:{stage}:v{version}"
    return f"{name}:{step}" if step else name


def run_stage(
    task: Task[Any, Any],
    stage: Stage,
    document_uuid: str,
    version: int,
    call: Callable[[Services], StageResult],
    stalled: int = 0,
    *,
    step: str = "",
) -> str:
    """Run one stage under its lock and apply the retry / failure policy (pipeline.app.policy).

    `stalled` (attempts in a row without progress) came with the message; the
    stage reports its durable progress to the attempt's meter. `step` names
    the step within the stage when it has several (an OCR poll).
    """
    services = _services_or_retry(task)
    settings = services.settings
    lock_name = stage_lock_name(document_uuid, version, stage, step)
    token: str | None = None
    # The lock kept past a finished stage, released with the state's last write.
    held: str | None = None
    # The key counting this attempt's deliveries (None for an eager call); marked once the
    # stage's successor (or, by `_marking_retried`, its retry) is published, so that a copy
    # of the attempt that comes later (a visibility-timeout restore, a redelivery after a
    # kill at the ack) ends, instead of being taken for a poison task and dead-lettering a
    # document its successor carries on.
    counter: str | None = None
    meter = ProgressMeter()

    def decision(
        exc: BaseException, retryable: tuple[type[BaseException], ...] = RETRYABLE
    ) -> Decision:
        in_a_row, progressed = _counted_with_siblings(services, task, stalled, meter.progressed)
        return decide(
            stage,
            exc,
            attempt=task.request.retries,
            stalled=in_a_row,
            progressed=progressed,
            settings=settings,
            retryable=retryable,
        )

    # A fence left by this thread's previous task must not fence this one's verdicts.
    stages.forget_claim()
    try:
        # Each delivery holds the lock under its own token; a redelivery of the same task id
        # (worker killed, or a visibility-timeout restore while this one still runs) takes
        # it over at once, and its claim in `stages.begin` fences the older delivery out.
        # A broker delivery is counted first, in one round trip with the lock and the state
        # hash's "started" (kept or undone by the claim, `stages.begin`): a poison task
        # that kills its worker every time cannot loop forever.
        counted_as = _delivery_counter(task)
        if counted_as is None:
            token = services.locks.acquire(lock_name, settings.lock_ttl_s, owner=task.request.id)
        else:
            task_id, counter = counted_as
            counted = services.state.acquire_counted_and_record_started(
                document_uuid,
                str(stage),
                lock_name=lock_name,
                ttl_seconds=settings.lock_ttl_s,
                owner=task_id,
                counter=counter,
                counter_ttl_s=DELIVERIES_TTL_S,
                limit=settings.max_redeliveries,
                replacing=stages.state_before_claim(stage),
            )
            stages.started_with_lock(counted.started)
            if counted.finished:
                log.warning(
                    "%s %s: delivery %d of an attempt whose successor or retry another "
                    "delivery published: the copy ends",
                    stage,
                    document_uuid,
                    counted.deliveries,
                )
                return "skipped"
            if counted.deliveries > settings.max_redeliveries:
                if retry_published(services.redis, task.request.id, task.request.retries):
                    # A surplus copy (docpipe explore, issue 14): another delivery of this
                    # very attempt published its retry, which carries the document on; a
                    # dead letter now would end a document that is still going. Retried
                    # here, each copy would publish the next retry with a fresh count of
                    # deliveries, and with the copies that visibility-timeout restores
                    # make, more messages than the workers ack.
                    log.error(
                        "%s %s: delivery %d of one attempt, whose retry is already "
                        "published: the copy ends",
                        stage,
                        document_uuid,
                        counted.deliveries,
                    )
                    return "skipped"
                reason = redelivered_too_often(task.request.retries)
                # Raises when it cannot be recorded: no retry of this attempt is out, and
                # the policy's handling retries the verdict.
                recorded = _dead_letter(task, services, stage, document_uuid, version, reason)
                return "dead_lettered" if recorded else "skipped"
            token = counted.token
        if token is None:
            raise LockUnavailable(f"another worker holds the {stage} lock")
        with metered() as meter, stages.deferring_state_writes(services):
            result = call(services)
        if not result.skipped and result.poll_job_id is None:
            held, token = token, None
    except StaleDelivery as exc:
        # A later delivery took the document over while this one ran (a redelivery after
        # the visibility timeout, a later stage): nothing of this one was written, and the
        # delivery that took over carries the document on. Not a failure: ack, no chain.
        log.warning("%s %s: stale delivery, writes discarded: %s", stage, document_uuid, exc)
        return "stale"
    except redis.RedisError as exc:
        # Redis restarting or unreachable: retry later rather than drop the document.
        token = None
        retry = _retry_or_dead_letter(
            task, services, stage, document_uuid, version, exc, decision(exc)
        )
        if not isinstance(retry, Retry):
            raise
        raise retry from exc
    except (TransientError, SoftTimeLimitExceeded) as exc:
        decided = decision(exc)
        if decided.action == "dead_letter" and isinstance(exc, LockUnavailable):
            # Another task holds this very step (`stage_lock_name`): running, its own message
            # guarantees progress; or done, with its release lost, and it chained what follows.
            log.warning("%s %s: dropped a duplicate task: %s", stage, document_uuid, exc)
            return "skipped"
        _release(services, lock_name, token)
        token = None
        retry = _retry_or_dead_letter(task, services, stage, document_uuid, version, exc, decided)
        if not isinstance(retry, Retry):
            return retry
        raise retry from exc
    except Exception as exc:
        reason = readable(stage, exc)
        log.warning("%s %s failed: %s", stage, document_uuid, reason)
        try:
            stages.fail(
                services,
                document_uuid,
                version,
                stage,
                stage.failed_status,
                reason,
                fence=stages.claimed_fence(),
            )
        except StaleDelivery as stale:
            # Overtaken before it failed: the delivery that took over decides the outcome.
            log.warning("%s %s: stale delivery, failure discarded: %s", stage, document_uuid, stale)
            return "stale"
        except (TransientError, redis.RedisError) as unrecorded:
            raise _retry_recording(task, services, unrecorded) from exc
        return "failed"
    finally:
        if token is not None:
            _release(services, lock_name, token)
    # The state writes of the stage's own transitions, held back while it ran.
    deferred = stages.take_deferred_states()
    try:
        if held is not None:
            # The state's last write and the lock's release are one round trip (issue 15),
            # with the metadata of the stage's last transition (its status is replaced);
            # a failed write raises here after the lock was released, as the two calls did.
            finished = deferred.pop((document_uuid, str(stage)), None)
            services.state.record_and_release(
                document_uuid,
                str(stage),
                "completed",
                lock_name=lock_name,
                token=held,
                metadata=None if finished is None else finished.metadata,
            )
        for (other_uuid, other_stage), state in deferred.items():
            services.state.record(other_uuid, other_stage, state.status, state.metadata)
        if result.skipped:
            return "skipped"
        _dispatch(result, document_uuid, version)
        if counter is not None:
            # After the publish: a delivery killed before it must be redelivered and run.
            _mark_finished(services, counter)
    except Exception as exc:
        # The stage committed but its successor could not be published (broker or Redis
        # down past the publish retries). Acking now would strand the document at this
        # stage; retrying re-runs the idempotent stage, which then publishes again.
        log.warning("%s %s: could not chain the next step: %s", stage, document_uuid, exc)
        # Any failure to chain is worth a retry: the stage's own work is already committed,
        # and what it kept is progress (a re-run that only reads it back makes none).
        chained = decision(exc, retryable=(Exception,))
        retry = _retry_or_dead_letter(task, services, stage, document_uuid, version, exc, chained)
        if not isinstance(retry, Retry):
            return retry
        raise retry from exc
    return "ok"


#: Every publish leaves the time limits to the worker that runs the task. Celery copies a
#: task's limits, bound from the publisher's configuration, into the message, and the
#: worker obeys the message over its own settings: an intake process configured with other
#: limits than the OCR workers' would impose its own. An explicit None sends none.
WORKER_TIME_LIMITS: dict[str, Any] = {"time_limit": None, "soft_time_limit": None}

#: How long publishing a retry or the next stage waits for the broker (a restarting Redis): ~40 s.
RETRY_PUBLISH_POLICY = {
    "max_retries": 40,
    "interval_start": 0.5,
    "interval_step": 0.5,
    "interval_max": 1.0,
}


def _services_or_retry(task: Task[Any, Any]) -> Services:
    """The worker's services; built on its first task, when the database may be down.

    Nothing can be recorded without them, so the task retries with backoff;
    once retries are spent it fails, and the queue processor finds the
    document without progress and sends its stage again. A soft time limit
    met here (a fresh pool child on a loaded host) retries too: raised out of
    the task it would fail it, and Celery would ack the message.
    """
    try:
        return current_services()
    except RETRYABLE as exc:
        settings = get_settings()
        retries = task.request.retries
        log.warning("cannot build the worker's services (%s); retry %d", exc, retries + 1)
        countdown = retry_countdown(settings, retries)
        raise retry_task(task, countdown, exc, max_retries=settings.max_retries) from exc


def retry_task(
    task: Task[Any, Any],
    countdown: float,
    exc: Exception,
    *,
    max_retries: int,
    stalled: int | None = None,
) -> Retry:
    """`task.retry`, its message waiting out a restarting broker (RETRY_PUBLISH_POLICY).

    `stalled` (attempts without progress) replaces the message's count; None keeps it.
    Celery rejects (drops) the message when the retry cannot be published: the
    broker is down. It is requeued instead; late acks keep it until then. The
    simulator runs this very function with a simulated task (its `dispatcher.send_retry`
    fault is a publish that fails).
    """
    kwargs = dict(task.request.kwargs or {})
    if stalled is not None:
        kwargs["stalled"] = stalled
    try:
        return task.retry(
            kwargs=kwargs,
            exc=exc,
            countdown=broker_countdown(get_settings(), countdown),
            max_retries=max_retries,
            retry_policy=RETRY_PUBLISH_POLICY,
            **WORKER_TIME_LIMITS,
        )
    except Reject as rejected:
        raise Reject(str(rejected), requeue=True) from exc


def _retry_or_dead_letter(
    task: Task[Any, Any],
    services: Services,
    stage: Stage,
    document_uuid: str,
    version: int,
    exc: Exception,
    decision: Decision,
) -> Retry | str:
    """The Retry to raise for a "retry" decision; else the outcome of the dead letter:
    "dead_lettered", or "skipped" when it was a duplicate's or an overtaken delivery's."""
    if decision.action == "retry":
        log.info(
            "%s %s: %s; retry %d in %.1fs (%d without progress)",
            stage,
            document_uuid,
            exc,
            task.request.retries + 1,
            decision.countdown,
            decision.stalled,
        )
        # Celery's own cap is the ceiling; the policy has already applied the budget.
        max_retries = services.settings.max_task_attempts
        with _marking_retried(task, services):
            return retry_task(
                task, decision.countdown, exc, max_retries=max_retries, stalled=decision.stalled
            )
    # Fenced: a delivery overtaken by another (which carries the document on) dead-letters
    # nothing. None before this delivery claimed the document (`stages.begin`).
    fence = stages.claimed_fence()
    try:
        recorded = _dead_letter(
            task, services, stage, document_uuid, version, decision.error, fence=fence
        )
    except (TransientError, redis.RedisError) as unrecorded:
        raise _retry_recording(task, services, unrecorded) from exc
    return "dead_lettered" if recorded else "skipped"


def _retry_recording(task: Task[Any, Any], services: Services, exc: Exception) -> Retry:
    """The terminal status could not be recorded (the database or Redis is down).

    Acking now would leave the document in a working status that nothing moves on
    (issue 14: a dead letter without its terminal status). The task runs again
    later; the policy then reaches the same verdict and records it.
    """
    log.warning("could not record the failure (%s); trying again later", exc)
    settings = services.settings
    countdown = retry_countdown(settings, task.request.retries)
    with _marking_retried(task, services):
        return retry_task(task, countdown, exc, max_retries=settings.max_task_attempts)


@contextmanager
def _marking_retried(task: Task[Any, Any], services: Services) -> Iterator[None]:
    """Note in Redis that this attempt's retry is published (`task.retry` raised Retry):
    a later copy of the attempt (a redelivery after a kill at the ack, a visibility-timeout
    restore) then ends at its start, as after a published successor (`_mark_finished`),
    instead of publishing another retry that would count towards the next attempt's limit;
    a surplus copy past the limit ends instead of dead-lettering (`run_stage`)."""
    try:
        yield
    except Retry:
        mark_retry_published(services.redis, task.request.id, task.request.retries)
        counted_as = _delivery_counter(task)
        if counted_as is not None:
            _mark_finished(services, counted_as[1])
        raise


def mark_retry_published(client: redis.Redis, task_id: str | None, retries: int) -> None:
    """`RETRIED_KEY` for this attempt; Redis unreachable leaves it unmarked (copies retry)."""
    key = RETRIED_KEY.format(task_id=task_id, retries=retries)
    with suppress(redis.RedisError):
        client.set(key, 1, ex=DELIVERIES_TTL_S)


def retry_published(client: redis.Redis, task_id: str | None, retries: int) -> bool:
    """Whether a delivery of this attempt has published its retry; False if Redis cannot say."""
    key = RETRIED_KEY.format(task_id=task_id, retries=retries)
    try:
        return bool(client.exists(key))
    except redis.RedisError:
        return False


def _counted_with_siblings(
    services: Services, task: Task[Any, Any], stalled: int, progressed: bool
) -> tuple[int, bool]:
    """`with_siblings_progress` for a broker delivery; an eager call has no siblings."""
    request = task.request
    if request.is_eager or not request.id:
        return stalled, progressed
    return with_siblings_progress(services.redis, request.id, request.retries, stalled, progressed)


def with_siblings_progress(
    client: redis.Redis, task_id: str, attempt: int, stalled: int, progressed: bool
) -> tuple[int, bool]:
    """The policy's (`stalled`, `progressed`) for a failing delivery, counting the progress
    of every delivery of its task id, not only of its own chain of messages.

    Copies of one attempt (a visibility-timeout restore) can each publish a retry; each
    chain carries its own count of attempts without progress, and one that made none
    would dead-letter the document while a sibling chain progresses (docpipe explore
    --seed 2026128, schedule 316). A delivery that progressed records its attempt
    number; progress at this attempt or a later one counts as this delivery's, and
    progress at an earlier one bounds the attempts without progress since. One round
    trip, on failing deliveries only; Redis down leaves the chain's own count.
    """
    key = PROGRESS_KEY.format(task_id=task_id)
    try:
        reply = client.eval(
            _LATEST_PROGRESS, 1, key, attempt if progressed else "", DELIVERIES_TTL_S
        )
    except redis.RedisError:
        return stalled, progressed
    latest = int(reply)
    if latest >= attempt:
        return stalled, True
    if latest >= 0:
        stalled = max(0, min(stalled, attempt - latest - 1))
    return stalled, progressed


def _mark_finished(services: Services, counter: str) -> None:
    """`StateTracker.mark_attempt_finished`; Redis down leaves the attempt unmarked, and a
    later copy of it is counted, as before the mark existed."""
    try:
        services.state.mark_attempt_finished(counter)
    except redis.RedisError as exc:
        log.warning("could not mark %s finished (%s)", counter, exc)


def _release(services: Services, lock_name: str, token: str | None) -> None:
    """Release a lock; Redis being down is not the task's failure (the lock expires)."""
    if token is None:
        return
    try:
        services.locks.release(lock_name, token)
    except redis.RedisError as exc:
        # Failing here would skip chaining the next stage of work already committed.
        log.warning("could not release lock %s (%s); it expires by itself", lock_name, exc)


def _delivery_counter(task: Task[Any, Any]) -> tuple[str, str] | None:
    """The task id and the key counting its deliveries at this retry; None for an eager call."""
    request = task.request  # a lookup through Celery's task stack each time
    task_id: str | None = request.id
    if request.is_eager or not task_id:
        return None
    return task_id, DELIVERIES_KEY.format(task_id=task_id, retries=request.retries)


def _dead_letter(
    task: Task[Any, Any],
    services: Services,
    stage: Stage,
    document_uuid: str,
    version: int,
    message: str,
    *,
    fence: Fence | None = None,
) -> bool:
    """Record the dead letter and the document's terminal status; `message` says why.

    False, with nothing written, for a duplicate's verdict or one of a delivery
    overtaken by another (its `fence` is stale): `stages.dead_letter`.
    """
    return stages.dead_letter(
        services,
        document_uuid,
        version,
        stage,
        message,
        task_name=task.name,
        retries=task.request.retries,
        fence=fence,
    )


def _dispatch(result: StageResult, document_uuid: str, version: int) -> None:
    services = current_services()
    settings = services.settings
    if result.poll_job_id is not None:
        poll_ocr_task.apply_async(
            args=(document_uuid, version, result.poll_job_id, result.polls),
            countdown=broker_countdown(settings, settings.ocr_poll_interval_s),
            retry_policy=RETRY_PUBLISH_POLICY,
            **WORKER_TIME_LIMITS,
        )
    elif result.next_stage is not None:
        # Through the port, as intake sends: what wraps it (scenario faults) sees every send.
        services.dispatcher.send_stage(result.next_stage, document_uuid, version)


def send_stage(
    stage: Stage, document_uuid: str, version: int, *, task_id: str | None = None
) -> None:
    """Enqueue a stage for a document: the one way stages are chained.

    Publishing waits out a restarting broker (RETRY_PUBLISH_POLICY) instead of
    Celery's default ~1 s of retries.
    """
    STAGE_TASKS[stage].apply_async(
        args=(document_uuid, version),
        task_id=task_id,
        retry_policy=RETRY_PUBLISH_POLICY,
        **WORKER_TIME_LIMITS,
    )


class CeleryDispatcher:
    """The `Dispatcher` port on Celery: what bootstrap wires into the services."""

    def send_stage(
        self, stage: Stage, document_uuid: str, version: int, *, task_id: str | None = None
    ) -> None:
        # Looked up at call time, so a test that replaces `send_stage` sees every send.
        send_stage(stage, document_uuid, version, task_id=task_id)


@app.task(bind=True, name=TASK_NAMES[Stage.OCR])
def start_ocr_task(self: Task[Any, Any], document_uuid: str, version: int, stalled: int = 0) -> str:
    attempt = f"{self.request.id}:{self.request.retries}"
    return run_stage(
        self,
        Stage.OCR,
        document_uuid,
        version,
        lambda s: stages.start_ocr(s, document_uuid, version, attempt),
        stalled,
    )


@app.task(bind=True, name=POLL_OCR_TASK)
def poll_ocr_task(
    self: Task[Any, Any],
    document_uuid: str,
    version: int,
    job_id: str,
    polls: int,
    stalled: int = 0,
) -> str:
    return run_stage(
        self,
        Stage.OCR,
        document_uuid,
        version,
        lambda s: stages.poll_ocr(s, document_uuid, version, job_id, polls),
        stalled,
        step=poll_step(polls),
    )


def poll_step(polls: int) -> str:
    """An OCR poll's step (`stage_lock_name`): the start's lock, or the previous poll's, left
    behind by a lost release, must not block the poll that continues it."""
    return f"poll{polls}"


def _stage_task(stage: Stage) -> Any:
    function = stages.STAGE_FUNCTIONS[stage]

    @app.task(bind=True, name=TASK_NAMES[stage])
    def stage_task(self: Task[Any, Any], document_uuid: str, version: int, stalled: int = 0) -> str:
        return run_stage(
            self,
            stage,
            document_uuid,
            version,
            lambda s: function(s, document_uuid, version),
            stalled,
        )

    return stage_task


STAGE_TASKS: dict[Stage, Any] = {Stage.OCR: start_ocr_task}
for _stage in stages.STAGE_FUNCTIONS:
    STAGE_TASKS[_stage] = _stage_task(_stage)
