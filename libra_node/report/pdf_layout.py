"""The PDF page layout of a draft report, drawn with reportlab.

Top to bottom: the AI-draft banner (and the demo banner for an untrained
model), the patient and study header with the comparison date, the clinical
context, the findings, the impression, and the model's identity. Every page
repeats the banner in its footer, so a printed page on its own still says
what it is.

Fonts: reportlab's built-in Helvetica holds Western European text; runs of
text beyond it (a Japanese or Cyrillic name) are set in one of the standard
Asian CID fonts that PDF readers provide (Japanese, which also holds Greek
and Cyrillic, or Korean). Scripts outside those (Arabic, Hebrew, Thai) may
show as empty boxes; the DICOM header always carries the exact name.

The PDF is written in reportlab's invariant mode: no clock reading or
random ID, so the same draft gives the same bytes.
"""

from __future__ import annotations

import io
import itertools
import re
from xml.sax.saxutils import escape

from pydicom.dataset import Dataset
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from libra_node.report import wording
from libra_node.report.display import format_date, format_person_name, format_time
from libra_node.report.draft_report import DraftReport

LATIN_FONT = "Helvetica"
LATIN_BOLD_FONT = "Helvetica-Bold"
JAPANESE_FONT = "HeiseiKakuGo-W5"
KOREAN_FONT = "HYGothic-Medium"
_HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")

_RED = colors.HexColor("#b00020")
_ORANGE = colors.HexColor("#e65100")

_BODY = ParagraphStyle("body", fontName=LATIN_FONT, fontSize=10, leading=13)
_LABEL = ParagraphStyle("label", parent=_BODY, fontName=LATIN_BOLD_FONT)
_HEADING = ParagraphStyle(
    "heading", fontName=LATIN_BOLD_FONT, fontSize=12, leading=15, spaceBefore=8, spaceAfter=4
)
_TITLE = ParagraphStyle("title", fontName=LATIN_BOLD_FONT, fontSize=15, leading=19, spaceAfter=6)
_BANNER = ParagraphStyle(
    "banner",
    fontName=LATIN_BOLD_FONT,
    fontSize=16,
    leading=20,
    textColor=colors.white,
    alignment=TA_CENTER,
)
_BANNER_TEXT = ParagraphStyle("banner-text", parent=_BODY, textColor=colors.white)


def _is_latin(character: str) -> bool:
    try:
        character.encode("cp1252")
        return True
    except UnicodeEncodeError:
        return False


def _asian_font(run: str) -> str:
    font = KOREAN_FONT if _HANGUL.search(run) else JAPANESE_FONT
    if font not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(font))
    return font


def _markup(text: str) -> tuple[str, bool]:
    """Paragraph markup for text: markup characters escaped, line breaks
    kept, and runs that Helvetica cannot hold set in an Asian font.

    Returns the markup and whether any such run was found.
    """
    parts: list[str] = []
    has_asian = False
    for latin, run in itertools.groupby(text, key=_is_latin):
        chunk = escape("".join(run)).replace("\n", "<br/>")
        if not latin:
            has_asian = True
            chunk = f'<font face="{_asian_font(chunk)}">{chunk}</font>'
        parts.append(chunk)
    return "".join(parts), has_asian


def _paragraph(text: str, style: ParagraphStyle = _BODY) -> Paragraph:
    markup, has_asian = _markup(text)
    if has_asian:
        # Asian text has no spaces to break lines at.
        style = ParagraphStyle(f"{style.name}-cjk", parent=style, wordWrap="CJK")
    return Paragraph(markup, style)


def _paragraphs(text: str) -> list[Flowable]:
    """Long text as one paragraph per line, so that pages can break between them."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [_paragraph(line) if line.strip() else Spacer(1, 6) for line in lines]


def _banner(title: str, text: str, color: colors.Color) -> Table:
    table = Table(
        [[Paragraph(escape(title), _BANNER)], [Paragraph(escape(text), _BANNER_TEXT)]],
        colWidths=["100%"],
    )
    table.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, -1), color),
                ("LEFTPADDING", (0, 0), (-1, -1), 8),
                ("RIGHTPADDING", (0, 0), (-1, -1), 8),
            ]
        )
    )
    return table


def _banners(draft: DraftReport) -> list[Flowable]:
    flowables: list[Flowable] = [
        _banner(wording.AI_DRAFT_BANNER, wording.AI_DRAFT_EXPLANATION, _RED),
        Spacer(1, 4),
    ]
    if draft.model.is_demo:
        flowables += [
            _banner(wording.DEMO_BANNER, wording.DEMO_EXPLANATION, _ORANGE),
            Spacer(1, 4),
        ]
    return flowables


def _field_table(rows: list[tuple[str, str]]) -> Table:
    cells = [[Paragraph(escape(label), _LABEL), _paragraph(value)] for label, value in rows]
    table = Table(cells, colWidths=[40 * mm, None])
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                ("TOPPADDING", (0, 0), (-1, -1), 1),
            ]
        )
    )
    return table


def _patient_and_study(header: Dataset, draft: DraftReport) -> Table:
    study_time = format_time(header.get("StudyTime"))
    rows = [
        ("Patient", format_person_name(header.get("PatientName"))),
        ("Patient ID", str(header.get("PatientID") or "")),
        ("Birth date", format_date(header.get("PatientBirthDate"))),
        ("Sex", str(header.get("PatientSex") or "")),
        ("Study date", f"{format_date(header.get('StudyDate'))} {study_time}".strip()),
        ("Accession number", str(header.get("AccessionNumber") or "")),
        ("Study", str(header.get("StudyDescription") or "")),
        ("Comparison", wording.comparison(draft.prior_study_date)),
    ]
    return _field_table(rows)


def _clinical_context(draft: DraftReport) -> list[Flowable]:
    context = draft.context
    rows = [
        ("Indication", context.indication),
        ("History", context.history),
        ("Technique", context.technique),
        ("Comparison notes", context.comparison),
    ]
    present = [(label, value) for label, value in rows if value]
    if not present:
        return []
    return [Paragraph("Clinical information", _HEADING), _field_table(present)]


def _identity(draft: DraftReport) -> list[Flowable]:
    rows = [
        ("Written by", wording.model_description(draft.model)),
        ("Draft written", draft.created_at.strftime("%Y-%m-%d %H:%M:%S")),
        ("Report version", str(draft.study_version)),
    ]
    return [Paragraph("About this draft", _HEADING), _field_table(rows)]


def _story(draft: DraftReport) -> list[Flowable]:
    story: list[Flowable] = [
        *_banners(draft),
        Paragraph("Chest radiograph report", _TITLE),
        _patient_and_study(draft.current_header, draft),
        *_clinical_context(draft),
        Paragraph("Findings", _HEADING),
        *_paragraphs(draft.findings),
    ]
    if draft.impression.strip():
        story += [Paragraph("Impression", _HEADING), *_paragraphs(draft.impression)]
    return story + _identity(draft)


def _footer(canvas: Canvas, document: SimpleDocTemplate) -> None:
    canvas.saveState()
    canvas.setFont(LATIN_BOLD_FONT, 9)
    canvas.setFillColor(_RED)
    canvas.drawString(document.leftMargin, 10 * mm, wording.AI_DRAFT_BANNER)
    canvas.setFillColor(colors.black)
    canvas.setFont(LATIN_FONT, 9)
    canvas.drawRightString(
        document.pagesize[0] - document.rightMargin, 10 * mm, f"page {document.page}"
    )
    canvas.restoreState()


def render_report_pdf(draft: DraftReport) -> bytes:
    """The draft as the bytes of a PDF file."""
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=16 * mm,
        bottomMargin=18 * mm,
        title=wording.document_title(draft.model),
        author=draft.model.name,
        subject="AI draft radiology report",
        creator="libra-node",
        invariant=1,
    )
    document.build(_story(draft), onFirstPage=_footer, onLaterPages=_footer)
    return buffer.getvalue()
