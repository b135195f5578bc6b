"""User-supplied text made safe to show on a terminal or in a rich table.

File names, error messages and scenario names come from users (or from files
they hand us). Printed as they are, `[link=http://evil]x.txt` becomes a rich
hyperlink, a newline splits a table row in two, and a right-to-left override
(U+202E) shows `report\u202etxt.exe` as `reportexe.txt`. Every such string goes
through `printable` (plain output) or `markup_safe` (rich markup) first.
"""

from __future__ import annotations

import re

from rich.markup import escape

#: Characters that move, hide or reorder text rather than show it: C0/C1 controls
#: and DEL, line/paragraph separators, and the Unicode bidirectional controls
#: (embeddings and overrides U+202A-U+202E, isolates U+2066-U+2069, the marks
#: LRM/RLM/ALM). Zero-width spaces and joiners stay: they cannot reorder a row.
_INVISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(value: object) -> str:
    """`value` as one line of visible text: control and bidi characters as escapes.

    A literal backslash is left as it is, so `a\\nb` (two characters) and a real
    newline both read `a\\nb`; what matters is that neither can break a row.
    """
    return _INVISIBLE.sub(_visible, str(value))


def markup_safe(value: object) -> str:
    """`printable(value)` with rich markup escaped: for tables and `Console.print`."""
    return escape(printable(value))
