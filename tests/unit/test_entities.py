"""Parsing the LLM's answer, normalising values and building mentions."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.domain.entities import build_mentions, normalize_value, parse_llm_entities
from pipeline.domain.models import Chunk, EntityType, ExtractedEntity, stable_uuid
from pipeline.errors import MalformedResponse, TransientError

CHUNK = (
    "Plaintiff Jane R. Holloway sued Meridian Capital Partners LLC in Chicago, Illinois "
    "on March 3, 2023. Ms. Holloway seeks $1,250,000.00 from Meridian."
)


def answer(*entities: dict[str, Any]) -> str:
    return json.dumps({"entities": list(entities)})


def item(
    entity: str, label: str, start: int | None, end: int | None, **extra: Any
) -> dict[str, Any]:
    return {"entity": entity, "label": label, "start": start, "end": end, **extra}


def at(text: str, value: str, label: str = "PERSON") -> dict[str, Any]:
    start = text.index(value)
    return item(value, label, start, start + len(value), confidence=0.9)


# --- parse_llm_entities: broken answers raise, never an empty list -------------------


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "not json at all",
        '{"entities": [',
        "[]",
        '"entities"',
        "null",
        "{}",
        '{"entities": null}',
        '{"entities": {"entity": "x"}}',
        '{"entities": [1]}',
        '{"entities": [["Jane", "PERSON"]]}',
        '{"entities": [{"label": "PERSON", "start": 0, "end": 4}]}',
        '{"entities": [{"entity": "Jane", "start": 0, "end": 4}]}',
        '{"entities": [{"entity": 7, "label": "PERSON"}]}',
        '{"entities": [{"entity": "Jane", "label": "PERSON", "start": "0", "end": 4}]}',
        '{"entities": [{"entity": "Jane", "label": "PERSON", "start": 0.5, "end": 4}]}',
        '{"entities": [{"entity": "Jane", "label": "PERSON", "start": true, "end": 4}]}',
        '{"entities": [{"entity": "Jane", "label": "PERSON", "confidence": "high"}]}',
        '{"entities": [{"entity": "Jane", "label": "PERSON", "confidence": NaN}]}',
    ],
)
def test_malformed_answers_raise_malformed_response(payload: str) -> None:
    with pytest.raises(MalformedResponse):
        parse_llm_entities(payload, CHUNK)


def test_malformed_response_is_retryable_with_a_reason() -> None:
    with pytest.raises(TransientError, match="JSON"):
        parse_llm_entities('{"entities": [', CHUNK)


def test_an_explicitly_empty_answer_is_a_valid_empty_list() -> None:
    assert parse_llm_entities('{"entities": []}', CHUNK) == []
    assert parse_llm_entities('{"entities": [], "note": "none found"}', CHUNK) == []


# --- offsets ------------------------------------------------------------------------------


def test_correct_offsets_are_kept() -> None:
    (entity,) = parse_llm_entities(answer(at(CHUNK, "Jane R. Holloway")), CHUNK)
    assert entity == ExtractedEntity("Jane R. Holloway", EntityType.PERSON, 10, 26, 0.9)


def test_wrong_offsets_are_moved_to_the_nearest_occurrence() -> None:
    second = CHUNK.index("Holloway", 30)
    payload = answer(
        item("Holloway", "PERSON", second + 3, second + 11),  # off by 3, near the 2nd one
        item("Meridian", "ORG", 0, 8),  # claimed at the start: the first occurrence wins
    )
    holloway, meridian = sorted(parse_llm_entities(payload, CHUNK), key=lambda e: e.value)
    assert (holloway.start, holloway.end) == (second, second + 8)
    assert (meridian.start, meridian.end) == (CHUNK.index("Meridian"), CHUNK.index("Meridian") + 8)
    for entity in (holloway, meridian):
        assert CHUNK[entity.start : entity.end] == entity.value


def test_out_of_range_and_missing_offsets_are_searched_for() -> None:
    payload = answer(
        item("Chicago", "GPE", 5000, 5007),
        item("Illinois", "GPE", -4, 2),
        {"entity": "March 3, 2023", "label": "DATE"},
    )
    values = {e.value: e for e in parse_llm_entities(payload, CHUNK)}
    assert set(values) == {"Chicago", "Illinois", "March 3, 2023"}
    for entity in values.values():
        assert CHUNK[entity.start : entity.end] == entity.value


def test_case_and_line_break_differences_are_matched_to_the_real_text() -> None:
    text = "The agreement was signed by JANE R.\nHOLLOWAY on Monday."
    (entity,) = parse_llm_entities(answer(item("Jane R. Holloway", "PERSON", 0, 16)), text)
    assert entity.value == "JANE R.\nHOLLOWAY"
    assert text[entity.start : entity.end] == entity.value


def test_hallucinated_entities_are_dropped_alone() -> None:
    payload = answer(
        item("Robert Vance", "PERSON", 10, 22),
        at(CHUNK, "Meridian Capital Partners LLC", "ORG"),
        item("   ", "PERSON", 0, 3),
    )
    (entity,) = parse_llm_entities(payload, CHUNK)
    assert entity.value == "Meridian Capital Partners LLC"


def test_labels_map_to_entity_types() -> None:
    payload = answer(
        at(CHUNK, "Chicago", "GPE"),
        at(CHUNK, "Illinois", "location"),
        at(CHUNK, "Meridian Capital Partners LLC", "ORGANIZATION"),
        at(CHUNK, "Jane R. Holloway", "PERSON"),
        at(CHUNK, "March 3, 2023", "DATE"),
        at(CHUNK, "$1,250,000.00", "MONEY"),
        at(CHUNK, "Plaintiff", "ROLE"),
    )
    types = {e.value: e.entity_type for e in parse_llm_entities(payload, CHUNK)}
    assert types == {
        "Chicago": EntityType.LOCATION,
        "Illinois": EntityType.LOCATION,
        "Meridian Capital Partners LLC": EntityType.ORG,
        "Jane R. Holloway": EntityType.PERSON,
        "March 3, 2023": EntityType.DATE,
        "$1,250,000.00": EntityType.MONEY,
        "Plaintiff": EntityType.OTHER,
    }


def test_confidence_is_clamped_and_defaults_to_one() -> None:
    start = CHUNK.index("Chicago")
    payload = answer(
        item("Chicago", "GPE", start, start + 7, confidence=1.7),
        at(CHUNK, "Illinois", "GPE") | {"confidence": -0.2},
        {"entity": "Meridian", "label": "ORG", "start": CHUNK.index("Meridian"), "end": 0},
    )
    confidences = {e.value: e.confidence for e in parse_llm_entities(payload, CHUNK)}
    assert confidences == {"Chicago": 1.0, "Illinois": 0.0, "Meridian": 1.0}


def test_duplicates_collapse_and_the_result_is_sorted() -> None:
    payload = answer(
        at(CHUNK, "Meridian", "ORG") | {"confidence": 0.4},
        at(CHUNK, "Jane R. Holloway"),
        at(CHUNK, "Meridian", "ORG") | {"confidence": 0.8},
        at(CHUNK, "Meridian", "PERSON"),
    )
    entities = parse_llm_entities(payload, CHUNK)
    assert [(e.value, e.entity_type, e.confidence) for e in entities] == [
        ("Jane R. Holloway", EntityType.PERSON, 0.9),
        ("Meridian", EntityType.ORG, 0.8),
        ("Meridian", EntityType.PERSON, 0.9),
    ]


ALPHABET = string.ascii_letters[:8] + "JHL .,\n\t§é’"


@st.composite
def chunk_and_claims(draw: st.DrawFn) -> tuple[str, list[dict[str, Any]]]:
    words = draw(
        st.lists(st.sampled_from(["Jane", "Holloway", "LLC", "v.", "$5", "2023", " "]), max_size=8)
    )
    text = draw(st.text(alphabet=ALPHABET, max_size=30)) + " ".join(words)
    claims = []
    for _ in range(draw(st.integers(0, 6))):
        if text and draw(st.booleans()):
            start = draw(st.integers(0, len(text) - 1))
            value = text[start : draw(st.integers(start + 1, len(text)))]
        else:
            value = draw(st.text(alphabet=ALPHABET, min_size=1, max_size=10))
        claims.append(
            {
                "entity": value,
                "label": draw(st.sampled_from(["PERSON", "ORG", "GPE", "DATE", "X"])),
                "start": draw(st.integers(-5, len(text) + 5)),
                "end": draw(st.integers(-5, len(text) + 5)),
                "confidence": draw(st.floats(-1, 2)),
            }
        )
    return text, claims


@given(chunk_and_claims())
def test_every_parsed_entity_points_at_its_value(case: tuple[str, list[dict[str, Any]]]) -> None:
    text, claims = case
    entities = parse_llm_entities(json.dumps({"entities": claims}), text)
    for entity in entities:
        assert text[entity.start : entity.end] == entity.value
        assert entity.value.strip()
        assert 0.0 <= entity.confidence <= 1.0
    keys = [(e.start, e.end, e.entity_type) for e in entities]
    assert keys == sorted(set(keys))
    # A claim whose text is really in the chunk is never dropped.
    present = {c["entity"].strip() for c in claims if c["entity"].strip() in text}
    found = {e.value for e in entities}
    assert all(value in found for value in present if value)


# --- normalize_value ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("March 3, 2023", "2023-03-03"),
        ("3 March 2023", "2023-03-03"),
        ("03/15/2023", "2023-03-15"),
        ("3/15/23", "2023-03-15"),
        ("2023-04-01", "2023-04-01"),
        ("Mar. 3, 2023", "2023-03-03"),
        ("Sept. 30, 2022", "2022-09-30"),
        ("the 3rd day of March, 2023", "2023-03-03"),
        ("Friday, March 3, 2023", "2023-03-03"),
        ("February 30, 2023", "february 30 2023"),
        ("March 2023", "march 2023"),
        ("Q3 2023", "q3 2023"),
    ],
)
def test_dates_normalise_to_iso_when_parseable(value: str, expected: str) -> None:
    assert normalize_value(value, EntityType.DATE) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$1,250,000.00", "usd 1250000.00"),
        ("$1,250,000", "usd 1250000.00"),
        ("USD 1.25 million", "usd 1250000.00"),
        ("1,250,000 dollars", "usd 1250000.00"),
        ("US$ 45,000", "usd 45000.00"),
        ("€1.500", "eur 1.50"),
        ("£12.345", "gbp 12.35"),
        ("Fifty Thousand Dollars ($50,000.00)", "usd 50000.00"),
        ("a reasonable fee", "a reasonable fee"),
    ],
)
def test_money_normalises_to_a_canonical_amount(value: str, expected: str) -> None:
    assert normalize_value(value, EntityType.MONEY) == expected


@pytest.mark.parametrize(
    ("value", "entity_type", "expected"),
    [
        ("Ms. Jane R. Holloway", EntityType.PERSON, "jane r holloway"),
        ("Judge Alan Pierce", EntityType.PERSON, "alan pierce"),
        ("The Honorable Alan Pierce", EntityType.PERSON, "alan pierce"),
        ("Mark T. Ellison, Esq.", EntityType.PERSON, "mark t ellison"),
        ("Judge", EntityType.PERSON, "judge"),
        ("Meridian Capital Partners, L.L.C.", EntityType.ORG, "meridian capital partners llc"),
        ("MERIDIAN  CAPITAL\nPARTNERS LLC", EntityType.ORG, "meridian capital partners llc"),
        ("Smith-Jones & Co.", EntityType.ORG, "smith jones co"),
        ("Case No. 2:23-cv-01234-ABC", EntityType.CASE, "2 23 cv 01234 abc"),
        ("No. 2:23-cv-01234-ABC", EntityType.CASE, "2 23 cv 01234 abc"),
        ("Cal. Civ. Code § 1542", EntityType.LAW, "cal civ code 1542"),
        ("St. Louis", EntityType.LOCATION, "st louis"),
    ],
)
def test_names_normalise_to_lower_case_words(
    value: str, entity_type: EntityType, expected: str
) -> None:
    assert normalize_value(value, entity_type) == expected


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_normalised_text_is_lower_case_words_and_idempotent(value: str) -> None:
    normalized = normalize_value(value, EntityType.OTHER)
    assert normalized == " ".join(normalized.split())
    assert not any(ch in string.punctuation for ch in normalized)
    assert normalize_value(normalized, EntityType.OTHER) == normalized


# --- build_mentions ----------------------------------------------------------------------


def test_mentions_carry_stable_ids_and_no_canonical_entity_yet() -> None:
    chunk = Chunk("chunk-1", "doc-1", 3, 100, 100 + len(CHUNK), CHUNK)
    entities = parse_llm_entities(
        answer(at(CHUNK, "Jane R. Holloway"), at(CHUNK, "March 3, 2023", "DATE")), CHUNK
    )
    mentions = build_mentions("doc-1", chunk, entities)
    assert mentions == build_mentions("doc-1", chunk, entities)
    person, date = mentions
    assert person.uuid == stable_uuid("doc-1", "mention", 3, 10, 26, EntityType.PERSON)
    assert (person.chunk_uuid, person.chunk_index, person.canonical_uuid) == ("chunk-1", 3, None)
    assert person.normalized_value == "jane r holloway"
    assert date.normalized_value == "2023-03-03"
    assert len({m.uuid for m in mentions}) == 2


def test_build_mentions_rejects_offsets_that_do_not_match() -> None:
    chunk = Chunk("chunk-1", "doc-1", 0, 0, len(CHUNK), CHUNK)
    wrong = ExtractedEntity("Holloway", EntityType.PERSON, 0, 8, 1.0)
    with pytest.raises(ValueError, match="Holloway"):
        build_mentions("doc-1", chunk, [wrong])
