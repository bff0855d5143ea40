"""The draft SR: structure, flags, identity, character sets and validity.

Every SR built here goes through dciodvfy, dsrdump and dsr2html.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, EnhancedSRStorage

from libra_node.config import ReportSettings
from libra_node.draft import ClinicalContext
from libra_node.report import DocumentReference, build_sr, sr_uids
from libra_node.report.wording import AI_DRAFT_NOTICE, DEMO_NOTICE, NO_PRIOR


def meanings(items: list[Dataset]) -> list[str]:
    return [item.ConceptNameCodeSequence[0].CodeMeaning for item in items]


def child(item: Dataset, meaning: str) -> Dataset:
    matches = [
        c for c in item.ContentSequence if c.ConceptNameCodeSequence[0].CodeMeaning == meaning
    ]
    assert len(matches) == 1, f"expected one {meaning!r} under {meanings(item.ContentSequence)}"
    return matches[0]


def texts(container: Dataset) -> list[str]:
    return [item.TextValue for item in container.ContentSequence if item.ValueType == "TEXT"]


def evidence_uids(sequence: list[Dataset]) -> set[str]:
    return {
        sop.ReferencedSOPInstanceUID
        for study in sequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def test_full_draft_has_the_tid_2000_tree(make_draft, settings, check_sr) -> None:
    draft = make_draft()
    context = draft.context
    sr = pydicom.dcmread(check_sr(build_sr(draft, settings)).path)

    assert sr.SOPClassUID == EnhancedSRStorage
    assert sr.ValueType == "CONTAINER" and sr.ContinuityOfContent == "SEPARATE"
    title = sr.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("18748-4", "LN")
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "2000"
    assert meanings(sr.ContentSequence) == [
        "Language of Content Item and Descendants",
        "Observer Type",
        "Device Observer UID",
        "Device Observer Name",
        "Device Observer Manufacturer",
        "Device Observer Model Name",
        "Procedure reported",
        "Current Procedure Descriptions",
        "Request",
        "History",
        "Prior Procedure Descriptions",
        "Findings",
        "Impressions",
    ]
    assert (
        child(sr, "Language of Content Item and Descendants").ConceptCodeSequence[0].CodeValue
        == "en"
    )
    assert child(sr, "Observer Type").ConceptCodeSequence[0].CodeMeaning == "Device"
    assert child(sr, "Device Observer Model Name").TextValue == draft.model.name
    assert texts(child(sr, "Request")) == [context.indication]
    assert texts(child(sr, "History")) == [context.history]
    assert texts(child(sr, "Current Procedure Descriptions")) == [
        AI_DRAFT_NOTICE,
        context.technique,
    ]
    prior = texts(child(sr, "Prior Procedure Descriptions"))
    assert prior == [
        f"Compared with the prior chest radiograph of {draft.prior_study_date.isoformat()}.",
        context.comparison,
    ]
    assert texts(child(sr, "Impressions")) == [draft.impression]


def test_findings_are_inferred_from_current_and_prior_images(
    make_draft, settings, check_sr, studies
) -> None:
    draft = make_draft()
    sr = pydicom.dcmread(check_sr(build_sr(draft, settings)).path)
    finding = child(child(sr, "Findings"), "Finding")
    assert finding.TextValue == draft.findings
    sources = {
        item.ConceptNameCodeSequence[0].CodeMeaning: item.ReferencedSOPSequence[
            0
        ].ReferencedSOPInstanceUID
        for item in finding.ContentSequence
    }
    assert {item.RelationshipType for item in finding.ContentSequence} == {"INFERRED FROM"}
    assert sources == {
        "Best illustration of finding": studies.current.SOPInstanceUID,
        "Baseline": studies.prior.SOPInstanceUID,
    }
    # Evidence is split by study: current images, and the prior as other evidence.
    assert evidence_uids(sr.CurrentRequestedProcedureEvidenceSequence) == {
        studies.current.SOPInstanceUID
    }
    assert evidence_uids(sr.PertinentOtherEvidenceSequence) == {studies.prior.SOPInstanceUID}
    assert sr.PertinentOtherEvidenceSequence[0].StudyInstanceUID == studies.prior.StudyInstanceUID


def test_without_prior_says_none_was_available(make_draft, settings, check_sr, studies) -> None:
    sr = pydicom.dcmread(check_sr(build_sr(make_draft(with_prior=False), settings)).path)
    assert texts(child(sr, "Prior Procedure Descriptions"))[0] == NO_PRIOR
    finding = child(child(sr, "Findings"), "Finding")
    assert meanings(finding.ContentSequence) == ["Best illustration of finding"]
    assert "PertinentOtherEvidenceSequence" not in sr


def test_without_context_leaves_out_request_and_history(make_draft, settings, check_sr) -> None:
    draft = make_draft(context=ClinicalContext(), impression="")
    sr = pydicom.dcmread(check_sr(build_sr(draft, settings)).path)
    headings = meanings(sr.ContentSequence)
    assert "Request" not in headings and "History" not in headings
    assert "Impressions" not in headings  # the model wrote none
    assert texts(child(sr, "Current Procedure Descriptions")) == [AI_DRAFT_NOTICE]
    assert len(texts(child(sr, "Prior Procedure Descriptions"))) == 1


def test_document_is_an_unverified_draft_in_the_current_study(
    make_draft, settings, check_sr, studies
) -> None:
    sr = pydicom.dcmread(check_sr(build_sr(make_draft(), settings)).path)
    current = studies.current
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "PARTIAL",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    assert "VerifyingObserverSequence" not in sr
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyDescription",
    ):
        assert sr[keyword].value == current[keyword].value, keyword
    assert sr.Modality == "SR"
    assert sr.SeriesDescription == "AI DRAFT - NOT VERIFIED"
    assert sr.SeriesInstanceUID != current.SeriesInstanceUID
    algorithm = [
        item
        for item in sr.ContributingEquipmentSequence
        if item.get("ManufacturerModelName") == "libra-v1.0-7b"
    ]
    assert len(algorithm) == 1
    assert algorithm[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert algorithm[0].Manufacturer == settings.manufacturer
    assert list(algorithm[0].SoftwareVersions) == ["0.1.0", "a1b2c3d"]


def test_series_description_and_comprehensive_class_are_configurable(make_draft, check_sr) -> None:
    settings = ReportSettings(
        sop_class="comprehensive", series_description="KI-ENTWURF", institution_name="St. Elsewhere"
    )
    sr = pydicom.dcmread(check_sr(build_sr(make_draft(), settings)).path)
    assert sr.SOPClassUID == ComprehensiveSRStorage
    assert sr.SeriesDescription == "KI-ENTWURF"
    assert sr.InstitutionName == "St. Elsewhere"


def test_demo_model_is_named_plainly(make_draft, settings, check_sr, demo_model) -> None:
    checked = check_sr(build_sr(make_draft(model=demo_model), settings))
    sr = pydicom.dcmread(checked.path)
    assert texts(child(sr, "Current Procedure Descriptions"))[:2] == [AI_DRAFT_NOTICE, DEMO_NOTICE]
    assert "DEMO MODEL - UNTRAINED" in sr.SeriesDescription
    assert "DEMO MODEL - UNTRAINED" in checked.html


def test_trained_model_carries_no_demo_notice(make_draft, settings) -> None:
    sr = build_sr(make_draft(), settings)
    assert DEMO_NOTICE not in texts(child(sr, "Current Procedure Descriptions"))


@pytest.mark.parametrize(
    ("name", "character_set"),
    [
        ("Müller^Jörg^André", "ISO_IR 100"),
        ("Wang^XiaoDong=王^小東", "ISO_IR 192"),
        ("Иванов^Пётр", "ISO_IR 192"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"]),
    ],
)
def test_patient_name_survives_the_character_set(
    make_studies, make_draft, settings, check_sr, name, character_set
) -> None:
    studies = make_studies(name=name, character_set=character_set)
    checked = check_sr(build_sr(make_draft(studies=studies), settings))
    sr = pydicom.dcmread(checked.path)
    expected_set = character_set if isinstance(character_set, str) else list(character_set)
    written_set = (
        sr.SpecificCharacterSet
        if isinstance(sr.SpecificCharacterSet, str)
        else list(sr.SpecificCharacterSet)
    )
    assert written_set == expected_set
    assert str(sr.PatientName) == name
    if expected_set == ["", "ISO 2022 IR 87"]:
        # JIS X 0208 is switched to with ESC $ B and back with ESC ( B.
        assert b"\x1b$B" in checked.path.read_bytes() and b"\x1b(B" in checked.path.read_bytes()


def test_text_the_header_set_cannot_hold_switches_to_utf8(
    make_studies, make_draft, settings, check_sr
) -> None:
    studies = make_studies(name="Müller^Jörg", character_set="ISO_IR 100")
    findings = "Nodule ≥ 8 mm, unchanged → follow-up; 肺 nodule noted."
    sr = pydicom.dcmread(
        check_sr(build_sr(make_draft(studies=studies, findings=findings), settings)).path
    )
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert str(sr.PatientName) == "Müller^Jörg"
    assert child(child(sr, "Findings"), "Finding").TextValue == findings


def test_characters_that_need_escaping_survive(make_draft, settings, check_sr) -> None:
    findings = (
        'Tube tip <b>3 cm</b> above carina & "stable"; path C:\\temp\\x; 50% < 60%\r\nSecond line.'
    )
    checked = check_sr(build_sr(make_draft(findings=findings, impression="A\\B <i>"), settings))
    sr = pydicom.dcmread(checked.path)
    assert child(child(sr, "Findings"), "Finding").TextValue == findings
    assert child(child(sr, "Impressions"), "Impression").TextValue == "A\\B <i>"
    # dsr2html shows the markup as text, not as markup.
    assert "&lt;b&gt;3 cm&lt;/b&gt;" in checked.html
    assert "<b>3 cm</b>" not in checked.html


def test_very_long_text_is_kept_whole(make_draft, settings, check_sr) -> None:
    findings = "\n".join(
        f"Line {n}: the lungs remain clear without focal consolidation." for n in range(2000)
    )
    sr = pydicom.dcmread(check_sr(build_sr(make_draft(findings=findings), settings)).path)
    assert child(child(sr, "Findings"), "Finding").TextValue == findings
    assert len(findings) > 100_000


def test_identical_inputs_give_identical_bytes(make_draft, settings, encode, move_clock) -> None:
    first = encode(build_sr(make_draft(), settings))
    move_clock()
    assert encode(build_sr(make_draft(), settings)) == first


def test_a_retry_at_another_time_keeps_the_uids(make_draft, settings, encode) -> None:
    first = build_sr(make_draft(), settings)
    later = build_sr(make_draft(created_at=dt.datetime(2026, 12, 2, 8, 0, 0)), settings)
    assert (later.SeriesInstanceUID, later.SOPInstanceUID) == (
        first.SeriesInstanceUID,
        first.SOPInstanceUID,
    )
    assert later.ContentDate != first.ContentDate
    assert encode(later) != encode(first)


def test_uids_are_the_ones_sr_uids_announces(make_draft, settings, studies) -> None:
    draft = make_draft(study_version=3)
    sr = build_sr(draft, settings)
    expected = sr_uids(studies.current.StudyInstanceUID, 3, draft.model)
    assert (sr.SeriesInstanceUID, sr.SOPInstanceUID) == (
        expected.series_instance_uid,
        expected.sop_instance_uid,
    )
    assert sr.InstanceNumber == 3


def test_new_study_version_names_its_predecessor(make_draft, settings, check_sr, studies) -> None:
    first = build_sr(make_draft(), settings)
    draft = make_draft(study_version=2, predecessor=DocumentReference.from_dataset(first))
    second = pydicom.dcmread(check_sr(build_sr(draft, settings)).path)

    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.SeriesInstanceUID == first.SeriesInstanceUID
    assert second.InstanceNumber == 2
    (study,) = second.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == studies.current.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    (sop,) = series.ReferencedSOPSequence
    assert (sop.ReferencedSOPInstanceUID, sop.ReferencedSOPClassUID) == (
        first.SOPInstanceUID,
        first.SOPClassUID,
    )
    assert "PredecessorDocumentsSequence" not in first


def test_other_model_gives_another_document(make_draft, settings) -> None:
    trained = build_sr(make_draft(), settings)
    other = dataclasses.replace(make_draft().model, revision="ffff000")
    retrained = build_sr(make_draft(model=other), settings)
    assert retrained.SOPInstanceUID != trained.SOPInstanceUID


@pytest.mark.parametrize(
    "settings_fields",
    [{"manufacturer": ""}, {"manufacturer": "ACME\\Labs"}, {"institution_name": "A\\B"}],
)
def test_settings_that_make_invalid_values_are_refused(make_draft, settings_fields) -> None:
    with pytest.raises(ValueError, match="report\\."):
        build_sr(make_draft(), ReportSettings(**settings_fields))


def test_check_sr_fails_on_an_invalid_document(make_draft, settings, check_sr) -> None:
    """The validator fixture itself must be able to fail."""
    sr = build_sr(make_draft(), settings)
    sr.VerificationFlag = "MAYBE"
    with pytest.raises(AssertionError, match="dciodvfy found errors"):
        check_sr(sr)


def test_dcmtk_reads_the_status_and_tree(make_draft, settings, check_sr) -> None:
    dump = check_sr(build_sr(make_draft(), settings)).dump
    for expected in (
        "Enhanced SR Document",
        "UNVERIFIED",
        "PRELIMINARY",
        "PARTIAL",
        "Diagnostic Imaging Report",
        "Findings",
        "Doe^Jane",
    ):
        assert expected in dump


def test_header_with_only_a_study_uid_still_gives_a_valid_sr(
    make_draft, settings, check_sr
) -> None:
    """Patient and study attributes are Type 2: absent ones are written empty."""
    header = Dataset()
    header.StudyInstanceUID = make_draft().study_instance_uid
    sr = pydicom.dcmread(check_sr(build_sr(make_draft(current_header=header), settings)).path)
    assert sr.StudyInstanceUID == header.StudyInstanceUID
    assert sr.PatientName == "" and sr.PatientID == ""
