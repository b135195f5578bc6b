"""Request packing: several chunks in one LLM request, verified and cached per chunk."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from pipeline.adapters.latency import pack_call_seconds, pack_key
from pipeline.adapters.llm_prompts import request_tokens
from pipeline.adapters.rule_based_llm import RuleBasedEntityExtractor, answer
from pipeline.app import stages
from pipeline.app.intake import submit_file
from pipeline.bootstrap import Services
from pipeline.domain.entities import parse_llm_entities
from pipeline.domain.models import Stage
from pipeline.domain.packing import (
    pack_answer,
    pack_request_text,
    plan_packs,
    split_packed_answer,
    unpack_request_text,
)
from pipeline.errors import MalformedResponse
from pipeline.harness.simulation.clock import VirtualClock, VirtualRateLimiter
from pipeline.ports import LlmAnswer

MakeServices = Callable[..., Services]
PARAGRAPH = (
    "Jane R. Holloway of Chicago, Illinois, and Meridian Capital Partners LLC signed the "
    "agreement on March 3, 2023; Meridian paid $45,000 under 15 U.S.C. § 78j(b). "
)


class RecordingExtractor:
    """The rule-based extractor, recording every request; can spoil chosen chunks."""

    def __init__(self, spoil: Callable[[str, int], str | None] | None = None) -> None:
        self.inner = RuleBasedEntityExtractor()
        self.requests: list[tuple[str, ...]] = []
        #: (chunk text, pack size) -> a replacement payload, or None to keep the real one.
        self.spoil = spoil

    @property
    def model(self) -> str:
        return self.inner.model

    def extract(self, text: str) -> str:
        return self.extract_many([text]).payloads[0]

    def request_tokens(self, texts: Sequence[str]) -> int:
        return self.inner.request_tokens(texts)

    def extract_many(self, texts: Sequence[str]) -> LlmAnswer:
        self.requests.append(tuple(texts))
        real = self.inner.extract_many(texts)
        payloads = list(real.payloads)
        if self.spoil is not None:
            for i, text in enumerate(texts):
                replacement = self.spoil(text, len(texts))
                if replacement is not None:
                    payloads[i] = replacement
        return LlmAnswer(tuple(payloads), real.prompt_tokens, real.completion_tokens)


def chunked_document(services: Services, tmp_path: Path, paragraphs: int = 12) -> str:
    """A document taken through OCR, node and chunking: ready for entity extraction."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "long.txt"
    path.write_text("\n\n".join(f"Clause {i}. " + PARAGRAPH * 4 for i in range(paragraphs)))
    project = services.store.ensure_project("p")
    uuid = submit_file(services, path, project).document_uuid
    version = services.store.get_document(uuid).processing_version
    assert stages.start_ocr(services, uuid, version, "a").next_stage is Stage.DOCUMENT_NODE
    assert stages.create_document_node(services, uuid, version).next_stage is Stage.CHUNKING
    assert stages.chunk_document(services, uuid, version).next_stage is Stage.ENTITY_EXTRACTION
    assert len(services.store.get_chunks(uuid)) >= 3
    return uuid


def extract(services: Services, uuid: str) -> stages.StageResult:
    version = services.store.get_document(uuid).processing_version
    return stages.extract_entities(services, uuid, version)


def unpacked_mentions(tmp_path: Path, make_services: MakeServices) -> list[tuple[object, ...]]:
    services = make_services(llm_pack_tokens=0)
    uuid = chunked_document(services, tmp_path / "unpacked")
    extract(services, uuid)
    return [
        (m.chunk_index, m.start, m.end, m.entity_type, m.value)
        for m in services.store.get_mentions(uuid)
    ]


# --- planning packs ----------------------------------------------------------------------


def test_packs_are_consecutive_and_stay_within_the_token_budget() -> None:
    texts = ["a" * n for n in (10, 20, 30, 40, 5, 100, 1)]

    def cost(pack: Sequence[str]) -> int:
        return 7 + sum(len(t) for t in pack)  # a fixed part per request, then the texts

    packs = plan_packs(texts, 60, cost)

    assert packs == [[0, 1], [2], [3, 4], [5], [6]]
    assert [i for pack in packs for i in pack] == list(range(len(texts)))
    for pack in packs:
        # Within the budget, or a single text that is over it on its own.
        assert cost([texts[i] for i in pack]) <= 60 or len(pack) == 1
    assert plan_packs(texts, 1000, cost) == [list(range(len(texts)))]


def test_a_budget_of_zero_is_one_request_per_chunk() -> None:
    assert plan_packs(["x", "y", "z"], 0, lambda pack: 1) == [[0], [1], [2]]
    assert plan_packs([], 8000, lambda pack: 1) == []


def test_request_tokens_grow_with_the_chunks_and_count_the_prompt_once() -> None:
    text = PARAGRAPH * 4
    one, two = request_tokens([text]), request_tokens([text, text + " "])
    assert one < two < 2 * one  # the system prompt is paid once per request


# --- the packed request and answer ------------------------------------------------------


def test_a_packed_request_round_trips_and_its_answer_splits_per_chunk() -> None:
    texts = ["Ms. Jane Holloway met counsel in Chicago.", "Acme Corp. paid $5,000."]
    assert unpack_request_text(pack_request_text(texts)) == texts
    assert unpack_request_text("Ms. Holloway wrote in JSON.") is None

    payloads = split_packed_answer(pack_answer([answer(t) for t in texts]), len(texts))

    assert [json.loads(p) for p in payloads] == [json.loads(answer(t)) for t in texts]


def test_one_broken_chunk_entry_spoils_only_that_chunk() -> None:
    content = json.dumps(
        {
            "chunks": [
                {"id": 1, "entities": [{"entity": "Acme Corp.", "label": "ORG"}]},
                {"id": 0},  # no entity list
            ]
        }
    )
    first, second, third = split_packed_answer(content, 3)

    with pytest.raises(MalformedResponse):
        parse_llm_entities(first, "Ms. Holloway")
    assert [e.value for e in parse_llm_entities(second, "Acme Corp. paid")] == ["Acme Corp."]
    with pytest.raises(MalformedResponse):
        parse_llm_entities(third, "no answer for this one")


def test_an_unreadable_packed_answer_is_malformed_as_a_whole() -> None:
    with pytest.raises(MalformedResponse, match="not valid JSON"):
        split_packed_answer('{"chunks": [{"id": 0, "entities": [', 2)
    with pytest.raises(MalformedResponse, match='no "chunks" list'):
        split_packed_answer('{"entities": []}', 2)


# --- the stage ---------------------------------------------------------------------------


def test_packed_extraction_finds_what_one_request_per_chunk_finds(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = make_services(llm_pack_tokens=3000)
    recording = RecordingExtractor()
    services.extractor = recording
    uuid = chunked_document(services, tmp_path)
    chunks = services.store.get_chunks(uuid)

    result = extract(services, uuid)

    sizes = [len(r) for r in recording.requests]
    assert sum(sizes) == len(chunks) and 1 < len(sizes) < len(chunks)
    for request in recording.requests:
        assert len(request) == 1 or recording.request_tokens(request) <= 3000
    assert f"{len(sizes)} LLM calls" in result.detail
    packed = [
        (m.chunk_index, m.start, m.end, m.entity_type, m.value)
        for m in services.store.get_mentions(uuid)
    ]
    assert packed == unpacked_mentions(tmp_path, make_services)


def test_a_partly_cached_pack_sends_only_the_misses(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = make_services(llm_pack_tokens=100_000)  # every chunk fits one request
    recording = RecordingExtractor()
    services.extractor = recording
    uuid = chunked_document(services, tmp_path)
    chunks = services.store.get_chunks(uuid)
    document = services.store.get_document(uuid)
    cached = {chunks[i].text for i in (0, 2, 3)}
    for chunk in chunks:
        if chunk.text in cached:
            digest = hashlib.sha256(chunk.text.encode()).hexdigest()
            key = stages.cache_key(document, "llm", recording.model, digest)
            services.cache.set(key, answer(chunk.text), 3600)

    extract(services, uuid)

    (request,) = recording.requests
    assert list(request) == [c.text for c in chunks if c.text not in cached]
    assert len(services.store.get_mentions(uuid)) > 0


def test_a_malformed_chunk_in_a_pack_is_asked_again_alone(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = make_services(llm_pack_tokens=100_000)
    uuid = chunked_document(services, tmp_path)
    broken = services.store.get_chunks(uuid)[2].text

    def spoil(text: str, pack_size: int) -> str | None:
        # Cut off in the pack; answered properly when asked alone.
        return '{"entities": [{"entity": "Jane' if text == broken and pack_size > 1 else None

    recording = RecordingExtractor(spoil)
    services.extractor = recording

    extract(services, uuid)

    first, retry = recording.requests
    assert len(first) == len(services.store.get_chunks(uuid))
    assert retry == (broken,)  # that chunk alone, not the pack
    packed = [
        (m.chunk_index, m.start, m.end, m.entity_type, m.value)
        for m in services.store.get_mentions(uuid)
    ]
    assert packed == unpacked_mentions(tmp_path, make_services)


def test_a_chunk_malformed_twice_fails_the_delivery_and_the_retry_sends_only_it(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = make_services(llm_pack_tokens=100_000)
    uuid = chunked_document(services, tmp_path)
    broken = services.store.get_chunks(uuid)[1].text
    spoiled = {"on": True}

    def spoil(text: str, pack_size: int) -> str | None:
        return "" if text == broken and spoiled["on"] else None

    recording = RecordingExtractor(spoil)
    services.extractor = recording
    with pytest.raises(MalformedResponse):
        extract(services, uuid)
    assert [len(r) for r in recording.requests] == [len(services.store.get_chunks(uuid)), 1]

    # The task retries the stage: the good answers were cached, only the broken chunk goes.
    spoiled["on"] = False
    recording.requests.clear()
    extract(services, uuid)
    assert recording.requests == [(broken,)]


def test_offsets_in_a_packed_answer_are_verified_against_their_own_chunk(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = make_services(llm_pack_tokens=100_000)
    uuid = chunked_document(services, tmp_path, paragraphs=6)
    chunks = services.store.get_chunks(uuid)
    target = chunks[1].text
    # The claim is past the chunk's end: the occurrence nearest it is the last one.
    real_start = target.rindex("Meridian Capital Partners LLC")

    def spoil(text: str, pack_size: int) -> str | None:
        if text != target:
            return None
        entities = [
            # Offsets counted from the start of the whole pack, not of this chunk.
            {"entity": "Meridian Capital Partners LLC", "label": "ORG", "start": 4000},
            # Text that is in another chunk only: not in this one, dropped.
            {"entity": "Clause 0.", "label": "OTHER", "start": 0},
        ]
        return json.dumps({"entities": entities})

    services.extractor = RecordingExtractor(spoil)
    extract(services, uuid)

    second = [m for m in services.store.get_mentions(uuid) if m.chunk_index == 1]
    assert [(m.value, m.start, m.end) for m in second] == [
        ("Meridian Capital Partners LLC", real_start, real_start + 29)
    ]


def test_usage_of_every_delivery_is_added_to_the_documents_record(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = make_services(llm_pack_tokens=3000)
    recording = RecordingExtractor()
    services.extractor = recording
    uuid = chunked_document(services, tmp_path)

    extract(services, uuid)

    usage = stages.read_llm_usage(
        services.cache.get(stages.llm_usage_key(services.store.get_document(uuid)))
    )
    assert usage.calls == len(recording.requests)
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0


# --- the simulated model time and the virtual limiter ------------------------------------


def test_a_packed_call_costs_one_fixed_part_and_every_chunks_token_part() -> None:
    waits = {"a": 2.0, "b": 4.0, "c": 1.0}
    keys = ["a", "b", "c"]
    waits[pack_key(keys)] = 3.0

    seconds = pack_call_seconds(waits.__getitem__, pack_key(keys), keys)

    assert seconds == pytest.approx(0.25 * 3.0 + 0.75 * (2.0 + 4.0 + 1.0))
    assert seconds < sum(waits[k] for k in keys)  # cheaper than three calls
    assert pack_call_seconds(waits.__getitem__, "x", ["b"]) == 4.0  # one chunk: as before


def test_the_rule_based_extractor_sleeps_once_per_packed_request() -> None:
    clock = VirtualClock()
    extractor = RuleBasedEntityExtractor(clock=clock, call_seconds=lambda key: 2.0)
    texts = ["Ms. Jane Holloway met counsel in Chicago.", "Acme Corp. paid $5,000."]

    answer_ = extractor.extract_many(texts)

    assert extractor.calls == 1
    assert clock.slept == pytest.approx(0.25 * 2.0 + 0.75 * 4.0)
    assert list(answer_.payloads) == [answer(t) for t in texts]
    assert answer_.prompt_tokens > 0 and answer_.completion_tokens > 0


def test_the_virtual_limiter_counts_tokens_like_the_redis_one() -> None:
    clock = VirtualClock()
    limiter = VirtualRateLimiter(clock, limit=10, window_seconds=6.0, token_limit=1000)
    limiter.acquire("llm", 700)
    clock.set(2.0)
    limiter.acquire("llm", 300)
    assert limiter.next_slot("llm", 2.0, 200) == pytest.approx(6.0)  # the 700 must leave
    assert limiter.next_slot("llm", 2.0, 900) == pytest.approx(8.0)  # both must leave
    assert limiter.next_slot("llm", 2.0, 0) == pytest.approx(2.0)
