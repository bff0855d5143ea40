"""Classification, frontal choice and prior ranking as decision tables."""

from __future__ import annotations

import dataclasses

import pytest

from libra_node.selection import (
    ImageFacts,
    StudyFacts,
    choose_frontal,
    classify_study,
    image_view,
    parse_study_datetime,
    rank_prior_candidates,
)
from libra_node.synthetic import (
    SyntheticStudy,
    make_chest_image,
    make_chest_study,
    make_secondary_capture,
)

CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


def image(number: int = 1, **fields: object) -> ImageFacts:
    base = dict(
        study_instance_uid="1.2.3",
        series_instance_uid=f"1.2.3.{number}",
        sop_instance_uid=f"1.2.3.{number}.1",
        sop_class_uid=DX,
        modality="DX",
        series_number=number,
        instance_number=1,
    )
    base.update(fields)
    return ImageFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("facts", "study_description", "is_chest", "reason_part"),
    [
        (dict(body_part="CHEST"), "", True, "BodyPartExamined"),
        (dict(body_part="chest"), "", True, "BodyPartExamined"),
        (dict(body_part="THORAX"), "", True, "BodyPartExamined"),
        (dict(body_part="TORACE"), "", True, "BodyPartExamined"),
        (dict(body_part="Brustkorb"), "", True, "BodyPartExamined"),
        (dict(anatomic_region="816094009|Chest"), "", True, "AnatomicRegionSequence"),
        (dict(anatomic_region="T-D3000|Chest"), "", True, "AnatomicRegionSequence"),
        (dict(description="Thorax p.a."), "", True, "description"),
        (dict(description=""), "RX TÓRAX PA Y LATERAL", True, "description"),
        (dict(description="Poumons face"), "", True, "description"),
        (dict(description="CXR portable"), "", True, "description"),
        (dict(body_part="HAND"), "XR HAND 3 VIEWS", False, "body part HAND"),
        (dict(body_part=""), "", False, "no body part or description"),
        (dict(modality="CT", sop_class_uid=CT, body_part="CHEST"), "", False, "modalities: CT"),
        (dict(modality="CR", sop_class_uid=CR, body_part="CHEST"), "", True, "BodyPartExamined"),
    ],
)
def test_classification(facts, study_description, is_chest, reason_part):
    result = classify_study([image(**facts)], study_description)
    assert result.is_chest_radiograph is is_chest
    assert reason_part in result.reason


def test_empty_study_is_not_a_chest_radiograph():
    assert classify_study([]).reason == "study has no instances"


def test_non_image_objects_alone_are_not_a_chest_radiograph():
    sc = ImageFacts.from_dataset(make_secondary_capture(SyntheticStudy()))
    result = classify_study([sc])
    assert not result.is_chest_radiograph
    assert "OT" in result.reason


@pytest.mark.parametrize(
    ("facts", "view", "rule"),
    [
        (dict(view_position="PA"), "PA", "ViewPosition PA"),
        (dict(view_position="AP"), "AP", "ViewPosition AP"),
        (dict(view_position="LL"), "lateral", "ViewPosition LL"),
        (dict(view_position="RL"), "lateral", "ViewPosition RL"),
        (dict(view_position="LLD"), "lateral", "ViewPosition LLD"),
        (dict(view_position="RAO"), "other", "ViewPosition RAO"),
        (dict(view_code="272479007|postero-anterior"), "PA", "ViewCodeSequence postero-anterior"),
        (dict(view_code="399348003|antero-posterior"), "AP", "ViewCodeSequence antero-posterior"),
        (dict(view_code="399173006|left lateral"), "lateral", "ViewCodeSequence left lateral"),
        (dict(view_code="R-10214|postero-anterior"), "PA", "ViewCodeSequence postero-anterior"),
        (dict(view_code="99X|Lateral view"), "lateral", "ViewCodeSequence Lateral view"),
        (dict(description="Thorax p.a. stehend"), "PA", "description"),
        (dict(description="CHEST PORTABLE"), "AP", "description"),
        (dict(description="Thorax seitlich"), "lateral", "description"),
        (dict(description="CHEST PA AND LATERAL", patient_orientation="A\\F"), "lateral",
         "PatientOrientation"),
        (dict(patient_orientation="L\\F"), "frontal", "PatientOrientation"),
        (dict(patient_orientation="P\\F"), "lateral", "PatientOrientation"),
        (dict(), "unknown", "no view information"),
    ],
)
def test_view_of_one_image(facts, view, rule):
    assert image_view(image(**facts)) == (view, rule)


def test_pa_is_chosen_before_ap_and_lateral_never():
    images = [
        image(1, view_position="LL"),
        image(2, view_position="AP"),
        image(3, view_position="PA"),
    ]
    choice = choose_frontal(images)
    assert choice.image.series_number == 3
    assert choice.view == "PA"


def test_only_laterals_give_no_frontal():
    assert choose_frontal([image(1, view_position="LL"), image(2, view_position="RL")]) is None


def test_retake_wins_among_equal_views():
    choice = choose_frontal([image(1, view_position="PA"), image(2, view_position="PA")])
    assert choice.image.series_number == 2


def test_for_presentation_beats_for_processing():
    choice = choose_frontal([
        image(2, view_position="PA", sop_class_uid=DX_PROCESSING),
        image(1, view_position="PA", sop_class_uid=DX),
    ])
    assert choice.image.sop_class_uid == DX


def test_single_image_without_view_information_is_used_and_says_so():
    choice = choose_frontal([image(1)])
    assert choice.view == "unknown"
    assert "view not recorded" in choice.rule


def test_unknown_view_among_several_images_is_not_guessed():
    assert choose_frontal([image(1), image(2, view_position="LL")]) is None


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_synthetic_studies_from_real_headers(modality, photometric):
    study = SyntheticStudy(modality=modality, photometric=photometric, views=("LL", "PA"))
    facts = [ImageFacts.from_dataset(ds) for ds in make_chest_study(study)]
    assert classify_study(facts).is_chest_radiograph
    assert choose_frontal(facts).image.view_position == "PA"


def test_fallbacks_from_real_headers_record_the_rule():
    no_position = SyntheticStudy(views=("LL", "PA"), omit_view_position=True)
    facts = [ImageFacts.from_dataset(ds) for ds in make_chest_study(no_position)]
    assert choose_frontal(facts).rule == "ViewCodeSequence postero-anterior"

    bare = dataclasses.replace(no_position, omit_view_code=True)
    bare_image = make_chest_image(bare, "PA")
    del bare_image.SeriesDescription
    lateral = make_chest_image(bare, "LL", 1)
    del lateral.SeriesDescription
    facts = [ImageFacts.from_dataset(ds) for ds in (lateral, bare_image)]
    choice = choose_frontal(facts)
    assert choice.image.sop_instance_uid == bare_image.SOPInstanceUID
    assert choice.rule == "PatientOrientation"


# --- priors -------------------------------------------------------------------------


def study(uid: str, date: str, time: str = "", **fields: object) -> StudyFacts:
    base = dict(study_instance_uid=uid, patient_id="P1", study_date=date, study_time=time,
                modalities=("DX",))
    base.update(fields)
    return StudyFacts(**base)  # type: ignore[arg-type]


def test_most_recent_earlier_study_wins():
    current = study("cur", "20261201", "101500")
    ranked = rank_prior_candidates(current, [
        study("old", "20240101"), study("newer", "20261101", "080000"), study("mid", "20250505"),
    ]).ranked
    assert [s.study_instance_uid for s in ranked] == ["newer", "mid", "old"]


def test_same_day_studies_are_never_the_prior():
    current = study("cur", "20261201", "160000")
    result = rank_prior_candidates(current, [
        study("morning", "20261201", "080000"), study("yesterday", "20261130", "230000"),
    ])
    assert [s.study_instance_uid for s in result.ranked] == ["yesterday"]
    assert result.excluded["morning"] == "not before the current study's day"


def test_exclusions_say_why():
    current = study("cur", "20261201", issuer_of_patient_id="HOSP_A")
    result = rank_prior_candidates(current, [
        study("cur", "20261201"),
        study("other", "20250101", patient_id="P2"),
        study("issuer", "20250101", issuer_of_patient_id="HOSP_B"),
        study("ct", "20250101", modalities=("CT",)),
        study("later", "20270101"),
        study("partial", "2025"),
        study("ok", "20250101", modalities=()),
    ])
    assert [s.study_instance_uid for s in result.ranked] == ["ok"]
    assert result.excluded == {
        "cur": "the current study itself",
        "other": "another patient ID",
        "issuer": "same patient ID from another issuer",
        "ct": "not a radiograph study (CT)",
        "later": "not before the current study's day",
        "partial": "study date missing or incomplete",
    }


@pytest.mark.parametrize(
    ("date", "time", "expected"),
    [
        ("20261201", "101500", "2026-12-01 10:15:00"),
        ("20261201", "1015", "2026-12-01 10:15:00"),
        ("20261201", "101500.123456", "2026-12-01 10:15:00"),
        ("20261201", "", "2026-12-01 00:00:00"),
        ("2026.12.01", "", "2026-12-01 00:00:00"),
        ("202612", "", None),
        ("", "101500", None),
        ("20261341", "", None),
    ],
)
def test_study_datetime_parsing(date, time, expected):
    parsed = parse_study_datetime(date, time)
    assert (str(parsed) if parsed else None) == expected
