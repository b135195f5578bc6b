"""The shared LLM rate limit, on the extractor that talks to the limited service.

The limit (`DOCPIPE_LLM_RATE_LIMIT_CALLS` requests and `DOCPIPE_LLM_RATE_LIMIT_TOKENS`
tokens per `DOCPIPE_LLM_RATE_LIMIT_WINDOW_S`, shared by every worker through Redis)
protects a remote model service. It
belongs to the adapter that calls that service, not to the stage: the
composition root wraps the OpenAI adapter - and a local stand-in only where
it plays a remote service or the limit is declared (`needs_llm_rate_limit`).
The embedded default's rule-based extractor answers in microseconds and is
not throttled for nothing (a 622-chunk file took 13 minutes under 50/60 s).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.errors import RateLimited
from pipeline.ports import Clock, EntityExtractor, LlmAnswer, RateLimiter
from pipeline.settings import Settings

#: Settings that declare the limit; any of them set (env, .env, a scenario) keeps it.
RATE_LIMIT_SETTINGS = frozenset(
    {"llm_rate_limit_calls", "llm_rate_limit_tokens", "llm_rate_limit_window_s"}
)


def needs_llm_rate_limit(settings: Settings, *, simulated_llm_latency: bool) -> bool:
    """Whether entity extraction takes a slot of the shared limit before each call.

    Always for a real model service (`DOCPIPE_LLM=openai`, also when pointed at
    the OpenAI HTTP fake); for the rule-based fake only when a latency profile
    makes it stand for a remote model (load tests, the simulator) or a setting
    or scenario declares the limit explicitly.
    """
    declared = bool(RATE_LIMIT_SETTINGS & settings.model_fields_set)
    return settings.llm != "fake" or declared or simulated_llm_latency


class RateLimitedEntityExtractor:
    """`EntityExtractor` that takes a slot of a shared rate limit before each call.

    Each request reserves its estimated tokens (`request_tokens`: prompt and
    expected answer) of the tokens-per-window limit along with its request slot.

    Short refusals are waited out on `clock` (virtual in the simulator); a
    refusal without a known wait (the limiter itself is unreachable: it fails
    closed) or a wait beyond `max_wait_s` is raised as `RateLimited`, a
    `TransientError`, and the task retries later.
    """

    def __init__(
        self,
        inner: EntityExtractor,
        limiter: RateLimiter,
        clock: Clock,
        *,
        max_wait_s: float,
        name: str = "llm",
    ) -> None:
        self._inner = inner
        self._limiter = limiter
        self._clock = clock
        self._max_wait_s = max_wait_s
        self._name = name

    @property
    def model(self) -> str:
        return self._inner.model

    @property
    def inner(self) -> EntityExtractor:
        return self._inner

    def extract(self, text: str) -> str:
        self.wait_for_slot(self._inner.request_tokens([text]))
        return self._inner.extract(text)

    def extract_many(self, texts: Sequence[str]) -> LlmAnswer:
        self.wait_for_slot(self._inner.request_tokens(texts))
        return self._inner.extract_many(texts)

    def request_tokens(self, texts: Sequence[str]) -> int:
        return self._inner.request_tokens(texts)

    def wait_for_slot(self, tokens: int = 0) -> None:
        waited = 0.0
        while True:
            try:
                self._limiter.acquire(self._name, tokens)
                return
            except RateLimited as refused:
                wait = refused.retry_after
                if wait is None or waited + wait > self._max_wait_s:
                    raise
                self._clock.sleep(wait)
                waited += wait
