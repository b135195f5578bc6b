"""Entity extraction, the pure part: parse the LLM's answer, normalise values, build mentions.

The LLM's offsets are claims, not facts: every entity is checked against the
chunk's text and moved to where its text really is, or dropped when it is not
there at all. A broken answer raises `MalformedResponse` - it is never turned
into an empty list (REFERENCE.md failure 10).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import unicodedata
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from pipeline.domain.models import Chunk, EntityType, ExtractedEntity, Mention, stable_uuid
from pipeline.errors import MalformedResponse

_LABELS: dict[str, EntityType] = {
    "PERSON": EntityType.PERSON,
    "PER": EntityType.PERSON,
    "ORG": EntityType.ORG,
    "ORGANIZATION": EntityType.ORG,
    "ORGANISATION": EntityType.ORG,
    "GPE": EntityType.LOCATION,
    "LOC": EntityType.LOCATION,
    "LOCATION": EntityType.LOCATION,
    "DATE": EntityType.DATE,
    "MONEY": EntityType.MONEY,
    "LAW": EntityType.LAW,
    "CASE": EntityType.CASE,
    "OTHER": EntityType.OTHER,
}


def entity_type_for_label(label: str) -> EntityType:
    """Map an LLM label to our type: GPE/LOCATION -> LOCATION, unknown -> OTHER."""
    return _LABELS.get(label.strip().upper(), EntityType.OTHER)


# --- parsing the LLM answer -------------------------------------------------------------


def parse_llm_entities(payload: str, chunk_text: str) -> list[ExtractedEntity]:
    """Parse `{"entities": [{entity, label, start, end, confidence}]}` against the chunk.

    Offsets are verified: a wrong offset is moved to the occurrence of the
    entity's text nearest the claimed start (exact first, then ignoring case and
    whitespace differences); an entity not in the chunk at all is dropped.
    Missing offsets count as a claim of 0. Duplicates of one (start, end, type)
    keep the highest confidence. Sorted by (start, end, type).
    """
    try:
        data = json.loads(payload)
    except (ValueError, TypeError) as exc:
        raise MalformedResponse(f"LLM answer is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MalformedResponse(f"LLM answer is a JSON {type(data).__name__}, not an object")
    items = data.get("entities")
    if not isinstance(items, list):
        raise MalformedResponse('LLM answer has no "entities" list')

    found: dict[tuple[int, int, EntityType], ExtractedEntity] = {}
    for index, item in enumerate(items):
        claim = _parse_item(index, item)
        if claim is None:
            continue
        text, entity_type, claimed_start, claimed_end, confidence = claim
        span = _locate(text, chunk_text, claimed_start, claimed_end)
        if span is None:
            continue  # hallucinated: not in this chunk
        start, end = span
        entity = ExtractedEntity(
            value=chunk_text[start:end],
            entity_type=entity_type,
            start=start,
            end=end,
            confidence=confidence,
        )
        key = (start, end, entity_type)
        previous = found.get(key)
        if previous is None or entity.confidence > previous.confidence:
            found[key] = entity
    return [found[key] for key in sorted(found)]


def _parse_item(index: int, item: Any) -> tuple[str, EntityType, int, int, float] | None:
    """Validate one item's shape; None for an item with nothing to look for."""
    if not isinstance(item, dict):
        raise MalformedResponse(f"entity {index} is not an object")
    text = item.get("entity")
    label = item.get("label")
    if not isinstance(text, str):
        raise MalformedResponse(f'entity {index} has no "entity" string')
    if not isinstance(label, str):
        raise MalformedResponse(f'entity {index} has no "label" string')
    start = _offset(index, "start", item.get("start"))
    end = _offset(index, "end", item.get("end"))
    confidence = _confidence(index, item.get("confidence"))
    text = text.strip()
    if not text:
        return None
    start = 0 if start is None else start
    end = start + len(text) if end is None else end
    return text, entity_type_for_label(label), start, end, confidence


def _offset(index: int, name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedResponse(f'entity {index} has a non-numeric "{name}"')
    if isinstance(value, float):
        if not value.is_integer():
            raise MalformedResponse(f'entity {index} has a fractional "{name}"')
        return int(value)
    return value


def _confidence(index: int, value: Any) -> float:
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedResponse(f'entity {index} has a non-numeric "confidence"')
    if math.isnan(value):
        raise MalformedResponse(f'entity {index} has a NaN "confidence"')
    return min(1.0, max(0.0, float(value)))


def _locate(text: str, chunk_text: str, start: int, end: int) -> tuple[int, int] | None:
    """Where `text` really is in the chunk: the claim if right, else the nearest occurrence."""
    if 0 <= start <= end <= len(chunk_text) and chunk_text[start:end] == text:
        return start, end
    positions: list[int] = []
    pos = chunk_text.find(text)
    while pos != -1:
        positions.append(pos)
        pos = chunk_text.find(text, pos + 1)
    if positions:
        best = min(positions, key=lambda p: (abs(p - start), p))
        return best, best + len(text)
    # The model may change case or collapse line breaks: match loosely, keep the real text.
    pattern = re.compile(r"\s+".join(re.escape(token) for token in text.split()), re.IGNORECASE)
    spans = [(m.start(), m.end()) for m in pattern.finditer(chunk_text) if m.end() > m.start()]
    if not spans:
        return None
    return min(spans, key=lambda s: (abs(s[0] - start), s[0]))


# --- normalisation ----------------------------------------------------------------------

_DELETED_PUNCTUATION = frozenset(".'’‘ʼ`")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_HONORIFICS = frozenset(
    {
        "mr",
        "ms",
        "mrs",
        "miss",
        "mx",
        "dr",
        "judge",
        "hon",
        "honorable",
        "honourable",
        "the",
        "justice",
        "magistrate",
        "prof",
        "professor",
    }
)
_PERSON_TRAILING = frozenset({"esq"})
_CASE_PREFIX = frozenset(
    {
        "case",
        "civil",
        "criminal",
        "action",
        "docket",
        "index",
        "cause",
        "appeal",
        "adv",
        "proc",
        "adversary",
        "proceeding",
        "number",
        "no",
        "nos",
    }
)


def normalize_text(value: str) -> str:
    """Lower-case, strip punctuation and symbols, collapse whitespace.

    Periods and apostrophes vanish ("L.L.C." -> "llc", "O'Neil" -> "oneil"),
    thousands separators vanish ("1,000" -> "1000"); other punctuation separates
    words ("Smith-Jones" -> "smith jones").
    """
    text = _THOUSANDS_COMMA.sub("", unicodedata.normalize("NFKC", value).lower())
    out: list[str] = []
    for ch in text:
        if ch in _DELETED_PUNCTUATION:
            continue
        out.append(" " if unicodedata.category(ch)[0] in "PS" else ch)
    return " ".join("".join(out).split())


def normalize_value(value: str, entity_type: EntityType) -> str:
    """The comparison key of a mention: see `normalize_text`, plus per-type rules.

    DATE -> ISO `YYYY-MM-DD` when parseable; MONEY -> "<currency> <amount>"
    (e.g. "usd 1250000.00"); PERSON drops honorifics and "Esq."; CASE drops the
    "Case No." style prefix.
    """
    if entity_type is EntityType.DATE:
        parsed = parse_date(value)
        if parsed is not None:
            return parsed.isoformat()
    elif entity_type is EntityType.MONEY:
        money = normalize_money(value)
        if money is not None:
            return money
    text = normalize_text(value)
    if entity_type is EntityType.PERSON:
        tokens = text.split()
        while len(tokens) > 1 and tokens[0] in _HONORIFICS:
            tokens.pop(0)
        while len(tokens) > 1 and tokens[-1] in _PERSON_TRAILING:
            tokens.pop()
        text = " ".join(tokens)
    elif entity_type is EntityType.CASE:
        tokens = text.split()
        while len(tokens) > 1 and tokens[0] in _CASE_PREFIX:
            tokens.pop(0)
        text = " ".join(tokens)
    return text


_MONTHS: dict[str, int] = {}
for _number, _name in enumerate(
    (
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ),
    start=1,
):
    _MONTHS[_name] = _number
    _MONTHS[_name[:3]] = _number
_MONTHS["sept"] = 9

_WEEKDAY_PREFIX = re.compile(
    r"^(?:mon|tues|wednes|thurs|fri|satur|sun)day,?\s+|^(?:on|dated|the)\s+", re.IGNORECASE
)
_ISO_DATE = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})")
_US_DATE = re.compile(r"(\d{1,2})[-/.](\d{1,2})[-/.](\d{4}|\d{2})")
_MONTH_DAY_YEAR = re.compile(r"([a-z]+)\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})")
_DAY_MONTH_YEAR = re.compile(r"(\d{1,2})(?:st|nd|rd|th)?\s+(?:day\s+of\s+)?([a-z]+)\.?,?\s+(\d{4})")


def parse_date(value: str) -> dt.date | None:
    """A full calendar date written in one of the usual legal forms, else None."""
    text = " ".join(value.lower().split()).strip(" .,;:")
    previous = None
    while previous != text:
        previous, text = text, _WEEKDAY_PREFIX.sub("", text)
    year: int
    month: int | None
    day: int
    if m := _ISO_DATE.fullmatch(text):
        year, month, day = int(m[1]), int(m[2]), int(m[3])
    elif m := _US_DATE.fullmatch(text):
        month, day, year = int(m[1]), int(m[2]), int(m[3])
        if len(m[3]) == 2:
            year += 2000 if year < 69 else 1900  # the strptime %y pivot
    elif m := _MONTH_DAY_YEAR.fullmatch(text):
        month, day, year = _MONTHS.get(m[1]), int(m[2]), int(m[3])
    elif m := _DAY_MONTH_YEAR.fullmatch(text):
        day, month, year = int(m[1]), _MONTHS.get(m[2]), int(m[3])
    else:
        return None
    if month is None:
        return None
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


_CURRENCIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("eur", ("€", "eur", "euro")),
    ("gbp", ("£", "gbp", "pound", "sterling")),
    ("jpy", ("¥", "jpy", "yen")),
    ("cad", ("cad", "c$", "canadian")),
    ("usd", ("$", "usd", "dollar")),
)
_AMOUNT = re.compile(
    r"(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:\s*(thousand|million|billion|trillion|k|mm|bn)\b)?"
)
_MULTIPLIERS = {
    "thousand": Decimal(10) ** 3,
    "k": Decimal(10) ** 3,
    "million": Decimal(10) ** 6,
    "mm": Decimal(10) ** 6,
    "billion": Decimal(10) ** 9,
    "bn": Decimal(10) ** 9,
    "trillion": Decimal(10) ** 12,
}


def normalize_money(value: str) -> str | None:
    """ "$1,250,000" / "USD 1.25 million" -> "usd 1250000.00"; None without a number.

    The currency defaults to USD (the documents are US filings).
    """
    text = unicodedata.normalize("NFKC", value).lower()
    m = _AMOUNT.search(text)
    if m is None:
        return None
    try:
        amount = Decimal(m[1].replace(",", "") + (m[2] or ""))
    except InvalidOperation:  # pragma: no cover - the regex only admits digits
        return None
    if m[3]:
        amount *= _MULTIPLIERS[m[3]]
    currency = next(
        (code for code, marks in _CURRENCIES if any(mark in text for mark in marks)), "usd"
    )
    return f"{currency} {format(amount.quantize(Decimal('0.01'), ROUND_HALF_UP), 'f')}"


# --- mentions ---------------------------------------------------------------------------


def build_mentions(
    document_uuid: str, chunk: Chunk, entities: Sequence[ExtractedEntity]
) -> list[Mention]:
    """One `Mention` per verified entity, with a stable uuid (no canonical entity yet).

    Raises ValueError when an entity's offsets do not point at its value in the
    chunk (parse_llm_entities never produces such an entity).
    """
    mentions: list[Mention] = []
    for entity in entities:
        if chunk.text[entity.start : entity.end] != entity.value:
            raise ValueError(
                f"entity {entity.value!r} is not at {entity.start}:{entity.end} "
                f"of chunk {chunk.chunk_index}"
            )
        mentions.append(
            Mention(
                uuid=stable_uuid(
                    document_uuid,
                    "mention",
                    chunk.chunk_index,
                    entity.start,
                    entity.end,
                    entity.entity_type,
                ),
                document_uuid=document_uuid,
                chunk_uuid=chunk.uuid,
                chunk_index=chunk.chunk_index,
                value=entity.value,
                normalized_value=normalize_value(entity.value, entity.entity_type),
                entity_type=entity.entity_type,
                confidence=entity.confidence,
                start=entity.start,
                end=entity.end,
            )
        )
    return mentions
