"""The `EntityExtractor` contract: one chunk in, the LLM's JSON answer out.

What it checks is what the entity stage relies on: a JSON object the domain
parser accepts, entities that are in the chunk, throttling reported as a
transient error with the service's wait, and for a packed request
(`extract_many`) one answer per chunk, in the order sent, each about its own
chunk only, with the tokens the request used.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from pipeline.domain.entities import parse_llm_entities
from pipeline.domain.models import EntityType
from pipeline.errors import TransientError
from pipeline.ports import EntityExtractor

#: A chunk with a person, an organisation, a date and an amount.
CHUNK = (
    "AFFIDAVIT OF JANE HOLLOWAY\n\nI, Jane R. Holloway, of Chicago, Illinois, swear that on "
    "March 3, 2023 Meridian Capital Partners LLC paid $45,000.\n"
)
#: A second chunk with other entities: a packed answer must not mix the two up.
OTHER_CHUNK = (
    "LEASE AGREEMENT\n\nOn May 12, 2021 Mr. Robert Chen signed for Acme Holdings Inc. "
    "in Denver, Colorado, agreeing to pay $12,500 per month.\n"
)
ITEM_KEYS = {"entity", "label", "start", "end", "confidence"}


@dataclass
class ExtractorSetup:
    extractor: EntityExtractor
    #: Make the next call be throttled by the service, asking to wait this many seconds.
    throttle_next: Callable[[float], None]


class EntityExtractorContract:
    """Subclasses provide an `llm` fixture: an `ExtractorSetup`."""

    def test_the_model_is_named(self, llm: ExtractorSetup) -> None:
        assert isinstance(llm.extractor.model, str)
        assert llm.extractor.model.strip()
        assert llm.extractor.model == llm.extractor.model  # stable: part of the cache key

    def test_the_answer_is_a_json_object_with_entity_items(self, llm: ExtractorSetup) -> None:
        data = json.loads(llm.extractor.extract(CHUNK))

        assert isinstance(data, dict)
        items = data["entities"]
        assert isinstance(items, list) and items
        for item in items:
            assert set(item) >= ITEM_KEYS
            assert item["label"] in {t.value for t in EntityType} | {"GPE"}
            assert 0.0 <= float(item["confidence"]) <= 1.0

    def test_the_entities_are_found_in_the_chunk(self, llm: ExtractorSetup) -> None:
        entities = parse_llm_entities(llm.extractor.extract(CHUNK), CHUNK)

        for entity in entities:
            assert CHUNK[entity.start : entity.end] == entity.value
        found = {(e.entity_type, e.value) for e in entities}
        assert any(t == EntityType.PERSON and "Holloway" in v for t, v in found)
        assert any(t == EntityType.ORG and "Meridian" in v for t, v in found)

    def test_a_chunk_without_entities_answers_an_empty_list(self, llm: ExtractorSetup) -> None:
        text = "and then it was over, as it always is."

        assert parse_llm_entities(llm.extractor.extract(text), text) == []

    def test_the_same_chunk_gets_the_same_entities(self, llm: ExtractorSetup) -> None:
        first = parse_llm_entities(llm.extractor.extract(CHUNK), CHUNK)
        again = parse_llm_entities(llm.extractor.extract(CHUNK), CHUNK)

        assert first == again

    def test_throttling_is_transient_with_the_services_wait(self, llm: ExtractorSetup) -> None:
        llm.throttle_next(7.0)

        with pytest.raises(TransientError) as throttled:
            llm.extractor.extract(CHUNK)

        assert throttled.value.retry_after == pytest.approx(7.0)
        assert parse_llm_entities(llm.extractor.extract(CHUNK), CHUNK)  # then it answers

    def test_a_packed_request_answers_each_chunk_in_order(self, llm: ExtractorSetup) -> None:
        texts = [CHUNK, OTHER_CHUNK]

        answer = llm.extractor.extract_many(texts)

        assert len(answer.payloads) == len(texts)
        packed = [parse_llm_entities(p, t) for p, t in zip(answer.payloads, texts, strict=True)]
        alone = [parse_llm_entities(llm.extractor.extract(text), text) for text in texts]
        assert [{e.value for e in found} for found in packed] == [
            {e.value for e in found} for found in alone
        ]
        assert any("Holloway" in e.value for e in packed[0])
        assert any("Chen" in e.value for e in packed[1])
        assert not any("Chen" in e.value for e in packed[0])  # keyed by chunk, not mixed

    def test_a_packed_request_reports_its_tokens(self, llm: ExtractorSetup) -> None:
        one = llm.extractor.extract_many([CHUNK])
        two = llm.extractor.extract_many([CHUNK, OTHER_CHUNK])

        assert 0 < one.prompt_tokens < two.prompt_tokens
        assert 0 < one.completion_tokens < two.completion_tokens
        budget = llm.extractor.request_tokens
        assert 0 < budget([CHUNK]) < budget([CHUNK, OTHER_CHUNK])

    def test_a_throttled_packed_request_is_transient(self, llm: ExtractorSetup) -> None:
        llm.throttle_next(3.0)

        with pytest.raises(TransientError) as throttled:
            llm.extractor.extract_many([CHUNK, OTHER_CHUNK])

        assert throttled.value.retry_after == pytest.approx(3.0)
        assert len(llm.extractor.extract_many([CHUNK, OTHER_CHUNK]).payloads) == 2
