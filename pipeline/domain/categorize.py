"""Rule-based document categories (REFERENCE.md stage 3).

Rules look only at the file name, the first lines, the first few thousand
characters and the last lines, so the cost does not grow with the document
and the answer is deterministic. The first rule that matches wins; the order
is the reference's: contract, affidavit, correspondence, exhibit, deposition,
legal_filing, financial, otherwise document.

- contract: the title line or file name names an agreement, contract or
  terms and conditions (and is not a filing *about* one, such as a
  "complaint for breach of contract"), or the opening text has operative
  wording ("hereby agree", "the parties agree", "in consideration of the
  mutual").
- affidavit: the lead lines or file name say affidavit, sworn statement or
  "declaration of", or the opening text has an oath ("being duly sworn,
  deposes", "under penalty of perjury", "subscribed and sworn").
- correspondence: an ``.eml`` file, e-mail headers (a ``From:`` line with a
  ``To:``/``Subject:``/``Sent:`` line), a ``Dear ...`` salutation or a
  closing such as "Sincerely".
- exhibit: one of the first three lines, or the file name, is
  "Exhibit <label>" (a letter or number).
- deposition: the lead lines or file name say deposition or transcript of
  proceedings/testimony (a "notice of deposition" is a filing), or the
  opening text is a Q./A. transcript (two question and two answer lines).
- legal_filing: the lead lines or file name mention a court, plaintiff,
  defendant, petitioner, case/docket number, civil action, motion, complaint,
  petition or a notice of deposition/hearing/appeal ("please take notice"),
  or the opening text names a plaintiff, defendant or case no.
- financial: the lead lines or file name say invoice, balance sheet,
  statement of account, bank/income statement, receipt and the like, or the
  opening text is dense with currency amounts (at least five, and at least
  one per 300 characters).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.domain.cleaning import file_stem
from pipeline.domain.models import Category
from pipeline.domain.pages import PAGE_MARKER_RE

_HEAD_CHARS = 3000
_TAIL_CHARS = 1500
_LEAD_LINES = 8

_CONTRACT_TITLE_RE = re.compile(
    r"\b(?:agreement|contract|terms (?:and|&) conditions|terms of (?:service|use)"
    r"|memorandum of understanding|lease)\b"
)
_FILING_TITLE_RE = re.compile(
    r"\b(?:breach of|complaint|motion|petition|brief|memorandum of law|affidavit"
    r"|declaration of|deposition|exhibit|notice of)\b"
)
_CONTRACT_BODY_RE = re.compile(
    r"\b(?:hereby agrees?|the parties (?:hereto )?(?:hereby )?agree"
    r"|in consideration of the mutual)\b"
)
_AFFIDAVIT_LEAD_RE = re.compile(r"\b(?:affidavit|sworn (?:statement|declaration)|declaration of)\b")
_AFFIDAVIT_BODY_RE = re.compile(
    r"\bbeing (?:first )?duly sworn,? (?:on oath )?(?:deposes|states|says)\b"
    r"|\b(?:declaration|declare) under penalty of perjury\b|\bunder penalty of perjury\b"
    r"|\bsworn to (?:and subscribed )?before me\b|\bsubscribed and sworn\b"
)
_EMAIL_FROM_RE = re.compile(r"^from:\s", re.MULTILINE)
_EMAIL_OTHER_RE = re.compile(r"^(?:to|subject|sent):\s", re.MULTILINE)
_SALUTATION_RE = re.compile(r"^dear\s+\S", re.MULTILINE)
_CLOSING_RE = re.compile(
    r"^(?:sincerely|very truly yours|yours (?:truly|sincerely|faithfully)"
    r"|(?:best|kind|warm) regards|regards)\b",
    re.MULTILINE,
)
_EXHIBIT_LINE_RE = re.compile(r"exhibit\s+[a-z0-9]{1,3}\b")
_EXHIBIT_NAME_RE = re.compile(r"\bexhibit[\s_-]*[a-z0-9]{1,3}\b")
_DEPOSITION_LEAD_RE = re.compile(
    r"(?<!notice of )(?<!notice of taking )\b(?:deposition|transcript of (?:the )?"
    r"(?:proceedings|testimony))\b"
)
_QUESTION_RE = re.compile(r"^\s*Q[.:]\s", re.MULTILINE)
_ANSWER_RE = re.compile(r"^\s*A[.:]\s", re.MULTILINE)
_FILING_LEAD_RE = re.compile(
    r"\b(?:court|plaintiffs?|defendants?|petitioners?|respondents?|case no|docket no"
    r"|civil action|motion|complaint|petition|please take notice"
    r"|notice of (?:deposition|hearing|motion|appeal|appearance|removal))\b"
)
_FILING_BODY_RE = re.compile(r"\b(?:plaintiffs?|defendants?|case no\.?|civil action no)\b")
_FINANCIAL_LEAD_RE = re.compile(
    r"\b(?:invoice|balance sheet|statement of account|account statement|bank statement"
    r"|income statement|profit and loss|receipt|ledger|purchase order|remittance)\b"
)
_MONEY_RE = re.compile(r"[$€£]\s?\d")
_MONEY_MIN = 5
_MONEY_CHARS_PER_AMOUNT = 300


@dataclass(frozen=True)
class _Evidence:
    """The bounded views of a document that the rules read (lower-cased)."""

    name: str
    extension: str
    title: str
    lead: tuple[str, ...]
    head: str
    head_lower: str
    tail_lower: str

    @property
    def lead_text(self) -> str:
        return "\n".join(self.lead)


def categorize(cleaned_text: str, file_name: str = "") -> Category:
    """The category of a document: the first rule that matches, else DOCUMENT."""
    evidence = _gather(cleaned_text, file_name)
    for category, rule in _RULES:
        if rule(evidence):
            return category
    return Category.DOCUMENT


def _gather(text: str, file_name: str) -> _Evidence:
    head = text[:_HEAD_CHARS]
    lead: list[str] = []
    for line in head.split("\n"):
        stripped = line.strip()
        if stripped and not PAGE_MARKER_RE.fullmatch(stripped):
            lead.append(stripped.lower())
            if len(lead) == _LEAD_LINES:
                break
    base_name = re.split(r"[\\/]", file_name)[-1]
    _, dot, extension = base_name.rpartition(".")
    name = file_stem(file_name).lower() if file_name.strip() else ""
    return _Evidence(
        name=re.sub(r"[_\-.]+", " ", name),
        extension=extension.lower() if dot else "",
        title=lead[0] if lead else "",
        lead=tuple(lead),
        head=head,
        head_lower=head.lower(),
        tail_lower=text[-_TAIL_CHARS:].lower(),
    )


def _is_contract(doc: _Evidence) -> bool:
    for title in (doc.title, doc.name):
        if _CONTRACT_TITLE_RE.search(title) and not _FILING_TITLE_RE.search(title):
            return True
    return bool(_CONTRACT_BODY_RE.search(doc.head_lower))


def _is_affidavit(doc: _Evidence) -> bool:
    return bool(
        _AFFIDAVIT_LEAD_RE.search(doc.lead_text)
        or _AFFIDAVIT_LEAD_RE.search(doc.name)
        or _AFFIDAVIT_BODY_RE.search(doc.head_lower)
    )


def _is_correspondence(doc: _Evidence) -> bool:
    if doc.extension == "eml":
        return True
    lead = doc.lead_text
    if _EMAIL_FROM_RE.search(lead) and _EMAIL_OTHER_RE.search(lead):
        return True
    return bool(
        _SALUTATION_RE.search(doc.head_lower)
        or _CLOSING_RE.search(doc.tail_lower)
        or _CLOSING_RE.search(doc.head_lower)
    )


def _is_exhibit(doc: _Evidence) -> bool:
    if _EXHIBIT_NAME_RE.search(doc.name):
        return True
    return any(_EXHIBIT_LINE_RE.match(line) for line in doc.lead[:3])


def _is_deposition(doc: _Evidence) -> bool:
    if _DEPOSITION_LEAD_RE.search(doc.lead_text) or _DEPOSITION_LEAD_RE.search(doc.name):
        return True
    questions = len(_QUESTION_RE.findall(doc.head))
    answers = len(_ANSWER_RE.findall(doc.head))
    return questions >= 2 and answers >= 2


def _is_legal_filing(doc: _Evidence) -> bool:
    return bool(
        _FILING_LEAD_RE.search(doc.lead_text)
        or _FILING_LEAD_RE.search(doc.name)
        or _FILING_BODY_RE.search(doc.head_lower)
    )


def _is_financial(doc: _Evidence) -> bool:
    if _FINANCIAL_LEAD_RE.search(doc.lead_text) or _FINANCIAL_LEAD_RE.search(doc.name):
        return True
    amounts = len(_MONEY_RE.findall(doc.head))
    return amounts >= max(_MONEY_MIN, len(doc.head) // _MONEY_CHARS_PER_AMOUNT)


#: The reference's order; the first rule that matches decides.
_RULES: tuple[tuple[Category, Callable[[_Evidence], bool]], ...] = (
    (Category.CONTRACT, _is_contract),
    (Category.AFFIDAVIT, _is_affidavit),
    (Category.CORRESPONDENCE, _is_correspondence),
    (Category.EXHIBIT, _is_exhibit),
    (Category.DEPOSITION, _is_deposition),
    (Category.LEGAL_FILING, _is_legal_filing),
    (Category.FINANCIAL, _is_financial),
)
