"""OpenAI entity extraction: the official SDK, one chat completion per chunk or per pack.

A packed request carries several chunks and is answered per chunk
(pipeline.domain.packing); the prompts are in pipeline.adapters.llm_prompts.

The SDK's own retries are off (`max_retries=0`): docpipe's task retry policy is
the one place that decides when to try again, and it honours Retry-After.
Vendor errors become `TransientError` / `PermanentError`; an answer that is
empty or not a JSON object becomes `MalformedResponse` (retried, then
dead-lettered - never an empty list that looks like success, failure 10).
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import openai
from openai.types.chat import ChatCompletionMessageParam

from pipeline.adapters.llm_prompts import messages, request_tokens
from pipeline.domain.packing import split_packed_answer
from pipeline.domain.tokens import estimate_answer_tokens, estimate_chat_tokens
from pipeline.errors import MalformedResponse, PermanentError, TransientError
from pipeline.ports import LlmAnswer

if TYPE_CHECKING:
    import httpx2

DEFAULT_BASE_URL = "https://api.openai.com/v1"

#: Statuses the SDK itself would retry (besides 429 and 5xx): worth a later attempt.
_RETRYABLE_STATUSES = frozenset({408, 409})


class OpenAIEntityExtractor:
    """Implements `EntityExtractor` with chat completions in JSON mode."""

    def __init__(self, client: openai.OpenAI, model: str, *, timeout_s: float) -> None:
        self._client = client
        self._model = model
        self._timeout_s = timeout_s

    @property
    def model(self) -> str:
        return self._model

    def extract(self, text: str) -> str:
        return self.extract_many([text]).payloads[0]

    def request_tokens(self, texts: Sequence[str]) -> int:
        return request_tokens(texts)

    def extract_many(self, texts: Sequence[str]) -> LlmAnswer:
        system, user = messages(texts)
        request: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": system["content"]},
            {"role": "user", "content": user["content"]},
        ]
        try:
            completion = self._client.chat.completions.create(
                model=self._model,
                messages=request,
                response_format={"type": "json_object"},
                temperature=0,
                timeout=self._timeout_s,
            )
        except openai.APIError as exc:
            raise map_openai_error(exc) from exc
        if not completion.choices:
            raise MalformedResponse("OpenAI answer has no choices")
        choice = completion.choices[0]
        message = choice.message
        if message.refusal:
            raise MalformedResponse(f"OpenAI refused the chunk: {message.refusal[:200]}")
        content = (message.content or "").strip()
        if not content:
            raise MalformedResponse(
                f"OpenAI answer is empty (finish_reason={choice.finish_reason})"
            )
        try:
            data = json.loads(content)
        except ValueError as exc:
            # finish_reason "length" lands here too: a JSON answer cut off mid-way.
            raise MalformedResponse(
                f"OpenAI answer is not valid JSON (finish_reason={choice.finish_reason}): {exc}"
            ) from exc
        if not isinstance(data, dict):
            raise MalformedResponse(f"OpenAI answer is a JSON {type(data).__name__}, not an object")
        payloads = [content] if len(texts) == 1 else split_packed_answer(content, len(texts))
        usage = completion.usage
        if usage is not None:
            prompt, answered = usage.prompt_tokens, usage.completion_tokens
        else:  # a compatible server may leave usage out: estimate it
            prompt = estimate_chat_tokens([system["content"], user["content"]])
            answered = estimate_answer_tokens(content)
        return LlmAnswer(tuple(payloads), prompt_tokens=prompt, completion_tokens=answered)


def map_openai_error(exc: openai.APIError) -> TransientError | PermanentError:
    """The SDK's error as docpipe's vocabulary (the message never carries the API key)."""
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        kind = "timed out" if isinstance(exc, openai.APITimeoutError) else "connection failed"
        return TransientError(f"OpenAI {kind}: {exc.message}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = f"OpenAI HTTP {status}: {exc.message}"
        if isinstance(exc, openai.RateLimitError):
            if exc.code == "insufficient_quota":  # billing, not throttling: waiting cannot help
                return PermanentError(detail)
            return TransientError(detail, retry_after=retry_after_seconds(exc.response.headers))
        if status >= 500 or status in _RETRYABLE_STATUSES:
            return TransientError(detail, retry_after=retry_after_seconds(exc.response.headers))
        # 400 bad request, 401 authentication, 403 permission, 404 model, 422 ...
        return PermanentError(detail)
    # APIResponseValidationError and the like: the answer could not be understood.
    return MalformedResponse(f"OpenAI answer could not be read: {exc.message}")


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def create_openai_client(
    *,
    api_key: str,
    base_url: str | None,
    timeout_s: float,
    http_client: httpx2.Client | None = None,
) -> openai.OpenAI:
    """An SDK client with its own retries off; base URL explicit (no OPENAI_* env fallback)."""
    return openai.OpenAI(
        api_key=api_key,
        base_url=base_url or DEFAULT_BASE_URL,
        organization=None,
        project=None,
        timeout=timeout_s,
        max_retries=0,
        http_client=http_client,
    )
