"""The draft report as DICOM: an SR (TID 2000), an optional PDF, and a reader.

The pipeline builds a ``DraftReport`` and calls ``build_sr`` (and
``build_pdf`` when the PDF rendition is switched on); ``sr_uids`` tells it
in advance which UIDs that SR has, to find predecessors and to recognise
reports already delivered. ``render_sr_text`` turns any TID 2000 style SR
into readable text for ``libra-node show``.
"""

from libra_node.report.draft_report import DocumentReference, DraftReport, InvalidDraftError
from libra_node.report.pdf import build_pdf
from libra_node.report.show import NotAStructuredReportError, read_sr, render_sr_text
from libra_node.report.sr import build_sr
from libra_node.report.uids import DocumentUids, pdf_uids, sr_uids

__all__ = [
    "DocumentReference",
    "DocumentUids",
    "DraftReport",
    "InvalidDraftError",
    "NotAStructuredReportError",
    "build_pdf",
    "build_sr",
    "pdf_uids",
    "read_sr",
    "render_sr_text",
    "sr_uids",
]
