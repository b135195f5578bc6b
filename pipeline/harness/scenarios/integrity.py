"""Referential integrity of a completed document's rows: an invariant of every scenario run.

What a late or overlapping stage delivery would break while the document
still looks `completed` (issue 11.1: a stale delivery rewrote every mention
without its canonical entity). For each completed document:

- every mention is in one of the document's chunks and links to a canonical
  entity of the same document;
- every chunk's offsets index the stored cleaned text (text[start:end] is the chunk);
- every staged relationship refers to nodes that exist (project, document,
  chunks, mentions, canonical entities of that document);
- no derived row belongs to another processing version (rows carry the
  version of the delivery that wrote them).
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.domain.graph import CANONICAL_ENTITY, CHUNK, DOCUMENT, ENTITY_MENTION, PROJECT
from pipeline.domain.models import Status
from pipeline.ports import DocumentStore

#: Problems listed per document before the rest are only counted.
_SHOWN = 3


def integrity_problems(store: DocumentStore, document_uuid: str) -> list[str]:
    """What is wrong with a completed document's rows (empty when nothing is)."""
    document = store.get_document(document_uuid)
    if document.status is not Status.COMPLETED:
        return []
    problems: list[str] = []
    try:
        node = store.get_document_node(document_uuid)
    except KeyError:
        return ["no document node"]
    chunks = store.get_chunks(document_uuid)
    mentions = store.get_mentions(document_uuid)
    entities = store.get_canonical_entities(document_uuid)
    chunk_ids = {chunk.uuid for chunk in chunks}
    entity_ids = {entity.uuid for entity in entities}

    problems += _counted(
        "chunk offsets do not index the stored text",
        [
            f"chunk {c.chunk_index} [{c.start}:{c.end}]"
            for c in chunks
            if node.cleaned_text[c.start : c.end] != c.text
        ],
    )
    problems += _counted(
        "mentions without a canonical entity of this document",
        [
            f"{m.value!r} -> {m.canonical_uuid}"
            for m in mentions
            if m.canonical_uuid is None or m.canonical_uuid not in entity_ids
        ],
        total=len(mentions),
    )
    problems += _counted(
        "mentions outside the document's chunks",
        [f"{m.value!r} in {m.chunk_uuid}" for m in mentions if m.chunk_uuid not in chunk_ids],
    )
    nodes = {
        PROJECT: {document.project_uuid},
        DOCUMENT: {document_uuid},
        CHUNK: chunk_ids,
        ENTITY_MENTION: {m.uuid for m in mentions},
        CANONICAL_ENTITY: entity_ids,
    }
    dangling = []
    for rel in store.get_relationships(document_uuid):
        for label, node_id in ((rel.from_label, rel.from_id), (rel.to_label, rel.to_id)):
            if node_id not in nodes.get(label, set()):
                dangling.append(f"{rel.relationship_type} -> missing {label} {node_id}")
    problems += _counted("relationships to missing nodes", dangling)
    problems += _counted(
        f"derived rows not of version {document.processing_version}",
        [
            f"{table}: {versions}"
            for table, versions in store.derived_versions(document_uuid).items()
            if any(v != document.processing_version for v in versions)
        ],
    )
    return problems


def _counted(what: str, found: Iterable[str], total: int | None = None) -> list[str]:
    found = list(found)
    if not found:
        return []
    of = f"/{total}" if total is not None else ""
    shown = "; ".join(found[:_SHOWN]) + (" ..." if len(found) > _SHOWN else "")
    return [f"{len(found)}{of} {what} ({shown})"]
