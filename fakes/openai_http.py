"""An OpenAI-compatible fake at the HTTP level: the real SDK talks to it unchanged.

`FakeOpenAI` answers `POST /v1/chat/completions` with the rule-based
extractor's JSON for the user message (so results are meaningful), and plays
scripted failures first: 429 with Retry-After, 401, 400, 500, malformed or
empty content. A packed request (pipeline.domain.packing: the user message is
`{"chunks": [...]}`) is answered per chunk; `malformed_chunk` leaves the last
chunk's entity list out of such an answer (one chunk broken, the rest good).
Use it in-process with `httpx2.MockTransport(fake.handler)`, or across processes with
`FakeOpenAIServer` (stdlib http.server on
127.0.0.1, a free port) whose `base_url` goes into `DOCPIPE_OPENAI_BASE_URL`.
The script lives in the server's process, so failures scheduled by a test do
reach workers in other processes (failure 14).

Run a standalone server with `python -m fakes.openai_http [--port N]`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import httpx2

from pipeline.adapters.rule_based_llm import RuleBasedEntityExtractor
from pipeline.domain.packing import pack_answer, unpack_request_text
from pipeline.domain.tokens import estimate_answer_tokens, estimate_chat_tokens

Fault = Literal[
    "rate_limit",
    "unauthorized",
    "bad_request",
    "server_error",
    "malformed",
    "empty",
    "malformed_chunk",
]
FAULTS: tuple[Fault, ...] = (
    "rate_limit",
    "unauthorized",
    "bad_request",
    "server_error",
    "malformed",
    "empty",
    "malformed_chunk",
)

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Call:
    """One request as the fake saw it (for assertions on what was sent)."""

    path: str
    body: dict[str, Any]
    answered: int


class FakeOpenAI:
    """The fake service's state: the script of failures, the calls seen, token usage."""

    def __init__(self, *, api_key: str | None = None, retry_after_s: float = 1.0) -> None:
        #: When set, requests must carry `Authorization: Bearer <api_key>` (else 401).
        self.api_key = api_key
        self.retry_after_s = retry_after_s
        self._script: list[Fault] = []
        self._always: Fault | None = None
        self._lock = threading.Lock()
        self._extractor = RuleBasedEntityExtractor()
        self.calls: list[Call] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0

    # --- scripting -------------------------------------------------------------
    def script(self, faults: Iterable[Fault]) -> None:
        """Play these failures on the next requests, in order; then answer normally."""
        with self._lock:
            self._script.extend(faults)

    def always(self, fault: Fault | None) -> None:
        """Fail every request this way (None: back to normal)."""
        with self._lock:
            self._always = fault

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self._always = None
            self.calls.clear()
            self.prompt_tokens = self.completion_tokens = 0

    def answered(self, status: int) -> int:
        """How many requests got this HTTP status."""
        with self._lock:
            return sum(1 for call in self.calls if call.answered == status)

    # --- serving ---------------------------------------------------------------
    def handler(self, request: httpx2.Request) -> httpx2.Response:
        """For `httpx2.MockTransport`."""
        reply = self.respond(request.method, request.url.path, request.headers, request.read())
        return httpx2.Response(reply.status, headers=reply.headers, content=reply.body)

    def respond(self, method: str, path: str, headers: Any, body: bytes) -> Reply:
        """Transport-independent: one HTTP request in, one reply out."""
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        with self._lock:
            fault = self._script.pop(0) if self._script else self._always
        reply = self._reply(method, path, headers, payload, fault)
        with self._lock:
            self.calls.append(Call(path=path, body=payload, answered=reply.status))
        return reply

    def _reply(
        self, method: str, path: str, headers: Any, payload: dict[str, Any], fault: Fault | None
    ) -> Reply:
        if method != "POST" or path.rstrip("/") != CHAT_PATH:
            return _error(404, f"Unknown request URL: {method} {path}", "invalid_request_error")
        auth = headers.get("authorization") or ""
        if fault == "unauthorized" or (
            self.api_key is not None and auth != f"Bearer {self.api_key}"
        ):
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        if fault == "rate_limit":
            return _error(
                429,
                "Rate limit reached for requests.",
                "requests",
                "rate_limit_exceeded",
                headers={"retry-after": f"{self.retry_after_s:g}"},
            )
        if fault == "server_error":
            return _error(
                500, "The server had an error while processing your request.", "server_error"
            )
        if fault == "bad_request":
            return _error(400, "Invalid request (scripted).", "invalid_request_error")
        problem = _validate(payload)
        if problem is not None:
            return _error(400, problem, "invalid_request_error")
        messages = payload["messages"]
        text = next(
            (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        packed = unpack_request_text(str(text))
        if fault == "malformed":
            content = '{"entities": [{"entity": "' + str(text)[:20].replace('"', "")
        elif fault == "empty":
            content = ""
        elif packed is not None:
            content = pack_answer([self._extractor.extract(chunk) for chunk in packed])
            if fault == "malformed_chunk" and packed:
                answer = json.loads(content)
                del answer["chunks"][-1]["entities"]
                content = json.dumps(answer)
        else:
            content = self._extractor.extract(str(text))
        prompt = estimate_chat_tokens([str(m.get("content", "")) for m in messages])
        completion = estimate_answer_tokens(content)
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            number = len(self.calls) + 1
        answer = {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
        return Reply(200, json.dumps(answer).encode(), {"content-type": "application/json"})


def _validate(payload: dict[str, Any]) -> str | None:
    """The checks the real API makes that our adapter could get wrong."""
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        return "you must provide a model parameter"
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    if not all(isinstance(m, dict) for m in messages):
        return "'messages' items must be objects"
    response_format = payload.get("response_format")
    json_mode = isinstance(response_format, dict) and response_format.get("type") == "json_object"
    # The real API insists that JSON mode is asked for in the messages too.
    if json_mode and not any("json" in str(m.get("content", "")).lower() for m in messages):
        return "'messages' must contain the word 'json' to use response_format json_object"
    return None


def _error(
    status: int,
    message: str,
    kind: str,
    code: str | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> Reply:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Reply(
        status,
        json.dumps(body).encode(),
        {"content-type": "application/json", **(headers or {})},
    )


class FakeOpenAIServer:
    """`FakeOpenAI` on a loopback port in a daemon thread (a context manager)."""

    def __init__(self, fake: FakeOpenAI | None = None, *, port: int = 0) -> None:
        self.fake = fake or FakeOpenAI()
        fake_service = self.fake

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self._answer("POST")

            def do_GET(self) -> None:
                self._answer("GET")

            def _answer(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                reply = fake_service.respond(method, self.path, _Headers(self.headers), body)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests read the fake's `calls`

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-openai", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def serve_forever(self) -> None:
        """Serve in the calling thread (the standalone `python -m fakes.openai_http`)."""
        self._server.serve_forever()

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Headers:
    """Case-insensitive `get` over http.server's headers (they already are; typed here)."""

    def __init__(self, headers: Any) -> None:
        self._headers = headers

    def get(self, name: str) -> str | None:
        value = self._headers.get(name)
        return None if value is None else str(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible fake on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(FakeOpenAI(api_key=args.api_key), port=args.port)
    print(server.base_url, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
