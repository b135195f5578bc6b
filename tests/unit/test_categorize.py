"""categorize: one rule per category, checked in the reference's order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.domain.categorize import categorize
from pipeline.domain.models import Category

CONTRACT = """MASTER SERVICES AGREEMENT

This Master Services Agreement is entered into as of January 1, 2024 by and between
Acme Corp. and Widget Inc. The parties hereby agree as follows."""

AFFIDAVIT = """IN THE SUPERIOR COURT OF THE STATE OF CALIFORNIA
COUNTY OF LOS ANGELES

AFFIDAVIT OF JOHN DOE

I, John Doe, being first duly sworn, deposes and says:
1. I am over the age of eighteen."""

EMAIL = """From: Jane Roe <jane@example.com>
To: John Doe <john@example.com>
Subject: Draft agreement
Sent: Monday, March 4, 2024

John, please see the attached draft."""

LETTER = """Smith & Jones LLP
100 Main Street

March 4, 2024

Dear Mr. Doe:

We write regarding the outstanding matter.

Sincerely,
Jane Roe"""

EXHIBIT = """--- Page 1 ---
EXHIBIT B
Photographs of the premises taken on March 1, 2024."""

DEPOSITION = """Page 12
Q. Please state your name for the record.
A. John Doe.
Q. Where were you on March 1?
A. At the warehouse."""

COMPLAINT = """UNITED STATES DISTRICT COURT
NORTHERN DISTRICT OF CALIFORNIA

JOHN DOE, Plaintiff,
v.
ACME CORP., Defendant.

Case No. 3:24-cv-01234

COMPLAINT FOR BREACH OF CONTRACT"""

INVOICE = """INVOICE #4471
Bill to: Acme Corp.
Legal research ........ $1,200.00
Filing fees ........... $350.00
Total due: $1,550.00"""


@pytest.mark.parametrize(
    ("text", "file_name", "expected"),
    [
        (CONTRACT, "msa.pdf", Category.CONTRACT),
        ("Scanned page.", "Lease Agreement - Unit 4.pdf", Category.CONTRACT),
        ("Terms and Conditions\n\n1. Scope.", "", Category.CONTRACT),
        (AFFIDAVIT, "doe.pdf", Category.AFFIDAVIT),
        ("I declare under penalty of perjury that the foregoing is true.", "", Category.AFFIDAVIT),
        (EMAIL, "message.txt", Category.CORRESPONDENCE),
        (LETTER, "letter.docx", Category.CORRESPONDENCE),
        ("Meeting moved to Tuesday.", "note.eml", Category.CORRESPONDENCE),
        (EXHIBIT, "scan.pdf", Category.EXHIBIT),
        ("Photographs.", "Exhibit_12.pdf", Category.EXHIBIT),
        (DEPOSITION, "transcript.txt", Category.DEPOSITION),
        ("VIDEOTAPED DEPOSITION OF JANE ROE\nTaken on May 2, 2024", "", Category.DEPOSITION),
        (COMPLAINT, "complaint.pdf", Category.LEGAL_FILING),
        ("NOTICE OF DEPOSITION OF JANE ROE\nPlease take notice", "", Category.LEGAL_FILING),
        ("MOTION TO DISMISS\nUnder Fed. R. Civ. P. 12(b)(6)", "", Category.LEGAL_FILING),
        (INVOICE, "inv.pdf", Category.FINANCIAL),
        ("Q3 figures\n" + "Item $10.00\n" * 6, "", Category.FINANCIAL),
        ("Meeting notes about the garden party.", "notes.txt", Category.DOCUMENT),
        ("", "", Category.DOCUMENT),
    ],
)
def test_category(text: str, file_name: str, expected: Category) -> None:
    assert categorize(text, file_name) is expected


def test_contract_is_checked_before_legal_filing() -> None:
    text = "SETTLEMENT AGREEMENT\n\nPlaintiff and Defendant in Case No. 12-345 hereby agree."

    assert categorize(text) is Category.CONTRACT


def test_a_filing_about_a_contract_is_not_a_contract() -> None:
    assert categorize(COMPLAINT) is Category.LEGAL_FILING


def test_affidavit_is_checked_before_correspondence() -> None:
    text = "AFFIDAVIT OF SERVICE\n\nSubscribed and sworn before me.\n\nSincerely,\nClerk"

    assert categorize(text) is Category.AFFIDAVIT


def test_deposition_oath_does_not_make_it_an_affidavit() -> None:
    text = "JANE ROE, having been duly sworn, testified as follows:\n" + DEPOSITION

    assert categorize(text) is Category.DEPOSITION


def test_exhibit_reference_inside_a_filing_is_not_an_exhibit() -> None:
    text = COMPLAINT + "\n\n1. A copy of the notice is attached as Exhibit A."

    assert categorize(text) is Category.LEGAL_FILING


def test_only_the_head_of_a_long_document_is_read() -> None:
    text = "Meeting notes.\n" + "plain words here. " * 1000 + "\nINVOICE $1 $2 $3 $4 $5 $6"

    assert categorize(text) is Category.DOCUMENT


@given(st.text(max_size=400), st.text(max_size=40))
def test_any_input_gets_a_category_deterministically(text: str, file_name: str) -> None:
    category = categorize(text, file_name)

    assert isinstance(category, Category)
    assert categorize(text, file_name) is category
