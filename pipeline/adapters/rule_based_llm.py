"""A deterministic stand-in for the entity-extraction LLM (the embedded default's).

`RuleBasedEntityExtractor` answers exactly the JSON text the model answers,
`{"entities": [{"entity", "label", "start", "end", "confidence"}]}`, with
offsets into the text it was given, so the real parser, resolver and graph
stage run on it unchanged. The recognition itself (rules and a gazetteer, tuned
for US legal prose) is pipeline.adapters.rule_based_ner.

Faults: `faults.before("llm", "extract", None)` runs first; its latency is
slept on the clock, and so is `call_seconds` (simulated model time); a
"malformed" effect answers truncated JSON and an "empty" effect answers an
empty body - both are bad answers the parser must reject.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from pipeline.adapters.latency import pack_call_seconds, pack_key
from pipeline.adapters.llm_prompts import messages, request_tokens
from pipeline.adapters.rule_based_ner import answer
from pipeline.domain.tokens import estimate_answer_tokens, estimate_chat_tokens
from pipeline.ports import Clock, FaultInjector, LlmAnswer

MODEL = "rule-based-ner-v1"


class RuleBasedEntityExtractor:
    """Implements the EntityExtractor port without a model: same answer shape, no network.

    A packed request (`extract_many`) takes one wait for the whole pack
    (`pipeline.adapters.latency.pack_call_seconds`) and counts as one call; a
    "malformed" or "empty" fault then spoils the last chunk's answer only, as
    an answer cut short would.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        latency_seconds: float = 0.0,
        faults: FaultInjector | None = None,
        call_seconds: Callable[[str], float] | None = None,
    ) -> None:
        self._clock = clock
        self._latency = latency_seconds
        self._faults = faults
        #: Simulated model time per call, keyed by a digest of the chunk text.
        self._call_seconds = call_seconds
        self.calls = 0

    @property
    def model(self) -> str:
        return MODEL

    def extract(self, text: str) -> str:
        return self.extract_many([text]).payloads[0]

    def extract_many(self, texts: Sequence[str]) -> LlmAnswer:
        delay = self._latency
        if self._call_seconds is not None and texts:
            keys = [hashlib.sha256(text.encode()).hexdigest() for text in texts]
            delay += pack_call_seconds(self._call_seconds, pack_key(keys), keys)
        response: str | None = None
        if self._faults is not None:
            effect = self._faults.before("llm", "extract", None)
            delay += effect.latency_s
            response = effect.response
        if self._clock is not None and delay > 0:
            self._clock.sleep(delay)
        self.calls += 1
        payloads = [answer(text) for text in texts]
        if payloads and response == "malformed":
            last = texts[-1]
            payloads[-1] = '{"entities": [{"entity": "' + last[:20].replace('"', "")  # cut off
        elif payloads and response == "empty":
            payloads[-1] = ""
        return LlmAnswer(
            payloads=tuple(payloads),
            prompt_tokens=estimate_chat_tokens([m["content"] for m in messages(texts)]),
            completion_tokens=sum(estimate_answer_tokens(p) for p in payloads),
        )

    def request_tokens(self, texts: Sequence[str]) -> int:
        return request_tokens(texts)


__all__ = ["MODEL", "RuleBasedEntityExtractor", "answer"]
