"""`stable_uuid` (pipeline/domain/models.py) is uuid5 in the docpipe namespace, to the character.

Every derived row's id comes from it: a different string for the same parts would
make a redelivered stage write a second row beside the first.
"""

from __future__ import annotations

import uuid

import pytest

from pipeline.domain.models import DOCPIPE_NAMESPACE, EntityType, Status, stable_uuid


@pytest.mark.parametrize(
    "parts",
    [
        ("history", "3f1c9a52-0a7e-4f8e-9d51-2b6a4c1e7d90", 1, Status.TEXT_PROCESSING),
        ("doc-1", "mention", 3, 10, 26, EntityType.PERSON),
        ("doc", "chunk", 0),
        ("Zoë Müller", "名前", "é/ü"),
        (),
        ("",),
        (12345678901234567890, 2.5, None, True),
    ],
)
def test_stable_uuid_is_uuid5_of_the_parts_joined(parts: tuple[object, ...]) -> None:
    expected = str(uuid.uuid5(DOCPIPE_NAMESPACE, "/".join(str(p) for p in parts)))
    assert stable_uuid(*parts) == expected


def test_stable_uuid_agrees_with_uuid5_over_many_names() -> None:
    for index in range(2000):
        parts = ("doc", index, "x" * (index % 70), chr(0x4E00 + index))
        assert stable_uuid(*parts) == str(uuid.uuid5(DOCPIPE_NAMESPACE, "/".join(map(str, parts))))
