"""The sequential baseline: same stages, same services, one document at a time."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from pipeline.adapters.latency import build_profile
from pipeline.app.monolith import run_sequential
from pipeline.bootstrap import Services
from pipeline.domain.models import Status
from pipeline.errors import ConfigurationError
from pipeline.harness.layout import parse_layout
from pipeline.harness.perf.loadtest import bottleneck_bound, percentile, steady_rate
from pipeline.testing.clocks import EPOCH_2023, ManualClock
from tests.conftest import SAMPLES


def test_every_sample_completes_sequentially_in_order(services: Services) -> None:
    files = sorted(SAMPLES.iterdir())

    results = run_sequential(services, files)

    assert [r.file for r in results] == [str(f) for f in files]
    assert {r.status for r in results} == {Status.COMPLETED}
    for result in results:
        counts = services.store.counts(result.document_uuid)
        assert counts.chunks > 0 and counts.relationships > 0
    starts = [r.started_at for r in results]
    assert starts == sorted(starts)
    assert all(a.finished_at <= b.started_at for a, b in itertools.pairwise(results))


def test_the_ocr_job_is_polled_by_sleeping_the_interval(make_services: object) -> None:
    services: Services = make_services(  # type: ignore[operator]
        fake_ocr_polls_until_done=3, ocr_poll_interval_s=5.0
    )
    clock = ManualClock(EPOCH_2023)
    services.clock = clock
    pdf = next(SAMPLES.glob("*.pdf"))

    [result] = run_sequential(services, [pdf])

    assert result.status is Status.COMPLETED
    assert clock.sleeps == [5.0, 5.0, 5.0]


def test_a_failing_document_is_recorded_and_the_run_goes_on(
    services: Services, tmp_path: Path
) -> None:
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.4 not really")
    good = SAMPLES / "affidavit_of_jane_holloway.txt"

    results = run_sequential(services, [bad, good])

    assert [r.status for r in results] == [Status.OCR_FAILED, Status.COMPLETED]
    assert services.store.get_document(results[0].document_uuid).error_message


def test_the_run_cycles_whole_rounds_until_the_time_has_passed(services: Services) -> None:
    files = [SAMPLES / "affidavit_of_jane_holloway.txt", SAMPLES / "counsel_correspondence.eml"]

    results = run_sequential(services, files, min_seconds=0.05, max_documents=6)

    assert len(results) in (2, 4, 6)
    assert len(results) <= 6


def test_the_bound_is_the_slowest_queue_or_the_rate_limit() -> None:
    profile = build_profile("reference", time_scale=0.1)
    layout = parse_layout("ocr:prefork:2 text:threads:4 entity:gevent:100 graph:threads:4")

    bound = bottleneck_bound(
        profile, layout, chunks_per_document=5, rate_limit_calls=50, rate_limit_window_s=6.0
    )

    # text: 4 / 1.5 s; llm: 50 calls / 6 s / 5 chunks; graph 4 / 0.35 s; entity 100 / 1.25 s
    assert bound["limits_docs_per_hour"]["queue text"] == pytest.approx(9600)
    assert bound["limits_docs_per_hour"]["llm rate limit"] == pytest.approx(6000)
    assert bound["limited_by"] == "llm rate limit"
    assert bound["docs_per_hour"] == pytest.approx(6000)

    relaxed = bottleneck_bound(
        profile, layout, chunks_per_document=5, rate_limit_calls=10_000, rate_limit_window_s=6.0
    )
    assert relaxed["limited_by"] == "queue text"


def test_packing_moves_the_bound_from_the_request_limit_to_the_tokens_or_a_queue() -> None:
    profile = build_profile("reference", time_scale=0.1)
    layout = parse_layout("ocr:prefork:2 text:threads:4 entity:gevent:100 graph:threads:4")
    common: dict[str, Any] = {
        "chunks_per_document": 5,
        "rate_limit_calls": 50,
        "rate_limit_window_s": 6.0,
        "llm_calls_per_document": 1,
    }

    bound = bottleneck_bound(
        profile, layout, llm_tokens_per_document=4000, rate_limit_tokens=200_000, **common
    )

    # One call a document: 50 / 6 s = 30,000 an hour; 200,000 tokens / 6 s / 4,000 = 30,000.
    limits = bound["limits_docs_per_hour"]
    assert limits["llm rate limit"] == pytest.approx(30_000)
    assert limits["llm token limit"] == pytest.approx(30_000)
    assert bound["limited_by"] == "queue text"  # 9,600
    # The entity queue pays the fixed part of one call and the token part of five chunks.
    assert bound["service_s_per_document"]["entity"] == pytest.approx(0.25 * 0.25 + 0.75 * 1.25)

    tight = bottleneck_bound(
        profile, layout, llm_tokens_per_document=4000, rate_limit_tokens=40_000, **common
    )
    assert tight["limited_by"] == "llm token limit"
    assert tight["docs_per_hour"] == pytest.approx(6000)


def test_layouts_must_consume_every_queue() -> None:
    with pytest.raises(ConfigurationError, match="unconsumed"):
        parse_layout("ocr:prefork:2 text:threads:4")
    with pytest.raises(ConfigurationError):
        parse_layout("ocr:fork:2 text:threads:4 entity:gevent:100 graph:threads:4")


def test_steady_rate_skips_the_fill_time() -> None:
    assert steady_rate([10.0, 11.0, 12.0, 13.0]) == pytest.approx(1.0)
    assert steady_rate([10.0, 11.0, 12.0, 30.0], end=14.0) == pytest.approx(0.5)
    assert steady_rate([5.0]) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_llm_usage_per_document_and_its_cost_at_list_prices() -> None:
    from pipeline.harness.perf.loadtest import LlmUsageTotals, llm_price
    from pipeline.settings import Settings

    price = llm_price(Settings(_env_file=None, openai_model="gpt-4o-mini"))  # type: ignore[call-arg]
    assert (price["input_usd_per_mtok"], price["output_usd_per_mtok"]) == (0.15, 0.60)
    totals = LlmUsageTotals(
        documents=4, calls=6, prompt_tokens=4_000_000, completion_tokens=2_000_000
    )

    figures = totals.per_document((0.15, 0.60))

    assert figures["llm_calls_per_document"] == 1.5
    assert figures["llm_tokens_per_document"] == 1_500_000
    # (4 M x $0.15 + 2 M x $0.60) / 1 M / 4 documents
    assert figures["llm_cost_usd_per_document"] == pytest.approx(0.45)
    assert totals.per_document(None)["llm_cost_usd_per_document"] is None
    unknown = llm_price(Settings(_env_file=None, openai_model="some-model"))  # type: ignore[call-arg]
    assert unknown["input_usd_per_mtok"] is None
