"""Rule-based named-entity recognition for US legal prose: the embedded default's "model".

Regular expressions and rules, no model files: people near honorifics and cues,
companies with designators, courts and agencies, places from a built-in
gazetteer, dates, amounts, statutes and rules, and docket numbers. Overlaps
resolve to the longest span, then by label priority. `answer(text)` gives the
JSON an entity-extraction LLM answers, with offsets into `text`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

#: Ties between equally long spans go to the earlier label here.
LABEL_PRIORITY = ("CASE", "LAW", "MONEY", "DATE", "ORG", "PERSON", "GPE", "LOCATION", "OTHER")

# --- vocabularies --------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


US_STATES = [
    *_words(
        "Alabama Alaska Arizona Arkansas California Colorado Connecticut Delaware Florida Georgia "
        "Hawaii Idaho Illinois Indiana Iowa Kansas Kentucky Louisiana Maine Maryland Massachusetts "
        "Michigan Minnesota Mississippi Missouri Montana Nebraska Nevada Ohio Oklahoma Oregon "
        "Pennsylvania Tennessee Texas Utah Vermont Virginia Washington Wisconsin Wyoming"
    ),
    "New Hampshire",
    "New Jersey",
    "New Mexico",
    "New York",
    "North Carolina",
    "North Dakota",
    "Rhode Island",
    "South Carolina",
    "South Dakota",
    "West Virginia",
    "District of Columbia",
    "Puerto Rico",
]
CITIES = [
    *_words(
        "Chicago Houston Phoenix Philadelphia Dallas Austin Seattle Denver Boston Atlanta Miami "
        "Detroit Minneapolis Portland Baltimore Nashville Pittsburgh Cleveland Sacramento Oakland "
        "Newark Wilmington Brooklyn Manhattan Irvine Pasadena Tampa Orlando Honolulu Indianapolis "
        "Columbus Milwaukee Cincinnati Richmond Raleigh Hartford Providence Albany Trenton Memphis "
        "London Paris Tokyo Toronto Beijing Shanghai Frankfurt Dublin Zurich Geneva Sydney Mumbai "
        "Singapore Vancouver Montreal Berlin Madrid Rome Amsterdam Brussels Luxembourg Stockholm"
    ),
    "New York City",
    "Los Angeles",
    "San Antonio",
    "San Diego",
    "San Jose",
    "San Francisco",
    "Las Vegas",
    "St. Louis",
    "Palo Alto",
    "Santa Monica",
    "Long Beach",
    "Fort Worth",
    "Salt Lake City",
    "Kansas City",
    "Hong Kong",
    "Mexico City",
]
COUNTRIES = [
    *_words(
        "Canada Mexico England Scotland France Germany China Japan India Brazil Australia Ireland "
        "Switzerland Israel Italy Spain Netherlands Belgium Russia Sweden Norway Denmark Argentina"
    ),
    "United States of America",
    "United States",
    "United Kingdom",
    "Cayman Islands",
    "British Virgin Islands",
    "South Korea",
]
MONTHS = _words(
    "January February March April May June July August September October November December"
)

#: Lower-cased words that never start an ORG/LAW/LOCATION/CASE span (trimmed off).
LEADING_STOP = frozenset(
    _words(
        """the this that these those a an plaintiff plaintiffs defendant defendants petitioner
    petitioners respondent respondents appellant appellee against between by and or of in on at
    for from to with see cf dear each both said such any all its their his her our under pursuant
    upon whereas if when while after before during as because although however moreover further
    furthermore accordingly thereafter also then here there honorable counsel"""
    )
)
#: Lower-cased words that are not part of a person's name.
NON_NAME = (
    frozenset(
        _words(
            """the this that plaintiff plaintiffs defendant defendants petitioner respondent court
    judge united states state district county city section act code exhibit agreement complaint
    company inc llc corp corporation bank trust group partners association capital holdings
    financial services management investments technologies systems solutions industries
    international global enterprises ventures securities exchange commission federal national
    first civil procedure rule rules case no page article title chapter schedule counsel attorney
    attorneys law office offices esq dear sincerely respectfully submitted dated signed by name
    date witness notary public honorable street avenue suite road boulevard new north south east
    west san los las santa fort saint st order motion memorandum declaration affidavit
    deposition jury trial i ii iii iv v re cc attn fund llp ltd department to and or of for in
    on at with from into upon shall may will must has have had is was are were be been moved
    filed dismiss pursuant whereas therefore"""
        )
    )
    | {m.lower() for m in MONTHS}
    | {d.lower() for d in _words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")}
)
#: Capitalised words too common to stand for one organisation on their own.
COMMON_ORG_WORDS = frozenset(
    _words(
        """american general united first national global international pacific atlantic western
    eastern northern southern central standard universal royal premier superior supreme
    internal equal consumer commodity financial bureau court district university bank
    mutual citizens peoples community regional metropolitan allied continental"""
    )
)
ORG_DESIGNATORS = frozenset(
    _words(
        """inc incorporated llc l.l.c corp corporation company co llp l.l.p lp l.p ltd limited plc
    n.a bank trust group partners association holdings commission agency bureau administration
    authority university college institute court"""
    )
)

# --- patterns ------------------------------------------------------------------------------

#: Characters besides its two cases that `re` matches to an ASCII letter under IGNORECASE
#: (tests/unit/test_rule_based_ner.py checks this against `re`).
_OTHER_CASES = {"i": "\u0130\u0131", "k": "\u212a", "s": "\u017f"}
#: A pattern's first character (a literal, `\d`, `\w` or a class) and a repeat of it.
_FIRST_CHARACTER = re.compile(r"(\\[dw]|\[[^\]]+\]|[A-Za-z0-9])(?:(\+)|\{(\d+),(\d+)\})?")


@dataclass(frozen=True)
class _WordStart:
    r"""Spells a pattern that starts at a word boundary so that `re` can skip to its candidates.

    CPython's `re` skips quickly to where a match may begin only when the pattern begins
    with a literal or a character class. A leading `\b` (or a lookaround, or an optional
    group) makes it attempt a full match at every position of the text, for every rule:
    that was most of the extractor's time. So the first character is matched first and
    the boundary checked after it, in a lookbehind over that one character:
    `[A-Z](?<=\b[A-Z])...` finds exactly what `\b[A-Z]...` finds, in the same order.
    `searchable=False` gives the plain spelling, which the tests compare it with.
    """

    searchable: bool = True

    def __call__(self, pattern: str, *, unless: str = "") -> str:
        r"""`\b(?!unless)pattern`, for a pattern that begins with one character or class.

        The first character may be repeated (`\d+`, `\d{1,4}`): one is matched before the
        lookbehind and the rest after it, which tries the same lengths in the same order.
        """
        not_unless = f"(?!{unless})" if unless else ""
        if not self.searchable:
            return rf"\b{not_unless}{pattern}"
        first = _FIRST_CHARACTER.match(pattern)
        if first is None or pattern[first.end() : first.end() + 1] in ("*", "?", "{", "+"):
            raise ValueError(f"not one first character: {pattern!r}")
        char, plus, low, high = first.groups()
        rest = pattern[first.end() :]
        if plus:
            rest = f"{char}*{rest}"
        elif low is not None:
            if int(low) < 1:
                raise ValueError(f"the first character is optional: {pattern!r}")
            rest = f"{char}{{{int(low) - 1},{int(high) - 1}}}{rest}"
        return rf"{char}(?<=\b{not_unless}{char}){rest}"

    def any(self, alternatives: Iterable[str]) -> str:
        r"""`\b(?:a|b|...)`, for alternatives that each begin with a literal letter or digit.

        They are grouped by that character, each group in their order: alternatives that
        begin with different characters never match at the same place, so the order
        between groups does not matter.
        """
        alternatives = list(alternatives)
        if not self.searchable:
            return rf"\b(?:{'|'.join(alternatives)})"
        groups: dict[str, list[str]] = {}
        for alternative in alternatives:
            if not alternative[:1].isalnum() or alternative[1:2] in ("*", "?", "{", "+"):
                raise ValueError(f"not one literal first character: {alternative!r}")
            groups.setdefault(alternative[0], []).append(alternative[1:])
        return _alternation(rf"{c}(?<=\b{c})(?:{'|'.join(tails)})" for c, tails in groups.items())

    def any_case(self, words: Iterable[str]) -> str:
        r"""`(?i:\b(?:a|b|...))`, for lower-case words.

        Under IGNORECASE `re` has no first character to skip to, so each first letter is
        spelled out in every character `re` would match to it, and only the rest of the
        word ignores case.
        """
        words = list(words)
        if not self.searchable:
            return rf"(?i:\b(?:{'|'.join(words)}))"
        groups: dict[str, list[str]] = {}
        for word in words:
            if not word[:1].isascii() or not word[:1].islower():
                raise ValueError(f"not a lower-case ASCII first letter: {word!r}")
            for first in word[0] + word[0].upper() + _OTHER_CASES.get(word[0], ""):
                groups.setdefault(first, []).append(word[1:])
        return _alternation(rf"{c}(?<=\b{c})(?i:{'|'.join(tails)})" for c, tails in groups.items())


def _alternation(alternatives: Iterable[str]) -> str:
    return f"(?:{'|'.join(alternatives)})"


# A name: a capital, or Mc, Mac, O' or D' and a capital; then lower case. Spelled to begin
# with one class (for _WordStart): the prefixes are matched after the first capital, looking
# back at it, which tries what `(?:Mc|Mac|O['’]|D['’])?[A-Z]` tries, in its order.
_NAME = r"[A-Z](?:(?<=M)(?:c|ac)[A-Z]|(?<=[OD])['’][A-Z])?[a-z]+(?:-[A-Z][a-z]+)?"
_INITIAL = r"[A-Z]\."
_FULL_NAME = rf"{_NAME}(?:[ \t](?:{_INITIAL}|{_NAME})){{0,2}}[ \t]{_NAME}"
#: Spelled out one by one (`(?:Chief[ \t])?Judge` is "Chief Judge" then "Judge") so that each
#: begins with a literal letter (for _WordStart).
_HONORIFICS = (
    *(rf"{title}\." for title in ("Mr", "Mrs", "Ms", "Mx", "Dr", "Prof", "Hon")),
    "Miss",
    r"Chief[ \t]Judge",
    r"Magistrate[ \t]Judge",
    "Judge",
    "Justice",
    r"The[ \t]Honorable",
    r"the[ \t]Honorable",
    "Honorable",
    "Professor",
)
_HONORIFIC = _alternation(_HONORIFICS)
_CAP = r"[A-Z][A-Za-z0-9'’\-]*"
_STRONG = (
    r"(?:Inc\.?|Incorporated|LLC|L\.L\.C\.|Corp\.?|Co\.|LLP|L\.L\.P\.|L\.P\.|LP|Ltd\.?|PLC|N\.A\.)"
)
_WEAK = r"(?:Corporation|Company|Limited|Bank|Trust|Group|Partners|Association|Holdings)"
_OF_PLACE = (
    r"(?:(?:(?<=Bank)|(?<=Company)|(?<=Association))[ \t]of[ \t](?:the[ \t])?"
    rf"{_CAP}(?:[ \t]{_CAP})?)?"
)
#: A designator ("Inc.") is not a word of the name it designates.
_DESIGNATOR_WORD = rf"{_STRONG}(?![A-Za-z])"
#: Initials ("A.B.") or a capitalised word, spelled to begin with one class (for _WordStart).
_ORG_WORD_BODY = r"[A-Z](?:\.(?:[A-Z]\.){0,2}|[A-Za-z0-9'’\-]*)"
_ORG_WORD = rf"(?!{_DESIGNATOR_WORD}){_ORG_WORD_BODY}"
_STATE_ALT = "|".join(sorted((re.escape(s) for s in US_STATES), key=len, reverse=True))
_STATE_CAPS = "|".join(sorted((re.escape(s.upper()) for s in US_STATES), key=len, reverse=True))
_PLACES = sorted({*US_STATES, *CITIES, *COUNTRIES}, key=len, reverse=True)
_PLACE_WORDS = frozenset(word for place in _PLACES for word in place.split())
_MONTH_WORDS = (
    *MONTHS,
    *(rf"{a}\.?" for a in _words("Jan Feb Mar Apr Jun Jul Aug Sept Sep Oct Nov Dec")),
)
_MONTH = _alternation(_MONTH_WORDS)
_PAREN = r"(?:\([A-Za-z0-9]{1,4}\))"
_ACT_WORD = r"[A-Z][A-Za-z.'’\-]*[ \t](?:(?:of|and|with|for|on|the|to|in)[ \t])*"
_ACT_YEAR = r"(?:[ \t]of[ \t](?:1[7-9]|20)\d\d)?"
_ACT = rf"(?:{_ACT_WORD}){{1,8}}Act{_ACT_YEAR}"
# Spelled to begin with one digit (for _WordStart); tries what `\d{1,3}(?:,\d{3})+|\d+` tries.
_AMOUNT = r"\d(?:\d{0,2}(?:,\d{3})+|\d*)(?:\.\d{1,2})?(?:\s(?:thousand|million|billion|trillion))?"
_DOCKET = r"\d{1,2}:\d{2}-[A-Za-z]{2,4}-\d{3,6}(?:-[A-Z]{2,5})*"
_NUMBERED = r"\d{2,4}-(?:[A-Za-z]{1,4}-)?\d{2,7}(?:-[A-Za-z0-9]{1,5})*"
_CIRCUIT = (
    r"(?:First|Second|Third|Fourth|Fifth|Sixth|Seventh|Eighth|Ninth|Tenth|Eleventh|"
    r"District of Columbia|Federal)"
)
_DIRECTION = r"(?:(?:Northern|Southern|Eastern|Western|Middle|Central)\s)?"
_REPORTER = (
    r"\d{1,4}\s(?:U\.S\.|S\.\s?Ct\.|L\.\s?Ed\.(?:\s?2d)?|F\.(?:\s?(?:2d|3d|4th))?|"
    r"F\.\s?Supp\.(?:\s?(?:2d|3d))?|F\.\s?App['’]x|Cal\.\s?(?:App\.\s?)?(?:\dth|\dd)?|"
    r"N\.Y\.(?:\s?\dd)?)\s\d{1,5}(?:,\s\d{1,5})?(?:\s\([^()\n]{0,40}?\d{4}\))?"
)
_PARTY = r"[A-Z][\w.'’&\-]*(?:[ \t](?:[A-Z][\w.'’&\-]*|of|the|and|&))*"
_ABBREVIATION = r"[A-Z][A-Za-z.]*\.\s(?:&\s)?"


@dataclass(frozen=True)
class _Rule:
    label: str
    pattern: re.Pattern[str]
    confidence: float
    #: "person": validate name tokens; "honorific": the same, anchored on an honorific;
    #: "trim": drop leading stop words; "org"/"law": trim and require a real name part.
    kind: str = ""
    group: int = 0
    #: Every match contains one of these strings: a text without any is not searched.
    needs: tuple[str, ...] = ()


def _rule(
    label: str,
    pattern: str,
    confidence: float,
    kind: str = "",
    group: int = 0,
    needs: tuple[str, ...] = (),
) -> _Rule:
    return _Rule(label, re.compile(pattern), confidence, kind, group, needs)


def _rules(word_start: _WordStart) -> tuple[_Rule, ...]:
    """The rules, in the spelling `word_start` gives the patterns that start at a word."""
    return (
        # CASE: docket numbers and reporter citations
        _rule(
            "CASE",
            word_start.any(
                (
                    "Case",
                    r"Civil\sAction",
                    r"Criminal\sAction",
                    r"Criminal\sCase",
                    "Docket",
                    r"Adv\.\sProc\.",
                    r"Adversary\sProceeding",
                    "Index",
                    "Appeal",
                    "Cause",
                )
            )
            + r"\s(?:No|Number)s?\.?:?\s?"
            + rf"(?:{_DOCKET}|{_NUMBERED}|\d[\d\-:]*\d)",
            0.95,
        ),
        _rule(
            "CASE",
            word_start(rf"Nos?\.\s?(?:{_DOCKET}|\d{{2,4}}-\d{{2,7}}(?:-[A-Za-z0-9]{{1,5}})*)\b"),
            0.9,
        ),
        _rule("CASE", word_start(rf"{_DOCKET}\b"), 0.9),
        _rule(
            "CASE",
            word_start(rf"{_PARTY}[ \t]v\.[ \t]{_PARTY}(?:,[ \t]{_REPORTER})?"),
            0.85,
            "trim",
            needs=("v.",),
        ),
        _rule("CASE", word_start(_REPORTER), 0.85),
        # LAW: statutes, regulations, codes, rules, acts
        _rule(
            "LAW",
            word_start(
                r"\d+\sU\.\s?S\.\s?C\.(?:\s?A\.)?\s§§?\s?\d+[A-Za-z]*(?:-\d+)?"
                rf"{_PAREN}*(?:\s(?:et\sseq\.|and\s\d+[a-z]*{_PAREN}*))?"
            ),
            0.95,
            needs=("§",),
        ),
        _rule("LAW", word_start(rf"\d+\sC\.\s?F\.\s?R\.\s(?:§§?\s?)?\d+(?:\.\d+)*{_PAREN}*"), 0.95),
        # a code's abbreviated name ("Cal. Civ."), its first word out of the repeat
        _rule(
            "LAW",
            word_start(
                rf"{_ABBREVIATION}(?:{_ABBREVIATION}){{0,4}}(?:Code|Law|Stat\.)(?:\sAnn\.)?\s§§?\s?"
                rf"\d+(?:[.\-:]\d+)*[a-z]?{_PAREN}*"
            ),
            0.95,
            needs=("§",),
        ),
        _rule(
            "LAW",
            word_start(
                r"Fed\.\s?R\.\s?(?:(?:Civ|Crim|App|Bankr)\.\s?P\.|Evid\.)\s?\d+(?:\.\d+)?"
                rf"{_PAREN}*"
            ),
            0.95,
        ),
        _rule(
            "LAW",
            word_start(
                r"Federal\sRules?\sof\s"
                r"(?:(?:Civil|Criminal|Appellate|Bankruptcy)\sProcedure|Evidence)"
                rf"(?:\s\d+{_PAREN}*)?"
            ),
            0.9,
        ),
        _rule("LAW", word_start(rf"Rule\s(?:\d+[a-z]?-\d+|\d+{_PAREN}+)"), 0.85),
        _rule("LAW", word_start(rf"Section\s\d+[A-Za-z]?{_PAREN}*\sof\s(?:the\s)?{_ACT}"), 0.95),
        _rule("LAW", word_start(rf"Title\s[IVXL]+\b(?:\sof\s(?:the\s)?{_ACT})?"), 0.9),
        # _ACT with its first word taken out of the repeat, to begin with one class
        _rule(
            "LAW",
            word_start(rf"{_ACT_WORD}(?:{_ACT_WORD}){{0,7}}Act{_ACT_YEAR}\b"),
            0.85,
            "law",
            needs=("Act",),
        ),
        # MONEY; `(?:US)?\$` as two alternatives, each beginning with a literal
        _rule("MONEY", rf"(?:US\$|\$)\s?{_AMOUNT}\b", 0.95, needs=("$",)),
        _rule("MONEY", word_start.any(("USD", "EUR", "GBP", "CAD")) + rf"\s?{_AMOUNT}\b", 0.95),
        _rule("MONEY", rf"[€£]\s?{_AMOUNT}\b", 0.95),
        _rule(
            "MONEY",
            word_start(rf"{_AMOUNT}\s(?:U\.S\.\s)?(?:dollars|euros|pounds)\b"),
            0.9,
            needs=("dollars", "euros", "pounds"),
        ),
        # DATE
        _rule(
            "DATE",
            word_start.any(_MONTH_WORDS) + r"\s\d{1,2}(?:st|nd|rd|th)?,?\s(?:1[7-9]|20)\d\d\b",
            0.95,
        ),
        _rule(
            "DATE",
            word_start(
                rf"\d{{1,2}}(?:st|nd|rd|th)?\s(?:day\sof\s)?{_MONTH},?\s(?:1[7-9]|20)\d\d\b"
            ),
            0.95,
        ),
        _rule(
            "DATE",
            r"\b(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01])/(?:\d{4}|\d{2})\b",
            0.9,
            needs=("/",),
        ),
        _rule(
            "DATE",
            word_start.any(("1[7-9]", "20")) + r"\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])\b",
            0.95,
        ),
        _rule("DATE", word_start.any(MONTHS) + r"\s(?:1[7-9]|20)\d\d\b", 0.75),
        # ORG: courts, agencies, designators
        _rule(
            "ORG",
            word_start(
                rf"United\sStates\s(?:District|Bankruptcy)\sCourt(?:\sfor\sthe\s{_DIRECTION}"
                rf"District\sof\s(?:{_STATE_ALT}))?"
            ),
            0.95,
        ),
        _rule(
            "ORG",
            word_start(
                r"UNITED\sSTATES\s(?:DISTRICT|BANKRUPTCY)\sCOURT(?:\s+(?:FOR\sTHE\s+)?"
                r"(?:(?:NORTHERN|SOUTHERN|EASTERN|WESTERN|MIDDLE|CENTRAL)\s)?DISTRICT\sOF\s"
                rf"(?:{_STATE_CAPS}))?"
            ),
            0.95,
        ),
        _rule(
            "ORG",
            word_start.any((r"United\sStates\sCourt", "Court"))
            + rf"\sof\sAppeals?(?:\sfor\sthe\s{_CIRCUIT}\sCircuit)?",
            0.9,
        ),
        _rule(
            "ORG",
            word_start(r"Supreme\sCourt\sof\s(?:the\sUnited\sStates|" + _STATE_ALT + ")"),
            0.95,
        ),
        _rule(
            "ORG",
            word_start(
                rf"Superior\sCourt\sof\s(?:the\sState\sof\s)?(?:{_STATE_ALT})"
                rf"(?:,?\s(?:City\sand\s)?County\sof\s{_CAP}(?:\s{_CAP})?)?"
            ),
            0.95,
        ),
        _rule(
            "ORG",
            word_start.any(
                (
                    r"Securities\sand\sExchange\sCommission",
                    r"Federal\sTrade\sCommission",
                    r"Equal\sEmployment\sOpportunity\sCommission",
                    r"Commodity\sFutures\sTrading\sCommission",
                    r"Consumer\sFinancial\sProtection\sBureau",
                    r"Internal\sRevenue\sService",
                    r"Federal\sBureau\sof\sInvestigation",
                    r"Financial\sIndustry\sRegulatory\sAuthority",
                    r"Federal\sReserve(?:\sBoard|\sBank\sof\sNew\sYork)?",
                    r"Department\sof\s(?:Justice|Labor|the\sTreasury|Health\sand\sHuman\sServices|"
                    r"Homeland\sSecurity|Commerce|Education|State|Defense|Energy|Transportation|"
                    r"Agriculture|Veterans\sAffairs|Housing\sand\sUrban\sDevelopment|the\sInterior)",
                    *_words("SEC FTC EEOC CFTC CFPB IRS FBI DOJ FINRA"),
                )
            )
            + r"\b",
            0.95,
        ),
        _rule(
            "ORG",
            word_start.any(("Bank", "University"))
            + rf"[ \t]of[ \t](?:the[ \t])?{_CAP}(?:[ \t]{_CAP}){{0,2}}",
            0.9,
        ),
        _rule(
            "ORG",
            word_start(
                rf"{_ORG_WORD_BODY}(?:[ \t](?:&[ \t])?{_ORG_WORD}){{0,6}}"
                rf"(?:,?\s{_STRONG}|[ \t]{_WEAK}{_OF_PLACE})(?![A-Za-z])",
                unless=_DESIGNATOR_WORD,
            ),
            0.9,
            "org",
        ),
        _rule(
            "ORG",
            word_start(
                rf"{_CAP}(?:[ \t]{_CAP}){{0,4}}[ \t](?:Commission|Agency|Bureau|Administration|"
                r"Authority|University|College|Institute|Court)\b"
            ),
            0.75,
            "org",
            needs=(
                *_words("Commission Agency Bureau Administration Authority University College"),
                *_words("Institute Court"),
            ),
        ),
        _rule(
            "ORG",
            word_start(
                r"[A-Z][A-Z0-9'’&\-]+(?:[ \t](?:&[ \t])?[A-Z][A-Z0-9'’&.\-]+){0,6},?\s"
                r"(?:LLC|L\.L\.C\.|INC\.?|CORP\.?|CORPORATION|COMPANY|LLP|LTD\.?|N\.A\.)"
                r"(?![A-Za-z])",
                unless=r"(?:LLC|INC|CORP|LTD|LLP)\b",
            ),
            0.9,
            "org",
        ),
        # PERSON
        _rule(
            "PERSON",
            word_start.any(_HONORIFICS) + rf"[ \t](?:(?:{_INITIAL}|{_NAME})[ \t]){{0,3}}{_NAME}",
            0.9,
            "honorific",
        ),
        _rule(
            "PERSON", rf"/s/[ \t]?({_NAME}(?:[ \t](?:{_INITIAL}|{_NAME})){{1,3}})", 0.9, "person", 1
        ),
        _rule(
            "PERSON",
            word_start.any_case(
                (
                    *_words("by plaintiffs? defendants? petitioners? respondents? witness"),
                    *_words("deponent affiant declarant undersigned counsel attorney employee"),
                    *_words("cc attn dear sincerely regards signed name claimant decedent"),
                    *_words("debtor guarantor tenant landlord buyer seller borrower lender"),
                )
            )
            + rf"[:,]?\s+({_FULL_NAME})\b",
            0.85,
            "person",
            1,
        ),
        _rule(
            "PERSON",
            "(" + word_start(rf"{_NAME}[ \t]{_INITIAL}[ \t]{_NAME}") + r")\b",
            0.85,
            "person",
            1,
        ),
        _rule(
            "PERSON",
            "(" + word_start(_FULL_NAME) + r"),?[ \t]Esq\.?",
            0.9,
            "person",
            1,
            needs=("Esq",),
        ),
        _rule(
            "PERSON",
            "("
            + word_start(r"[A-Z][A-Z'’\-]+(?:[ \t](?:[A-Z]\.|[A-Z][A-Z'’\-]+)){1,3}")
            + r"),\s+(?:an\sindividual,\s+)?"
            r"(?:Plaintiffs?|Defendants?|Petitioners?|Respondents?)\b",
            0.8,
            "person",
            1,
            needs=("Plaintiff", "Defendant", "Petitioner", "Respondent"),
        ),
        # LOCATION (GPE for named places, LOCATION for counties)
        _rule("GPE", word_start.any(re.escape(p) for p in _PLACES) + r"\b", 0.9),
        _rule("LOCATION", word_start(rf"County[ \t]of[ \t]{_CAP}(?:[ \t]{_CAP}){{0,2}}"), 0.9),
        _rule(
            "LOCATION",
            word_start(rf"{_CAP}(?:[ \t]{_CAP}){{0,2}}[ \t]County\b"),
            0.85,
            "trim",
            needs=("County",),
        ),
    )


_RULES = _rules(_WordStart())

_TOKEN = re.compile(r"\S+")
_NAME_TOKEN = re.compile(rf"{_NAME}|{_INITIAL}|[A-Z][A-Z'’\-]+")
_HONORIFIC_RE = re.compile(_HONORIFIC)


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    label: str
    confidence: float

    @property
    def sort_key(self) -> tuple[int, int, int, float]:
        return (
            self.start - self.end,
            LABEL_PRIORITY.index(self.label),
            self.start,
            -self.confidence,
        )


def answer(text: str) -> str:
    """The model's JSON answer for one chunk: every entity `find_entities` finds."""
    return json.dumps(
        {
            "entities": [
                {
                    "entity": text[s.start : s.end],
                    "label": s.label,
                    "start": s.start,
                    "end": s.end,
                    "confidence": s.confidence,
                }
                for s in find_entities(text)
            ]
        }
    )


def find_entities(text: str) -> list[_Span]:
    """Every entity the rules find, overlaps resolved, in text order.

    A second pass tags short references to what the first pass found: a
    person's surname standing alone ("Holloway") and an organisation's
    distinctive first word ("Meridian").
    """
    candidates = list(_candidates(text))
    accepted = _resolve_overlaps(candidates, len(text))
    aliases: dict[str, tuple[str, float]] = {}
    for span in sorted(accepted, key=lambda s: (s.start, s.end)):
        name = text[span.start : span.end]
        if span.label == "PERSON":
            for alias in [_surname(name)]:
                if alias:
                    aliases.setdefault(alias, ("PERSON", 0.7))
        elif span.label == "ORG":
            for alias in _org_aliases(name):
                aliases.setdefault(alias, ("ORG", 0.65))
    if aliases:
        pattern = re.compile(
            r"\b(?:"
            + "|".join(re.escape(a) for a in sorted(aliases, key=lambda a: (-len(a), a)))
            + r")\b"
        )
        for m in pattern.finditer(text):
            label, confidence = aliases[m.group()]
            candidates.append(_Span(m.start(), m.end(), label, confidence))
        accepted = _resolve_overlaps(candidates, len(text))
    return sorted(accepted, key=lambda s: (s.start, s.end))


def _candidates(text: str) -> Iterator[_Span]:
    for rule in _RULES:
        if rule.needs and not any(literal in text for literal in rule.needs):
            continue  # cannot match; `in` is far cheaper than the pattern's search
        for match in rule.pattern.finditer(text):
            start, end = match.span(rule.group)
            span = _refine(text, rule, start, end)
            if span is not None:
                yield _Span(span[0], span[1], rule.label, rule.confidence)


def _refine(text: str, rule: _Rule, start: int, end: int) -> tuple[int, int] | None:
    """Apply the rule's post-conditions; None rejects the match."""
    if rule.kind in ("trim", "org", "law"):
        start = _trim_leading(text, start, end)
        words = [t.strip(".,&").lower() for t in text[start:end].split()]
        if rule.kind == "org" and not any(w and w not in ORG_DESIGNATORS for w in words):
            return None
        if rule.kind == "law" and len(words) < 2:
            return None
        return (start, end) if end > start else None
    if rule.kind == "honorific":
        honorific = _HONORIFIC_RE.match(text, start)
        if honorific is None:  # pragma: no cover - the rule starts with an honorific
            return None
        tokens = list(_TOKEN.finditer(text, honorific.end(), end))
        kept = []
        for token in tokens:
            if token.group().rstrip(".").lower() in NON_NAME:
                break
            kept.append(token)
        while kept and kept[-1].group().endswith("."):  # end on a name, not an initial
            kept.pop()
        return (start, kept[-1].end()) if kept else None
    if rule.kind == "person":
        words = text[start:end].split()
        if any(w.rstrip(".,").lower() in NON_NAME for w in words):
            return None
        if not all(_NAME_TOKEN.fullmatch(w) for w in words):
            return None
    return start, end


def _trim_leading(text: str, start: int, end: int) -> int:
    for token in _TOKEN.finditer(text, start, end):
        if token.group().strip(".,;:").lower() not in LEADING_STOP:
            return token.start()
    return end


def _surname(name: str) -> str:
    tokens = [t for t in name.split() if not _HONORIFIC_RE.fullmatch(t)]
    tokens = [t for t in tokens if t.rstrip(".,").lower() not in {"jr", "sr", "ii", "iii", "esq"}]
    if len(tokens) < (1 if _HONORIFIC_RE.match(name) else 2):
        return ""
    last = tokens[-1].rstrip(".,")
    if len(last) < 3 or last.lower() in NON_NAME or not re.fullmatch(_NAME, last):
        return ""
    return last


def _org_aliases(name: str) -> list[str]:
    """Short forms of a company name: "Harbor Point Advisors LLC" -> "Harbor Point", "Harbor"."""
    words = name.split()
    first = words[0] if len(words) > 1 else ""
    if not re.fullmatch(r"[A-Z][a-z]{3,}", first):
        return []
    lowered = first.lower()
    if lowered in NON_NAME or lowered in LEADING_STOP or lowered in ORG_DESIGNATORS:
        return []
    if lowered in COMMON_ORG_WORDS or first in _PLACE_WORDS:
        return []
    prefix: list[str] = []
    for word in words:
        if not re.fullmatch(r"[A-Z][a-z]+", word) or word.lower() in ORG_DESIGNATORS:
            break
        prefix.append(word)
    return [" ".join(prefix[:n]) for n in range(1, len(prefix) + 1)]


def _resolve_overlaps(candidates: list[_Span], length: int) -> list[_Span]:
    """Longest span first, then label priority; an overlapping later span is dropped."""
    taken = bytearray(length)
    accepted: list[_Span] = []
    for span in sorted(set(candidates), key=lambda s: s.sort_key):
        if span.end <= span.start or any(taken[span.start : span.end]):
            continue
        taken[span.start : span.end] = b"\x01" * (span.end - span.start)
        accepted.append(span)
    return accepted
