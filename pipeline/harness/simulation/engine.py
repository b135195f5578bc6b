"""A deterministic discrete-event model of the Celery-on-Redis deployment.

One Redis list per queue; workers with a concurrency (slots) and a prefetch
limit (messages reserved, running or waiting, per worker); `acks_late`: a
message stays unacknowledged until its task finishes. Kombu's Redis
transport keeps unacked messages in a hash and restores any older than the
visibility timeout to its queue, so:

- a task that runs longer than the visibility timeout is delivered again
  while the first delivery still runs;
- a crashed worker's reserved and running messages come back only when the
  visibility timeout has passed since they were reserved;
- an ETA/countdown message is reserved at once and held by the worker until
  its ETA: when the countdown exceeds the visibility timeout it is restored
  and delivered again early, to another worker (the known Redis pitfall).

Restores happen exactly at reserve time + visibility timeout (kombu checks
periodically, so real ones come a little later). Events are ordered by
(time, sequence number): the same inputs always give the same trace.
What a task does and how long it takes is an `Executor`'s business: the
model executor samples the latency profile, the real one runs stage code.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pipeline.domain.models import QUEUES

#: `worker_lost`: the process running the task died (a `kill_worker` fault); with late
#: acks and reject-on-worker-lost the message goes back to its queue at once, and the
#: slot runs nothing until the pool has replaced the process.
#: `requeued`: the task rejected its message with requeue (Celery's Reject(requeue=True),
#: a retry that could not be published): back to its queue at once, as a lost one.
OutcomeKind = Literal[
    "ok", "retry", "failed", "skipped", "dead_lettered", "completed", "worker_lost", "requeued"
]


@dataclass(frozen=True)
class Message:
    """A task message: ids only, like the real ones."""

    id: str
    task: str
    queue: str
    doc: int
    args: tuple[Any, ...] = ()
    retries: int = 0
    eta: float = 0.0
    #: Attempts in a row without progress (pipeline.app.policy), carried like a task kwarg.
    stalled: int = 0
    #: The processing version the message carries (None: the document's current one).
    version: int | None = None

    def retry(self, countdown: float, stalled: int = 0) -> Send:
        """The same task again after `countdown`, as Celery's retry sends it (same id)."""
        return Send(
            task=self.task,
            queue=self.queue,
            doc=self.doc,
            args=self.args,
            countdown=countdown,
            retries=self.retries + 1,
            task_id=self.id,
            stalled=stalled,
            version=self.version,
        )


@dataclass(frozen=True)
class Send:
    """A message an outcome publishes, `countdown` seconds after the task finishes."""

    task: str
    queue: str
    doc: int
    args: tuple[Any, ...] = ()
    countdown: float = 0.0
    retries: int = 0
    #: Reuse a task id (a retry keeps its id); a new one otherwise.
    task_id: str | None = None
    stalled: int = 0
    #: The processing version to carry (None: the document's current one).
    version: int | None = None
    #: Called as the message enters its queue: what the publisher notes once it is out
    #: (the task layer's mark of a published retry), not before.
    on_published: Callable[[], None] | None = field(default=None, compare=False, repr=False)


class DiedFinishing(Exception):
    """Raised by an `Outcome.on_finish` whose worker was killed while finishing: the
    delivery ends as `worker_lost` (no ack, nothing sent, the message requeued)."""


@dataclass
class Outcome:
    duration: float
    kind: OutcomeKind
    sends: list[Send] = field(default_factory=list)
    detail: str = ""
    #: Called when the task finishes in virtual time (releases a lock, for instance).
    on_finish: Callable[[], None] | None = None
    #: The task is not done: after `duration`, call this (with the time) for the rest.
    resume: Callable[[float], Outcome] | None = None
    #: Redis restarted as this task started: every worker's connection dropped.
    redis_restarted: bool = False
    #: The delivery finished its stage and published what follows (the next stage or OCR
    #: poll; nothing after the last stage): the task layer marks its attempt finished, and
    #: a later copy of the attempt ends at its start (`StageExecutor.attempt_finished`).
    finished_stage: bool = False


class IntakeFailed(Exception):
    """`Executor.submit` could not queue the document (its database is down): the queue
    processor finds the claimed row stale and dispatches it again `retry_after_s` later."""

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class Executor(Protocol):
    def submit(self, doc: int, now: float) -> list[Send]:
        """A document is submitted: the first messages to send."""
        ...

    def run(self, message: Message, start: float, delivery: int) -> Outcome:
        """Run one delivery of a message starting at `start` (virtual seconds)."""
        ...


class CountdownFaults(Protocol):
    """An executor that can make a worker die while it holds a retry's countdown message."""

    def dies_holding(self, message: Message, now: float) -> bool: ...


class SimulationDidNotEnd(RuntimeError):
    """The run passed SimConfig.max_events: messages that keep causing each other (a livelock).

    `at` is the virtual time reached, `in_flight` the messages queued or unacknowledged then,
    `in_flight_halfway` the most in the first half of the events (a livelock grows past
    it), `most_of_one_task` the most of them with one task id (a livelock multiplies
    one task's copies), `documents` how many the run carried.
    """

    def __init__(
        self,
        message: str,
        *,
        at: float = 0.0,
        in_flight: int = 0,
        in_flight_halfway: int = 0,
        most_of_one_task: int = 0,
        documents: int = 0,
    ) -> None:
        super().__init__(message)
        self.at = at
        self.in_flight = in_flight
        self.in_flight_halfway = in_flight_halfway
        self.most_of_one_task = most_of_one_task
        self.documents = documents


@dataclass(frozen=True)
class SimulatedWorker:
    queue: str
    concurrency: int
    prefetch_multiplier: int = 1
    name: str = ""


@dataclass(frozen=True)
class Crash:
    """Kill a worker (all its slots) at `at`; it comes back `restart_after` later (or never)."""

    worker: str
    at: float
    restart_after: float | None = None


#: A prefork pool forks a new child and runs its `worker_process_init` (docpipe builds its
#: services there) after one was killed: a fraction of a second.
PROCESS_REPLACEMENT_S = 0.2


@dataclass(frozen=True)
class SimConfig:
    workers: Sequence[SimulatedWorker]
    visibility_timeout_s: float = 4800.0
    #: Broker and worker overhead added to every task (virtual seconds).
    hop_overhead_s: float = 0.0
    #: Closed loop: this many users each submit a document when their last one ends.
    users: int | None = None
    #: Closed loop: the delay between a document ending and the user noticing it.
    user_delay_s: float = 0.0
    crashes: Sequence[Crash] = ()
    #: Stop the run at this virtual time (None: when every document is done).
    until: float | None = None
    #: How long the pool takes to replace a process that died running a task (a `kill_worker`
    #: fault): its slot runs nothing meanwhile. Never zero: a kill that cost no virtual time let
    #: a task that kills every delivery loop at one instant, where no fault window ever closes.
    process_replacement_s: float = PROCESS_REPLACEMENT_S
    max_events: int = 20_000_000
    trace: bool = True


@dataclass
class _Delivery:
    tag: int
    message: Message
    worker: _Worker
    reserved_at: float
    acked: bool = False
    generation: int = 0
    #: Its worker's connection dropped while it waited (a Redis restart): it never runs
    #: there; the visibility timeout restores it.
    dropped: bool = False


@dataclass
class _Worker:
    name: str
    queue: str
    concurrency: int
    prefetch: int
    alive: bool = True
    generation: int = 0
    running: int = 0
    buffer: deque[_Delivery] = field(default_factory=deque)
    held: int = 0
    #: Slots whose process died and is being replaced (`SimConfig.process_replacement_s`).
    replacing: int = 0


@dataclass
class DocumentRecord:
    submitted_at: float
    ended_at: float | None = None
    outcome: str = ""


@dataclass
class SimResult:
    documents: dict[int, DocumentRecord]
    trace: list[tuple[Any, ...]]
    end_time: float
    events: int
    counts: dict[str, int]
    executions: dict[tuple[int, str], int]
    #: Slot-seconds each queue's workers spent running tasks.
    busy_s: dict[str, float] = field(default_factory=dict)

    def completed_times(self) -> list[float]:
        return sorted(
            r.ended_at
            for r in self.documents.values()
            if r.ended_at is not None and r.outcome == "completed"
        )

    def trace_text(self) -> str:
        return "\n".join(json.dumps(row, separators=(",", ":")) for row in self.trace) + "\n"


class Simulator:
    def __init__(self, config: SimConfig, executor: Executor) -> None:
        self.config = config
        self.executor = executor
        self.now = 0.0
        self._heap: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self._tag = 0
        self._ids = 0
        self.queues: dict[str, deque[Message]] = {q: deque() for q in QUEUES}
        self.unacked: dict[int, _Delivery] = {}
        self.deliveries: dict[tuple[str, int], int] = {}
        self.workers: list[_Worker] = []
        for index, spec in enumerate(config.workers):
            if spec.queue not in self.queues:
                raise ValueError(f"unknown queue {spec.queue!r}")
            self.workers.append(
                _Worker(
                    name=spec.name or f"{spec.queue}-{index}",
                    queue=spec.queue,
                    concurrency=spec.concurrency,
                    prefetch=spec.concurrency * spec.prefetch_multiplier,
                )
            )
        self.trace: list[tuple[Any, ...]] = []
        self.documents: dict[int, DocumentRecord] = {}
        self.counts: dict[str, int] = {}
        self.executions: dict[tuple[int, str], int] = {}
        self.busy_s: dict[str, float] = {}
        self._pending_docs: deque[int] = deque()
        self.last_activity = 0.0

    # --- plumbing -------------------------------------------------------------------

    def _push(self, at: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, payload))

    def _log(self, event: str, *fields: Any) -> None:
        self.counts[event] = self.counts.get(event, 0) + 1
        if self.config.trace:
            self.trace.append((round(self.now, 6), event, *fields))

    def _new_id(self, send: Send) -> str:
        if send.task_id is not None:
            return send.task_id
        self._ids += 1
        return f"t{self._ids}"

    def publish(self, send: Send) -> None:
        message = Message(
            id=self._new_id(send),
            task=send.task,
            queue=send.queue,
            doc=send.doc,
            args=send.args,
            retries=send.retries,
            eta=self.now + send.countdown if send.countdown > 0 else 0.0,
            stalled=send.stalled,
            version=send.version,
        )
        self.queues[message.queue].append(message)
        self._log("publish", message.id, message.task, message.doc, message.retries, message.eta)
        if send.on_published is not None:
            send.on_published()

    # --- the run ----------------------------------------------------------------------

    def run(
        self, documents: Sequence[int], *, submit_at: Mapping[int, float] | None = None
    ) -> SimResult:
        self._pending_docs = deque(documents)
        if self.config.users is None:
            while self._pending_docs:
                doc = self._pending_docs.popleft()
                self._push((submit_at or {}).get(doc, self.now), "submit", doc)
        else:
            for _ in range(min(self.config.users, len(self._pending_docs))):
                self._push(self.now, "submit", self._pending_docs.popleft())
        for crash in self.config.crashes:
            self._push(crash.at, "crash", crash)
        events = 0
        until = self.config.until
        halfway = self.config.max_events // 2
        # The most in flight in the first half of the events (sampled: a missed peak only
        # makes a bounded loop look like growth, never the other way round).
        in_flight_halfway = 0
        while self._heap:
            at, _, kind, payload = heapq.heappop(self._heap)
            if until is not None and at > until:
                break
            self.now = at
            events += 1
            if events <= halfway and events % 16 == 0:
                in_flight_halfway = max(in_flight_halfway, self._in_flight())
            if events > self.config.max_events:
                # What was in flight, and whether it grew, tells a livelock (messages
                # multiplying) from a retry loop that a fault which never stops keeps going.
                queued = sum(len(messages) for messages in self.queues.values())
                ended = sum(1 for record in self.documents.values() if record.ended_at is not None)
                raise SimulationDidNotEnd(
                    f"{self.config.max_events:,} events by virtual time {at:,.0f} s "
                    f"(next: {kind}) and still running: {queued:,} message(s) queued, "
                    f"{len(self.unacked):,} unacknowledged, {ended} of "
                    f"{len(self.documents)} document(s) ended by an acknowledged task",
                    at=at,
                    in_flight=self._in_flight(),
                    in_flight_halfway=in_flight_halfway,
                    most_of_one_task=self._most_of_one_task(),
                    documents=len(self.documents),
                )
            if getattr(self, f"_on_{kind}")(payload) is not False:
                self.last_activity = at
            self._dispatch()
        # Pending visibility checks of acknowledged messages are not activity.
        end = self.last_activity if until is None else until
        self.now = end
        return SimResult(
            self.documents, self.trace, end, events, self.counts, self.executions, self.busy_s
        )

    def _in_flight(self) -> int:
        """Messages queued or delivered and not yet acknowledged."""
        return sum(len(messages) for messages in self.queues.values()) + len(self.unacked)

    def _most_of_one_task(self) -> int:
        """The most messages in flight with one task id (copies, and its retries)."""
        ids = Counter(m.id for messages in self.queues.values() for m in messages)
        ids.update(delivery.message.id for delivery in self.unacked.values())
        return max(ids.values(), default=0)

    def _on_submit(self, doc: int) -> None:
        self.documents[doc] = DocumentRecord(submitted_at=self.now)
        self._log("submit", doc)
        self._intake(doc)

    def _on_resubmit(self, doc: int) -> None:
        self._log("resubmit", doc)
        self._intake(doc)

    def _intake(self, doc: int) -> None:
        try:
            sends = self.executor.submit(doc, self.now)
        except IntakeFailed as failed:
            self._log("submit_failed", doc, str(failed))
            self._push(self.now + failed.retry_after_s, "resubmit", doc)
            return
        for send in sends:
            self.publish(send)

    def restart_redis(self) -> None:
        """Redis went away and came back: the queues and the unacked hash survive (an
        fsynced append-only file), but every worker's connection dropped. Messages a
        worker had received without starting them - prefetched, or held for their
        countdown - are gone from it; kombu could not requeue them while Redis was down,
        so they come back when the visibility timeout restores them."""
        lost = []
        for worker in self.workers:
            for delivery in worker.buffer:
                delivery.dropped = True
                lost.append(delivery.message.id)
            worker.buffer.clear()
        for _at, _seq, kind, payload in self._heap:
            if kind == "eta" and not payload.dropped:
                payload.dropped = True
                payload.worker.held -= 1
                lost.append(payload.message.id)
        self._log("redis_restart", lost)

    def _on_crash(self, crash: Crash) -> None:
        for worker in self.workers:
            if worker.name != crash.worker or not worker.alive:
                continue
            worker.alive = False
            worker.generation += 1
            lost = [d.message.id for d in worker.buffer]
            worker.buffer.clear()
            worker.running = 0
            worker.held = 0
            worker.replacing = 0
            self._log("crash", worker.name, lost)
            if crash.restart_after is not None:
                self._push(self.now + crash.restart_after, "restart", worker.name)

    def _on_restart(self, name: str) -> None:
        for worker in self.workers:
            if worker.name == name:
                worker.alive = True
                self._log("restart", name)

    def _on_visibility(self, tag: int) -> bool:
        delivery = self.unacked.pop(tag, None)
        if delivery is None:
            return False
        # Kombu puts the message back on its queue: it will be delivered again.
        self.queues[delivery.message.queue].appendleft(delivery.message)
        self._log("restore", delivery.message.id, delivery.tag, delivery.worker.name)
        return True

    def _on_eta(self, delivery: _Delivery) -> None:
        worker = delivery.worker
        if delivery.generation != worker.generation or delivery.dropped:
            return
        worker.held -= 1
        worker.buffer.append(delivery)
        self._start_ready(worker)

    def _on_replaced(self, payload: tuple[_Worker, int]) -> bool:
        worker, generation = payload
        if generation == worker.generation:  # else the whole worker died meanwhile
            worker.replacing -= 1
            self._start_ready(worker)
        return False  # not activity: a run's end is its last task's

    def _on_finish(self, payload: tuple[_Delivery, Outcome]) -> None:
        delivery, outcome = payload
        worker = delivery.worker
        if delivery.generation != worker.generation:
            return  # the worker died under it: no ack, nothing sent, its lock stays
        worker.running -= 1
        message = delivery.message
        if outcome.kind != "worker_lost" and outcome.on_finish is not None:
            try:
                outcome.on_finish()
            except DiedFinishing as died:
                # Killed after its work, before the ack (releasing its lock): as a kill.
                outcome = Outcome(0.0, "worker_lost", detail=str(died))
        if outcome.finished_stage:
            finished = getattr(self.executor, "attempt_finished", None)
            if finished is not None:
                finished(message)
        if outcome.kind in ("worker_lost", "requeued"):
            # The pool replaces its process (or the task rejected its message); the message
            # is requeued (no ack; a dead task's lock stays until its TTL or its
            # redelivery). What it published before it died is out (a retry).
            if self.unacked.pop(delivery.tag, None) is not None:
                self.queues[message.queue].appendleft(message)
            self._log(outcome.kind, message.id, delivery.tag, worker.name)
            for send in outcome.sends:
                self.publish(send)
            if outcome.kind == "worker_lost":
                worker.replacing += 1
                self._push(
                    self.now + self.config.process_replacement_s,
                    "replaced",
                    (worker, worker.generation),
                )
            self._start_ready(worker)
            return
        acked = self.unacked.pop(delivery.tag, None) is not None
        self._log("finish", message.id, delivery.tag, worker.name, outcome.kind, acked)
        for send in outcome.sends:
            self.publish(send)
        if outcome.kind in ("completed", "failed", "dead_lettered"):
            self._end_document(message.doc, outcome.kind)
        self._start_ready(worker)

    def _end_document(self, doc: int, kind: str) -> None:
        record = self.documents[doc]
        if record.ended_at is not None:
            self._log("duplicate_end", doc, kind)
            return
        record.ended_at = self.now
        record.outcome = kind
        self._log("end", doc, kind)
        if self.config.users is not None and self._pending_docs:
            self._push(self.now + self.config.user_delay_s, "submit", self._pending_docs.popleft())

    # --- workers ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        for queue, messages in self.queues.items():
            while messages:
                worker = self._free_worker(queue)
                if worker is None:
                    break
                self._reserve(worker, messages.popleft())

    def _free_worker(self, queue: str) -> _Worker | None:
        best: _Worker | None = None
        for worker in self.workers:
            if worker.queue != queue or not worker.alive:
                continue
            load = worker.running + len(worker.buffer)
            if load < worker.prefetch and (best is None or load < best.running + len(best.buffer)):
                best = worker
        return best

    def _reserve(self, worker: _Worker, message: Message) -> None:
        self._tag += 1
        delivery = _Delivery(self._tag, message, worker, self.now, generation=worker.generation)
        self.unacked[delivery.tag] = delivery
        self._log("deliver", message.id, delivery.tag, worker.name)
        self._push(self.now + self.config.visibility_timeout_s, "visibility", delivery.tag)
        if message.eta > self.now:
            # ETA messages are held outside the prefetch count until due.
            worker.held += 1
            self._push(message.eta, "eta", delivery)
            dies = getattr(self.executor, "dies_holding", None)
            if dies is not None and dies(message, self.now):
                # The worker dies while it holds the countdown (and whatever else it runs).
                self._push(self.now, "crash", Crash(worker.name, self.now, restart_after=5.0))
            return
        worker.buffer.append(delivery)
        self._start_ready(worker)

    def _start_ready(self, worker: _Worker) -> None:
        while (
            worker.alive
            and worker.buffer
            and worker.running + worker.replacing < worker.concurrency
        ):
            delivery = worker.buffer.popleft()
            worker.running += 1
            message = delivery.message
            key = (message.doc, message.task)
            self.executions[key] = self.executions.get(key, 0) + 1
            # Counted per task id and retry as the task starts, like the task layer's
            # redelivery guard: a message a dead worker only held was never counted.
            count = self.deliveries.get((message.id, message.retries), 0) + 1
            self.deliveries[(message.id, message.retries)] = count
            outcome = self.executor.run(message, self.now, count)
            self._log("start", message.id, delivery.tag, worker.name, count)
            if outcome.redis_restarted:
                self.restart_redis()
            self._schedule(delivery, outcome, self.config.hop_overhead_s)

    def _schedule(self, delivery: _Delivery, outcome: Outcome, overhead: float = 0.0) -> None:
        taken = outcome.duration + overhead
        queue = delivery.worker.queue
        self.busy_s[queue] = self.busy_s.get(queue, 0.0) + taken
        kind = "finish" if outcome.resume is None else "resume"
        self._push(self.now + taken, kind, (delivery, outcome))

    def _on_resume(self, payload: tuple[_Delivery, Outcome]) -> None:
        delivery, outcome = payload
        if delivery.generation != delivery.worker.generation or outcome.resume is None:
            return
        self._schedule(delivery, outcome.resume(self.now))
