"""Generate the sample documents for `make demo` (deterministic: same bytes every run).

Run with the project's virtualenv: `.venv/bin/python scripts/make_samples.py`.
All names, firms and cases are fictional. The same people and organisations
recur across documents in varied forms ("Jane R. Holloway", "Ms. Holloway",
"Holloway") so entity resolution has something to do.
"""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import docx
from docx.shared import Pt
from fpdf import FPDF

OUT = Path(__file__).resolve().parent.parent / "samples"
FIXED_TIME = datetime(2024, 1, 15, 9, 30, tzinfo=UTC)
ZIP_TIME = (2024, 1, 15, 9, 30, 0)

CASE_NO = "Case No. 2:23-cv-01234-ABC"


# --- PDF helpers ----------------------------------------------------------------------


class _Pdf(FPDF):
    def __init__(self, footer_text: str) -> None:
        super().__init__(format="Letter")
        self.footer_text = footer_text
        self.set_margins(25, 22, 25)
        self.set_auto_page_break(True, margin=22)
        self.set_creation_date(FIXED_TIME)
        self.set_producer("docpipe samples")
        self.set_creator("samples/make_samples.py")
        self.alias_nb_pages()

    def footer(self) -> None:
        self.set_y(-15)
        self.set_font("Helvetica", size=8)
        self.cell(0, 6, f"{self.footer_text} - Page {self.page_no()} of {{nb}}", align="C")


def _heading(pdf: FPDF, text: str, size: int = 11) -> None:
    pdf.ln(3)
    pdf.set_font("Helvetica", "B", size)
    pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)


def _para(pdf: FPDF, text: str, line_height: float = 5.5, font: str = "Times") -> None:
    pdf.set_font(font, size=11)
    pdf.multi_cell(0, line_height, text, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)


def _save_pdf(pdf: FPDF, name: str) -> None:
    pdf.set_title(name)
    (OUT / name).write_bytes(bytes(pdf.output()))


# --- master services agreement (3 pages) ----------------------------------------------

MSA_ARTICLES: list[tuple[str, list[str]]] = [
    (
        "ARTICLE 1 - DEFINITIONS",
        [
            '1.1 "Agreement" means this Master Services Agreement, including every Statement '
            'of Work executed under it. "Services" means the data reconciliation, ledger '
            "analytics and regulatory reporting services described in Exhibit A.",
            '1.2 "Confidential Information" means non-public information disclosed by either '
            "party, including trading records, investor lists and the Client's general ledger.",
        ],
    ),
    (
        "ARTICLE 2 - SERVICES",
        [
            '2.1 Northgate Data Systems Corp. ("Provider") shall perform the Services for '
            'Meridian Capital Holdings, Inc. ("Client") from its offices in Irvine, '
            "California and Reno, Nevada, beginning on 2023-04-01.",
            "2.2 Provider shall deliver the first quarterly reconciliation report no later than "
            "06/30/2023 and shall make its personnel available to Client's Vice President of "
            "Compliance, Ms. Jane R. Holloway, for review meetings at least once each month.",
            "2.3 Harbor Point Advisors LLC may act as Client's designated subcontractor for "
            "investor communications only upon Client's prior written consent.",
        ],
    ),
    (
        "ARTICLE 3 - FEES AND PAYMENT",
        [
            "3.1 Client shall pay Provider an annual services fee of $1,250,000.00, payable in "
            "four equal quarterly installments of $312,500.00 each, plus a one-time onboarding "
            "fee of USD 45,000 due on 03/15/2023.",
            "3.2 Invoices are due within thirty (30) days. Payments shall be made by wire "
            "transfer to Provider's account at First Pacific Bank, N.A., Los Angeles, "
            "California. Late amounts bear interest at 1.0% per month.",
            "3.3 Client may withhold any disputed amount in good faith by written notice "
            "stating the reasons for the dispute.",
        ],
    ),
    (
        "ARTICLE 4 - TERM AND TERMINATION",
        [
            "4.1 This Agreement begins on the Effective Date and continues for three (3) years "
            "unless terminated earlier under this Article.",
            "4.2 Either party may terminate this Agreement for material breach not cured "
            "within thirty (30) days after written notice. Client may terminate for "
            "convenience on ninety (90) days' notice upon payment of a termination fee of "
            "$250,000.00.",
        ],
    ),
    (
        "ARTICLE 5 - CONFIDENTIALITY",
        [
            "5.1 Each party shall protect the other's Confidential Information with at least "
            "reasonable care and shall use it only to perform this Agreement.",
            "5.2 Nothing in this Agreement prohibits any individual from reporting possible "
            "violations of law to the Securities and Exchange Commission or from making other "
            "disclosures protected under 15 U.S.C. § 78u-6 or 18 U.S.C. § 1514A.",
        ],
    ),
    (
        "ARTICLE 6 - INDEMNIFICATION",
        [
            "6.1 Provider shall defend and indemnify Client against third-party claims arising "
            "from Provider's gross negligence or willful misconduct.",
            "6.2 Client shall defend and indemnify Provider against third-party claims arising "
            "from data or instructions supplied by Client, including any claim under "
            "15 U.S.C. § 78j(b).",
        ],
    ),
    (
        "ARTICLE 7 - LIMITATION OF LIABILITY",
        [
            "7.1 Except for breaches of Article 5 and the indemnities in Article 6, neither "
            "party's aggregate liability shall exceed the fees paid in the twelve (12) months "
            "preceding the claim.",
        ],
    ),
    (
        "ARTICLE 8 - GOVERNING LAW AND VENUE",
        [
            "8.1 This Agreement is governed by the laws of the State of California. The state "
            "and federal courts located in Orange County, California have exclusive "
            "jurisdiction, and each party waives any objection to venue there.",
        ],
    ),
    (
        "ARTICLE 9 - NOTICES",
        [
            "9.1 Notices to Client: Meridian Capital Holdings, Inc., 1800 Von Karman Avenue, "
            "Suite 400, Irvine, CA 92612, Attention: Jane R. Holloway, Vice President of "
            "Compliance, with a copy to Thomas A. Whitfield, Chief Executive Officer.",
            "9.2 Notices to Provider: Northgate Data Systems Corp., 50 West Liberty Street, "
            "Reno, NV 89501, Attention: Rebecca S. Lindqvist, Chief Operating Officer.",
        ],
    ),
]


def make_master_services_agreement() -> None:
    pdf = _Pdf("Master Services Agreement - Meridian / Northgate - CONFIDENTIAL")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 15)
    pdf.multi_cell(0, 8, "MASTER SERVICES AGREEMENT", align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    _para(
        pdf,
        'This Master Services Agreement (the "Agreement") is entered into as of March 3, '
        '2023 (the "Effective Date") by and between MERIDIAN CAPITAL HOLDINGS, INC., a '
        "Delaware corporation with its principal place of business in Irvine, California "
        '("Meridian" or "Client"), and NORTHGATE DATA SYSTEMS CORP., a Nevada corporation '
        'with offices in Reno, Nevada ("Northgate" or "Provider").',
    )
    _heading(pdf, "RECITALS")
    _para(
        pdf,
        "WHEREAS, Meridian manages private credit funds for institutional investors and "
        "requires independent reconciliation of its fund ledgers; and WHEREAS, Northgate "
        "provides ledger analytics services to financial institutions; NOW, THEREFORE, in "
        "consideration of the mutual covenants below, the parties agree as follows:",
    )
    for heading, clauses in MSA_ARTICLES:
        _heading(pdf, heading)
        for clause in clauses:
            _para(pdf, clause)
    if pdf.page_no() < 3:
        _para(pdf, "[Remainder of page intentionally left blank. Signature page follows.]")
        pdf.add_page()
    _heading(pdf, "SIGNATURES")
    _para(
        pdf,
        "IN WITNESS WHEREOF, the parties have executed this Agreement by their duly "
        "authorized representatives as of the Effective Date.",
    )
    pdf.set_font("Times", size=11)
    for line in (
        "MERIDIAN CAPITAL HOLDINGS, INC.",
        "",
        "By: /s/ Thomas A. Whitfield",
        "Name: Thomas A. Whitfield",
        "Title: Chief Executive Officer",
        "Date: March 3, 2023",
        "",
        "NORTHGATE DATA SYSTEMS CORP.",
        "",
        "By: /s/ Rebecca S. Lindqvist",
        "Name: Rebecca S. Lindqvist",
        "Title: Chief Operating Officer",
        "Date: 03/03/2023",
        "",
        "Acknowledged for Client compliance review: /s/ Jane R. Holloway, 03/06/2023",
    ):
        pdf.cell(0, 5.5, line, new_x="LMARGIN", new_y="NEXT")
    _save_pdf(pdf, "master_services_agreement.pdf")


# --- complaint (4 pages) ------------------------------------------------------------------

COMPLAINT_SECTIONS: list[tuple[str, list[str]]] = [
    (
        "NATURE OF THE ACTION",
        [
            'Plaintiff Jane R. Holloway ("Ms. Holloway" or "Plaintiff") brings this action '
            'against Meridian Capital Holdings, Inc. ("Meridian"), its Chief Executive '
            'Officer Thomas A. Whitfield ("Mr. Whitfield"), and Harbor Point Advisors LLC '
            '("Harbor Point") for securities fraud and for retaliating against her after '
            "she reported sham revenue to Meridian's audit committee.",
            "Between March and May 2023, Defendants caused Meridian to book $1,250,000.00 of "
            "fees under a Master Services Agreement with Northgate Data Systems Corp. for "
            "services that were never performed, and to route USD 45,000 of so-called "
            "onboarding fees to Harbor Point, an entity controlled by Mr. Whitfield's "
            "brother-in-law.",
        ],
    ),
    (
        "JURISDICTION AND VENUE",
        [
            "This Court has subject-matter jurisdiction under 28 U.S.C. § 1331 and Section 27 "
            "of the Securities Exchange Act of 1934, 15 U.S.C. § 78aa. The Court has "
            "supplemental jurisdiction over the state-law claim under 28 U.S.C. § 1367.",
            "Venue is proper in the Central District of California under 28 U.S.C. § 1391(b) "
            "because Meridian maintains its headquarters in Irvine, Orange County, "
            "California, and the events giving rise to these claims occurred there.",
        ],
    ),
    (
        "PARTIES",
        [
            "Plaintiff Jane R. Holloway is an individual residing in Pasadena, Los Angeles "
            "County, California. From January 9, 2019 until April 1, 2023 she served as "
            "Meridian's Vice President of Compliance.",
            "Defendant Meridian Capital Holdings, Inc. is a Delaware corporation with its "
            "principal place of business at 1800 Von Karman Avenue, Irvine, California.",
            "Defendant Thomas A. Whitfield is Meridian's Chief Executive Officer and a "
            "resident of Newport Beach, California.",
            "Defendant Harbor Point Advisors LLC is a Nevada limited liability company "
            "with its principal office in Las Vegas, Nevada.",
        ],
    ),
    (
        "FACTUAL ALLEGATIONS",
        [
            "On March 3, 2023, Mr. Whitfield signed the Master Services Agreement with "
            'Northgate Data Systems Corp. (the "Northgate MSA"). Ms. Holloway was asked to '
            "acknowledge it for compliance review three days later, on 03/06/2023.",
            "On 03/15/2023, Meridian wired USD 45,000 from its operating account at First "
            "Pacific Bank, N.A. to an account that Ms. Holloway later learned belonged to "
            "Harbor Point, not to Northgate.",
            "On March 20, 2023, Ms. Holloway delivered a written memorandum to Mr. Whitfield "
            "and to the chair of the audit committee, Dr. Samuel Okonkwo, stating that no "
            "Northgate personnel had performed any Services and that the Northgate invoices "
            "appeared to be fabricated.",
            'Mr. Whitfield responded the same day that Ms. Holloway was "not a team player." '
            "Meridian terminated her employment effective 2023-04-01, citing a "
            '"restructuring" that eliminated no other position.',
            "On May 12, 2023, Meridian issued a press release reporting quarterly revenue "
            "that included the Northgate fees. Meridian's share price fell 31% on "
            "June 2, 2023, when a short seller, Castellan Research LLC, published evidence "
            "that the Northgate revenue did not exist.",
            "Ms. Holloway held 12,400 shares of Meridian common stock acquired through its "
            "employee stock purchase plan and lost not less than $186,000.00 as a result.",
        ],
    ),
    (
        "COUNT I - Violation of Section 10(b) of the Exchange Act, 15 U.S.C. § 78j(b), and "
        "Rule 10b-5 (Against All Defendants)",
        [
            "Plaintiff repeats each allegation above. Defendants made materially false "
            "statements about Meridian's revenue, with scienter, in connection with the "
            "purchase or sale of securities, in violation of 15 U.S.C. § 78j(b) and "
            "17 C.F.R. § 240.10b-5, and Plaintiff relied on them to her loss.",
        ],
    ),
    (
        "COUNT II - Whistleblower Retaliation, 18 U.S.C. § 1514A (Against Meridian and Whitfield)",
        [
            "Plaintiff engaged in protected activity when she reported the sham Northgate "
            "revenue, and Defendants discharged her because of it. Plaintiff filed a timely "
            "complaint with the Occupational Safety and Health Administration on "
            "April 28, 2023, and more than 180 days have passed without a final decision.",
        ],
    ),
    (
        "COUNT III - Retaliation, Cal. Lab. Code § 1102.5 (Against Meridian)",
        [
            "Meridian retaliated against Plaintiff for disclosing information she reasonably "
            "believed showed a violation of state and federal law.",
        ],
    ),
    (
        "PRAYER FOR RELIEF",
        [
            "WHEREFORE, Plaintiff requests judgment against Defendants, jointly and severally: "
            "(a) compensatory damages of not less than $1,250,000.00; (b) back pay and front "
            "pay with interest; (c) reinstatement or, in the alternative, damages in lieu of "
            "reinstatement; (d) reasonable attorneys' fees and costs under 18 U.S.C. "
            "§ 1514A(c)(2)(C); and (e) such other relief as the Court deems just.",
        ],
    ),
]


def make_complaint() -> None:
    pdf = _Pdf(f"COMPLAINT - {CASE_NO}")
    pdf.add_page()
    pdf.set_font("Times", size=11)
    for line in (
        "Daniel K. Reyes (SBN 214587)",
        "dreyes@reyeswhitman.example",
        "REYES & WHITMAN LLP",
        "633 West Fifth Street, 28th Floor",
        "Los Angeles, California 90071",
        "Attorneys for Plaintiff Jane R. Holloway",
    ):
        pdf.cell(0, 5, line, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)
    pdf.set_font("Times", "B", 12)
    pdf.multi_cell(
        0,
        6,
        "UNITED STATES DISTRICT COURT\nCENTRAL DISTRICT OF CALIFORNIA\nWESTERN DIVISION",
        align="C",
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.ln(4)
    pdf.set_font("Times", size=11)
    pdf.multi_cell(
        0,
        5.5,
        "JANE R. HOLLOWAY, an individual,\n        Plaintiff,\n    v.\n"
        "MERIDIAN CAPITAL HOLDINGS, INC., a Delaware corporation; THOMAS A. WHITFIELD, an "
        "individual; and HARBOR POINT ADVISORS LLC, a Nevada limited liability company,\n"
        "        Defendants.",
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.ln(3)
    pdf.set_font("Times", "B", 11)
    pdf.multi_cell(
        0,
        5.5,
        f"{CASE_NO}\nAssigned to the Hon. Margaret L. Okafor\n\n"
        "COMPLAINT FOR: (1) VIOLATION OF 15 U.S.C. § 78j(b); (2) RETALIATION, "
        "18 U.S.C. § 1514A; (3) RETALIATION, CAL. LAB. CODE § 1102.5\n\nDEMAND FOR JURY TRIAL",
        new_x="LMARGIN",
        new_y="NEXT",
    )
    number = 0
    for heading, paragraphs in COMPLAINT_SECTIONS:
        _heading(pdf, heading)
        for text in paragraphs:
            number += 1
            _para(pdf, f"{number}. {text}", line_height=8.5)
    _heading(pdf, "DEMAND FOR JURY TRIAL")
    _para(pdf, "Plaintiff demands a trial by jury on all issues so triable.", line_height=7.5)
    pdf.set_font("Times", size=11)
    for line in (
        "Dated: June 12, 2023",
        "REYES & WHITMAN LLP",
        "By: /s/ Daniel K. Reyes",
        "Daniel K. Reyes",
        "Attorneys for Plaintiff Jane R. Holloway",
    ):
        pdf.cell(0, 6, line, new_x="LMARGIN", new_y="NEXT")
    _save_pdf(pdf, "complaint_holloway_v_meridian.pdf")


# --- settlement term sheet (DOCX with a payment table) ------------------------------------

PAYMENT_SCHEDULE: list[tuple[str, str, str, str]] = [
    ("Installment", "Due Date", "Amount", "Paid By / Payee"),
    ("1 - Initial payment", "February 15, 2024", "$1,000,000.00", "Meridian to Escrow Agent"),
    ("2 - Second payment", "05/15/2024", "$750,000.00", "Meridian to Escrow Agent"),
    ("3 - Final payment", "2024-08-15", "$500,000.00", "Harbor Point to Escrow Agent"),
    ("Attorneys' fees", "2024-08-15", "USD 250,000", "Escrow Agent to Reyes & Whitman LLP"),
    ("Total", "", "$2,500,000.00", ""),
]

TERM_SHEET_PARAGRAPHS: list[str] = [
    "CONFIDENTIAL SETTLEMENT TERM SHEET",
    f"Holloway v. Meridian Capital Holdings, Inc., et al., {CASE_NO} "
    "(C.D. Cal.), before the Hon. Margaret L. Okafor",
    "This binding term sheet records the settlement reached on January 9, 2024 at a "
    "mediation conducted in Los Angeles, California by the Hon. Richard P. Castellanos "
    "(Ret.) of Pacific Mediation Group LLC between Plaintiff Jane R. Holloway and "
    "Defendants Meridian Capital Holdings, Inc., Thomas A. Whitfield and Harbor Point "
    'Advisors LLC (together, the "Parties").',
    "1. Settlement Payment. Defendants shall pay a total of $2,500,000.00 (the "
    '"Settlement Amount") into an escrow account at First Pacific Bank, N.A. '
    '(the "Escrow Agent") according to the payment schedule below. Meridian and '
    "Mr. Whitfield are jointly and severally liable for the Meridian installments.",
    "2. Release. Ms. Holloway releases all claims against Defendants arising from her "
    "employment and its termination, including claims under 15 U.S.C. § 78j(b), "
    "18 U.S.C. § 1514A, 42 U.S.C. § 1983 and Cal. Lab. Code § 1102.5. Ms. Holloway "
    "expressly waives the protection of Cal. Civ. Code § 1542. Nothing in this release "
    "limits her right to communicate with or receive an award from the Securities and "
    "Exchange Commission.",
    "3. Dismissal. Within five (5) business days after the final payment clears, the "
    "Parties shall file a stipulation of dismissal with prejudice under Fed. R. Civ. P. "
    "41(a)(1)(A)(ii). Defendants withdraw their pending motion to dismiss under "
    "Fed. R. Civ. P. 12(b)(6). Judge Okafor shall retain jurisdiction to enforce the "
    "settlement.",
    "4. No Admission. Meridian, Whitfield and Harbor Point deny all liability. This term "
    "sheet is not an admission of wrongdoing by any Party.",
    "5. Neutral Reference. Meridian shall confirm Ms. Holloway's dates of employment and "
    "title, Vice President of Compliance, in response to reference requests directed to "
    "its human resources department in Irvine, California.",
    "6. Default. If any installment is more than ten (10) days late, Ms. Holloway may "
    "apply ex parte for entry of a stipulated judgment for the unpaid balance plus "
    "interest at 10% per annum.",
    "7. Governing Law. This term sheet is governed by California law and is enforceable "
    "under Cal. Civ. Proc. Code § 664.6.",
]

TERM_SHEET_SIGNATURES: list[str] = [
    "Agreed:",
    "Jane R. Holloway - /s/ Jane R. Holloway - dated 01/09/2024",
    "Meridian Capital Holdings, Inc., by Thomas A. Whitfield, CEO - dated 01/09/2024",
    "Harbor Point Advisors LLC, by Gregory M. Dane, Managing Member - dated 01/10/2024",
    "Approved as to form: Daniel K. Reyes, Reyes & Whitman LLP, counsel for Plaintiff; "
    "Priya Natarajan, Caldwell Brooks Sterling LLP, counsel for Defendants.",
    "SCHEDULE A - PAYMENT SCHEDULE",
    "All payments by wire transfer to the Escrow Agent, First Pacific Bank, N.A., "
    "Los Angeles, California, account reference HOLLOWAY-2024-ESC.",
]


def make_settlement_term_sheet() -> None:
    document = docx.Document()
    document.core_properties.title = "Settlement Term Sheet - Holloway v. Meridian"
    document.core_properties.author = "Reyes & Whitman LLP"
    document.core_properties.created = FIXED_TIME.replace(tzinfo=None)
    document.core_properties.modified = FIXED_TIME.replace(tzinfo=None)
    document.core_properties.last_modified_by = "docpipe samples"
    document.core_properties.revision = 1
    style = document.styles["Normal"]
    style.font.name = "Times New Roman"
    style.font.size = Pt(11)
    for index, text in enumerate(TERM_SHEET_PARAGRAPHS + TERM_SHEET_SIGNATURES):
        if index == 0:
            document.add_heading(text, level=1)
        elif text.startswith("SCHEDULE"):
            document.add_heading(text, level=2)
        else:
            document.add_paragraph(text)
    table = document.add_table(rows=len(PAYMENT_SCHEDULE), cols=4)
    table.style = "Table Grid"
    for row, values in zip(table.rows, PAYMENT_SCHEDULE, strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    # The "Total" label spans the first two columns (a merged cell).
    total = table.rows[-1]
    total.cells[0].merge(total.cells[1])
    total.cells[0].text = "Total"
    buffer = io.BytesIO()
    document.save(buffer)
    (OUT / "settlement_term_sheet.docx").write_bytes(_fixed_zip_times(buffer.getvalue()))


def _fixed_zip_times(data: bytes) -> bytes:
    """Rewrite a zip with fixed member times (python-docx stamps the current time)."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            member = zipfile.ZipInfo(info.filename, date_time=ZIP_TIME)
            member.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(member, source.read(info.filename))
    return out.getvalue()


# --- affidavit (TXT) --------------------------------------------------------------------------

AFFIDAVIT = f"""UNITED STATES DISTRICT COURT
CENTRAL DISTRICT OF CALIFORNIA

JANE R. HOLLOWAY, Plaintiff,
v.
MERIDIAN CAPITAL HOLDINGS, INC., et al., Defendants.

{CASE_NO}

AFFIDAVIT OF JANE R. HOLLOWAY IN SUPPORT OF PLAINTIFF'S OPPOSITION
TO DEFENDANTS' MOTION TO DISMISS UNDER FED. R. CIV. P. 12(b)(6)

STATE OF CALIFORNIA   )
                      ) ss.
COUNTY OF LOS ANGELES )

I, Jane R. Holloway, being first duly sworn, depose and state as follows:

1. I am the Plaintiff in this action. I am over eighteen years of age and I have personal
knowledge of the facts stated in this affidavit. If called as a witness, I could and would
testify competently to them.

2. From January 9, 2019 until April 1, 2023, I was employed by Meridian Capital Holdings,
Inc. ("Meridian") in Irvine, California as Vice President of Compliance. I reported to the
Chief Executive Officer, Thomas A. Whitfield.

3. On 03/06/2023 Mr. Whitfield asked me to sign a compliance acknowledgment of the Master
Services Agreement between Meridian and Northgate Data Systems Corp. dated March 3, 2023.
The agreement called for an annual fee of $1,250,000.00 and an onboarding fee of USD 45,000.

4. On 03/15/2023 I reviewed the wire confirmations from First Pacific Bank, N.A. The
onboarding fee was not sent to Northgate's account in Reno, Nevada. It was sent to an account
in Las Vegas, Nevada held by Harbor Point Advisors LLC. Gregory M. Dane, the managing member of
Harbor Point, is married to Mr. Whitfield's sister.

5. I asked Rebecca S. Lindqvist, Northgate's Chief Operating Officer, by telephone on
March 17, 2023 whether Northgate had begun work. Ms. Lindqvist told me that Northgate had
not been asked to perform any services and had not issued any invoice to Meridian.

6. On March 20, 2023 I delivered a memorandum describing these facts to Mr. Whitfield and to
Dr. Samuel Okonkwo, chair of Meridian's audit committee. A true and correct copy of that
memorandum is attached as Exhibit 1.

7. That afternoon Mr. Whitfield came to my office and told me that I was "not a team player"
and that I "should think hard about my future at Meridian." On 2023-04-01 I received a letter
terminating my employment as part of a "restructuring." To my knowledge no other position was
eliminated.

8. On April 28, 2023 I filed a complaint with the Occupational Safety and Health
Administration under 18 U.S.C. § 1514A. More than 180 days have passed and the agency has
not issued a final decision.

9. I purchased 12,400 shares of Meridian common stock through the employee stock purchase
plan between 2020 and 2023. After Castellan Research LLC published its report on June 2, 2023,
the value of those shares fell by approximately $186,000.00.

10. I have retained Daniel K. Reyes of Reyes & Whitman LLP to represent me in this matter.

I declare under penalty of perjury under the laws of the United States of America and the
State of California that the foregoing is true and correct.

Executed on September 18, 2023, at Pasadena, California.

/s/ Jane R. Holloway
Jane R. Holloway

Subscribed and sworn to before me on September 18, 2023 by Jane R. Holloway, proved to me on
the basis of satisfactory evidence to be the person who appeared before me.

/s/ María Ortega-Díaz
María Ortega-Díaz, Notary Public
Los Angeles County, California
Commission No. 2398114, expires 11/30/2026
"""


# --- counsel correspondence (EML, plain + HTML alternative) ------------------------------------

EMAIL_PLAIN = f"""Priya,

Following yesterday's mediation before Judge Castellanos, I write to confirm the payment
terms of the settlement in Holloway v. Meridian Capital Holdings, Inc., {CASE_NO}.

1. Meridian will wire $1,000,000.00 to the escrow account at First Pacific Bank, N.A. by
   February 15, 2024, and $750,000.00 by 05/15/2024.
2. Harbor Point Advisors LLC will wire the final $500,000.00 by 2024-08-15.
3. The Escrow Agent will release USD 250,000 in attorneys' fees to Reyes & Whitman LLP
   with the final installment.

Ms. Holloway will execute the release, including the waiver of Cal. Civ. Code § 1542, once
the term sheet is countersigned by Mr. Whitfield and by Gregory M. Dane for Harbor Point.
Please confirm that Meridian is withdrawing its motion under Fed. R. Civ. P. 12(b)(6), which
is set for hearing before Judge Okafor on February 5, 2024, and that your clients will not
oppose the joint notice of settlement we intend to file on January 12, 2024.

For the avoidance of doubt, the release does not cover Ms. Holloway's rights under
15 U.S.C. § 78u-6 to communicate with or receive an award from the SEC.

Best regards,

Daniel K. Reyes
Reyes & Whitman LLP
633 West Fifth Street, 28th Floor
Los Angeles, CA 90071
(213) 555-0147

On Tue, Jan 9, 2024 at 6:05 PM Priya Natarajan <pnatarajan@caldwellbrooks.example> wrote:
> Dan - thank you for today. Subject to Mr. Whitfield's approval, Meridian accepts the
> schedule Judge Castellanos proposed. Two points: (a) Meridian will report the payments on
> IRS Form 1099, not Form W-2, and (b) Harbor Point's share must be paid by Harbor Point
> Advisors LLC itself, not by Meridian. Gregory Dane has authority to sign for Harbor Point.
> We will also withdraw the subpoena served on Northgate Data Systems Corp. in Reno.
>
> Priya Natarajan | Partner | Caldwell Brooks Sterling LLP | San Francisco, California
"""

EMAIL_HTML = f"""<!DOCTYPE html>
<html><head><title>Holloway v. Meridian - settlement payment terms</title>
<style>p {{ font-family: Georgia, serif; }} .sig {{ color: #555; }}</style></head>
<body>
<p>Priya,</p>
<p>Following yesterday's mediation before Judge Castellanos, I write to confirm the payment
terms of the settlement in <i>Holloway v. Meridian Capital Holdings, Inc.</i>, {CASE_NO}.</p>
<ol>
<li>Meridian will wire <b>$1,000,000.00</b> to the escrow account at First Pacific Bank, N.A.
by February 15, 2024, and <b>$750,000.00</b> by 05/15/2024.</li>
<li>Harbor Point Advisors LLC will wire the final <b>$500,000.00</b> by 2024-08-15.</li>
<li>The Escrow Agent will release USD 250,000 in attorneys' fees to Reyes &amp; Whitman LLP
with the final installment.</li>
</ol>
<p>Ms. Holloway will execute the release, including the waiver of Cal. Civ. Code &sect; 1542,
once the term sheet is countersigned by Mr. Whitfield and by Gregory M. Dane for Harbor
Point. Please confirm that Meridian is withdrawing its motion under Fed. R. Civ. P. 12(b)(6),
which is set for hearing before Judge Okafor on February 5, 2024, and that your clients will
not oppose the joint notice of settlement we intend to file on January 12, 2024.</p>
<p>For the avoidance of doubt, the release does not cover Ms. Holloway's rights under
15 U.S.C. &sect; 78u-6 to communicate with or receive an award from the SEC.</p>
<p>Best regards,</p>
<p class="sig">Daniel K. Reyes<br>Reyes &amp; Whitman LLP<br>633 West Fifth Street, 28th Floor<br>
Los Angeles, CA 90071<br>(213) 555-0147</p>
<p>On Tue, Jan 9, 2024 at 6:05 PM Priya Natarajan &lt;pnatarajan@caldwellbrooks.example&gt;
wrote:</p>
<blockquote>Dan - thank you for today. Subject to Mr. Whitfield's approval, Meridian accepts
the schedule Judge Castellanos proposed. Two points: (a) Meridian will report the payments on
IRS Form 1099, not Form W-2, and (b) Harbor Point's share must be paid by Harbor Point
Advisors LLC itself, not by Meridian. Gregory Dane has authority to sign for Harbor Point.
We will also withdraw the subpoena served on Northgate Data Systems Corp. in Reno.<br><br>
Priya Natarajan | Partner | Caldwell Brooks Sterling LLP | San Francisco, California
</blockquote>
<script>window.trackOpen && window.trackOpen("msg-2024-0110");</script>
</body></html>
"""


def make_counsel_correspondence() -> None:
    message = EmailMessage()
    message["From"] = "Daniel K. Reyes <dreyes@reyeswhitman.example>"
    message["To"] = "Priya Natarajan <pnatarajan@caldwellbrooks.example>"
    message["Cc"] = "Jane Holloway <jane.holloway@mail.example>"
    message["Date"] = "Wed, 10 Jan 2024 14:32:07 -0800"
    message["Subject"] = f"Holloway v. Meridian, {CASE_NO} - settlement payment terms"
    message["Message-ID"] = "<20240110143207.4412@reyeswhitman.example>"
    message.set_content(EMAIL_PLAIN)
    message.add_alternative(EMAIL_HTML, subtype="html")
    message.set_boundary("==docpipe-sample-boundary-7f3a==")
    (OUT / "counsel_correspondence.eml").write_bytes(message.as_bytes(policy=SMTP))


def main() -> None:
    make_master_services_agreement()
    make_complaint()
    make_settlement_term_sheet()
    (OUT / "affidavit_of_jane_holloway.txt").write_text(AFFIDAVIT, encoding="utf-8")
    make_counsel_correspondence()
    for path in sorted(OUT.iterdir()):
        if path.suffix in {".pdf", ".docx", ".txt", ".eml"}:
            print(f"{path.name:40} {path.stat().st_size:>8,} bytes")


if __name__ == "__main__":
    main()
