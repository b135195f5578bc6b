"""The shared LLM rate limit sits on the extractor that calls the limited service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import fakeredis
import pytest

from pipeline.adapters.redis_features import RedisRateLimiter
from pipeline.adapters.rule_based_llm import RuleBasedEntityExtractor
from pipeline.app.intake import submit_and_dispatch
from pipeline.app.rate_limited import RateLimitedEntityExtractor, needs_llm_rate_limit
from pipeline.bootstrap import Services
from pipeline.domain.packing import plan_packs
from pipeline.errors import RateLimited
from pipeline.harness.simulation.clock import VirtualClock, VirtualRateLimiter
from tests.conftest import embedded_settings

MakeServices = Callable[..., Services]
WINDOW_KEY = "docpipe:ratelimit:llm"
PARAGRAPH = (
    "Jane R. Holloway of Chicago, Illinois, and Meridian Capital Partners LLC signed the "
    "agreement on March 3, 2023; Meridian paid $45,000 under 15 U.S.C. § 78j(b). "
)


def many_chunk_file(tmp_path: Path, paragraphs: int = 40) -> Path:
    path = tmp_path / "long.txt"
    # Distinct paragraphs: identical chunks would be answered from the cache.
    path.write_text("\n\n".join(f"Clause {i}. " + PARAGRAPH * 4 for i in range(paragraphs)))
    return path


def process(services: Services, path: Path) -> str:
    project = services.store.ensure_project("p")
    document_uuid = submit_and_dispatch(services, path, project).document_uuid
    return str(services.store.get_document(document_uuid).status)


def test_the_embedded_default_does_not_wait_on_the_shared_llm_limit(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = make_services()
    assert isinstance(services.extractor, RuleBasedEntityExtractor)

    assert process(services, many_chunk_file(tmp_path)) == "completed"

    assert services.redis.zcard(WINDOW_KEY) == 0  # no slot was ever taken


def test_a_declared_limit_still_throttles_the_rule_based_extractor(
    make_services: MakeServices, tmp_path: Path
) -> None:
    # Packing off: one request (and one slot) per chunk, as before packing.
    services = make_services(
        llm_rate_limit_calls=1000, llm_rate_limit_window_s=60, llm_pack_tokens=0
    )
    assert isinstance(services.extractor, RateLimitedEntityExtractor)

    assert process(services, many_chunk_file(tmp_path)) == "completed"

    chunks = services.store.counts(services.store.list_documents()[0].uuid).chunks
    assert chunks > 1
    assert services.redis.zcard(WINDOW_KEY) == chunks  # one slot per LLM call


def test_packed_requests_take_one_slot_and_their_tokens_each(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = make_services(
        llm_rate_limit_calls=1000,
        llm_rate_limit_window_s=60,
        llm_rate_limit_tokens=10_000_000,
        llm_pack_tokens=3000,
    )
    assert process(services, many_chunk_file(tmp_path)) == "completed"

    uuid = services.store.list_documents()[0].uuid
    chunks = services.store.get_chunks(uuid)
    packs = plan_packs([c.text for c in chunks], 3000, services.extractor.request_tokens)
    assert 1 < len(packs) < len(chunks)
    entries = services.redis.zrange(WINDOW_KEY, 0, -1)
    assert len(entries) == len(packs)  # one slot per request, not per chunk
    reserved = sorted(int(member.decode().rsplit(":", 1)[1]) for member in entries)
    expected = sorted(
        services.extractor.request_tokens([chunks[i].text for i in pack]) for pack in packs
    )
    assert reserved == expected


@pytest.mark.parametrize(
    ("overrides", "simulated", "expected"),
    [
        ({}, False, False),  # the embedded default
        ({}, True, True),  # a latency profile makes the fake stand for a remote model
        ({"llm_rate_limit_calls": 12}, False, True),  # declared (a scenario, the env)
        ({"llm_rate_limit_window_s": 1.0}, False, True),
        ({"llm": "openai"}, False, True),  # the real service (or its HTTP fake)
    ],
)
def test_which_extractors_take_the_shared_limit(
    tmp_path: Path, overrides: dict[str, object], simulated: bool, expected: bool
) -> None:
    settings = embedded_settings(tmp_path, **overrides)
    assert needs_llm_rate_limit(settings, simulated_llm_latency=simulated) is expected


def test_the_limit_is_set_in_the_environment_counts_as_declared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCPIPE_LLM_RATE_LIMIT_CALLS", "50")
    assert needs_llm_rate_limit(embedded_settings(tmp_path), simulated_llm_latency=False)


def test_short_refusals_are_waited_out_on_the_clock() -> None:
    clock = VirtualClock()
    limiter = VirtualRateLimiter(clock, limit=2, window_seconds=10.0)
    extractor = RateLimitedEntityExtractor(
        RuleBasedEntityExtractor(), limiter, clock, max_wait_s=30.0
    )

    answers = [extractor.extract(PARAGRAPH) for _ in range(3)]

    assert len(set(answers)) == 1 and '"entities"' in answers[0]
    assert clock.now() == pytest.approx(10.0)  # the third call waited for the window
    assert extractor.model == RuleBasedEntityExtractor().model


def test_a_wait_beyond_the_bound_is_raised_for_the_task_to_retry() -> None:
    clock = VirtualClock()
    limiter = VirtualRateLimiter(clock, limit=1, window_seconds=60.0)
    extractor = RateLimitedEntityExtractor(
        RuleBasedEntityExtractor(), limiter, clock, max_wait_s=5.0
    )
    extractor.extract(PARAGRAPH)

    with pytest.raises(RateLimited) as refused:
        extractor.extract(PARAGRAPH)

    assert refused.value.retry_after == pytest.approx(60.0)
    assert clock.now() == 0.0


def test_an_unreachable_limiter_refuses_the_call() -> None:
    server = fakeredis.FakeServer()
    limiter = RedisRateLimiter(fakeredis.FakeRedis(server=server), limit=100, window_seconds=60)
    server.connected = False
    clock = VirtualClock()
    extractor = RateLimitedEntityExtractor(
        RuleBasedEntityExtractor(), limiter, clock, max_wait_s=120.0
    )

    with pytest.raises(RateLimited, match="unavailable"):
        extractor.extract(PARAGRAPH)
    assert clock.now() == 0.0
