"""Entity resolution: grouping, canonical names, determinism."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.domain.entities import normalize_value
from pipeline.domain.models import EntityType, Mention, stable_uuid
from pipeline.domain.resolution import Resolution, resolve_mentions

DOC = "doc-1"


def mention(value: str, entity_type: EntityType = EntityType.PERSON, position: int = 0) -> Mention:
    return Mention(
        uuid=stable_uuid(DOC, "mention", 0, position, position + len(value), entity_type),
        document_uuid=DOC,
        chunk_uuid="chunk-0",
        chunk_index=0,
        value=value,
        normalized_value=normalize_value(value, entity_type),
        entity_type=entity_type,
        confidence=0.9,
        start=position,
        end=position + len(value),
    )


def mentions_of(*values: str, entity_type: EntityType = EntityType.PERSON) -> list[Mention]:
    return [mention(v, entity_type, position=10 * i) for i, v in enumerate(values)]


def groups(resolution: Resolution, mentions: list[Mention]) -> list[set[str]]:
    """The clusters as sets of raw values, sorted for comparison."""
    by_entity: dict[str, set[str]] = {}
    for m in mentions:
        by_entity.setdefault(resolution.mention_canonical[m.uuid], set()).add(m.value)
    return sorted(by_entity.values(), key=sorted)


def test_full_name_honorific_and_surname_resolve_to_one_person() -> None:
    mentions = mentions_of("Jane R. Holloway", "Ms. Holloway", "Holloway", "Jane Holloway")
    resolution = resolve_mentions(DOC, mentions)
    (entity,) = resolution.entities
    assert entity.canonical_name == "Jane R. Holloway"
    assert entity.normalized_name == "jane r holloway"
    assert entity.mention_count == 4
    assert entity.uuid == stable_uuid(DOC, "entity", EntityType.PERSON, "jane r holloway")
    assert set(resolution.mention_canonical.values()) == {entity.uuid}


def test_company_designator_spellings_resolve_to_one_org() -> None:
    mentions = mentions_of(
        "Meridian Capital Partners LLC",
        "Meridian Capital Partners, L.L.C.",
        "MERIDIAN CAPITAL PARTNERS, LLC",
        "Meridian Capital Partners",
        "Meridian",
        entity_type=EntityType.ORG,
    )
    (entity,) = resolve_mentions(DOC, mentions).entities
    assert entity.normalized_name == "meridian capital partners llc"
    assert entity.canonical_name == "Meridian Capital Partners, L.L.C."  # the longest value
    assert entity.mention_count == 5


def test_a_surname_shared_by_two_people_stays_on_its_own() -> None:
    mentions = mentions_of("Jane R. Holloway", "Mark Holloway", "Holloway", "Ms. Holloway")
    resolution = resolve_mentions(DOC, mentions)
    assert groups(resolution, mentions) == [
        {"Holloway", "Ms. Holloway"},
        {"Jane R. Holloway"},
        {"Mark Holloway"},
    ]


def test_initials_join_the_full_name_they_abbreviate() -> None:
    mentions = mentions_of("Thomas A. Whitfield", "T. Whitfield", "Mr. Whitfield")
    assert len(resolve_mentions(DOC, mentions).entities) == 1


def test_typos_merge_by_fuzzy_ratio_but_similar_surnames_do_not() -> None:
    mentions = mentions_of("Jane Holloway", "Jane Hollowey", "Jane Galloway")
    assert groups(resolve_mentions(DOC, mentions), mentions) == [
        {"Jane Galloway"},
        {"Jane Holloway", "Jane Hollowey"},
    ]


def test_fuzzy_threshold_is_respected() -> None:
    mentions = mentions_of("Northgate Data Systems", "Northgate Data Sistems")
    assert len(resolve_mentions(DOC, mentions).entities) == 1
    assert len(resolve_mentions(DOC, mentions, fuzzy_threshold=0.99).entities) == 2


def test_dates_and_amounts_merge_only_when_equal() -> None:
    dates = mentions_of(
        "March 3, 2023", "2023-03-03", "03/03/2023", "March 2, 2023", entity_type=EntityType.DATE
    )
    assert groups(resolve_mentions(DOC, dates), dates) == [
        {"03/03/2023", "2023-03-03", "March 3, 2023"},
        {"March 2, 2023"},
    ]
    money = mentions_of(
        "$1,250,000.00", "USD 1.25 million", "$1,250,001", entity_type=EntityType.MONEY
    )
    assert len(resolve_mentions(DOC, money).entities) == 2


def test_types_never_merge() -> None:
    mentions = [mention("Holloway", EntityType.PERSON), mention("Holloway", EntityType.ORG, 20)]
    resolution = resolve_mentions(DOC, mentions)
    assert [e.entity_type for e in resolution.entities] == [EntityType.ORG, EntityType.PERSON]


def test_no_mentions_give_no_entities() -> None:
    assert resolve_mentions(DOC, []) == Resolution(entities=[], mention_canonical={})


def test_apply_sets_each_mentions_canonical_uuid() -> None:
    mentions = mentions_of("Jane R. Holloway", "Holloway")
    resolution = resolve_mentions(DOC, mentions)
    applied = resolution.apply(mentions)
    assert {m.canonical_uuid for m in applied} == {resolution.entities[0].uuid}


# --- properties ---------------------------------------------------------------------------

FIRST = ["Jane", "Mark", "Alan", "Rebecca", "J.", "Thomas"]
LAST = ["Holloway", "Hollowey", "Pierce", "Whitfield", "Lindqvist", "Chen"]
ORGS = ["Meridian", "Northgate", "Harbor Point", "First Pacific"]
SUFFIXES = ["LLC", ", L.L.C.", "Inc.", "Bank", ""]
person_values = st.builds(
    lambda hon, first, last: " ".join(p for p in (hon, first, last) if p),
    st.sampled_from(["", "Ms.", "Mr.", "Judge"]),
    st.sampled_from(["", *FIRST]),
    st.sampled_from(LAST),
)
org_values = st.builds(
    lambda name, suffix: f"{name} {suffix}".replace(" ,", ","),
    st.sampled_from(ORGS),
    st.sampled_from(SUFFIXES),
)
date_values = st.sampled_from(["March 3, 2023", "2023-03-03", "March 4, 2023", "Q3 2023"])
typed_values = st.one_of(
    st.tuples(person_values, st.just(EntityType.PERSON)),
    st.tuples(org_values, st.just(EntityType.ORG)),
    st.tuples(date_values, st.just(EntityType.DATE)),
    st.tuples(st.text(min_size=1, max_size=12), st.sampled_from(list(EntityType))),
)


@st.composite
def mention_lists(draw: st.DrawFn) -> list[Mention]:
    values = draw(st.lists(typed_values, max_size=30))
    return [
        mention(value, entity_type, position=7 * i) for i, (value, entity_type) in enumerate(values)
    ]


@settings(max_examples=200)
@given(st.data())
def test_resolution_is_independent_of_mention_order(data: st.DataObject) -> None:
    mentions = data.draw(mention_lists())
    shuffled = data.draw(st.permutations(mentions))
    assert resolve_mentions(DOC, shuffled) == resolve_mentions(DOC, mentions)


@given(mention_lists())
def test_every_mention_belongs_to_exactly_one_entity(mentions: list[Mention]) -> None:
    resolution = resolve_mentions(DOC, mentions)
    entity_ids = [e.uuid for e in resolution.entities]
    assert len(set(entity_ids)) == len(entity_ids)
    assert set(resolution.mention_canonical) == {m.uuid for m in mentions}
    assert set(resolution.mention_canonical.values()) == set(entity_ids)
    assert sum(e.mention_count for e in resolution.entities) == len(mentions)
    counts = Counter(resolution.mention_canonical.values())
    assert all(counts[e.uuid] == e.mention_count for e in resolution.entities)
    types = {m.uuid: m.entity_type for m in mentions}
    entity_types = {e.uuid: e.entity_type for e in resolution.entities}
    assert all(entity_types[c] == types[m] for m, c in resolution.mention_canonical.items())


@given(mention_lists())
def test_the_canonical_name_is_a_longest_member_value(mentions: list[Mention]) -> None:
    resolution = resolve_mentions(DOC, mentions)
    for entity in resolution.entities:
        members = [m for m in mentions if resolution.mention_canonical[m.uuid] == entity.uuid]
        assert entity.canonical_name in {" ".join(m.value.split()) for m in members}
        longest = max(len(m.normalized_value) for m in members)
        assert len(entity.normalized_name) >= longest  # an empty key falls back to the value
        assert entity.uuid == stable_uuid(DOC, "entity", entity.entity_type, entity.normalized_name)


@given(st.lists(st.tuples(person_values, st.just(EntityType.PERSON)), max_size=20))
def test_exact_normalised_duplicates_always_share_an_entity(
    values: list[tuple[str, EntityType]],
) -> None:
    mentions = [mention(v, t, position=5 * i) for i, (v, t) in enumerate(values)]
    resolution = resolve_mentions(DOC, mentions)
    by_key: dict[str, set[str]] = {}
    for m in mentions:
        by_key.setdefault(m.normalized_value, set()).add(resolution.mention_canonical[m.uuid])
    assert all(len(ids) == 1 for ids in by_key.values())
