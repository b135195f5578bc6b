"""The derived-rows role: document node, chunks, mentions, entities, relationships.

Each write replaces the document's rows of that kind, fenced in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    delete,
    func,
    select,
    update,
)

from pipeline.adapters.sql.base import (
    SqlBase,
    _check_owner,
    _version,
    relationship_uuid,
)
from pipeline.adapters.sql.schema import (
    DERIVED_TABLES,
    neo4j_canonical_entities,
    neo4j_chunks,
    neo4j_documents,
    neo4j_entity_mentions,
    neo4j_relationships_staging,
)
from pipeline.domain.models import (
    CanonicalEntity,
    Category,
    Chunk,
    DocumentCounts,
    DocumentNode,
    EntityType,
    Fence,
    Mention,
    Relationship,
)


class SqlDerivedRows(SqlBase):
    """`DerivedRows` on SQL."""

    # --- derived rows (each call replaces the document's rows of that kind) ----
    def save_document_node(self, node: DocumentNode, *, fence: Fence | None = None) -> None:
        with self._write() as conn:
            self._check_fence(conn, fence, node.uuid)
            conn.execute(delete(neo4j_documents).where(neo4j_documents.c.uuid == node.uuid))
            conn.execute(
                neo4j_documents.insert().values(
                    uuid=node.uuid,
                    project_uuid=node.project_uuid,
                    title=node.title,
                    category=Category(node.category).value,
                    cleaned_text=node.cleaned_text,
                    processing_version=_version(fence),
                    **self._stamps(),
                )
            )

    def get_document_node(self, document_uuid: str) -> DocumentNode:
        with self._read() as conn:
            row = conn.execute(
                select(neo4j_documents).where(neo4j_documents.c.uuid == document_uuid)
            ).one_or_none()
        if row is None:
            raise KeyError(f"no document node {document_uuid}")
        return DocumentNode(
            uuid=row.uuid,
            project_uuid=row.project_uuid,
            title=row.title,
            category=Category(row.category),
            cleaned_text=row.cleaned_text,
        )

    def replace_chunks(
        self, document_uuid: str, chunks: Sequence[Chunk], *, fence: Fence | None = None
    ) -> None:
        _check_owner(document_uuid, (chunk.document_uuid for chunk in chunks))
        stamps = self._stamps()
        rows = [
            {
                "uuid": chunk.uuid,
                "document_uuid": document_uuid,
                "chunk_index": chunk.chunk_index,
                "start_offset": chunk.start,
                "end_offset": chunk.end,
                "text": chunk.text,
                "processing_version": _version(fence),
                **stamps,
            }
            for chunk in chunks
        ]
        self._replace_fenced(neo4j_chunks, document_uuid, rows, fence)

    def get_chunks(self, document_uuid: str) -> list[Chunk]:
        table = neo4j_chunks.c
        with self._read() as conn:
            rows = conn.execute(
                select(neo4j_chunks)
                .where(table.document_uuid == document_uuid)
                .order_by(table.chunk_index)
            ).all()
        return [
            Chunk(
                uuid=row.uuid,
                document_uuid=row.document_uuid,
                chunk_index=row.chunk_index,
                start=row.start_offset,
                end=row.end_offset,
                text=row.text,
            )
            for row in rows
        ]

    def replace_mentions(
        self, document_uuid: str, mentions: Sequence[Mention], *, fence: Fence | None = None
    ) -> None:
        _check_owner(document_uuid, (mention.document_uuid for mention in mentions))
        stamps = self._stamps()
        rows = [
            {
                "uuid": mention.uuid,
                "document_uuid": document_uuid,
                "chunk_uuid": mention.chunk_uuid,
                "chunk_index": mention.chunk_index,
                "value": mention.value,
                "normalized_value": mention.normalized_value,
                "entity_type": EntityType(mention.entity_type).value,
                "confidence": mention.confidence,
                "start_offset": mention.start,
                "end_offset": mention.end,
                "canonical_uuid": mention.canonical_uuid,
                "processing_version": _version(fence),
                **stamps,
            }
            for mention in mentions
        ]
        self._replace_fenced(neo4j_entity_mentions, document_uuid, rows, fence)

    def get_mentions(self, document_uuid: str) -> list[Mention]:
        table = neo4j_entity_mentions.c
        with self._read() as conn:
            rows = conn.execute(
                select(neo4j_entity_mentions)
                .where(table.document_uuid == document_uuid)
                .order_by(table.chunk_index, table.start_offset, table.end_offset, table.uuid)
            ).all()
        return [
            Mention(
                uuid=row.uuid,
                document_uuid=row.document_uuid,
                chunk_uuid=row.chunk_uuid,
                chunk_index=row.chunk_index,
                value=row.value,
                normalized_value=row.normalized_value,
                entity_type=EntityType(row.entity_type),
                confidence=row.confidence,
                start=row.start_offset,
                end=row.end_offset,
                canonical_uuid=row.canonical_uuid,
            )
            for row in rows
        ]

    def replace_canonical_entities(
        self,
        document_uuid: str,
        entities: Sequence[CanonicalEntity],
        mention_canonical: dict[str, str],
        *,
        fence: Fence | None = None,
    ) -> None:
        """Replace the entities; every mention of the document gets its canonical
        uuid from `mention_canonical` (NULL when absent: old ids are gone)."""
        _check_owner(document_uuid, (entity.document_uuid for entity in entities))
        now = self._now()
        rows = [
            {
                "uuid": entity.uuid,
                "document_uuid": document_uuid,
                "entity_type": EntityType(entity.entity_type).value,
                "canonical_name": entity.canonical_name,
                "normalized_name": entity.normalized_name,
                "mention_count": entity.mention_count,
                "processing_version": _version(fence),
                "created_at": now,
                "updated_at": now,
            }
            for entity in entities
        ]
        mentions = neo4j_entity_mentions.c
        with self._write() as conn:
            self._check_fence(conn, fence, document_uuid)
            self._replace(conn, neo4j_canonical_entities, document_uuid, rows)
            conn.execute(
                update(neo4j_entity_mentions)
                .where(mentions.document_uuid == document_uuid)
                .values(canonical_uuid=None, updated_at=now)
            )
            if mention_canonical:
                conn.execute(
                    update(neo4j_entity_mentions)
                    .where(
                        mentions.uuid == bindparam("mention_uuid"),
                        mentions.document_uuid == document_uuid,
                    )
                    .values(canonical_uuid=bindparam("canonical"), updated_at=now),
                    [
                        {"mention_uuid": mention_uuid, "canonical": canonical}
                        for mention_uuid, canonical in mention_canonical.items()
                    ],
                )

    def get_canonical_entities(self, document_uuid: str) -> list[CanonicalEntity]:
        table = neo4j_canonical_entities.c
        with self._read() as conn:
            rows = conn.execute(
                select(neo4j_canonical_entities)
                .where(table.document_uuid == document_uuid)
                .order_by(table.entity_type, table.normalized_name, table.uuid)
            ).all()
        return [
            CanonicalEntity(
                uuid=row.uuid,
                document_uuid=row.document_uuid,
                entity_type=EntityType(row.entity_type),
                canonical_name=row.canonical_name,
                normalized_name=row.normalized_name,
                mention_count=row.mention_count,
            )
            for row in rows
        ]

    def replace_relationships(
        self,
        document_uuid: str,
        relationships: Sequence[Relationship],
        *,
        fence: Fence | None = None,
    ) -> None:
        """Row uuids derive from (from_id, to_id, type), the table's natural key."""
        stamps = self._stamps()
        rows = [
            {
                "uuid": relationship_uuid(rel),
                "document_uuid": document_uuid,
                "from_id": rel.from_id,
                "from_label": rel.from_label,
                "to_id": rel.to_id,
                "to_label": rel.to_label,
                "relationship_type": rel.relationship_type,
                "properties": dict(rel.properties),
                "processing_version": _version(fence),
                **stamps,
            }
            for rel in relationships
        ]
        self._replace_fenced(neo4j_relationships_staging, document_uuid, rows, fence)

    def check_fence(self, fence: Fence) -> None:
        """Raise `StaleDelivery` unless the delivery still holds the document (no write).

        For writes outside the database (the graph sink): checked right before them.
        """
        with self._read() as conn:
            self._check_fence(conn, fence)

    def derived_versions(self, document_uuid: str) -> dict[str, list[int | None]]:
        """Per derived table, the distinct processing versions of the document's rows."""
        found: dict[str, list[int | None]] = {}
        with self._read() as conn:
            for table in DERIVED_TABLES:
                owner = table.c.uuid if table is neo4j_documents else table.c.document_uuid
                versions = conn.execute(
                    select(table.c.processing_version).where(owner == document_uuid).distinct()
                ).scalars()
                found[table.name] = sorted(versions, key=lambda v: -1 if v is None else v)
        return found

    def get_relationships(self, document_uuid: str) -> list[Relationship]:
        table = neo4j_relationships_staging.c
        with self._read() as conn:
            rows = conn.execute(
                select(neo4j_relationships_staging)
                .where(table.document_uuid == document_uuid)
                .order_by(table.relationship_type, table.from_id, table.to_id)
            ).all()
        return [
            Relationship(
                from_id=row.from_id,
                from_label=row.from_label,
                to_id=row.to_id,
                to_label=row.to_label,
                relationship_type=row.relationship_type,
                properties=dict(row.properties or {}),
            )
            for row in rows
        ]

    def clear_derived(self, document_uuid: str) -> None:
        with self._write() as conn:
            self._clear_derived(conn, document_uuid)

    @staticmethod
    def _clear_derived(conn: Connection, document_uuid: str) -> None:
        """`clear_derived` inside the caller's write transaction."""
        for table in DERIVED_TABLES:
            key = table.c.uuid if table is neo4j_documents else table.c.document_uuid
            conn.execute(delete(table).where(key == document_uuid))

    def counts(self, document_uuid: str) -> DocumentCounts:
        def count(conn: Connection, table: Table) -> int:
            query = select(func.count()).select_from(table)
            return int(
                conn.execute(query.where(table.c.document_uuid == document_uuid)).scalar_one()
            )

        with self._read() as conn:
            return DocumentCounts(
                chunks=count(conn, neo4j_chunks),
                mentions=count(conn, neo4j_entity_mentions),
                canonical_entities=count(conn, neo4j_canonical_entities),
                relationships=count(conn, neo4j_relationships_staging),
            )
