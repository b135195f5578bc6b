"""The rule-based extractor: the LLM's answer shape, useful entities, faults and latency."""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.adapters.rule_based_llm import RuleBasedEntityExtractor
from pipeline.domain.entities import build_mentions, parse_llm_entities
from pipeline.domain.models import Chunk, EntityType
from pipeline.domain.resolution import resolve_mentions
from pipeline.errors import MalformedResponse, TransientError
from pipeline.ports import EntityExtractor, FaultEffect
from pipeline.testing.clocks import ManualClock
from pipeline.testing.faults import ScriptedFaults

COMPLAINT = """UNITED STATES DISTRICT COURT
FOR THE CENTRAL DISTRICT OF CALIFORNIA

JANE R. HOLLOWAY, an individual, Plaintiff,
v.
MERIDIAN CAPITAL PARTNERS, LLC, Defendant.

Case No. 2:23-cv-01234-ABC

1. Plaintiff Jane R. Holloway ("Holloway") is a resident of Los Angeles, California. \
Defendant Meridian Capital Partners, L.L.C. is a Delaware limited liability company \
headquartered in New York, New York, and regulated by the Securities and Exchange Commission.
2. On March 3, 2023, Ms. Holloway wired $1,250,000.00 to Meridian's account at First National \
Bank of Chicago. On 03/15/2023 Mr. David Chen promised a return of USD 45,000 per quarter. \
Judge Alan Pierce of the United States District Court for the Northern District of Illinois \
previously sanctioned Meridian in No. 23-1234.
3. This Court has jurisdiction under 28 U.S.C. § 1331 and Section 10(b) of the Securities \
Exchange Act of 1934, 15 U.S.C. § 78j(b), and Rule 10b-5. Holloway also sues under Cal. Civ. \
Code § 1542 and Title VII. Defendant moved to dismiss under Fed. R. Civ. P. 12(b)(6) on \
2023-04-01. Venue is proper in the County of Los Angeles. Holloway seeks 45,000 dollars.

Dated: April 10, 2023            /s/ Mark T. Ellison
                                 Mark T. Ellison, Esq.
"""


def found(text: str) -> dict[EntityType, set[str]]:
    entities = parse_llm_entities(RuleBasedEntityExtractor().extract(text), text)
    by_type: dict[EntityType, set[str]] = defaultdict(set)
    for entity in entities:
        by_type[entity.entity_type].add(" ".join(entity.value.split()))
    return by_type


def test_it_implements_the_port_and_names_its_model() -> None:
    extractor: EntityExtractor = RuleBasedEntityExtractor()
    assert extractor.model == "rule-based-ner-v1"


def test_the_answer_has_the_llm_shape_with_verified_offsets() -> None:
    payload = RuleBasedEntityExtractor().extract(COMPLAINT)
    items = json.loads(payload)["entities"]
    assert items and all(set(i) == {"entity", "label", "start", "end", "confidence"} for i in items)
    for i in items:
        assert COMPLAINT[i["start"] : i["end"]] == i["entity"]
        assert 0 < i["confidence"] <= 1
    entities = parse_llm_entities(payload, COMPLAINT)
    assert len(entities) == len(items)  # nothing moved, nothing dropped
    assert [(e.start, e.end) for e in entities] == [(i["start"], i["end"]) for i in items]


def test_it_finds_the_people_orgs_places_dates_money_laws_and_case_of_a_complaint() -> None:
    by_type = found(COMPLAINT)
    assert {
        "JANE R. HOLLOWAY",
        "Jane R. Holloway",
        "Ms. Holloway",
        "Holloway",
        "Mr. David Chen",
        "Judge Alan Pierce",
        "Mark T. Ellison",
    } <= by_type[EntityType.PERSON]
    assert {
        "MERIDIAN CAPITAL PARTNERS, LLC",
        "Meridian Capital Partners, L.L.C.",
        "Meridian",
        "Securities and Exchange Commission",
        "First National Bank of Chicago",
        "United States District Court for the Northern District of Illinois",
        "UNITED STATES DISTRICT COURT FOR THE CENTRAL DISTRICT OF CALIFORNIA",
    } <= by_type[EntityType.ORG]
    assert {
        "Los Angeles",
        "California",
        "Delaware",
        "New York",
        "County of Los Angeles",
    } <= by_type[EntityType.LOCATION]
    assert {"March 3, 2023", "03/15/2023", "2023-04-01", "April 10, 2023"} <= by_type[
        EntityType.DATE
    ]
    assert {"$1,250,000.00", "USD 45,000", "45,000 dollars"} <= by_type[EntityType.MONEY]
    assert {
        "28 U.S.C. § 1331",
        "Section 10(b) of the Securities Exchange Act of 1934",
        "15 U.S.C. § 78j(b)",
        "Rule 10b-5",
        "Cal. Civ. Code § 1542",
        "Title VII",
        "Fed. R. Civ. P. 12(b)(6)",
    } <= by_type[EntityType.LAW]
    assert {"Case No. 2:23-cv-01234-ABC", "No. 23-1234"} <= by_type[EntityType.CASE]


def test_common_words_are_not_tagged() -> None:
    by_type = found(
        "This Court has jurisdiction. The Company shall pay the Trust. Plaintiff Moved To "
        "Dismiss. Defendant denies each allegation in Section 4 of this Agreement. "
        "May the parties confer?"
    )
    assert not by_type


def test_found_names_resolve_into_few_entities() -> None:
    chunk = Chunk("chunk-0", "doc-1", 0, 0, len(COMPLAINT), COMPLAINT)
    entities = parse_llm_entities(RuleBasedEntityExtractor().extract(COMPLAINT), COMPLAINT)
    resolution = resolve_mentions("doc-1", build_mentions("doc-1", chunk, entities))
    people = {e.canonical_name: e for e in resolution.entities if e.entity_type == "PERSON"}
    orgs = {e.canonical_name: e for e in resolution.entities if e.entity_type == "ORG"}
    assert people["Jane R. Holloway"].mention_count == 6
    assert orgs["Meridian Capital Partners, L.L.C."].mention_count == 4
    assert set(people) == {
        "Jane R. Holloway",
        "Mr. David Chen",
        "Judge Alan Pierce",
        "Mark T. Ellison",
    }


def test_extraction_is_deterministic() -> None:
    extractor = RuleBasedEntityExtractor()
    assert extractor.extract(COMPLAINT) == extractor.extract(COMPLAINT)
    assert extractor.extract("") == '{"entities": []}'


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from([*"Ab. ,$1:-§\n", "Ms. ", "Holloway", "LLC", "March ", "2023", "Inc."]),
        max_size=40,
    ).map("".join)
)
def test_any_text_gives_a_parseable_answer_with_exact_offsets(text: str) -> None:
    payload = RuleBasedEntityExtractor().extract(text)
    items = json.loads(payload)["entities"]
    assert len(parse_llm_entities(payload, text)) == len(items)
    spans = sorted((i["start"], i["end"]) for i in items)
    assert all(text[i["start"] : i["end"]] == i["entity"] for i in items)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in pairwise(spans))


# --- faults and latency -----------------------------------------------------------------------


def test_faults_are_consulted_first_and_latency_is_slept_on_the_clock() -> None:
    clock = ManualClock()
    faults = ScriptedFaults(FaultEffect(latency_s=2.0))
    extractor = RuleBasedEntityExtractor(clock=clock, latency_seconds=0.5, faults=faults)
    extractor.extract("Ms. Holloway")
    assert faults.calls == [("llm", "extract", None)]
    assert clock.sleeps == [2.5]


def test_no_clock_no_sleep_and_zero_latency_does_not_sleep() -> None:
    clock = ManualClock()
    RuleBasedEntityExtractor(clock=clock).extract("Ms. Holloway")
    assert clock.sleeps == []
    RuleBasedEntityExtractor(latency_seconds=5.0).extract("Ms. Holloway")  # returns at once


def test_an_injected_error_propagates() -> None:
    extractor = RuleBasedEntityExtractor(faults=ScriptedFaults(error=TransientError("throttled")))
    with pytest.raises(TransientError, match="throttled"):
        extractor.extract("Ms. Holloway")


@pytest.mark.parametrize("response", ["malformed", "empty"])
def test_bad_answer_faults_give_answers_the_parser_rejects(response: str) -> None:
    extractor = RuleBasedEntityExtractor(faults=ScriptedFaults(FaultEffect(response=response)))
    payload = extractor.extract(COMPLAINT)
    with pytest.raises(MalformedResponse):
        parse_llm_entities(payload, COMPLAINT)
