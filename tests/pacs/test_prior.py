"""Prior lookup: a real Orthanc (DIMSE C-GET and C-MOVE, DICOMweb) and the node's own archive.

Every scenario runs over each archive: the same answer is expected whatever
the transport. The current date is 2026-12-01 unless a test says otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from pydicom.uid import JPEG2000Lossless

from libra_node.ledger import RETRIEVED_REASON, StudyState
from libra_node.pacs import PacsUnavailable
from libra_node.prior import NO_EARLIER_STUDY, current_study_facts, find_prior, record_prior
from libra_node.selection import StudyFacts
from libra_node.synthetic import SyntheticPatient
from libra_node.local_orthanc import LocalOrthanc
from pacs.testdata import (
    Archive,
    chest_study,
    compressed_chest_study,
    draft_report,
    facts_of,
    scanned_document_study,
    send_to_node,
    sop_uids,
    with_study_date,
)

NewPatient = Callable[..., SyntheticPatient]


def seed(archive: Archive, *studies: list) -> None:
    for study in studies:
        archive.seed(study)


def test_no_earlier_study_means_no_prior(archive: Archive, new_patient: NewPatient) -> None:
    current = chest_study(new_patient(), "2026-12-01")
    seed(archive, current)

    result = find_prior(archive.client, facts_of(current))

    assert not result.found
    assert (result.study, result.image, result.image_facts) == (None, None, None)
    assert result.reason == NO_EARLIER_STUDY


def test_most_recent_earlier_chest_radiograph_wins(
    archive: Archive, new_patient: NewPatient
) -> None:
    patient = new_patient()
    current = chest_study(patient, "2026-12-01", "093000")
    expected = chest_study(patient, "2026-09-10", views=("AP",))
    older = chest_study(patient, "2026-03-01")
    oldest = chest_study(patient, "2025-12-24")
    after_current = chest_study(patient, "2026-12-20")
    hand = chest_study(
        patient,
        "2026-10-05",
        views=("PA",),
        modality="CR",
        body_part="HAND",
        study_description="XR HAND",
    )
    scan = scanned_document_study(patient, "2026-11-01")
    seed(archive, current, older, expected, oldest, after_current, hand, scan)

    result = find_prior(archive.client, facts_of(current))

    assert result.study is not None and result.image is not None and result.image_facts is not None
    assert result.study.study_instance_uid == expected[0].StudyInstanceUID
    assert result.image.SOPInstanceUID in sop_uids(expected, "AP")
    assert result.image.pixel_array.shape == (64, 64)  # the whole instance, not a header
    assert (result.image_facts.view_position, result.frontal_rule) == ("AP", "ViewPosition AP")
    assert result.reason.startswith("most recent usable earlier chest radiograph (2026-09-10)")
    assert [p.study.study_instance_uid for p in result.passed_over] == [hand[0].StudyInstanceUID]
    assert "not a chest radiograph" in result.passed_over[0].reason


def test_the_frontal_image_is_pa_before_ap_and_never_the_lateral(
    archive: Archive, new_patient: NewPatient
) -> None:
    patient = new_patient()
    current = chest_study(patient, "2026-12-01")
    prior = chest_study(patient, "2026-11-02", views=("LL", "AP", "PA"))
    seed(archive, current, prior)

    result = find_prior(archive.client, facts_of(current))

    assert result.image is not None and result.image.SOPInstanceUID in sop_uids(prior, "PA")
    assert result.frontal_rule == "ViewPosition PA"
    assert result.reason == "most recent earlier chest radiograph (2026-11-02)"


def test_studies_on_the_same_day_share_that_days_prior(
    archive: Archive, new_patient: NewPatient
) -> None:
    patient = new_patient()
    prior = chest_study(patient, "2026-11-20")
    morning = chest_study(patient, "2026-12-01", "081500")
    afternoon = chest_study(patient, "2026-12-01", "143000")
    seed(archive, prior, morning, afternoon)

    for current in (morning, afternoon):
        result = find_prior(archive.client, facts_of(current))
        assert result.study is not None
        assert result.study.study_instance_uid == prior[0].StudyInstanceUID


def test_an_earlier_study_of_the_same_day_is_never_the_prior(
    archive: Archive, new_patient: NewPatient
) -> None:
    patient = new_patient()
    morning = chest_study(patient, "2026-12-01", "081500")
    afternoon = chest_study(patient, "2026-12-01", "143000")
    seed(archive, morning, afternoon)

    result = find_prior(archive.client, facts_of(afternoon))

    assert not result.found
    assert (
        result.reason
        == f"{NO_EARLIER_STUDY} (studies left out: not before the current study's day)"
    )


def test_a_prior_with_lateral_views_only_counts_as_no_prior(
    archive: Archive, new_patient: NewPatient
) -> None:
    patient = new_patient()
    current = chest_study(patient, "2026-12-01")
    lateral = chest_study(patient, "2026-10-01", views=("LL",))
    seed(archive, current, lateral)

    result = find_prior(archive.client, facts_of(current))

    assert not result.found and result.study is None
    assert result.reason == "earlier study has lateral views only"
    assert [p.study.study_instance_uid for p in result.passed_over] == [lateral[0].StudyInstanceUID]


def test_a_lateral_only_study_is_passed_over_for_an_older_frontal_one(
    archive: Archive, new_patient: NewPatient
) -> None:
    patient = new_patient()
    current = chest_study(patient, "2026-12-01")
    lateral = chest_study(patient, "2026-10-01", views=("LL", "RL"))
    frontal = chest_study(patient, "2026-06-01", views=("PA",))
    seed(archive, current, lateral, frontal)

    result = find_prior(archive.client, facts_of(current))

    assert (
        result.study is not None and result.study.study_instance_uid == frontal[0].StudyInstanceUID
    )
    assert result.reason == (
        "most recent usable earlier chest radiograph (2026-06-01); "
        "more recent ones passed over: earlier study has lateral views only"
    )


def test_a_prior_without_a_frontal_view_is_passed_over_with_its_reason(
    archive: Archive, new_patient: NewPatient
) -> None:
    patient = new_patient()
    current = chest_study(patient, "2026-12-01")
    oblique = chest_study(patient, "2026-10-01", views=("OBL",))
    seed(archive, current, oblique)

    result = find_prior(archive.client, facts_of(current))

    assert not result.found and result.reason == "earlier study has no frontal view"


def test_when_every_earlier_study_is_unusable_each_reason_is_given(
    archive: Archive, new_patient: NewPatient
) -> None:
    patient = new_patient()
    current = chest_study(patient, "2026-12-01")
    lateral = chest_study(patient, "2026-10-01", views=("LL",))
    knee = chest_study(
        patient,
        "2026-08-01",
        views=("AP",),
        modality="CR",
        body_part="KNEE",
        study_description="XR KNEE",
    )
    seed(archive, current, lateral, knee)

    result = find_prior(archive.client, facts_of(current))

    assert not result.found
    assert result.reason == (
        "no usable earlier chest radiograph (earlier study has lateral views only; "
        "earlier study is not a chest radiograph: radiograph but not of the chest (body part KNEE))"
    )


def test_another_patient_with_the_same_name_is_not_a_prior(
    archive: Archive, new_patient: NewPatient
) -> None:
    jane = new_patient(name="Doe^Jane")
    namesake = new_patient(name="Doe^Jane")
    current = chest_study(jane, "2026-12-01")
    seed(archive, current, chest_study(namesake, "2026-11-01"))

    result = find_prior(archive.client, facts_of(current))

    assert not result.found
    assert result.reason == NO_EARLIER_STUDY


def test_the_same_patient_id_from_another_issuer_is_not_a_prior(
    archive: Archive, new_patient: NewPatient
) -> None:
    patient_id = new_patient().patient_id
    ours = SyntheticPatient(patient_id=patient_id, name="Roe^Ann", issuer="HOSPITAL-A")
    theirs = SyntheticPatient(patient_id=patient_id, name="Poe^Bob", issuer="HOSPITAL-B")
    current = chest_study(ours, "2026-12-01")
    our_prior = chest_study(ours, "2026-05-01")
    seed(archive, current, our_prior, chest_study(theirs, "2026-11-01"))

    result = find_prior(archive.client, facts_of(current))

    assert (
        result.study is not None
        and result.study.study_instance_uid == our_prior[0].StudyInstanceUID
    )


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")  # the PACS answers a partial date
def test_a_study_with_a_partial_date_cannot_be_ordered_and_is_left_out(
    archive: Archive, new_patient: NewPatient
) -> None:
    patient = new_patient()
    current = chest_study(patient, "2026-12-01")
    partial = with_study_date(chest_study(patient, "2026-11-15"), "202611")
    dated = chest_study(patient, "2026-06-01")
    seed(archive, current, partial, dated)

    result = find_prior(archive.client, facts_of(current))

    assert result.study is not None and result.study.study_instance_uid == dated[0].StudyInstanceUID


def test_a_compressed_prior_arrives_as_it_is_stored(
    archive: Archive, new_patient: NewPatient
) -> None:
    patient = new_patient()
    current = chest_study(patient, "2026-12-01")
    prior = compressed_chest_study(patient, "2026-02-01")
    seed(archive, current, prior)

    result = find_prior(archive.client, facts_of(current))

    assert result.image is not None and result.image.SOPInstanceUID == prior[0].SOPInstanceUID
    assert result.image.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert result.image.PixelData == prior[0].PixelData


def test_record_prior_writes_which_prior_and_why(archive: Archive, new_patient: NewPatient) -> None:
    patient = new_patient()
    current = chest_study(patient, "2026-12-01")
    prior = chest_study(patient, "2026-11-02")
    seed(archive, current, prior)
    send_to_node(archive.node, current)  # the current study is the node's (a duplicate if local)
    study = archive.ledger.get_study(current[0].StudyInstanceUID)
    assert study is not None

    result = find_prior(archive.client, current_study_facts(study))
    assert record_prior(archive.ledger, study.study_uid, study.version, result)

    row = archive.ledger.get_study(study.study_uid)
    assert row is not None
    assert row.prior_study_uid == prior[0].StudyInstanceUID
    assert row.prior_sop_uid in sop_uids(prior, "PA")
    assert row.prior_study_date == "20261102"
    assert (
        row.prior_reason
        == "most recent earlier chest radiograph (2026-11-02); frontal image by ViewPosition PA"
    )
    # A stale version records nothing.
    assert not record_prior(archive.ledger, study.study_uid, study.version + 1, result)


def test_record_prior_says_why_there_is_none(archive: Archive, new_patient: NewPatient) -> None:
    current = chest_study(new_patient(), "2026-12-01")
    seed(archive, current)
    send_to_node(archive.node, current)
    study = archive.ledger.get_study(current[0].StudyInstanceUID)
    assert study is not None

    assert record_prior(
        archive.ledger,
        study.study_uid,
        study.version,
        find_prior(archive.client, facts_of(current)),
    )

    row = archive.ledger.get_study(study.study_uid)
    assert row is not None
    assert (row.prior_study_uid, row.prior_sop_uid, row.prior_study_date) == ("", "", "")
    assert row.prior_reason == NO_EARLIER_STUDY


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"patient_id": ""}, "current study has no patient ID to look up"),
        ({"study_date": ""}, "current study has no date to compare with"),
        ({"study_date": "2026"}, "current study has no date to compare with"),
    ],
)
def test_a_current_study_that_cannot_be_matched_gets_no_prior_and_the_reason(
    open_archive: Callable[..., Archive], new_patient: NewPatient, change: dict, reason: str
) -> None:
    archive = open_archive("dimse-get")
    patient = new_patient()
    current = chest_study(patient, "2026-12-01")
    seed(archive, current, chest_study(patient, "2026-11-01"))
    facts = StudyFacts(**{**facts_of(current).__dict__, **change})

    result = find_prior(archive.client, facts)

    assert not result.found and result.reason == reason


@pytest.mark.parametrize("name", ["dimse-get", "dimse-move", "dicomweb"])
def test_pacs_down_during_lookup_is_transient_and_the_retry_finds_the_prior(
    open_archive: Callable[..., Archive], orthanc: LocalOrthanc, new_patient: NewPatient, name: str
) -> None:
    archive = open_archive(name)
    patient = new_patient()
    current = chest_study(patient, "2026-12-01")
    prior = chest_study(patient, "2026-11-01")
    seed(archive, current, prior)
    orthanc.stop()

    with pytest.raises(PacsUnavailable) as down:
        find_prior(archive.client, facts_of(current))

    assert down.value.transient
    message = str(down.value)
    expected_peer = (
        orthanc.dicomweb_url if name == "dicomweb" else f"127.0.0.1:{orthanc.dicom_port}"
    )
    assert expected_peer in message and "cannot connect" in message
    assert patient.patient_id not in message

    orthanc.start()  # what the pipeline's retry meets
    result = find_prior(archive.client, facts_of(current))
    assert result.study is not None and result.study.study_instance_uid == prior[0].StudyInstanceUID


def test_a_prior_fetched_by_c_move_is_kept_but_never_reported(
    open_archive: Callable[..., Archive], new_patient: NewPatient
) -> None:
    archive = open_archive("dimse-move")
    patient = new_patient()
    current = chest_study(patient, "2026-12-01")
    prior = chest_study(patient, "2026-11-01")
    seed(archive, current, prior)

    result = find_prior(archive.client, facts_of(current))

    assert result.image is not None and result.image.SOPInstanceUID in sop_uids(prior, "PA")
    prior_uid = prior[0].StudyInstanceUID
    moved = archive.ledger.instances_of(prior_uid)
    assert [i.facts.sop_instance_uid for i in moved] == [
        result.image.SOPInstanceUID
    ]  # one image, no more
    archive.node.monitor.check_once()
    row = archive.ledger.get_study(prior_uid)
    assert row is not None and (row.state, row.state_reason) == (
        StudyState.SKIPPED,
        RETRIEVED_REASON,
    )


def test_lookup_and_delivery_log_no_patient_data(
    archive: Archive, new_patient: NewPatient, caplog: pytest.LogCaptureFixture
) -> None:
    patient = new_patient(name="Secret^Name")
    current = chest_study(patient, "2026-12-01")
    prior = chest_study(patient, "2026-11-01")
    seed(archive, current, prior)
    identifiers = {patient.patient_id, "Secret", *sop_uids(current + prior)}
    identifiers |= {str(ds.StudyInstanceUID) for ds in current + prior}

    with caplog.at_level(logging.DEBUG):
        result = find_prior(archive.client, facts_of(current))
        archive.client.store([draft_report(current)])

    assert result.found
    ours = [r for r in caplog.records if r.name.startswith(("libra_node", "dicomweb_client"))]
    assert any(r.name == "libra_node.prior" for r in ours)  # the lookup did log
    for record in ours:
        text = (
            record.getMessage() + " " + " ".join(map(str, getattr(record, "fields", {}).values()))
        )
        assert not [i for i in identifiers if i in text], record.name
