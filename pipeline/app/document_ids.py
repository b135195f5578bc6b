"""Short document uuids: what tables show, and the unique prefixes every command accepts.

A document uuid is 36 characters; tables show its first `SHORT_LENGTH` (like
git's short hashes), and every command that takes a uuid also takes any
prefix of at least that length that names exactly one document.
"""

from __future__ import annotations

from pipeline.errors import UserFacingError
from pipeline.ports import DocumentStore

#: Characters of a uuid shown in tables, and the shortest prefix accepted.
SHORT_LENGTH = 8


def short_uuid(document_uuid: str) -> str:
    return document_uuid[:SHORT_LENGTH]


def resolve_document_uuid(store: DocumentStore, given: str) -> str:
    """The full uuid of the one document `given` (a uuid or a unique prefix) names.

    Too short, unknown or ambiguous: a `UserFacingError` (exit 2) that says which.
    """
    text = given.strip().lower()
    if len(text) < SHORT_LENGTH:
        raise UserFacingError(
            f"document uuid {given!r} is too short: give at least {SHORT_LENGTH} characters",
            hint="`docpipe documents` lists every document with its short uuid",
        )
    matches = store.match_uuid_prefix(text, limit=6)
    if not matches:
        raise UserFacingError(
            f"no document {given}", hint="`docpipe documents` lists the documents there are"
        )
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise UserFacingError(
            f"document uuid prefix {given} is ambiguous: it matches {shown}",
            hint="give more characters of the uuid",
        )
    return matches[0]


def resolve_document_uuids(store: DocumentStore, given: tuple[str, ...] | list[str]) -> list[str]:
    """Each of `given` resolved, in order, without duplicates."""
    return list(dict.fromkeys(resolve_document_uuid(store, value) for value in given))
