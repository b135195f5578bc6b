"""Entity resolution: group one document's mentions into canonical entities.

Mentions of one type are grouped by, in order:

1. exact normalised value (identical values are deduplicated first, so many
   repeats cost nothing) and identical token sets ("holloway jane");
2. a fuzzy ratio above the threshold, only between values with the same number
   of tokens and the same initials (the blocking key: typos rarely hit the first
   letter, and "Holloway" / "Galloway" stay apart) and identical numbers; within
   a block each value is compared with its neighbours in sorted and in
   reversed-string order only (a sorted-neighbourhood window), so the cost grows
   linearly; exact upper bounds of the ratio (lengths, character sets, character
   counts) skip most `SequenceMatcher` work without changing any decision;
3. for PERSON and ORG, a token subset joins the longer name ("Holloway",
   "J. Holloway" -> "Jane R. Holloway") only when every longer name containing
   it is one entity: a surname shared by two full names stays on its own.

DATE, MONEY, LAW and CASE match exactly (their normalised forms already unify
spellings; "2023-03-01" and "2023-03-02" must never be merged by a fuzzy ratio).
Everything depends only on the set of mentions, never on their order.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from difflib import SequenceMatcher

from pipeline.domain.entities import normalize_value
from pipeline.domain.models import CanonicalEntity, EntityType, Mention, stable_uuid

#: Types whose values are names: fuzzy matching makes sense for them.
FUZZY_TYPES = frozenset({EntityType.PERSON, EntityType.ORG, EntityType.LOCATION, EntityType.OTHER})
#: Types where a shorter name stands for a longer one ("Holloway", "Meridian").
SUBSET_TYPES = frozenset({EntityType.PERSON, EntityType.ORG})
#: Sorted-neighbourhood window for fuzzy comparisons within a block.
FUZZY_WINDOW = 8

#: Tokens that cannot carry a subset match on their own.
_WEAK_TOKENS = frozenset(
    {
        "the",
        "of",
        "and",
        "for",
        "a",
        "an",
        "inc",
        "llc",
        "corp",
        "corporation",
        "co",
        "company",
        "ltd",
        "llp",
        "lp",
        "plc",
        "na",
        "bank",
        "trust",
        "group",
        "partners",
        "association",
        "holdings",
        "jr",
        "sr",
        "ii",
        "iii",
        "iv",
    }
)
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class Resolution:
    """Canonical entities (sorted by type, then normalised name) and each mention's entity."""

    entities: list[CanonicalEntity]
    #: mention uuid -> canonical entity uuid
    mention_canonical: dict[str, str]

    def apply(self, mentions: Iterable[Mention]) -> list[Mention]:
        """The mentions with their `canonical_uuid` set."""
        return [replace(m, canonical_uuid=self.mention_canonical[m.uuid]) for m in mentions]


def resolve_mentions(
    document_uuid: str, mentions: Sequence[Mention], *, fuzzy_threshold: float = 0.88
) -> Resolution:
    """Group `mentions` into canonical entities; deterministic and order-independent."""
    # Each mention's key and display name are computed once (`normalize_value` is not free).
    groups: dict[EntityType, dict[str, list[tuple[Mention, str]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for mention in mentions:
        key = _mention_key(mention)
        groups[mention.entity_type][key].append((mention, _name(mention)))

    entities: list[CanonicalEntity] = []
    assignments: list[tuple[str, str]] = []
    for entity_type in sorted(groups):
        by_key = groups[entity_type]
        keys = sorted(by_key)
        for cluster in _cluster(entity_type, keys, fuzzy_threshold):
            members = [(m, key, name) for key in cluster for m, name in by_key[key]]
            _, normalized, canonical_name = min(
                members,
                key=lambda member: (
                    -len(member[1]),
                    member[2].isupper(),  # "Jane R. Holloway" over "JANE R. HOLLOWAY"
                    -len(member[2]),
                    member[2],
                    member[1],
                ),
            )
            entity = CanonicalEntity(
                uuid=stable_uuid(document_uuid, "entity", entity_type, normalized),
                document_uuid=document_uuid,
                entity_type=entity_type,
                canonical_name=canonical_name,
                normalized_name=normalized,
                mention_count=len(members),
            )
            entities.append(entity)
            assignments.extend((m.uuid, entity.uuid) for m, _, _ in members)
    entities.sort(key=lambda e: (e.entity_type, e.normalized_name))
    return Resolution(entities=entities, mention_canonical=dict(sorted(assignments)))


def _name(mention: Mention) -> str:
    return " ".join(mention.value.split())


def _mention_key(mention: Mention) -> str:
    return (
        mention.normalized_value.strip()
        or normalize_value(mention.value, mention.entity_type)
        or " ".join(mention.value.lower().split())
    )


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The smaller index wins so the structure never depends on call order.
            self.parent[max(ra, rb)] = min(ra, rb)


def _cluster(entity_type: EntityType, keys: list[str], threshold: float) -> list[list[str]]:
    """Partition the sorted, distinct `keys` of one type; clusters in a canonical order."""
    uf = _UnionFind(len(keys))
    tokens = [key.split() for key in keys]
    if entity_type in FUZZY_TYPES or entity_type in SUBSET_TYPES:
        _join_same_token_sets(uf, tokens)
    if entity_type in FUZZY_TYPES:
        _join_fuzzy(uf, keys, tokens, threshold)
    if entity_type in SUBSET_TYPES:
        _join_subsets(uf, keys, tokens)
    clusters: dict[int, list[str]] = defaultdict(list)
    for index, key in enumerate(keys):
        clusters[uf.find(index)].append(key)
    return [clusters[root] for root in sorted(clusters)]


def _join_same_token_sets(uf: _UnionFind, tokens: list[list[str]]) -> None:
    first: dict[tuple[str, ...], int] = {}
    for index, toks in enumerate(tokens):
        if not toks:
            continue
        block = tuple(sorted(set(toks)))
        if block in first:
            uf.union(first[block], index)
        else:
            first[block] = index


@dataclass(frozen=True)
class _Profile:
    """What the cheap similarity bounds need to know about one key, computed once."""

    length: int
    digits: tuple[str, ...]
    #: one bit per distinct character (bits assigned per call by `_character_bits`)
    charset: int
    counts: dict[str, int]


def _character_bits(keys: Iterable[str]) -> dict[str, int]:
    """One bit per distinct character of `keys`."""
    return {char: 1 << bit for bit, char in enumerate(sorted(set().union(*keys)))}


def _profile(key: str, alphabet: dict[str, int]) -> _Profile:
    counts: dict[str, int] = {}
    charset = 0
    for char in key:
        counts[char] = counts.get(char, 0) + 1
        charset |= alphabet[char]
    return _Profile(len(key), tuple(_DIGITS.findall(key)), charset, counts)


def _may_match(a: _Profile, b: _Profile, threshold: float) -> bool:
    """False only if `SequenceMatcher(...).ratio()` of the two keys is surely below `threshold`.

    Three upper bounds of the ratio ``2 * M / T`` (M matched characters, T the total length),
    cheapest first: the lengths (M <= the shorter length); the distinct characters found in one
    key only (each leaves at least one character unmatched: M <= (T - |symmetric difference|) / 2);
    the character counts (`quick_ratio`'s bound). Each is computed with the same float division
    as the ratio, so a pair rejected here could never have passed the ratio test.
    """
    total = a.length + b.length
    if 2 * min(a.length, b.length) / total < threshold:
        return False
    if (total - (a.charset ^ b.charset).bit_count()) / total < threshold:
        return False
    small, large = (a.counts, b.counts) if len(a.counts) <= len(b.counts) else (b.counts, a.counts)
    common = 0
    for char, count in small.items():
        other = large.get(char)
        if other:
            common += count if count < other else other
    return 2.0 * common / total >= threshold


def _join_fuzzy(uf: _UnionFind, keys: list[str], tokens: list[list[str]], threshold: float) -> None:
    blocks: dict[tuple[int, str], list[int]] = defaultdict(list)
    for index, toks in enumerate(tokens):
        if toks:
            blocks[(len(toks), "".join(t[0] for t in toks))].append(index)
    alphabet = _character_bits(keys)
    for members in blocks.values():
        if len(members) < 2:
            continue
        profiles = {i: _profile(keys[i], alphabet) for i in members}
        # `members` is already in sorted-key order; add the reversed-string order.
        reversed_order = sorted(members, key=lambda i: keys[i][::-1])
        for order in (members, reversed_order):
            for pos, a in enumerate(order):
                first = profiles[a]
                matcher: SequenceMatcher[str] | None = None
                for b in order[pos + 1 : pos + 1 + FUZZY_WINDOW]:
                    second = profiles[b]
                    if (
                        first.digits != second.digits
                        or not _may_match(first, second, threshold)
                        or uf.find(a) == uf.find(b)
                    ):
                        continue
                    if matcher is None:
                        # One matcher per `a`: SequenceMatcher caches what it learns about seq2.
                        matcher = SequenceMatcher(None, autojunk=False)
                        matcher.set_seq2(keys[a])
                    matcher.set_seq1(keys[b])
                    if matcher.ratio() >= threshold:
                        uf.union(a, b)


def _covers(longer: list[str], shorter: list[str]) -> bool:
    """Every token of `shorter` is in `longer` (a one-letter token may be an initial)."""
    if longer == shorter:
        return False
    long_set = set(longer)
    abbreviated = False
    for token in set(shorter):
        if token in long_set:
            continue
        if len(token) == 1 and any(t.startswith(token) for t in long_set):
            abbreviated = True
            continue
        return False
    return abbreviated or len(set(shorter)) < len(long_set)


def _join_subsets(uf: _UnionFind, keys: list[str], tokens: list[list[str]]) -> None:
    # Sets, not lists: `set.intersection` walks a list argument whole, and the postings of an
    # initial or a common token grow with the document (that made resolution quadratic).
    postings: dict[str, set[int]] = defaultdict(set)
    for index, toks in enumerate(tokens):
        for token in toks:
            postings["w:" + token].add(index)
            postings["i:" + token[0]].add(index)

    snapshot = [uf.find(i) for i in range(len(keys))]
    attachments: list[tuple[int, int]] = []
    for index, toks in enumerate(tokens):
        if not any(len(t) > 1 and t not in _WEAK_TOKENS for t in toks):
            continue
        lists = sorted(
            (postings["w:" + t] if len(t) > 1 else postings["i:" + t] for t in set(toks)),
            key=len,
        )
        candidates = lists[0].intersection(*lists[1:])
        supersets = sorted(
            (c for c in candidates if snapshot[c] != snapshot[index] and _covers(tokens[c], toks)),
            key=lambda c: (-len(set(tokens[c])), -len(keys[c]), keys[c]),
        )
        if not supersets:
            continue
        target = supersets[0]
        if all(
            snapshot[c] == snapshot[target] or _covers(tokens[target], tokens[c])
            for c in supersets[1:]
        ):
            attachments.append((index, target))
    for index, target in attachments:
        uf.union(index, target)
