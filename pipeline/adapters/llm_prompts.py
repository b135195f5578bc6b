"""The entity-extraction request, shared by the OpenAI adapter and its local stand-ins.

Both the real request and the rule-based extractor's token estimate come from
here, so a simulated run packs and rate-limits exactly as the real one would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pipeline.domain.packing import pack_request_text
from pipeline.domain.tokens import estimate_chat_tokens, estimate_tokens

_SHAPE = (
    '{"entity": "<the exact text as it appears in the chunk>", "label": "<PERSON|ORG|GPE|'
    'LOCATION|DATE|MONEY|LAW|CASE|OTHER>", "start": <character offset where it starts in the '
    'chunk>, "end": <offset just after it ends>, "confidence": <number between 0 and 1>}'
)
_RULES = (
    "Copy entity text verbatim from the chunk. Use GPE for countries, states and cities, "
    "LOCATION for other places, LAW for statutes and rules, CASE for case names and numbers. "
)

#: Asks for exactly the shape `pipeline.domain.entities.parse_llm_entities` reads.
SYSTEM_PROMPT = (
    "You extract named entities from one chunk of a legal document. Answer with a single "
    f'JSON object and nothing else, exactly of this shape: {{"entities": [{_SHAPE}]}}. '
    + _RULES
    + 'Answer {"entities": []} when the chunk has none.'
)

#: A packed request: several chunks, each answered on its own (pipeline.domain.packing).
PACKED_SYSTEM_PROMPT = (
    "You extract named entities from several chunks of a legal document. The user message "
    'is a JSON object {"chunks": [{"id": <number>, "text": "<chunk text>"}]}. Treat every '
    "chunk on its own: offsets count characters from the start of that chunk's text. "
    "Answer with a single JSON object and nothing else, exactly of this shape: "
    f'{{"chunks": [{{"id": <the chunk\'s id>, "entities": [{_SHAPE}]}}]}}, with one item '
    "for every chunk, in the order given. "
    + _RULES
    + 'Give "entities": [] for a chunk that has none.'
)

#: Answer tokens per token of chunk text: 2.28 on the samples' rule-based answers (o200k_base;
#: every entity repeats its text plus label, offsets and confidence). Reserved up front,
#: as the answer is not known before the call.
ANSWER_TOKENS_PER_TEXT_TOKEN = 2.3


def messages(texts: Sequence[str]) -> list[dict[str, str]]:
    """The chat messages of one request for these chunk texts."""
    if len(texts) == 1:
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": texts[0]},
        ]
    return [
        {"role": "system", "content": PACKED_SYSTEM_PROMPT},
        {"role": "user", "content": pack_request_text(texts)},
    ]


def request_tokens(texts: Sequence[str]) -> int:
    """Estimated tokens of one request for these texts: its prompt and the answer expected."""
    prompt = estimate_chat_tokens([m["content"] for m in messages(texts)])
    answer = sum(math.ceil(estimate_tokens(t) * ANSWER_TOKENS_PER_TEXT_TOKEN) for t in texts)
    return prompt + answer
