"""Request packing: several chunks in one LLM request, their answers keyed by chunk.

A packed request carries `{"chunks": [{"id": 0, "text": "..."}, ...]}` as its
user message and the model answers `{"chunks": [{"id": 0, "entities": [...]},
...]}`, offsets counted in each chunk's own text. `split_packed_answer` turns
that answer into one `{"entities": [...]}` text per chunk, which
`pipeline.domain.entities.parse_llm_entities` verifies against that chunk
exactly as an unpacked answer. One chunk's broken entry does not spoil the
others: its text is a payload the parser rejects, and only that chunk is asked
again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.errors import MalformedResponse


def plan_packs(
    texts: Sequence[str], budget_tokens: int, request_tokens: Callable[[Sequence[str]], int]
) -> list[list[int]]:
    """Consecutive indices of `texts`, grouped into requests of at most `budget_tokens`.

    `request_tokens` estimates what one request carrying those texts costs. A
    text over the budget on its own still goes, alone. A budget of 0 (packing
    off) gives one request per text, as before packing.
    """
    packs: list[list[int]] = []
    current: list[int] = []
    for index in range(len(texts)):
        if current and budget_tokens > 0:
            candidate = [texts[i] for i in current] + [texts[index]]
            if request_tokens(candidate) <= budget_tokens:
                current.append(index)
                continue
        if current:
            packs.append(current)
        current = [index]
    if current:
        packs.append(current)
    return packs


def pack_request_text(texts: Sequence[str]) -> str:
    """The user message of a packed request."""
    return json.dumps(
        {"chunks": [{"id": i, "text": text} for i, text in enumerate(texts)]}, ensure_ascii=False
    )


def unpack_request_text(content: str) -> list[str] | None:
    """The chunk texts of a packed request's user message; None for an unpacked one."""
    try:
        data = json.loads(content)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("chunks"), list):
        return None
    texts: list[str] = []
    for item in data["chunks"]:
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            return None
        texts.append(item["text"])
    return texts


def pack_answer(payloads: Sequence[str]) -> str:
    """Per-chunk `{"entities": [...]}` answers as one packed answer (what fakes answer)."""
    chunks = []
    for index, payload in enumerate(payloads):
        entities = json.loads(payload)["entities"]
        chunks.append({"id": index, "entities": entities})
    return json.dumps({"chunks": chunks})


def split_packed_answer(content: str, count: int) -> list[str]:
    """One `{"entities": [...]}` text per chunk sent, in the order sent.

    Raises `MalformedResponse` when the answer as a whole cannot be read (then
    no chunk's answer is known). A chunk whose entry is missing or has no
    entity list gets a payload the entity parser rejects, naming the problem.
    """
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise MalformedResponse(f"packed LLM answer is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("chunks"), list):
        raise MalformedResponse('packed LLM answer has no "chunks" list')
    by_id: dict[int, Any] = {}
    for item in data["chunks"]:
        if isinstance(item, dict) and isinstance(item.get("id"), int):
            by_id.setdefault(item["id"], item)
    payloads = []
    for index in range(count):
        item = by_id.get(index)
        if item is None:
            payloads.append(json.dumps({"error": f"no answer for chunk {index} of the pack"}))
        elif not isinstance(item.get("entities"), list):
            payloads.append(json.dumps({"error": f"chunk {index} of the pack has no entities"}))
        else:
            payloads.append(json.dumps({"entities": item["entities"]}))
    return payloads
