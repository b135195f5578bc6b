"""Token counts without a tokenizer: a calibrated characters-per-token estimate.

tiktoken downloads its encoding files on first use and this pipeline must run
offline, so counts are estimated from the text's length. The ratio was
calibrated against the real o200k_base encoding (gpt-4o / gpt-4o-mini) on the
sample documents' chunks and the rule-based answers to them; see
`CHARS_PER_TOKEN`. The estimate decides pack sizes and what a request reserves
of the tokens-per-window limit; the limit's own headroom absorbs its error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Characters per o200k_base token, measured on the 25 chunks of the 5 sample documents
#: (19,512 characters, 5,110 tokens: 3.82; the prompts 4.05-4.09). Per chunk the estimate
#: is off by up to ~30 % (short chunks of names and numbers), per document by a few.
CHARS_PER_TOKEN = 3.8
#: Characters per token of the JSON entity answers (quotes, keys and offsets split finely):
#: 2.56 on the rule-based answers to those chunks (29,854 characters, 11,659 tokens).
JSON_CHARS_PER_TOKEN = 2.55
#: Tokens the chat format adds per message (role and separators), per OpenAI's cookbook.
MESSAGE_OVERHEAD_TOKENS = 4
#: Tokens that prime the assistant's reply in every request.
REPLY_PRIMING_TOKENS = 3


def estimate_tokens(text: str, *, chars_per_token: float = CHARS_PER_TOKEN) -> int:
    """Estimated tokens of `text` (0 for empty text, else at least 1)."""
    if not text:
        return 0
    return max(1, math.ceil(len(text) / chars_per_token))


def estimate_answer_tokens(answer: str) -> int:
    """Estimated tokens of a JSON answer the model generated."""
    return estimate_tokens(answer, chars_per_token=JSON_CHARS_PER_TOKEN)


def estimate_chat_tokens(messages: Sequence[str]) -> int:
    """Estimated prompt tokens of a chat request with these message contents."""
    return REPLY_PRIMING_TOKENS + sum(
        MESSAGE_OVERHEAD_TOKENS + estimate_tokens(content) for content in messages
    )
