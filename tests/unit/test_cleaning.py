"""clean_text and derive_title: what stage 3 stores must be stable and PostgreSQL-safe."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.domain.cleaning import TITLE_MAX_CHARS, clean_text, derive_title, file_stem
from pipeline.domain.pages import PAGE_MARKER_RE, join_pages, page_marker

messy_text = st.lists(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\x00", "\r\n", "\r", "\t", "\x0c", "\u00a0", "\u2028", "\ufeff", " "]),
        st.sampled_from(["e\u0301", "\u212b", "\u2000", "\ud800", "\x85", "\x1c", "\n\n\n"]),
    ),
    max_size=200,
).map("".join)


def test_removes_nul_bytes_and_control_characters() -> None:
    assert clean_text("Smith\x00 & \x07Jones\x1b LLP\x7f\x9f") == "Smith & Jones LLP"


def test_lone_surrogates_are_dropped_so_the_text_encodes() -> None:
    cleaned = clean_text("bad \udc80byte")

    assert cleaned == "bad byte"
    assert cleaned.encode("utf-8") == b"bad byte"


def test_line_endings_become_newlines() -> None:
    assert clean_text("one\r\ntwo\rthree\x0cfour\u2028five") == "one\ntwo\nthree\nfour\nfive"


def test_tabs_and_unicode_spaces_become_single_spaces() -> None:
    assert clean_text("a\tb\u00a0c\u202fd\u3000 \t e") == "a b c d e"


def test_lines_are_stripped_and_space_runs_collapsed() -> None:
    assert clean_text("  The   Buyer    shall pay.   \n   Next  line.  ") == (
        "The Buyer shall pay.\nNext line."
    )


def test_blank_line_runs_become_one_blank_line() -> None:
    assert clean_text("para one\n\n\n\n  \n\t\npara two\n\npara three") == (
        "para one\n\npara two\n\npara three"
    )


def test_text_is_nfc_normalised() -> None:
    assert clean_text("Jose\u0301 \u212bngstro\u0308m") == "José Ångström"


def test_zero_width_space_and_byte_order_mark_are_removed() -> None:
    assert clean_text("\ufeffCon\u200btract") == "Contract"


def test_page_marker_lines_survive_intact() -> None:
    raw = join_pages(["  First\t page \r\n text ", "\x00second page", "", "fourth"])

    cleaned = clean_text(raw)

    assert [int(n) for n in PAGE_MARKER_RE.findall(cleaned)] == [1, 2, 3, 4]
    assert cleaned.startswith(page_marker(1) + "\nFirst page\ntext\n\n" + page_marker(2))


@given(messy_text)
def test_output_is_postgres_safe_and_canonical(raw: str) -> None:
    cleaned = clean_text(raw)

    assert "\x00" not in cleaned
    assert cleaned.encode("utf-8").decode("utf-8") == cleaned
    assert all(ch == "\n" or unicodedata.category(ch) != "Cc" for ch in cleaned)
    assert all(ch in " \n" for ch in cleaned if ch.isspace())
    assert unicodedata.is_normalized("NFC", cleaned)
    assert "  " not in cleaned
    assert "\n\n\n" not in cleaned
    assert all(line == line.strip() for line in cleaned.split("\n"))
    assert cleaned == cleaned.strip()


@given(messy_text)
def test_cleaning_is_idempotent(raw: str) -> None:
    cleaned = clean_text(raw)

    assert clean_text(cleaned) == cleaned


@given(st.lists(messy_text, max_size=6))
def test_page_markers_survive_any_page_text(pages: list[str]) -> None:
    cleaned = clean_text(join_pages(pages))

    assert [int(n) for n in PAGE_MARKER_RE.findall(cleaned)] == list(range(1, len(pages) + 1))


def test_title_is_the_first_meaningful_line() -> None:
    text = "--- Page 1 ---\n\n1\n* * *\nMASTER SERVICES AGREEMENT\nThis Agreement is made..."

    assert derive_title("msa.pdf", text) == "MASTER SERVICES AGREEMENT"


def test_title_skips_page_footers_and_overlong_lines() -> None:
    text = "Page 3 of 12\n" + "x " * 150 + "\nNotice of Default\n"

    assert derive_title("notice.pdf", text) == "Notice of Default"


def test_title_falls_back_to_the_file_stem() -> None:
    assert derive_title("uploads/2024/Smith v Jones.final.pdf", "--- Page 1 ---\n\n12\n") == (
        "Smith v Jones.final"
    )


@pytest.mark.parametrize(
    ("file_name", "stem"),
    [
        ("C:\\docs\\Lease.docx", "Lease"),
        ("a/b/c.txt", "c"),
        ("no_extension", "no_extension"),
        (".hidden", ".hidden"),
        ("", "Untitled document"),
        ("   .pdf", "Untitled document"),
        ("nul\x00byte.eml", "nulbyte"),
    ],
)
def test_file_stem(file_name: str, stem: str) -> None:
    assert file_stem(file_name) == stem


@given(st.text(max_size=60), messy_text)
def test_title_is_short_single_line_and_postgres_safe(file_name: str, text: str) -> None:
    title = derive_title(file_name, clean_text(text))

    assert title
    assert len(title) <= TITLE_MAX_CHARS
    assert "\n" not in title
    assert "\x00" not in title
