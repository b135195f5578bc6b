"""OpenAIEntityExtractor through the real SDK against the HTTP-level fake (no network)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest

from fakes.openai_http import FakeOpenAI, FakeOpenAIServer
from pipeline.adapters.openai_llm import (
    OpenAIEntityExtractor,
    create_openai_client,
    retry_after_seconds,
)
from pipeline.adapters.rule_based_llm import RuleBasedEntityExtractor
from pipeline.app.intake import collect_files
from pipeline.app.rate_limited import RateLimitedEntityExtractor
from pipeline.bootstrap import Services, build_services, use_services
from pipeline.domain.entities import parse_llm_entities
from pipeline.domain.models import Status
from pipeline.errors import ConfigurationError, MalformedResponse, PermanentError, TransientError
from tests.conftest import SAMPLES, embedded_settings
from tests.helpers import GOOD_TEXT, run_files

MakeServices = Callable[..., Services]
API_KEY = "sk-test-not-a-real-key"
#: Loopback, never contacted: the MockTransport answers every request in-process.
FAKE_BASE_URL = "http://127.0.0.1:9/v1"


def mock_extractor(fake: FakeOpenAI, model: str = "gpt-4o-mini") -> OpenAIEntityExtractor:
    client = create_openai_client(
        api_key=API_KEY,
        base_url=FAKE_BASE_URL,
        timeout_s=5,
        http_client=httpx2.Client(transport=httpx2.MockTransport(fake.handler)),
    )
    return OpenAIEntityExtractor(client, model, timeout_s=5)


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI(api_key=API_KEY, retry_after_s=7)


@pytest.fixture
def openai_services(make_services: MakeServices, fake: FakeOpenAI) -> Services:
    """Services built with DOCPIPE_LLM=openai, the SDK's transport swapped for the fake."""
    services = make_services(
        llm="openai",
        openai_api_key=API_KEY,
        openai_base_url=FAKE_BASE_URL,
        max_retries=2,
    )
    # The shared LLM rate limit is on the adapter that calls the limited service.
    assert isinstance(services.extractor, RateLimitedEntityExtractor)
    assert isinstance(services.extractor.inner, OpenAIEntityExtractor)
    services = dataclasses.replace(services, extractor=mock_extractor(fake))
    use_services(services)
    return services


# --- the adapter on its own ---------------------------------------------------------------


def test_answer_is_the_rule_based_json_and_the_request_is_json_mode(fake: FakeOpenAI) -> None:
    answer = mock_extractor(fake, model="gpt-test").extract(GOOD_TEXT)

    assert json.loads(answer) == json.loads(RuleBasedEntityExtractor().extract(GOOD_TEXT))
    (call,) = fake.calls
    assert call.path == "/v1/chat/completions"
    assert call.body["model"] == "gpt-test"
    assert call.body["response_format"] == {"type": "json_object"}
    system, user = call.body["messages"]
    assert system["role"] == "system" and '"entities"' in system["content"]
    assert user == {"role": "user", "content": GOOD_TEXT}


PACK = [
    "Ms. Jane Holloway met counsel in Chicago on March 3, 2023.",
    "Meridian Capital Partners LLC paid $45,000 under 15 U.S.C. § 78j(b).",
    "No entities here at all.",
]


def test_a_packed_request_round_trips_through_the_sdk_answered_per_chunk(
    fake: FakeOpenAI,
) -> None:
    answer = mock_extractor(fake).extract_many(PACK)

    rule_based = RuleBasedEntityExtractor()
    assert [json.loads(p) for p in answer.payloads] == [
        json.loads(rule_based.extract(text)) for text in PACK
    ]
    (call,) = fake.calls  # one request for the three chunks
    system, user = call.body["messages"]
    assert '"chunks"' in system["content"]
    assert json.loads(user["content"]) == {
        "chunks": [{"id": i, "text": text} for i, text in enumerate(PACK)]
    }
    # The usage the service reported, not an estimate of ours.
    assert (answer.prompt_tokens, answer.completion_tokens) == (
        fake.prompt_tokens,
        fake.completion_tokens,
    )
    assert answer.prompt_tokens > 0 and answer.completion_tokens > 0


def test_one_chunk_malformed_in_a_packed_answer_leaves_the_others_usable(
    fake: FakeOpenAI,
) -> None:
    fake.script(["malformed_chunk"])
    answer = mock_extractor(fake).extract_many(PACK)

    first, second, last = answer.payloads
    assert parse_llm_entities(first, PACK[0]) and parse_llm_entities(second, PACK[1])
    with pytest.raises(MalformedResponse, match="entities"):
        parse_llm_entities(last, PACK[2])


def test_a_packed_answer_unreadable_as_a_whole_is_malformed(fake: FakeOpenAI) -> None:
    fake.script(["malformed"])
    with pytest.raises(MalformedResponse):
        mock_extractor(fake).extract_many(PACK)


@pytest.mark.parametrize(
    ("fault", "error", "retry_after"),
    [
        ("rate_limit", TransientError, 7.0),
        ("server_error", TransientError, None),
        ("unauthorized", PermanentError, None),
        ("bad_request", PermanentError, None),
        ("malformed", MalformedResponse, None),
        ("empty", MalformedResponse, None),
    ],
)
def test_errors_map_to_the_pipeline_vocabulary_without_sdk_retries(
    fake: FakeOpenAI, fault: str, error: type[Exception], retry_after: float | None
) -> None:
    fake.script([fault])  # type: ignore[list-item]
    with pytest.raises(error) as raised:
        mock_extractor(fake).extract(GOOD_TEXT)
    assert type(raised.value) is error
    if isinstance(raised.value, TransientError):
        assert raised.value.retry_after == retry_after
    assert len(fake.calls) == 1  # max_retries=0: docpipe's task policy is the one retry loop


def test_a_wrong_api_key_is_permanent_and_the_key_is_not_in_the_message(fake: FakeOpenAI) -> None:
    client = create_openai_client(
        api_key="sk-wrong-secret",
        base_url=FAKE_BASE_URL,
        timeout_s=5,
        http_client=httpx2.Client(transport=httpx2.MockTransport(fake.handler)),
    )
    with pytest.raises(PermanentError) as raised:
        OpenAIEntityExtractor(client, "m", timeout_s=5).extract("text")
    assert "401" in str(raised.value)
    assert "sk-wrong-secret" not in str(raised.value)


def test_a_connection_failure_is_transient() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    client = create_openai_client(
        api_key=API_KEY,
        base_url=FAKE_BASE_URL,
        timeout_s=5,
        http_client=httpx2.Client(transport=httpx2.MockTransport(refuse)),
    )
    with pytest.raises(TransientError) as raised:
        OpenAIEntityExtractor(client, "m", timeout_s=5).extract("text")
    assert type(raised.value) is TransientError


def test_a_non_object_json_answer_is_malformed() -> None:
    def answer_list(request: httpx2.Request) -> httpx2.Response:
        message = {"role": "assistant", "content": "[1, 2]"}
        body = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }
        return httpx2.Response(200, json=body)

    client = create_openai_client(
        api_key=API_KEY,
        base_url=FAKE_BASE_URL,
        timeout_s=5,
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer_list)),
    )
    with pytest.raises(MalformedResponse, match="not an object"):
        OpenAIEntityExtractor(client, "m", timeout_s=5).extract("text")


def test_retry_after_reads_milliseconds_seconds_and_dates() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"retry-after": "20"}) == 20.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


# --- through the whole eager pipeline -----------------------------------------------------


def test_samples_give_the_same_mentions_as_the_rule_based_fake(
    openai_services: Services, fake: FakeOpenAI, tmp_path: Path
) -> None:
    files = collect_files([SAMPLES])
    through_openai = run_files(openai_services, files)
    chunks = sum(int(str(row["chunks"])) for row in through_openai.values())
    rule_based = build_services(embedded_settings(tmp_path / "rule-based"))  # own database
    use_services(rule_based)
    through_fake = run_files(rule_based, files)

    def mentions(rows: dict[str, dict[str, object]]) -> dict[str, tuple[object, object]]:
        return {name: (row["status"], row["mentions"]) for name, row in rows.items()}

    assert mentions(through_openai) == mentions(through_fake)
    assert all(row["status"] == "completed" for row in through_openai.values())
    # Packed (the default budget): one request per sample document, not one per chunk.
    assert fake.answered(200) == len(files) < chunks


def test_rate_limit_is_retried_and_its_retry_after_honoured(
    openai_services: Services, fake: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script(["rate_limit"])
    path = tmp_path / "a.txt"
    path.write_text(GOOD_TEXT)
    with caplog.at_level(logging.INFO, logger="pipeline.runtime.tasks"):
        row = run_files(openai_services, [path])["a.txt"]
    assert row["status"] == "completed", row["error"]
    assert fake.answered(429) == 1
    # Backoff base is 0 in tests, so the countdown is exactly the server's Retry-After.
    assert any("retry 1 in 7.0s" in r.getMessage() for r in caplog.records), caplog.text


def test_authentication_failure_is_permanent_and_not_retried(
    openai_services: Services, fake: FakeOpenAI, tmp_path: Path
) -> None:
    fake.always("unauthorized")
    path = tmp_path / "a.txt"
    path.write_text(GOOD_TEXT)
    row = run_files(openai_services, [path])["a.txt"]
    assert row["status"] == Status.ENTITY_FAILED
    assert "401" in str(row["error"])
    assert len(fake.calls) == 1
    assert openai_services.store.dead_letters() == []


def test_malformed_json_is_retried_then_dead_lettered_never_an_empty_success(
    openai_services: Services, fake: FakeOpenAI, tmp_path: Path
) -> None:
    fake.always("malformed")
    path = tmp_path / "a.txt"
    path.write_text(GOOD_TEXT)
    row = run_files(openai_services, [path])["a.txt"]
    assert row["status"] == Status.DEAD_LETTERED
    assert "json" in str(row["error"]).lower()
    assert row["mentions"] == 0
    assert len(fake.calls) == openai_services.settings.max_retries + 1
    (letter,) = openai_services.store.dead_letters()
    assert letter["stage"] == "entity_extraction"


def test_malformed_once_then_good_completes_and_the_bad_answer_is_not_cached(
    openai_services: Services, fake: FakeOpenAI, tmp_path: Path
) -> None:
    fake.script(["malformed"])
    path = tmp_path / "a.txt"
    path.write_text(GOOD_TEXT)
    row = run_files(openai_services, [path])["a.txt"]
    assert row["status"] == "completed"
    assert int(str(row["mentions"])) > 0


# --- wiring and the guard ---------------------------------------------------------------


@pytest.fixture
def loopback_fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(FakeOpenAI(api_key=API_KEY)) as server:
        yield server


def test_bootstrap_wires_the_sdk_to_the_loopback_fake_end_to_end(
    make_services: MakeServices, loopback_fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    services = make_services(
        llm="openai", openai_api_key=API_KEY, openai_base_url=loopback_fake.base_url
    )
    path = tmp_path / "a.txt"
    path.write_text(GOOD_TEXT)
    row = run_files(services, [path])["a.txt"]
    assert row["status"] == "completed", row["error"]
    assert int(str(row["mentions"])) > 0
    assert loopback_fake.fake.answered(200) >= 1


@pytest.mark.parametrize(
    "base_url", [None, "https://api.openai.com/v1", "http://10.0.0.5:8000/v1", "http://evil/v1"]
)
def test_a_real_endpoint_is_refused_under_tests(tmp_path: Path, base_url: str | None) -> None:
    settings = embedded_settings(
        tmp_path, llm="openai", openai_api_key=API_KEY, openai_base_url=base_url
    )
    assert settings.allow_cloud is False
    with pytest.raises(ConfigurationError, match="OpenAI is a real cloud adapter"):
        build_services(settings)


def test_a_test_may_opt_in_to_a_real_endpoint_explicitly(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, llm="openai", openai_api_key=API_KEY, allow_cloud=True)
    services = build_services(settings)  # builds only: no request is made
    assert isinstance(services.extractor, RateLimitedEntityExtractor)
    assert isinstance(services.extractor.inner, OpenAIEntityExtractor)


def test_openai_needs_an_api_key_and_never_prints_it(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, llm="openai", openai_base_url=FAKE_BASE_URL)
    with pytest.raises(ConfigurationError, match="DOCPIPE_OPENAI_API_KEY"):
        build_services(settings)
    keyed = embedded_settings(tmp_path, openai_api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(keyed)
    assert "sk-very-secret" not in str(keyed.describe())
