"""The Encapsulated PDF rendition: valid DICOM, and a PDF that says the same."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, EncapsulatedPDFStorage
from pypdf import PdfReader

from libra_node.config import ReportSettings
from libra_node.draft import ClinicalContext
from libra_node.report import build_pdf, build_sr, pdf_uids
from libra_node.report.wording import AI_DRAFT_BANNER, DEMO_BANNER, NO_PRIOR


def pdf_bytes(document: Dataset) -> bytes:
    return bytes(document.EncapsulatedDocument[: document.EncapsulatedDocumentLength])


def pdf_text(document: Dataset) -> tuple[str, int]:
    """The PDF's text, whitespace-normalised, and its page count."""
    reader = PdfReader(io.BytesIO(pdf_bytes(document)))
    text = "\n".join(page.extract_text() for page in reader.pages)
    return " ".join(text.split()), len(reader.pages)


def test_pdf_is_valid_dicom_in_the_current_study(
    make_draft, settings, check_dicom, studies
) -> None:
    draft = make_draft()
    document = pydicom.dcmread(check_dicom(build_pdf(draft, settings)).path)
    current = studies.current
    assert document.SOPClassUID == EncapsulatedPDFStorage
    assert document.MIMETypeOfEncapsulatedDocument == "application/pdf"
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "AccessionNumber"):
        assert document[keyword].value == current[keyword].value, keyword
    assert document.SeriesDescription == "AI DRAFT - NOT VERIFIED"
    assert document.VerificationFlag == "UNVERIFIED"
    assert document.DocumentTitle.startswith(AI_DRAFT_BANNER)
    assert pdf_bytes(document).startswith(b"%PDF-") and pdf_bytes(document).rstrip().endswith(
        b"%%EOF"
    )


def test_pdf_has_its_own_uids_and_names_the_sr(make_draft, settings) -> None:
    draft = make_draft()
    sr, document = build_sr(draft, settings), build_pdf(draft, settings)
    expected = pdf_uids(draft.study_instance_uid, draft.study_version, draft.model)
    assert (document.SeriesInstanceUID, document.SOPInstanceUID) == (
        expected.series_instance_uid,
        expected.sop_instance_uid,
    )
    assert document.SOPInstanceUID != sr.SOPInstanceUID
    assert document.SeriesInstanceUID != sr.SeriesInstanceUID
    (source,) = document.SourceInstanceSequence
    assert (source.ReferencedSOPInstanceUID, source.ReferencedSOPClassUID) == (
        sr.SOPInstanceUID,
        sr.SOPClassUID,
    )


def test_source_reference_follows_the_configured_sr_class(make_draft) -> None:
    document = build_pdf(make_draft(), ReportSettings(sop_class="comprehensive"))
    assert document.SourceInstanceSequence[0].ReferencedSOPClassUID == ComprehensiveSRStorage


def test_pdf_says_what_the_sr_says(make_draft, settings) -> None:
    draft = make_draft()
    text, _ = pdf_text(build_pdf(draft, settings))
    for expected in (
        AI_DRAFT_BANNER,
        "Doe, Jane",
        draft.current_header.PatientID,
        draft.current_header.AccessionNumber,
        "2026-12-01",  # study date
        "Compared with the prior chest radiograph of 2025-06-14.",
        "The heart is normal in size.",
        "The lungs are clear. No pleural effusion.",
        draft.impression,
        draft.context.indication,
        draft.context.history,
        "libra-v1.0-7b (variant 7b, weights a1b2c3d), libra-node 0.1.0",
    ):
        assert expected in text, expected
    assert DEMO_BANNER not in text


def test_pdf_without_prior_or_context(make_draft, settings, check_dicom) -> None:
    document = build_pdf(
        make_draft(with_prior=False, context=ClinicalContext(), impression=""), settings
    )
    check_dicom(document)
    text, _ = pdf_text(document)
    assert NO_PRIOR in text
    assert "Clinical information" not in text and "Impression" not in text


def test_demo_model_is_named_plainly(make_draft, settings, demo_model) -> None:
    document = build_pdf(make_draft(model=demo_model), settings)
    text, _ = pdf_text(document)
    assert DEMO_BANNER in text and "untrained" in text
    assert DEMO_BANNER in document.SeriesDescription and DEMO_BANNER in document.DocumentTitle
    assert PdfReader(io.BytesIO(pdf_bytes(document))).metadata.title == document.DocumentTitle


def test_markup_characters_are_printed_as_text(make_draft, settings, check_dicom) -> None:
    findings = 'Tube <b>3 cm</b> above carina & "stable"; C:\\temp; 50% < 60% > 40%'
    document = build_pdf(make_draft(findings=findings), settings)
    check_dicom(document)
    text, _ = pdf_text(document)
    assert findings in text


@pytest.mark.parametrize(
    ("name", "character_set", "shown"),
    [
        ("Müller^Jörg", "ISO_IR 100", "Müller, Jörg"),
        (
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
            ["", "ISO 2022 IR 87"],
            "Yamada, Tarou / 山田, 太郎 / やまだ, たろう",
        ),
        ("Kim^Minjun=김^민준", "ISO_IR 192", "Kim, Minjun / 김, 민준"),
    ],
)
def test_patient_name_in_any_character_set(
    make_studies, make_draft, settings, check_dicom, name, character_set, shown
) -> None:
    studies = make_studies(name=name, character_set=character_set)
    document = pydicom.dcmread(check_dicom(build_pdf(make_draft(studies=studies), settings)).path)
    assert str(document.PatientName) == name
    text, _ = pdf_text(document)
    assert shown in text


def test_very_long_text_runs_over_pages(make_draft, settings, check_dicom) -> None:
    findings = "\n".join(
        f"Line {n}: the lungs remain clear without focal consolidation." for n in range(400)
    )
    document = build_pdf(make_draft(findings=findings), settings)
    check_dicom(document)
    text, pages = pdf_text(document)
    assert pages > 3
    assert "Line 0:" in text and "Line 399:" in text
    # Every page repeats the banner in its footer.
    assert text.count(AI_DRAFT_BANNER) >= pages


def test_identical_inputs_give_identical_bytes(make_draft, settings, encode, move_clock) -> None:
    first = encode(build_pdf(make_draft(), settings))
    move_clock()
    assert encode(build_pdf(make_draft(), settings)) == first


def test_odd_pdf_lengths_are_padded_and_recorded(make_draft, settings) -> None:
    parities = set()
    for marks in range(1, 9):
        document = build_pdf(make_draft(findings="Clear lungs" + "!" * marks), settings)
        length = document.EncapsulatedDocumentLength
        assert len(document.EncapsulatedDocument) == length + length % 2
        assert pdf_bytes(document).rstrip().endswith(b"%%EOF")
        parities.add(length % 2)
    assert parities == {0, 1}


def test_header_with_only_a_study_uid_still_gives_a_valid_pdf(
    make_draft, settings, check_dicom
) -> None:
    header = Dataset()
    header.StudyInstanceUID = make_draft().study_instance_uid
    document = pydicom.dcmread(
        check_dicom(build_pdf(make_draft(current_header=header), settings)).path
    )
    assert document.StudyInstanceUID == header.StudyInstanceUID
    assert AI_DRAFT_BANNER in pdf_text(document)[0]
