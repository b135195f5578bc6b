"""The in-memory graph sink takes writes from several threads at once, as a threads
worker's graph tasks make them (`docpipe load` once failed two documents with
"dictionary changed size during iteration": one write's prune walked the nodes while
another write added its own)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.adapters.memory_graph import InMemoryGraphSink
from pipeline.domain.graph import CHUNK
from pipeline.domain.models import Category, Chunk, DocumentNode, stable_uuid

CHUNKS = 200


@pytest.fixture
def switching_often() -> Iterator[None]:
    """Threads handed the GIL at almost every bytecode: a race shows in every run."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def document(number: int) -> tuple[DocumentNode, list[Chunk]]:
    uuid = stable_uuid("threads", number)
    chunks = [Chunk(stable_uuid(uuid, "chunk", i), uuid, i, i, i + 1, "x") for i in range(CHUNKS)]
    return DocumentNode(uuid, "project", f"doc {number}", Category.DOCUMENT, "text"), chunks


@pytest.mark.usefixtures("switching_often")
def test_writes_from_four_threads_at_once_all_land_whole() -> None:
    sink = InMemoryGraphSink()

    def write_documents(thread: int) -> None:
        for round_ in range(20):
            node, chunks = document(10 * thread + round_ % 5)  # each document rewritten 4 times
            sink.write(node, chunks, [], [], [])

    with ThreadPoolExecutor(max_workers=4) as pool:
        for done in [pool.submit(write_documents, thread) for thread in range(4)]:
            done.result()

    chunk_owners = [p["document_uuid"] for (label, _), p in sink.nodes.items() if label == CHUNK]
    assert len(chunk_owners) == 4 * 5 * CHUNKS  # 20 documents, each once, whole
    assert {chunk_owners.count(owner) for owner in set(chunk_owners)} == {CHUNKS}
