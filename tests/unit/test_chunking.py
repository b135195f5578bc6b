"""chunk_text: semantic boundaries on legal text, and hard properties on any text.

The properties (module docstring of pipeline.domain.chunking):
(a) every chunk's text is ``text[start:end]``;
(b) chunks are numbered in order, non-empty and tile the text exactly;
(c) a chunk over ``max_chars`` is exactly one maximal run of non-whitespace;
(d) a chunk under ``min_chars`` (when there are several) cannot merge with
    either neighbour without going over ``max_chars``.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.domain.chunking import chunk_text
from pipeline.domain.models import ChunkSpan
from pipeline.domain.pages import join_pages, page_marker

# fmt: off
WORDS = (
    "the", "buyer", "seller", "shall", "pay", "purchase", "price", "within", "thirty", "days",
    "of", "written", "notice", "pursuant", "to", "this", "agreement", "court", "plaintiff",
    "defendant", "alleges", "that", "damages", "were", "caused", "by", "breach", "and", "any",
    "party", "may", "terminate", "upon", "default",
)
# fmt: on
CITATIONS = (
    "42 U.S.C. § 1983",
    "28 U.S.C. §§ 1331",
    "Fed. R. Civ. P. 12(b)(6)",
    "Smith v. Jones",
    "Bell Atl. Corp. v. Twombly",
    "550 U.S. 544",
    "123 F.3d 456",
    "Cal. Civ. Code § 1542",
)
HEADINGS = (
    "ARTICLE I",
    "ARTICLE 12",
    "SECTION 3. PAYMENT",
    "Section 4.2 Notices",
    "DEFINITIONS",
    "IN WITNESS WHEREOF, the parties have signed.",
    "/s/ Jane Doe",
    "Respectfully submitted,",
)
SEPARATORS = (" ", " ", "\n", "\n\n", "\n\n\n", "\r\n", "\t", "  \n  ")

word = st.sampled_from(WORDS)
sentence = st.lists(word, min_size=1, max_size=25).map(lambda ws: " ".join(ws).capitalize() + ".")
prose = st.lists(sentence, min_size=1, max_size=8).map(" ".join)
list_marker = st.sampled_from(
    [lambda i: f"{i}.", lambda i: f"({chr(96 + i)})", lambda i: f"{'i' * i}.", lambda i: f"{i})"]
)
numbered_list = st.tuples(list_marker, st.lists(sentence, min_size=2, max_size=6)).map(
    lambda ms: "\n".join(f"{ms[0](i)} {item}" for i, item in enumerate(ms[1], 1))
)
long_run = st.one_of(
    st.integers(1, 4000).map(lambda n: "x" * n),
    st.tuples(
        st.text(st.characters(categories=["L", "N", "P"]), min_size=1, max_size=9),
        st.integers(1, 600),
    ).map(lambda tn: tn[0] * tn[1]),
)
fragment = st.one_of(
    prose,
    prose,
    sentence,
    st.sampled_from(HEADINGS),
    st.integers(1, 999).map(page_marker),
    numbered_list,
    st.sampled_from(CITATIONS),
    long_run,
    st.text(max_size=60),
)
legal_text = st.lists(st.tuples(fragment, st.sampled_from(SEPARATORS)), max_size=40).map(
    lambda parts: "".join(f + s for f, s in parts)
)
any_text = st.one_of(legal_text, st.text(), st.text(st.sampled_from(" \n\tab.§")))


@st.composite
def limits(draw: st.DrawFn) -> tuple[int, int]:
    max_chars = draw(st.one_of(st.integers(1, 40), st.integers(40, 2000), st.just(1500)))
    min_chars = draw(st.one_of(st.integers(0, max_chars), st.just(min(300, max_chars))))
    return min_chars, max_chars


def assert_chunk_properties(
    text: str, chunks: list[ChunkSpan], min_chars: int, max_chars: int
) -> None:
    # (b) order, coverage, no empty chunk
    if not text:
        assert chunks == []
        return
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].start == 0
    assert chunks[-1].end == len(text)
    for previous, current in itertools.pairwise(chunks):
        assert previous.end == current.start
    for chunk in chunks:
        # (a) offsets point into the text
        assert chunk.start < chunk.end
        assert text[chunk.start : chunk.end] == chunk.text
        # (c) only a single unbreakable run may exceed max_chars
        if len(chunk.text) > max_chars:
            assert not any(ch.isspace() for ch in chunk.text)
            assert chunk.start == 0 or text[chunk.start - 1].isspace()
            assert chunk.end == len(text) or text[chunk.end].isspace()
    # (d) an undersized chunk could not have merged with a neighbour
    if len(chunks) > 1:
        for i, chunk in enumerate(chunks):
            if len(chunk.text) < min_chars:
                for j in (i - 1, i + 1):
                    if 0 <= j < len(chunks):
                        assert len(chunk.text) + len(chunks[j].text) > max_chars


def boundaries(chunks: list[ChunkSpan]) -> list[int]:
    return [chunk.start for chunk in chunks[1:]]


@settings(max_examples=400, deadline=None)
@given(any_text, limits())
def test_chunks_tile_the_text_and_respect_the_limits(text: str, sizes: tuple[int, int]) -> None:
    min_chars, max_chars = sizes

    chunks = chunk_text(text, min_chars=min_chars, max_chars=max_chars)

    assert_chunk_properties(text, chunks, min_chars, max_chars)


@settings(deadline=None)
@given(legal_text)
def test_default_limits_hold_on_legal_like_text(text: str) -> None:
    assert_chunk_properties(text, chunk_text(text), 300, 1500)


@settings(deadline=None)
@given(any_text, limits())
def test_chunking_is_deterministic(text: str, sizes: tuple[int, int]) -> None:
    min_chars, max_chars = sizes

    first = chunk_text(text, min_chars=min_chars, max_chars=max_chars)

    assert chunk_text(text, min_chars=min_chars, max_chars=max_chars) == first


@st.composite
def text_with_marked_spans(
    draw: st.DrawFn, protected: st.SearchStrategy[str]
) -> tuple[str, list[tuple[int, int]]]:
    """Prose, headings and protected fragments (set off by blank lines); their spans."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0
    for _ in range(draw(st.integers(1, 20))):
        is_protected = draw(st.booleans())
        if is_protected:
            piece = draw(protected)
            if parts and parts[-1] != "\n\n":
                length += 2 - len(parts[-1])
                parts[-1] = "\n\n"
            spans.append((length, length + len(piece)))
            separator = "\n\n"
        else:
            piece = draw(st.one_of(prose, sentence, st.sampled_from(HEADINGS)))
            separator = draw(st.sampled_from([" ", "\n", "\n\n"]))
        parts += [piece, separator]
        length += len(piece) + len(separator)
    text = "".join(parts)
    assert len(text) == length
    return text, spans


@settings(deadline=None)
@given(
    text_with_marked_spans(
        st.lists(st.one_of(st.sampled_from(CITATIONS), word), min_size=1, max_size=12).map(
            lambda ws: "See " + " ".join(ws) + "."
        )
    ),
    st.integers(120, 1600),
)
def test_citations_are_never_split(
    marked: tuple[str, list[tuple[int, int]]], max_chars: int
) -> None:
    text, _ = marked
    chunks = chunk_text(text, min_chars=max_chars // 5, max_chars=max_chars)

    assert_chunk_properties(text, chunks, max_chars // 5, max_chars)
    for citation in CITATIONS:
        for found in re.finditer(re.escape(citation), text):
            inside = [b for b in boundaries(chunks) if found.start() < b < found.end()]
            assert not inside, citation


@settings(deadline=None)
@given(text_with_marked_spans(numbered_list), st.integers(40, 1600))
def test_numbered_lists_that_fit_are_never_split(
    marked: tuple[str, list[tuple[int, int]]], max_chars: int
) -> None:
    text, lists = marked
    chunks = chunk_text(text, min_chars=max_chars // 5, max_chars=max_chars)

    for start, end in lists:
        if end - start + 2 <= max_chars:
            assert not [b for b in boundaries(chunks) if start < b < end]


@settings(deadline=None)
@given(st.lists(st.lists(prose, min_size=1, max_size=3), min_size=1, max_size=12))
def test_every_article_that_fits_is_its_own_chunk(articles: list[list[str]]) -> None:
    sections = []
    for number, paragraphs in enumerate(articles, 1):
        body = "\n\n".join(paragraphs)[:300].rstrip()
        sections.append(f"ARTICLE {number}\nTERMS\n\n{body} " + "filler words here. " * 4 + "\n\n")
    text = "".join(sections)

    chunks = chunk_text(text, min_chars=80, max_chars=500)

    assert [chunk.text for chunk in chunks] == sections


def test_empty_text_has_no_chunks() -> None:
    assert chunk_text("") == []


@pytest.mark.parametrize("text", [" ", "\n\n\n", "short text", "ARTICLE I\nDEFINITIONS"])
def test_short_text_is_one_chunk(text: str) -> None:
    assert chunk_text(text) == [ChunkSpan(0, 0, len(text), text)]


@pytest.mark.parametrize(("min_chars", "max_chars"), [(0, 0), (10, 5), (-1, 100)])
def test_invalid_limits_are_refused(min_chars: int, max_chars: int) -> None:
    with pytest.raises(ValueError, match="min_chars"):
        chunk_text("text", min_chars=min_chars, max_chars=max_chars)


def _clause(number: int, sentences: int) -> str:
    return " ".join(
        f"The Supplier shall perform obligation {number}.{i} in a diligent and workmanlike manner."
        for i in range(sentences)
    )


CONTRACT = (
    "MASTER SUPPLY AGREEMENT\n\n"
    "This Master Supply Agreement is made between Acme Corp. and Widget Inc.\n\n"
    + "".join(
        f"ARTICLE {n}\n{title}\n\n{_clause(n, 3 + 2 * n)}\n\n{_clause(n, 4)}\n\n"
        for n, title in enumerate(["DEFINITIONS", "DELIVERY", "PAYMENT", "TERMINATION"], 1)
    )
    + "IN WITNESS WHEREOF, the parties have executed this Agreement.\n\n"
    "/s/ Jane Doe\nJane Doe, Chief Executive Officer\n"
)


def test_contract_chunks_start_at_article_headings() -> None:
    chunks = chunk_text(CONTRACT)

    assert_chunk_properties(CONTRACT, chunks, 300, 1500)
    article_starts = [m.start() for m in re.finditer(r"^ARTICLE \d+$", CONTRACT, re.MULTILINE)]
    assert set(article_starts[1:]) <= set(boundaries(chunks))
    assert chunks[0].text.startswith("MASTER SUPPLY AGREEMENT\n\n")
    assert "ARTICLE 1\nDEFINITIONS" in chunks[0].text
    # the short signature block merges into the last article instead of standing alone
    assert chunks[-1].text.startswith("ARTICLE 4\nTERMINATION")
    assert chunks[-1].text.endswith("/s/ Jane Doe\nJane Doe, Chief Executive Officer\n")


def test_oversized_article_splits_between_paragraphs_and_keeps_its_heading() -> None:
    text = "ARTICLE 9\nLIABILITY\n\n" + "\n\n".join(_clause(9, 6) for _ in range(4))

    chunks = chunk_text(text)

    assert_chunk_properties(text, chunks, 300, 1500)
    assert len(chunks) >= 2
    assert chunks[0].text.startswith("ARTICLE 9\nLIABILITY\n\nThe Supplier")
    assert all(text[b - 2 : b] == "\n\n" for b in boundaries(chunks))


COMPLAINT = (
    "UNITED STATES DISTRICT COURT\nNORTHERN DISTRICT OF CALIFORNIA\n\n"
    "JOHN DOE, Plaintiff, v. ACME CORP., Defendant.\nCase No. 3:24-cv-01234\n\n"
    "COMPLAINT\n\n"
    + "".join(
        f"{n}. Plaintiff alleges that Defendant, acting under color of state law, deprived "
        f"Plaintiff of rights secured by the Constitution in violation of 42 U.S.C. § 1983 "
        f"as described in paragraph {n}, and that Smith v. Jones controls this claim under "
        f"Fed. R. Civ. P. 12(b)(6).\n\n"
        for n in range(1, 16)
    )
    + "Respectfully submitted,\n\n/s/ Jane Roe\nCounsel for Plaintiff\n"
)


def test_complaint_splits_between_numbered_paragraphs() -> None:
    chunks = chunk_text(COMPLAINT)

    assert_chunk_properties(COMPLAINT, chunks, 300, 1500)
    assert len(chunks) > 2
    for boundary in boundaries(chunks):
        assert re.match(r"\d+\. Plaintiff|Respectfully", COMPLAINT[boundary:]), boundary
    assert chunks[0].text.startswith("UNITED STATES DISTRICT COURT")


def test_citation_is_never_split_even_when_a_paragraph_must_be() -> None:
    paragraph = " ".join(
        f"Claim {i} arises under 42 U.S.C. § 1983 and Fed. R. Civ. P. 12(b)(6) as held in "
        f"Smith v. Jones, 550 U.S. 544 (2007)."
        for i in range(40)
    )

    chunks = chunk_text(paragraph, min_chars=100, max_chars=400)

    assert_chunk_properties(paragraph, chunks, 100, 400)
    assert len(chunks) > 5
    for citation in (
        "42 U.S.C. § 1983",
        "Fed. R. Civ. P. 12(b)(6)",
        "Smith v. Jones",
        "550 U.S. 544",
    ):
        assert paragraph.count(citation) == sum(c.text.count(citation) for c in chunks)
    for chunk in chunks[:-1]:
        assert chunk.text.endswith("(2007). "), chunk.text[-30:]


def test_long_sentence_without_ends_splits_at_whitespace_outside_citations() -> None:
    text = " ".join(["the claim arises under 42 U.S.C. § 1983 and"] * 60)

    chunks = chunk_text(text, min_chars=50, max_chars=200)

    assert_chunk_properties(text, chunks, 50, 200)
    assert text.count("42 U.S.C. § 1983") == sum(c.text.count("42 U.S.C. § 1983") for c in chunks)


def test_numbered_list_inside_a_long_block_stays_whole() -> None:
    items = "\n".join(
        f"({chr(97 + i)}) the Buyer shall deliver item {i} on time;" for i in range(8)
    )
    text = _clause(1, 12) + "\nThe Buyer shall:\n" + items + "\n" + _clause(2, 12)
    list_start = text.index("(a)")
    list_end = text.index("\n", text.index("(h)"))

    chunks = chunk_text(text, min_chars=100, max_chars=600)

    assert_chunk_properties(text, chunks, 100, 600)
    assert not [b for b in boundaries(chunks) if list_start < b < list_end]


def test_list_longer_than_max_splits_only_between_items() -> None:
    text = "\n".join(f"{i}. The Buyer shall deliver item {i} on time." for i in range(1, 60))

    chunks = chunk_text(text)

    assert_chunk_properties(text, chunks, 300, 1500)
    assert len(chunks) >= 2
    assert all(re.match(r"\d+\. The Buyer", text[b:]) for b in boundaries(chunks))


def test_pages_start_new_chunks() -> None:
    pages = [_clause(p, 6) for p in range(1, 5)]
    text = join_pages(pages)

    chunks = chunk_text(text)

    assert [chunk.text.split("\n", 1)[0] for chunk in chunks] == [
        page_marker(p) for p in range(1, 5)
    ]


def test_unbreakable_run_longer_than_max_is_a_chunk_of_its_own() -> None:
    run = "x" * 3000
    text = "Intro words before the run. " + run + " and the closing words."

    chunks = chunk_text(text, min_chars=10, max_chars=1500)

    assert_chunk_properties(text, chunks, 10, 1500)
    assert run in [chunk.text for chunk in chunks]


def test_long_whitespace_is_cut_too() -> None:
    text = "word " + " " * 5000 + "word"

    chunks = chunk_text(text, min_chars=0, max_chars=1000)

    assert_chunk_properties(text, chunks, 0, 1000)
    assert max(len(chunk.text) for chunk in chunks) <= 1000


def test_undersized_tail_merges_into_its_neighbour() -> None:
    text = _clause(1, 15) + "\n\nShort tail."

    chunks = chunk_text(text, min_chars=300, max_chars=1500)

    assert chunks[-1].text.endswith("Short tail.")
    assert len(chunks[-1].text) >= 300


def test_abbreviations_do_not_end_sentences() -> None:
    text = " ".join(
        f"Mr. Smith of Acme Corp. paid invoice No. {i} to Dr. Jones on Jan. 5 as agreed."
        for i in range(30)
    )

    chunks = chunk_text(text, min_chars=100, max_chars=300)

    assert_chunk_properties(text, chunks, 100, 300)
    assert len(chunks) > 5
    assert all(text[:b].endswith("as agreed. ") for b in boundaries(chunks))


def test_citation_wrapped_over_two_lines_is_not_split_at_the_line_break() -> None:
    lines = []
    for i in range(25):
        lines += [
            f"Count {i} arises under 42 U.S.C.",
            "§ 1983 and under the rule in Smith v.",
            "Jones",
        ]
    text = "\n".join(lines)

    chunks = chunk_text(text, min_chars=50, max_chars=200)

    assert_chunk_properties(text, chunks, 50, 200)
    for b in boundaries(chunks):
        assert text[b:].startswith("Count"), text[b - 20 : b + 20]


def test_signature_block_starts_a_chunk_when_it_can_stand_alone() -> None:
    body = _clause(1, 8)
    signature = (
        "IN WITNESS WHEREOF, the parties have executed this Agreement as of the Effective Date.\n\n"
        "ACME CORP.\nBy: /s/ Jane Doe\nName: Jane Doe\nTitle: Chief Executive Officer\n\n"
        "WIDGET INC.\nBy: /s/ John Roe\nName: John Roe\nTitle: President\n"
    )
    text = body + "\n\n" + signature

    chunks = chunk_text(text, min_chars=150, max_chars=800)

    assert [chunk.text for chunk in chunks] == [body + "\n\n", signature]
