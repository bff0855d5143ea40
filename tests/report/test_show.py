"""`libra-node show`: any TID 2000 style SR as readable text."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian, generate_uid

from libra_node.cli import main
from libra_node.report import DocumentReference, build_sr


def show(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()  # only what `show` itself prints counts
    status = main(["show", str(path)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def content_item(relationship: str, value_type: str, name: Dataset, **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [name]
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def hand_made_report() -> Dataset:
    """A Comprehensive SR in TID 2000 style, built with plain pydicom:
    a person observer, coded and numeric findings, a verified status."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        "Hand^Made",
        "HM-1",
        "19700203",
        "M",
    )
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = generate_uid(), "20240102", "0930"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "7", "HM-ACC", ""
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "SR", generate_uid(), 5
    ds.SeriesDescription = "Radiologist report"
    ds.InstanceNumber, ds.ContentDate, ds.ContentTime = 1, "20240102", "101010"
    ds.Manufacturer = "Hand"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "VERIFIED"
    verifier = Dataset()
    verifier.VerifyingObserverName = "Reader^Rita"
    verifier.VerifyingOrganization = "General Hospital"
    verifier.VerificationDateTime = "20240102110000"
    verifier.VerifyingObserverIdentificationCodeSequence = []
    ds.VerifyingObserverSequence = [verifier]
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [code("18748-4", "LN", "Diagnostic Imaging Report")]

    findings = content_item(
        "CONTAINS", "CONTAINER", code("121070", "DCM", "Findings"), ContinuityOfContent="SEPARATE"
    )
    measured = Dataset()
    measured.NumericValue = "12"
    measured.MeasurementUnitsCodeSequence = [code("mm", "UCUM", "millimeter")]
    findings.ContentSequence = [
        content_item(
            "CONTAINS",
            "CODE",
            code("121071", "DCM", "Finding"),
            ConceptCodeSequence=[code("27925004", "SCT", "Nodule")],
        ),
        content_item(
            "CONTAINS", "NUM", code("410668003", "SCT", "Length"), MeasuredValueSequence=[measured]
        ),
        content_item(
            "CONTAINS",
            "TEXT",
            code("121071", "DCM", "Finding"),
            TextValue="Small nodule in the right upper lobe.\r\nFollow-up advised.",
        ),
    ]
    ds.ContentSequence = [
        content_item(
            "HAS OBS CONTEXT",
            "CODE",
            code("121005", "DCM", "Observer Type"),
            ConceptCodeSequence=[code("121006", "DCM", "Person")],
        ),
        content_item(
            "HAS OBS CONTEXT",
            "PNAME",
            code("121008", "DCM", "Person Observer Name"),
            PersonName="Reader^Rita",
        ),
        content_item(
            "HAS OBS CONTEXT", "DATE", code("111060", "DCM", "Study Date"), Date="20240102"
        ),
        findings,
    ]
    return ds


def test_shows_our_draft_with_header_and_tree(make_draft, settings, check_sr, capsys) -> None:
    draft = make_draft()
    path = check_sr(build_sr(draft, settings)).path
    status, out, err = show(path, capsys)
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "Enhanced SR Storage"
    assert "Patient      : Doe, Jane (ID DEMO-0001, born 1960-01-01, F)" in lines
    assert "Status       : UNVERIFIED, PRELIMINARY, PARTIAL" in lines
    assert "Author       : Device: libra-v1.0-7b (AI draft generator)" in lines
    assert "Series       : AI DRAFT - NOT VERIFIED (#990)" in lines
    assert "Diagnostic Imaging Report" in lines
    assert "  contains Findings" in lines
    assert "    contains Finding:" in lines
    # Multi-line text keeps its lines, indented under its item.
    for finding_line in draft.findings.splitlines():
        assert f"        {finding_line}" in lines
    assert f"    contains Impression: {draft.impression}" in lines
    assert (
        "      inferred from Baseline: Digital X-Ray Image Storage - For Presentation "
        + draft.prior_images[0].sop_instance_uid
        in lines
    )


def test_shows_the_predecessor_of_a_new_version(make_draft, settings, check_sr, capsys) -> None:
    first = build_sr(make_draft(), settings)
    second = build_sr(
        make_draft(study_version=2, predecessor=DocumentReference.from_dataset(first)), settings
    )
    status, out, _ = show(check_sr(second).path, capsys)
    assert status == 0
    assert f"Replaces     : {first.SOPInstanceUID}" in out.splitlines()


def test_shows_a_hand_made_tid_2000_report(check_sr, capsys) -> None:
    # check_sr: the hand-made report is a valid SR by dicom3tools' and dcmtk's reading too.
    status, out, err = show(check_sr(hand_made_report()).path, capsys)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "Comprehensive SR Storage"
    assert "Patient      : Hand, Made (ID HM-1, born 1970-02-03, M)" in lines
    assert "Status       : VERIFIED, COMPLETE" in lines
    assert "Verified by  : Reader, Rita, General Hospital, 2024-01-02 11:00:00" in lines
    assert "Author       : Person: Reader, Rita" in lines
    assert "  has obs context Study Date: 2024-01-02" in lines
    assert "    contains Finding: Nodule" in lines
    assert "    contains Length: 12 mm" in lines
    assert "        Follow-up advised." in lines


def test_shows_pydicoms_sample_sr(capsys) -> None:
    """A dcmtk-made Comprehensive SR with every value type and by-reference items."""
    status, out, _ = show(Path(get_testdata_file("test-SR.dcm")), capsys)
    assert status == 0
    lines = out.splitlines()
    assert "Patient      : Test, S R" in lines
    assert "Status       : VERIFIED, COMPLETE" in lines
    assert "Diagnosis" in lines
    assert "    contains Diameter: 3 Length Unit" in lines
    assert "      selected from (see content item 1.3.2)" in lines
    assert any("CT Image Storage 1.2.3.4.5.0" in line for line in lines)


def test_an_image_is_refused_with_a_clear_error(studies, tmp_path, capsys) -> None:
    path = tmp_path / "image.dcm"
    studies.current.save_as(path, enforce_file_format=True)
    status, out, err = show(path, capsys)
    assert status != 0 and out == ""
    assert "is not a Structured Report" in err and "Digital X-Ray Image Storage" in err


def test_a_file_that_is_not_dicom_is_refused(tmp_path, capsys) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a DICOM file at all")
    status, _, err = show(path, capsys)
    assert status != 0 and "is not a DICOM file" in err


def test_a_missing_file_is_refused(tmp_path, capsys) -> None:
    status, _, err = show(tmp_path / "absent.dcm", capsys)
    assert status != 0 and "cannot read" in err
