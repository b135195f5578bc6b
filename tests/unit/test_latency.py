"""Latency profiles: seeded, scaled, bounded waits, taken by the fakes on the clock."""

from __future__ import annotations

import math

import fakeredis
import pytest
from pydantic import ValidationError

from pipeline.adapters.embedded_ocr import EmbeddedOcrEngine
from pipeline.adapters.latency import (
    DOCUMENT_DB,
    GRAPH_WRITE,
    LLM_CALL,
    OCR_JOB,
    REFERENCE,
    SERVICES,
    DelayedDocumentStore,
    Distribution,
    LatencyProfile,
    build_profile,
    parse_distribution,
)
from pipeline.adapters.memory_blob import InMemoryBlobStore
from pipeline.adapters.memory_graph import InMemoryGraphSink
from pipeline.adapters.rule_based_llm import RuleBasedEntityExtractor
from pipeline.bootstrap import Services
from pipeline.domain.models import Category, DocumentNode, OcrJob
from pipeline.ports import OcrRequest
from pipeline.settings import Settings
from pipeline.testing.clocks import EPOCH_2023, ManualClock
from tests.conftest import SAMPLES

COMPLAINT = (SAMPLES / "complaint_holloway_v_meridian.pdf").read_bytes()

NODE = DocumentNode("doc-1", "project-1", "Title", Category.CONTRACT, "Some text.")


def test_the_none_profile_waits_for_nothing() -> None:
    profile = build_profile("none")

    assert not profile.enabled
    assert all(profile.sample(service, "key") == 0.0 for service in SERVICES)
    assert all(profile.sampler(service) is None for service in SERVICES)


def test_the_reference_profile_follows_the_measured_timings() -> None:
    profile = build_profile("reference")
    waits = {s: [profile.sample(s, f"key-{n}") for n in range(2000)] for s in SERVICES}

    assert min(waits[OCR_JOB]) >= 3.0 and max(waits[OCR_JOB]) <= 163.0
    assert 8 < sorted(waits[OCR_JOB])[1000] < 16  # median about 12 s
    assert min(waits[LLM_CALL]) >= 1.0 and max(waits[LLM_CALL]) <= 4.0
    assert min(waits[DOCUMENT_DB]) >= 10.0 and max(waits[DOCUMENT_DB]) <= 20.0
    assert min(waits[GRAPH_WRITE]) >= 2.0 and max(waits[GRAPH_WRITE]) <= 5.0
    for service in SERVICES:
        assert sum(waits[service]) / 2000 == pytest.approx(profile.mean(service), rel=0.05)


def test_sampling_is_deterministic_per_seed_and_key() -> None:
    first = build_profile("reference", seed=1)
    again = build_profile("reference", seed=1)
    other = build_profile("reference", seed=2)

    keys = [f"doc-{n}" for n in range(20)]
    assert [first.sample(LLM_CALL, k) for k in keys] == [again.sample(LLM_CALL, k) for k in keys]
    assert [first.sample(LLM_CALL, k) for k in keys] != [other.sample(LLM_CALL, k) for k in keys]


def test_time_scale_multiplies_every_wait() -> None:
    full = build_profile("reference")
    tenth = build_profile("reference", time_scale=0.1)

    for service in SERVICES:
        assert tenth.sample(service, "k") == pytest.approx(full.sample(service, "k") * 0.1)
        assert tenth.mean(service) == pytest.approx(full.mean(service) * 0.1)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("fixed:2", Distribution("fixed", 2.0)),
        ("uniform:1:4", Distribution("uniform", 1.0, 4.0)),
        ("lognormal:12:0.6", Distribution("lognormal", 12.0, 0.6)),
        ("lognormal:12:0.6:3:160", Distribution("lognormal", 12.0, 0.6, 3.0, 160.0)),
    ],
)
def test_distribution_specs_parse(spec: str, expected: Distribution) -> None:
    assert parse_distribution(spec) == expected


@pytest.mark.parametrize("spec", ["gamma:1:2", "uniform:4:1", "fixed:-1", "fixed:x", "uniform:1"])
def test_bad_distribution_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_distribution(spec)


def test_means_of_bounded_distributions() -> None:
    assert Distribution("uniform", 10, 20).mean() == 15
    assert Distribution("fixed", 3).mean() == 3
    lognormal = REFERENCE[OCR_JOB]
    unclipped = 12.0 * math.exp(0.6**2 / 2)
    assert lognormal.mean() == pytest.approx(unclipped, rel=0.05)


def test_settings_carry_the_profile_and_refuse_unknown_services() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        latency_profile="reference",
        time_scale=0.5,
        latency_overrides={"llm_call": "fixed:1"},
    )
    assert settings.time_scale == 0.5
    with pytest.raises(ValidationError, match="unknown service"):
        Settings(_env_file=None, latency_overrides={"printer": "fixed:1"})  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Settings(_env_file=None, time_scale=0)  # type: ignore[call-arg]


def test_the_fake_ocr_job_finishes_once_its_duration_has_passed() -> None:
    clock = ManualClock(EPOCH_2023)
    blobs = InMemoryBlobStore()
    blobs.put("documents/d/original.pdf", COMPLAINT)
    engine = EmbeddedOcrEngine(
        blobs,
        fakeredis.FakeRedis(server=fakeredis.FakeServer()),
        clock=clock,
        job_seconds=lambda token: 30.0,
    )
    job_id = engine.start(OcrRequest("d", "documents/d/original.pdf", "pdf", "token-1"))

    assert engine.poll(job_id).state == OcrJob.IN_PROGRESS
    clock.advance(29.0)
    assert engine.poll(job_id).state == OcrJob.IN_PROGRESS
    clock.advance(1.5)
    assert engine.poll(job_id).state == OcrJob.SUCCEEDED
    assert clock.sleeps == []  # start and poll never block


def test_the_fake_llm_and_graph_wait_on_the_clock() -> None:
    clock = ManualClock(EPOCH_2023)
    extractor = RuleBasedEntityExtractor(clock=clock, call_seconds=lambda key: 2.5)
    graph = InMemoryGraphSink(clock=clock, write_seconds=lambda key: 3.0)

    extractor.extract("Ms. Jane Holloway met counsel in Chicago.")
    graph.write(NODE, [], [], [], [])

    assert clock.sleeps == [2.5, 3.0]
    assert ("Document", "doc-1") in graph.nodes


def test_llm_waits_are_keyed_by_the_chunk_text() -> None:
    profile = build_profile("reference", time_scale=0.001)
    clock = ManualClock(EPOCH_2023)
    sampler = profile.sampler(LLM_CALL)
    assert sampler is not None
    extractor = RuleBasedEntityExtractor(clock=clock, call_seconds=sampler)

    for text in ("one chunk", "another chunk", "one chunk"):
        extractor.extract(text)

    assert clock.sleeps[0] == clock.sleeps[2] != clock.sleeps[1]


def test_the_reference_profile_is_wired_into_the_services(make_services: object) -> None:
    services: Services = make_services(  # type: ignore[operator]
        latency_profile="reference", time_scale=0.0001
    )

    assert isinstance(services.store, DelayedDocumentStore)
    assert services.store.ensure_project("p")  # everything else is delegated


def test_the_default_profile_leaves_the_services_alone(services: Services) -> None:
    assert not isinstance(services.store, DelayedDocumentStore)


def test_the_delayed_store_waits_before_saving_the_node() -> None:
    clock = ManualClock(EPOCH_2023)
    waits: list[float] = []

    fences: list[object] = []

    class Spy:
        def save_document_node(self, node: DocumentNode, *, fence: object = None) -> None:
            waits.append(clock.now())
            fences.append(fence)

    delayed = DelayedDocumentStore(Spy(), clock, lambda key: 15.0)  # type: ignore[arg-type]
    delayed.save_document_node(NODE, fence="the delivery's fence")  # type: ignore[arg-type]

    assert clock.sleeps == [15.0]
    assert waits == [1_700_000_015.0]
    assert fences == ["the delivery's fence"]  # the write stays fenced behind the wait


def test_profiles_refuse_bad_parameters() -> None:
    with pytest.raises(ValueError):
        LatencyProfile(time_scale=0)
    with pytest.raises(ValueError):
        build_profile("production")
    with pytest.raises(ValueError):
        LatencyProfile(services={"printer": Distribution("fixed", 1)})
