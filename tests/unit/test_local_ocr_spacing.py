"""Word spaces of locally recognised lines (issue 17): recorded recogniser output, no OCR run.

tests/unit/fixtures/ocr_line_ink.json holds lines rapidocr read on scans of the
sample PDFs: the characters, their recogniser columns and the line image's
stretches without ink. Capital-letter headings are where spacing from columns
alone failed ("M ASTER SER VICES A GREE M ENT", "NORTHGATEDATASYSTEMSCORP.").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.adapters.local_ocr import ink_columns, space_words, space_words_by_ink

FIXTURE = Path(__file__).parent / "fixtures" / "ocr_line_ink.json"
RECORDED_LINES: list[dict[str, Any]] = json.loads(FIXTURE.read_text())["lines"]


def _ink(line: dict[str, Any]) -> list[bool]:
    ink = [True] * line["width"]
    for start, end in line["blank_runs"]:
        ink[start:end] = [False] * (end - start)
    return ink


def _read_by_ink(line: dict[str, Any]) -> str:
    return space_words_by_ink(
        list(line["chars"]), line["columns"], line["column_count"], _ink(line), line["height"]
    )


def _all_capitals(text: str) -> bool:
    letters = [char for char in text if char.isalpha()]
    return sum(char.isupper() for char in letters) > 0.7 * len(letters)


@pytest.mark.parametrize(
    "line", RECORDED_LINES, ids=[line["truth"][:40] for line in RECORDED_LINES]
)
def test_recorded_lines_are_spaced_like_the_text_layer(line: dict[str, Any]) -> None:
    assert _read_by_ink(line).split() == line["truth"].split()


def test_the_recording_has_capital_headings_the_column_rule_misspaced() -> None:
    capitals = [line for line in RECORDED_LINES if _all_capitals(line["truth"])]
    misspaced = [
        line
        for line in capitals
        if space_words(list(line["chars"]), line["columns"]).split() != line["truth"].split()
    ]

    assert len(capitals) >= 20
    assert len(misspaced) >= 5  # so the parametrised test above shows the ink rule's gain


def test_a_blank_stretch_narrower_than_the_threshold_is_no_space() -> None:
    # Two letters 20 px high, 5 px of blank between them (0.25 of 20 is the threshold).
    ink = [True] * 10 + [False] * 4 + [True] * 10
    assert space_words_by_ink(list("AB"), [1, 4], 6.0, ink, 20) == "AB"
    ink = [True] * 10 + [False] * 6 + [True] * 10
    assert space_words_by_ink(list("AB"), [1, 4], 6.5, ink, 20) == "A B"


def test_spaces_the_model_read_are_kept_and_never_doubled() -> None:
    ink = [True] * 5 + [False] * 20 + [True] * 5
    assert space_words_by_ink(list("a b"), [0, 3, 6], 7.5, ink, 20) == "a b"


def test_ink_columns_follow_the_scans_contrast_and_give_up_without_any() -> None:
    numpy = pytest.importorskip("numpy")
    grey = numpy.full((10, 8), 200, dtype=numpy.uint8)
    grey[2:8, 1] = 90  # a faint grey stroke still darker than midway
    grey[4, 6] = 40

    ink = ink_columns(grey)
    rgb_ink = ink_columns(numpy.stack([grey] * 3, axis=2))

    assert ink is not None and rgb_ink is not None
    assert list(ink) == [False, True, False, False, False, False, True, False]
    assert list(rgb_ink) == list(ink)
    assert ink_columns(numpy.full((10, 8), 200, dtype=numpy.uint8)) is None
