"""The fast path: every task's service time sampled from the latency profile, no stage code.

A document is reduced to its shape (does it go through the OCR job, the LLM
keys of its chunks); the stages' waits come from the same profile and the
same keys as the fakes use, so a document waits what it would in a real run.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.adapters.latency import (
    DOCUMENT_DB,
    GRAPH_WRITE,
    LLM_CALL,
    OCR_JOB,
    LatencyProfile,
    pack_call_seconds,
    pack_key,
)
from pipeline.domain.models import Stage
from pipeline.harness.simulation.clock import VirtualClock, VirtualRateLimiter
from pipeline.harness.simulation.engine import Message, Outcome, Send

START_OCR = "start_ocr"
POLL_OCR = "poll_ocr"
#: Tasks one document takes besides OCR polls; its CPU time is spread over them.
TASKS_PER_DOCUMENT = 7


@dataclass(frozen=True)
class LlmRequest:
    """One LLM request entity extraction makes: the chunks it carries and its tokens."""

    #: Indices into the document's `chunk_keys`.
    chunks: tuple[int, ...]
    #: What the request reserves of the tokens-per-window limit.
    tokens: int = 0


@dataclass(frozen=True)
class DocumentShape:
    name: str
    #: PDFs go through the asynchronous OCR job; other types are parsed at once.
    ocr: bool
    #: The LLM latency keys of its chunks (sha256 of each chunk text, as the fake uses).
    chunk_keys: tuple[str, ...]
    #: Real CPU seconds one pass of the stage code takes (0 in the pure model).
    cpu_s: float = 0.0
    #: Its LLM requests as the stage packs them; empty = one request per chunk.
    requests: tuple[LlmRequest, ...] = ()

    @property
    def llm_requests(self) -> tuple[LlmRequest, ...]:
        if self.requests:
            return self.requests
        return tuple(LlmRequest((index,)) for index in range(len(self.chunk_keys)))


@dataclass(frozen=True)
class Policy:
    """The task layer's settings the model needs (seconds of the modelled system)."""

    ocr_poll_interval_s: float = 5.0
    ocr_max_polls: int = 120
    llm_rate_limit_calls: int = 50
    #: Tokens per window (0 = no token limit).
    llm_rate_limit_tokens: int = 0
    llm_rate_limit_window_s: float = 60.0
    llm_rate_limit_max_wait_s: float = 120.0
    max_retries: int = 5
    #: Deliveries of one message (per retry) before it is dead-lettered (the task layer's guard).
    max_redeliveries: int = 3
    retry_backoff_base_s: float = 2.0
    retry_backoff_max_s: float = 600.0
    #: Probability that a task delivery fails transiently (seeded, per message and try).
    transient_rate: float = 0.0
    #: Extra virtual seconds for a task name, or "name:doc" for one document's task.
    extra_s: tuple[tuple[str, float], ...] = ()
    #: Task names whose first try fails transiently (to show a retry countdown).
    fail_first: tuple[str, ...] = ()


#: Stage order for the duplicate check; document node and chunking share a status ceiling.
_RANK: dict[Stage, int] = {
    Stage.OCR: 0,
    Stage.DOCUMENT_NODE: 1,
    Stage.CHUNKING: 1,
    Stage.ENTITY_EXTRACTION: 2,
    Stage.ENTITY_RESOLUTION: 3,
    Stage.RELATIONSHIPS: 4,
}


def retry_countdown(policy: Policy, retries: int, rng: random.Random, after: float = 0.0) -> float:
    """The task layer's backoff (pipeline.runtime.tasks.retry_countdown) on the model's policy."""
    step = min(policy.retry_backoff_max_s, policy.retry_backoff_base_s * 2.0**retries)
    countdown = max(step * rng.uniform(0.5, 1.0), after)
    return min(countdown, policy.retry_backoff_max_s)


def stage_send(stage: Stage, doc: int, *, countdown: float = 0.0) -> Send:
    return Send(task=str(stage), queue=stage.queue, doc=doc, countdown=countdown)


class ModelExecutor:
    """`Executor` over document shapes and a latency profile."""

    def __init__(
        self,
        shapes: Sequence[DocumentShape],
        profile: LatencyProfile,
        policy: Policy,
        *,
        seed: int = 0,
    ) -> None:
        self.shapes = shapes
        self.profile = profile
        self.policy = policy
        self.rng = random.Random(seed)
        self.seed = seed
        self.clock = VirtualClock()
        self.limiter = VirtualRateLimiter(
            self.clock,
            limit=policy.llm_rate_limit_calls,
            window_seconds=policy.llm_rate_limit_window_s,
            token_limit=policy.llm_rate_limit_tokens,
        )
        self._job_end: dict[int, float] = {}
        #: Per document: the furthest stage started, and whether it has ended.
        self._furthest: dict[int, int] = {}
        self._ended: set[int] = set()
        self.llm_calls = 0
        self.llm_tokens = 0
        #: Requests whose LLM answers are cached per document: a retry does not call again.
        self._cached: dict[int, int] = {}
        self._extra = dict(policy.extra_s)

    def shape(self, doc: int) -> DocumentShape:
        return self.shapes[doc % len(self.shapes)]

    def submit(self, doc: int, now: float) -> list[Send]:
        return [Send(task=START_OCR, queue=Stage.OCR.queue, doc=doc)]

    def _fails(self, message: Message, delivery: int) -> bool:
        if self.policy.transient_rate <= 0:
            return False
        key = f"{self.seed}:{message.id}:{message.retries}:{delivery}".encode()
        u = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0**64
        return u < self.policy.transient_rate

    def _retry(self, message: Message, duration: float, detail: str, after: float = 0.0) -> Outcome:
        if message.retries >= self.policy.max_retries:
            return Outcome(duration, "dead_lettered", detail=detail)
        countdown = retry_countdown(self.policy, message.retries, self.rng, after)
        send = message.retry(countdown)
        return Outcome(duration, "retry", [send], detail=f"{detail}; retry in {countdown:.3f}s")

    def run(self, message: Message, start: float, delivery: int) -> Outcome:
        outcome = self._run(message, start, delivery)
        if outcome.kind in ("completed", "failed", "dead_lettered"):
            self._ended.add(message.doc)
        return outcome

    def _run(self, message: Message, start: float, delivery: int) -> Outcome:
        doc = message.doc
        shape = self.shape(doc)
        extra = self._extra.get(f"{message.task}:{doc}", self._extra.get(message.task, 0.0))
        extra += shape.cpu_s / TASKS_PER_DOCUMENT
        if delivery > self.policy.max_redeliveries:
            return Outcome(0.0, "dead_lettered", detail="worker lost too many times")
        if message.task in self.policy.fail_first and message.retries == 0:
            return self._retry(message, extra, "first try fails")
        if self._fails(message, delivery):
            return self._retry(message, extra, "transient fault")
        task = message.task
        if task == START_OCR:
            if not shape.ocr:
                return Outcome(extra, "ok", [stage_send(Stage.DOCUMENT_NODE, doc)])
            self._job_end[doc] = start + self.profile.sample(OCR_JOB, f"{doc}:{message.retries}")
            poll = Send(
                task=POLL_OCR,
                queue=Stage.OCR.queue,
                doc=doc,
                args=(0,),
                countdown=self.policy.ocr_poll_interval_s,
            )
            return Outcome(extra, "ok", [poll])
        if task == POLL_OCR:
            polls = int(message.args[0]) + 1
            if start >= self._job_end.get(doc, 0.0):
                return Outcome(extra, "ok", [stage_send(Stage.DOCUMENT_NODE, doc)])
            if polls >= self.policy.ocr_max_polls:
                return Outcome(extra, "failed", detail="ocr polls exhausted")
            poll = Send(
                task=POLL_OCR,
                queue=Stage.OCR.queue,
                doc=doc,
                args=(polls,),
                countdown=self.policy.ocr_poll_interval_s,
            )
            return Outcome(extra, "ok", [poll])
        stage = Stage(task)
        # The stage code's duplicate check (stages.begin): a later stage owns the document.
        rank = _RANK[stage]
        if doc in self._ended or self._furthest.get(doc, -1) > rank:
            return Outcome(extra, "skipped", detail="duplicate delivery")
        self._furthest[doc] = rank
        if stage is Stage.DOCUMENT_NODE:
            wait = self.profile.sample(DOCUMENT_DB, str(doc))
            return Outcome(extra + wait, "ok", [stage_send(Stage.CHUNKING, doc)])
        if stage is Stage.ENTITY_EXTRACTION:
            return self._extract(message, shape, extra)
        if stage is Stage.RELATIONSHIPS:
            wait = self.profile.sample(GRAPH_WRITE, str(doc))
            return Outcome(extra + wait, "completed")
        following = stage.next
        assert following is not None
        return Outcome(extra, "ok", [stage_send(following, doc)])

    def _extract(self, message: Message, shape: DocumentShape, extra: float) -> Outcome:
        """One step per LLM request, so the shared window only ever sees past calls."""
        requests = shape.llm_requests
        keys = shape.chunk_keys
        window = self.policy.llm_rate_limit_window_s
        done = Outcome(0.0, "ok", [stage_send(Stage.ENTITY_RESOLUTION, message.doc)])

        def sample(key: str) -> float:
            return self.profile.sample(LLM_CALL, key)

        def call(index: int, waited: float) -> Callable[[float], Outcome]:
            def step(now: float) -> Outcome:
                if index == len(requests):
                    return done
                if index < self._cached.get(message.doc, 0):
                    return step_to(index + 1, waited)(now)
                request = requests[index]
                self.limiter.prune("llm", now - window)
                slot = self.limiter.next_slot("llm", now, request.tokens)
                if slot > now:
                    wait = slot - now
                    if waited + wait > self.policy.llm_rate_limit_max_wait_s:
                        return self._retry(message, 0.0, "rate limited", after=wait)
                    return Outcome(wait, "ok", resume=call(index, waited + wait))
                self.limiter.record("llm", now, request.tokens)
                self.llm_calls += 1
                self.llm_tokens += request.tokens
                self._cached[message.doc] = index + 1
                chunk_keys = [keys[i] for i in request.chunks]
                seconds = pack_call_seconds(sample, pack_key(chunk_keys), chunk_keys)
                return Outcome(seconds, "ok", resume=call(index + 1, waited))

            return step

        step_to = call

        return Outcome(extra, "ok", resume=call(0, 0.0))
