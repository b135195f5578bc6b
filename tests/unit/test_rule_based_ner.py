"""The rule-based NER's patterns: the spelling `re` can search fast finds what the plain one finds.

`_WordStart` rewrites every `\\b...` pattern so that it begins with a literal or a class
(see its docstring); these tests compile the same rules in the plain spelling and compare
every match of every rule over real and generated legal text and variants of it.
"""

from __future__ import annotations

import random
import re
from functools import cache
from pathlib import Path

import pytest

from pipeline.adapters.parsers import detect_file_type, extract_text
from pipeline.adapters.rule_based_ner import (
    _OTHER_CASES,
    _RULES,
    _Rule,
    _rules,
    _WordStart,
)
from pipeline.harness.scenarios.documents import legal_pages
from tests.benchmarks.workloads import legal_like_text

SAMPLES = Path(__file__).parents[2] / "samples"

#: At least one match of each rule, and the corners of the rewritten spellings: name
#: prefixes, honorific variants, folded letters, non-ASCII digits, designators alone.
EDGES = """\
Case No. 2:23-cv-01234-ABC; Civil Action No. 19-4321; Adv. Proc. No. 21-01020; Nos. 22-1234-XY.
Holloway v. Meridian Capital, 550 U.S. 544, 556 (2007); 127 S. Ct. 1955; 12 F. Supp. 2d 34.
28 U.S.C. § 1331; 42 U. S. C. A. §§ 1983 et seq.; 17 C.F.R. § 240.10b-5(a); Cal. Civ. Code § 1542.
Fed. R. Civ. P. 12(b)(6); Federal Rules of Civil Procedure 26(a); Rule 10b-5; Rule 23(b)(3).
Section 10(b) of the Securities Exchange Act of 1934; Title VII of the Civil Rights Act of 1964.
US$ 1,250,000.00, $5 million, USD 45,000, EUR 12.50, €300, £7 thousand, 40,000 U.S. dollars.
March 3, 2023; 3rd day of March, 2023; Sept. 9 2019; 03/15/2023; 1/2/99; 2024-02-29; May 2021.
United States District Court for the Northern District of Illinois; UNITED STATES DISTRICT COURT
FOR THE CENTRAL DISTRICT OF CALIFORNIA; United States Court of Appeals for the Ninth Circuit;
Court of Appeal; Supreme Court of the United States; Superior Court of the State of California,
County of Los Angeles; Securities and Exchange Commission; SEC; FINRA; Department of the Treasury.
Bank of America; University of the Pacific; Meridian Capital Partners, L.L.C.; A.B.C. Holdings;
Inc. Corp; Bank of the West Coast; Federal Energy Regulatory Commission; MERIDIAN CAPITAL, LLC.
LLC INC CORP, N.A.; Mr. Jane R. Holloway; The Honorable Alan Pierce; the Honorable Mary O'Neil;
Chief Judge Ann McDonald; Magistrate Judge Sam MacArthur; Prof. Tim D'Amato; /s/ Daniel K. Reyes
Plaintiff: Jane Holloway; ſigned Ann Lee; SINCERELY, Mark Twain; BY Dean Smith; attn Ivy Chen
Robert K. Chen; Priya Raman, Esq.; JANE R. HOLLOWAY, an individual, Plaintiff; JOHN DOE, Defendants
Chicago, Illinois; New York City; St. Louis; County of Cook; Orange County; Kelvin \u212aing.
\u0663\u0664 U.S. 12; \u0661\u0662:\u0663\u0664-cv-12345; 1\u0662 C.F.R. 7; x12 U.S. 3;
_March 3, 2020; aJanuary 2020; 12345 U.S. 6; 123:45-cv-123; 123rd May, 2020;
4Section 5 of the Act; Jr.Smith v. Jones.
"""


@cache
def corpus() -> list[str]:
    texts = [EDGES]
    for path in sorted(SAMPLES.iterdir()):
        data = path.read_bytes()
        texts.append(extract_text(detect_file_type(path.name, data), data).text)
    texts.append("\n\n".join(legal_pages(random.Random(5), 12)))
    texts.append(legal_like_text(30_000, raw=True))
    rng = random.Random(11)
    alphabet = " \t\n.,;:()$§&'’-/0123456789AaCcSsſ"
    spliced = []
    for _ in range(400):
        a, b = rng.choice(texts), rng.choice(texts)
        i, j = rng.randrange(len(a)), rng.randrange(len(b))
        chars = list(a[max(0, i - 300) : i] + b[j : j + 300])
        for _ in range(rng.randint(0, 8)):
            k = rng.randrange(len(chars))
            chars[k : k + rng.randint(0, 1)] = rng.choice(alphabet)
        spliced.append("".join(chars))
    return texts + [t.upper() for t in texts] + [t.lower() for t in texts] + spliced


@cache
def plain_rules() -> tuple[_Rule, ...]:
    return _rules(_WordStart(searchable=False))


def test_every_rule_finds_in_its_searchable_spelling_what_it_finds_in_the_plain_one() -> None:
    plain = plain_rules()
    assert len(plain) == len(_RULES)
    for index, (slow, fast) in enumerate(zip(plain, _RULES, strict=True)):
        for text in corpus():
            expected = [m.regs for m in slow.pattern.finditer(text)]
            assert [m.regs for m in fast.pattern.finditer(text)] == expected, (index, text[:80])


def test_the_corpus_gives_every_rule_a_match() -> None:
    unmatched = [
        index
        for index, rule in enumerate(plain_rules())
        if not any(rule.pattern.search(text) for text in corpus())
    ]
    assert unmatched == []


def test_every_match_of_a_rule_contains_one_of_the_strings_it_needs() -> None:
    for rule in plain_rules():
        for text in corpus():
            for match in rule.pattern.finditer(text):
                assert not rule.needs or any(s in match.group() for s in rule.needs), match


def test_every_rule_but_one_begins_with_something_re_can_skip_to() -> None:
    # Private to `re`, and the point of the spelling: a literal prefix or a first-character
    # set is what lets the search skip positions instead of matching at each one.
    from re import _compiler, _parser  # type: ignore[attr-defined]

    def has_prefix(pattern: re.Pattern[str]) -> bool:
        parsed = _parser.parse(pattern.pattern, pattern.flags)
        prefix, _, _ = _compiler._get_literal_prefix(parsed, pattern.flags)
        return bool(prefix) or bool(_compiler._get_charset_prefix(parsed, pattern.flags))

    without = [index for index, rule in enumerate(_RULES) if not has_prefix(rule.pattern)]
    dates_with_slashes = [
        index for index, rule in enumerate(_RULES) if rule.needs == ("/",) and rule.label == "DATE"
    ]
    assert without == dates_with_slashes  # searched only in texts with a "/"


def test_other_cases_are_the_characters_re_matches_to_ascii_letters_under_ignorecase() -> None:
    non_ascii = "".join(chr(c) for c in range(0x80, 0x110000) if not 0xD800 <= c < 0xE000)
    for letter in "abcdefghijklmnopqrstuvwxyz":
        found = "".join(re.findall(f"(?i:{letter})", non_ascii))
        assert found == _OTHER_CASES.get(letter, ""), letter


@pytest.mark.parametrize("pattern", [r"\d*x", r"(?:a|b)c", r"\d{0,2}x", r"\d{2}x", r"?x", ""])
def test_word_start_refuses_a_pattern_it_cannot_split_after_one_character(pattern: str) -> None:
    with pytest.raises(ValueError, match="first character"):
        _WordStart()(pattern)


@pytest.mark.parametrize("alternatives", [["ab", "(?:c)"], ["a*b"], ["", "x"]])
def test_word_start_refuses_alternatives_without_a_literal_first_character(
    alternatives: list[str],
) -> None:
    with pytest.raises(ValueError, match="first character"):
        _WordStart().any(alternatives)
