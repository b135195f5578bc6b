"""Semantic chunking of cleaned text (REFERENCE.md stage 4).

A chunk boundary is a position in the text; the chunks are the spans between
consecutive boundaries, so they always tile the text exactly. Candidate
boundaries are ranked, best first:

0. structure - the first line of a heading group: a page marker, a
   "Section N"/"Article N" line, a signature line ("IN WITNESS WHEREOF",
   "/s/", "Signed", "Respectfully submitted", "Sincerely") or a short
   ALL-CAPS heading. Section, signature and heading lines count only where a
   block can start (after a blank line, a structural line or a line ending
   in ``.:;!?``), so the last line of a wrapped sentence is never a heading;
1. paragraph - a line after a blank line;
2. sentence end - after ``.``/``!``/``?`` (and closing quotes or brackets)
   before a capital or an opening quote, unless the word before is an
   abbreviation or the space is inside a citation (see ``_glued``);
3. line - any other line start;
4. after a heading - the line after a heading group, so a heading stays
   with the text it introduces;
5. list item - a line starting with a list marker ("1.", "(a)", "i.",
   "1.1", a bullet) inside a numbered list;
6. inside a list - any other line start or sentence end inside a list;
7. whitespace - before any word;
8. glued whitespace - inside a citation ("42 U.S.C. § 1983",
   "Fed. R. Civ. P. 12(b)(6)", "Smith v. Jones", "550 U.S. 544",
   "123 F.3d 456"), after an abbreviation ("Corp.", "No. 5", "J.") or
   before one that follows a capitalised word ("Acme Corp."). A line break
   in such a place is glued too, so a citation wrapped over two lines holds.

A numbered list is found in a block (adjacent non-blank lines, no structural
line) holding at least two list-item lines; it runs from the first item to
the last, plus the lines that continue the last item (while the line before
does not end in ``.:;!?``). Its inside holds only candidates of rank 5 or
worse while its start and end hold rank 4 or better, so a list that fits in
``max_chars`` (with the blank lines after it) is never split; likewise a
citation is split only if it alone cannot fit.

The text is first cut at every structural boundary into sections. An
undersized section merges into a neighbour (the previous one first) when the
result fits, or when that neighbour is too long anyway (so a caption or a
signature block is packed with the text beside it); the boundary it gives up
ranks as a paragraph. A section that fits stays one chunk. A longer piece is
cut at every candidate of the next rank inside it, recursively, and the
pieces are packed back together up to ``max_chars``, balanced (1,600
characters become two chunks of about 800, not 1,500 + 100). A piece with no
candidate left (one run of non-whitespace and the whitespace around it) is
cut inside its whitespace only. Finally every chunk shorter than
``min_chars`` merges into a neighbour, the previous one first, while the
result fits.

Guarantees, for every input string (the hypothesis tests check them):

(a) ``text[c.start:c.end] == c.text`` for every chunk;
(b) chunks are numbered 0..n-1, non-empty, and tile the text: the first
    starts at 0, each ends where the next starts, the last ends at
    ``len(text)``; an empty text gives no chunks;
(c) a chunk longer than ``max_chars`` is exactly one maximal run of
    non-whitespace characters (no whitespace inside, whitespace or the text's
    edge on both sides);
(d) when there is more than one chunk, a chunk shorter than ``min_chars``
    could not merge with any neighbour: its length plus each neighbour's
    length exceeds ``max_chars``.

One pass over the lines ranks the line starts; sentence and whitespace
candidates are found lazily, only inside pieces that are still too long, and
each rank scans disjoint ranges once, so the cost is linear in the text.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from pipeline.domain.models import ChunkSpan
from pipeline.domain.pages import PAGE_MARKER_RE

DEFAULT_MIN_CHARS = 300
DEFAULT_MAX_CHARS = 1500

_STRUCTURE = 0
_PARAGRAPH = 1
_SENTENCE = 2
_LINE = 3
_AFTER_HEADING = 4
_LIST_ITEM = 5
_IN_LIST = 6
_SPACE = 7
_GLUED = 8
_EAGER_LEVELS = (_STRUCTURE, _PARAGRAPH, _LINE, _AFTER_HEADING, _LIST_ITEM, _IN_LIST)

_BLANK = 0  # only used for the line before a line
_TEXT = 1
_ITEM = 2
_STRUCT = 3

_HEADING_MIN_CHARS = 3
_HEADING_MAX_CHARS = 60
_BLOCK_ENDINGS = frozenset(".:;!?")
_SECTION_RE = re.compile(r"(?:SECTION|Section|ARTICLE|Article)\s+(?:\d+|[IVXLC]+|[A-Z])\b")
_SIGNATURE_RE = re.compile(
    r"IN WITNESS WHEREOF|In Witness Whereof|/s/|(?:Signed|SIGNED)\b"
    r"|Respectfully submitted|RESPECTFULLY SUBMITTED|Sincerely|SINCERELY|Signature:|SIGNATURE:"
)
_LIST_ITEM_RE = re.compile(
    r"(?:\(?(?:\d{1,3}|[A-Za-z]|[ivxlcdm]{2,6}|[IVXLCDM]{2,6})[.)]"
    r"|\d{1,3}(?:\.\d{1,3})+\.?|[-*•·–])\s"
)

_SENTENCE_RE = re.compile(r"[.!?][\"'”’)\]]*+\s++(?=\S)")
_WORD_RE = re.compile(r"\S+")
#: A non-blank line: leading blanks, then group 1 from its first visible
#: character to the newline (possessive, so blank lines fail at once).
_LINE_RE = re.compile(r"^[^\S\n]*+(\S[^\n]*)", re.MULTILINE)
_RUN_RE = re.compile(r"\S*")
_LEADING_SPACE_RE = re.compile(r"\s*")
#: How far to look either side of a boundary for the neighbouring words;
#: anything longer is no abbreviation or citation part anyway.
_PEEK = 24
_OPENERS = "([{\"'“‘"
_SIGNS = frozenset({"§", "§§", "¶", "¶¶"})
_VERSUS = frozenset({"v", "v.", "vs", "vs."})
_REPORTER_RE = re.compile(r"[A-Z][A-Za-z]{0,6}\.[0-9A-Za-z.]*")
#: Abbreviations that end a word with a period without ending the sentence.
# fmt: off
_ABBREVIATIONS = frozenset({
    "v", "vs", "fed", "civ", "crim", "evid", "app", "cir", "supp", "ct", "id", "cf", "al", "et",
    "seq", "stat", "ann", "subd", "reg", "regs", "pub", "rev", "ed", "eds", "dist", "div", "exh",
    "ibid", "op", "cert", "den", "atl", "corp", "inc", "co", "ltd", "bros", "dept", "assn", "univ",
    "mfg", "ins", "sys", "servs", "hosp", "elec", "transp", "mr", "mrs", "ms", "dr", "prof", "jr",
    "sr", "st", "mt", "ft", "hon", "esq", "gen", "gov", "sen", "rep", "adm", "capt", "col", "lt",
    "sgt", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    "approx", "est", "viz", "ca", "cal", "mass", "tex", "fla", "pa", "conn", "mich", "minn", "wis",
    "ariz", "colo", "ky", "la", "md", "mo", "nev", "okla", "ore", "tenn", "va",
})
#: Abbreviations that only count as such before a number ("No. 5", "p. 12").
_NUMBER_ABBREVIATIONS = frozenset({
    "no", "nos", "pp", "vol", "vols", "para", "paras", "sec", "secs", "art", "arts", "ch", "cl",
    "fig", "figs", "pt", "pts",
})
# fmt: on


def chunk_text(
    text: str, *, min_chars: int = DEFAULT_MIN_CHARS, max_chars: int = DEFAULT_MAX_CHARS
) -> list[ChunkSpan]:
    """Split ``text`` into ordered chunks that tile it (see the module docstring)."""
    if max_chars < 1 or min_chars < 0 or min_chars > max_chars:
        raise ValueError(
            f"need 0 <= min_chars <= max_chars, 1 <= max_chars: {min_chars=} {max_chars=}"
        )
    if not text:
        return []
    layout = _scan(text)
    splitter = _Splitter(text, layout, min_chars, max_chars)
    pieces: list[tuple[int, int]] = []
    for start, end in splitter.sections():
        pieces.extend(splitter.split(start, end, _PARAGRAPH))
    spans = splitter.merge_small(pieces)
    return [
        ChunkSpan(index, start, end, text[start:end]) for index, (start, end) in enumerate(spans)
    ]


@dataclass(frozen=True)
class _Layout:
    """Facts about the non-blank lines of one text and its ranked line starts."""

    line_first: list[int]
    line_kind: list[int]
    line_in_list: list[bool]
    eager: dict[int, list[int]]
    level_at: dict[int, int]


def _scan(text: str) -> _Layout:
    """Classify the non-blank lines (blank ones cost regex time only) and rank them."""
    firsts: list[int] = []
    kinds: list[int] = []
    blank_before: list[bool] = []
    stripped_lines: list[str] = []
    previous_end = -1
    previous_kind = _BLANK
    previous_stripped = ""
    for match in _LINE_RE.finditer(text):
        stripped = match.group(1).rstrip()
        after_blank = match.start() != previous_end + 1
        kind = _classify(stripped, _BLANK if after_blank else previous_kind, previous_stripped)
        firsts.append(match.start(1))
        kinds.append(kind)
        blank_before.append(after_blank)
        stripped_lines.append(stripped)
        previous_end, previous_kind, previous_stripped = match.end(), kind, stripped

    in_list = _mark_lists(kinds, blank_before, stripped_lines)
    eager: dict[int, list[int]] = {level: [] for level in _EAGER_LEVELS}
    level_at: dict[int, int] = {}
    for index in range(1, len(kinds)):
        kind, previous_kind = kinds[index], kinds[index - 1]
        if kind == _STRUCT:
            level = _STRUCTURE if previous_kind != _STRUCT else _AFTER_HEADING
        elif previous_kind == _STRUCT:
            level = _AFTER_HEADING
        elif blank_before[index]:
            level = _PARAGRAPH
        elif in_list[index] and in_list[index - 1]:
            level = _LIST_ITEM if kind == _ITEM else _IN_LIST
        else:
            level = _LINE
        if (
            level >= _LINE
            and kind == _TEXT
            and _glued(_last_word(stripped_lines[index - 1]), _first_word(stripped_lines[index]))
        ):
            continue
        eager[level].append(firsts[index])
        level_at[firsts[index]] = level
    return _Layout(firsts, kinds, in_list, eager, level_at)


def _classify(stripped: str, previous_kind: int, previous_stripped: str) -> int:
    if PAGE_MARKER_RE.fullmatch(stripped):
        return _STRUCT
    opens_block = previous_kind in (_BLANK, _STRUCT) or previous_stripped[-1] in _BLOCK_ENDINGS
    if opens_block and (
        _SECTION_RE.match(stripped) or _SIGNATURE_RE.match(stripped) or _is_heading(stripped)
    ):
        return _STRUCT
    if _LIST_ITEM_RE.match(stripped):
        return _ITEM
    return _TEXT


def _is_heading(stripped: str) -> bool:
    return (
        _HEADING_MIN_CHARS <= len(stripped) <= _HEADING_MAX_CHARS
        and stripped.isupper()
        and stripped[-1] not in ",;"
    )


def _mark_lists(
    kinds: list[int], blank_before: list[bool], stripped_lines: list[str]
) -> list[bool]:
    """Lines inside numbered lists.

    A block is a run of adjacent text and item lines. Where it holds two or
    more items, the list runs from its first item to its last, plus the lines
    that continue the last item (those after a line that does not end a
    sentence or clause).
    """
    in_list = [False] * len(kinds)
    index = 0
    while index < len(kinds):
        if kinds[index] == _STRUCT:
            index += 1
            continue
        end = index + 1
        while end < len(kinds) and kinds[end] != _STRUCT and not blank_before[end]:
            end += 1
        items = [line for line in range(index, end) if kinds[line] == _ITEM]
        if len(items) >= 2:
            stop = items[-1] + 1
            while stop < end and stripped_lines[stop - 1][-1] not in _BLOCK_ENDINGS:
                stop += 1
            in_list[items[0] : stop] = [True] * (stop - items[0])
        index = end
    return in_list


def _first_word(stripped: str) -> str:
    return stripped[:_PEEK].split(None, 1)[0]


def _last_word(stripped: str) -> str:
    words = stripped[-_PEEK:].rsplit(None, 1)
    return words[-1] if words else ""


def _is_abbreviation(word: str, following: str) -> bool:
    core = word.lstrip(_OPENERS)
    if not core.endswith("."):
        return False
    base = core[:-1]
    if not base or base.endswith("."):
        return False
    if len(base) == 1:
        return base.isalpha()
    lower = base.lower()
    if lower in _NUMBER_ABBREVIATIONS:
        return following[:1].isdigit()
    if lower in _ABBREVIATIONS:
        return True
    return "." in base and len(base) <= 10 and base.replace(".", "").isalpha()


def _glued(before: str, after: str) -> bool:
    """Whether the space between two words must not become a boundary.

    True after an abbreviation, before one that follows a capitalised word
    ("Acme Corp.", "Bell Atl.", "John D.") and inside citations: around "v."
    in case names, after a section or paragraph sign, between a title or
    volume number and its code or reporter ("42 U.S.C.", "550 U.S.") and
    between a reporter and its page ("F.3d 456").
    """
    if not before or not after:
        return False
    if "." not in before and "." not in after:
        core = before.lstrip(_OPENERS)
        return core in _SIGNS or core in _VERSUS or after in _SIGNS or after in _VERSUS
    if _is_abbreviation(before, after):
        return True
    core = before.lstrip(_OPENERS)
    if core in _SIGNS or core in _VERSUS or after in _SIGNS or after in _VERSUS:
        return True
    if core.isdigit() and _REPORTER_RE.fullmatch(after.rstrip(",;:")):
        return True
    if core[:1].isupper() and _is_abbreviation(after, ""):
        return True
    return bool(_REPORTER_RE.fullmatch(core)) and after[0].isdigit()


class _Splitter:
    """Recursive split-and-pack over ``(start, end)`` spans of one text."""

    def __init__(self, text: str, layout: _Layout, min_chars: int, max_chars: int) -> None:
        self.text = text
        self.layout = layout
        self.min_chars = min_chars
        self.max_chars = max_chars
        #: Structural boundaries given up by `sections`; they rank as paragraphs.
        self.demoted: list[int] = []

    def sections(self) -> list[tuple[int, int]]:
        """The spans between structural boundaries, undersized ones merged.

        Like `merge_small`, but an undersized section also merges into a
        neighbour too long to stay whole: it is going to be split anyway, and
        this way a caption or a signature block is packed with the text next
        to it instead of being left alone.
        """
        sections: list[tuple[int, int]] = []
        start = 0
        for end in (*self.layout.eager[_STRUCTURE], len(self.text)):
            while sections:
                last_start, last_end = sections[-1]
                last_size, size = last_end - last_start, end - start
                if last_size >= self.min_chars and size >= self.min_chars:
                    break
                fits = end - last_start <= self.max_chars
                if not (fits or last_size > self.max_chars or size > self.max_chars):
                    break
                sections.pop()
                self.demoted.append(start)
                start = last_start
            sections.append((start, end))
            start = end
        self.demoted.sort()
        return sections

    def split(self, start: int, end: int, level: int) -> list[tuple[int, int]]:
        if end - start <= self.max_chars:
            return [(start, end)]
        if level > _GLUED:
            return self._hard_split(start, end)
        cuts = self._candidates(level, start, end)
        if not cuts:
            return self.split(start, end, level + 1)
        pieces: list[tuple[int, int]] = []
        previous = start
        for cut in (*cuts, end):
            if cut - previous <= self.max_chars:
                pieces.append((previous, cut))
            else:
                pieces.extend(self.split(previous, cut, level + 1))
            previous = cut
        return self.merge_small(self._pack(pieces))

    def merge_small(self, pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Merge each undersized piece into its neighbour while the result fits."""
        merged: list[tuple[int, int]] = []
        for start, end in pieces:
            while merged and end - merged[-1][0] <= self.max_chars:
                last_start, last_end = merged[-1]
                if last_end - last_start >= self.min_chars and end - start >= self.min_chars:
                    break
                merged.pop()
                start = last_start
            merged.append((start, end))
        return merged

    def _pack(self, pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Join consecutive pieces up to ``max_chars``, aiming at equal sizes."""
        total = pieces[-1][1] - pieces[0][0]
        target = total / -(-total // self.max_chars)
        packed: list[tuple[int, int]] = []
        chunk_start, chunk_end = pieces[0]
        for start, end in pieces[1:]:
            size, extra = chunk_end - chunk_start, end - start
            if size + extra > self.max_chars or 2 * size + extra > 2 * target:
                packed.append((chunk_start, chunk_end))
                chunk_start = start
            chunk_end = end
        packed.append((chunk_start, chunk_end))
        return packed

    def _candidates(self, level: int, start: int, end: int) -> list[int]:
        if level == _SENTENCE:
            return self._sentence_ends(start, end, in_lists=False)
        if level in (_SPACE, _GLUED):
            return self._spaces(start, end, glued=level == _GLUED)
        eager = _between(self.layout.eager[level], start, end)
        if level == _PARAGRAPH and self.demoted:
            demoted = _between(self.demoted, start, end)
            if demoted:
                return sorted(eager + demoted)
        if level == _IN_LIST:
            extra = self._sentence_ends(start, end, in_lists=True)
            if extra:
                return sorted({*eager, *extra})
        return eager

    def _sentence_ends(self, start: int, end: int, *, in_lists: bool) -> list[int]:
        text, layout = self.text, self.layout
        found: list[int] = []
        for match in _SENTENCE_RE.finditer(text, start, end):
            position = match.end()
            mark = match.start()
            before = text[max(0, mark - _PEEK) : mark + 1].rsplit(None, 1)[-1]
            after = text[position : position + _PEEK].split(None, 1)[0]
            if not (after[0].isupper() or after[0] in _OPENERS) or _glued(before, after):
                continue
            line = bisect_right(layout.line_first, position) - 1
            if position == layout.line_first[line]:
                if in_lists or layout.level_at.get(position) != _LINE:
                    continue
            elif layout.line_kind[line] == _STRUCT or layout.line_in_list[line] != in_lists:
                continue
            found.append(position)
        return found

    def _spaces(self, start: int, end: int, *, glued: bool) -> list[int]:
        text = self.text
        found: list[int] = []
        before = ""
        for match in _WORD_RE.finditer(text, start, end):
            word_start, word_end = match.span()
            if word_end - word_start <= _PEEK:
                word = last = match.group()
            else:
                word = text[word_start : word_start + _PEEK]
                last = text[word_end - _PEEK : word_end]
            if word_start > start:
                if not before:
                    before = _last_word(text[max(0, word_start - _PEEK) : word_start].rstrip())
                if _glued(before, word) is glued:
                    found.append(word_start)
            before = last
        return found

    def _hard_split(self, start: int, end: int) -> list[tuple[int, int]]:
        """Cut a piece with no candidate left: only inside its whitespace."""
        text = self.text
        run_start = _match_end(_LEADING_SPACE_RE, text, start, end)
        run_end = _match_end(_RUN_RE, text, run_start, end)
        pieces: list[tuple[int, int]] = []
        while end - start > self.max_chars:
            cut = start + self.max_chars
            if run_start < cut < run_end:
                cut = run_start if run_start > start else run_end
            if cut >= end:
                break
            pieces.append((start, cut))
            start = cut
        pieces.append((start, end))
        return pieces


def _match_end(pattern: re.Pattern[str], text: str, start: int, end: int) -> int:
    """End of a match of a pattern that always matches (``\\s*``, ``\\S*``)."""
    match = pattern.match(text, start, end)
    return match.end() if match else start


def _between(positions: list[int], start: int, end: int) -> list[int]:
    """The sorted positions strictly between start and end."""
    return positions[bisect_right(positions, start) : bisect_left(positions, end)]
