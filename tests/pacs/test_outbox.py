"""Delivery through the outbox: C-STORE, STOW-RS or the report folder, retried until a deadline.

Time is passed in explicitly (``now``), so backoff and deadlines are tested
without waiting; the PACS failures are real (Orthanc stopped, Orthanc
refusing an object).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from libra_node.ledger import StudyState
from libra_node.outbox import LOCK_FILE, Outbox
from libra_node.pacs import LocalArchive
from libra_node.synthetic import SyntheticPatient
from libra_node.local_orthanc import LocalOrthanc
from pacs.testdata import Archive, chest_study, draft_report, make_reported, pdf_rendition

NewPatient = Callable[..., SyntheticPatient]
BASE = 10.0


def outbox_of(archive: Archive, **backoff: float) -> Outbox:
    return Outbox.from_settings(
        archive.settings,
        archive.ledger,
        backoff_base_seconds=BASE,
        backoff_cap_seconds=backoff.get("cap", 600.0),
    )


def state_of(archive: Archive, study_uid: str) -> StudyState:
    study = archive.ledger.get_study(study_uid)
    assert study is not None
    return study.state


def stored_file(archive: Archive, study_uid: str, sop_uid: str) -> Path:
    """Where the node's own archive (transport "none") put a delivered object."""
    assert isinstance(archive.client, LocalArchive)
    return archive.client.stored_path(study_uid, sop_uid)


def in_pacs(archive: Archive, orthanc: LocalOrthanc, study_uid: str, sop_uid: str) -> int:
    """How many copies of the object the destination holds."""
    if archive.name == "local":
        return int(stored_file(archive, study_uid, sop_uid).is_file())
    return len(orthanc.find_instances(SOPInstanceUID=sop_uid))


@pytest.fixture(params=["dimse-get", "dicomweb", "local"])
def destination(request: pytest.FixtureRequest, open_archive: Callable[..., Archive]) -> Archive:
    return open_archive(request.param)


def test_the_report_and_its_pdf_are_delivered_and_recorded(
    destination: Archive, orthanc: LocalOrthanc, new_patient: NewPatient
) -> None:
    current = chest_study(new_patient(), "2026-12-01")
    study_uid, version = make_reported(destination.node, current)
    report, pdf = draft_report(current), pdf_rendition(current)
    outbox = outbox_of(destination)

    queued = outbox.put(study_uid, version, [report, pdf], now=1000.0)
    assert {item.sop_uid for item in outbox.pending()} == {
        report.SOPInstanceUID,
        pdf.SOPInstanceUID,
    }
    assert {item.report_sop_uid for item in queued} == {report.SOPInstanceUID}

    delivered = outbox.deliver_due(destination.client, now=1000.0)

    assert {item.sop_uid for item in delivered.delivered} == {
        report.SOPInstanceUID,
        pdf.SOPInstanceUID,
    }
    assert (delivered.retrying, delivered.failed, outbox.pending()) == ([], [], [])
    assert sorted(p.name for p in outbox.files.root.iterdir()) == [".incoming", LOCK_FILE]
    for sop_uid in (report.SOPInstanceUID, pdf.SOPInstanceUID):
        assert in_pacs(destination, orthanc, study_uid, sop_uid) == 1
    row = destination.ledger.get_study(study_uid)
    assert row is not None and row.state == StudyState.DELIVERED
    assert (row.sr_sop_uid, row.sr_version, row.delivered_at) == (
        report.SOPInstanceUID,
        version,
        1000.0,
    )
    assert destination.client.peer in row.state_reason


def test_what_is_delivered_reads_back_as_a_complete_dicom_file(
    open_archive: Callable[..., Archive], new_patient: NewPatient
) -> None:
    for name in ("dicomweb", "local"):
        archive = open_archive(name)
        current = chest_study(new_patient(), "2026-12-01")
        report = draft_report(current, text=f"delivered over {name}")
        outbox = outbox_of(archive)
        outbox.put(str(current[0].StudyInstanceUID), 1, [report])
        assert len(outbox.deliver_due(archive.client).delivered) == 1
        if name == "local":
            back = dcmread(stored_file(archive, report.StudyInstanceUID, report.SOPInstanceUID))
        else:
            back = archive.client.fetch_instance(
                report.StudyInstanceUID, report.SeriesInstanceUID, report.SOPInstanceUID
            )
        assert (
            back.preamble is not None
            and back.ContentSequence[0].TextValue == f"delivered over {name}"
        )


def test_delivering_the_same_report_again_is_harmless(
    destination: Archive, orthanc: LocalOrthanc, new_patient: NewPatient
) -> None:
    current = chest_study(new_patient(), "2026-12-01")
    study_uid, version = make_reported(destination.node, current)
    report = draft_report(current)
    outbox = outbox_of(destination)

    for _ in range(2):  # e.g. the export task ran twice
        outbox.put(study_uid, version, [report])
        assert len(outbox.deliver_due(destination.client).delivered) == 1

    assert in_pacs(destination, orthanc, study_uid, report.SOPInstanceUID) == 1
    row = destination.ledger.get_study(study_uid)
    assert row is not None and (row.state, row.sr_sop_uid) == (
        StudyState.DELIVERED,
        report.SOPInstanceUID,
    )


@pytest.mark.parametrize("name", ["dimse-get", "dicomweb"])
def test_pacs_down_during_delivery_the_outbox_delivers_once_it_is_back(
    open_archive: Callable[..., Archive], orthanc: LocalOrthanc, new_patient: NewPatient, name: str
) -> None:
    archive = open_archive(name)
    current = chest_study(new_patient(), "2026-12-01")
    study_uid, version = make_reported(archive.node, current)
    report = draft_report(current)
    outbox = outbox_of(archive)
    now = time.time()
    outbox.put(study_uid, version, [report], now=now)
    orthanc.stop()

    first = outbox.deliver_due(archive.client, now=now)

    [waiting] = first.retrying
    assert (waiting.attempts, waiting.next_attempt_at) == (1, now + BASE)
    assert "cannot connect" in waiting.last_error and archive.client.peer in waiting.last_error
    assert state_of(archive, study_uid) == StudyState.REPORTED

    # The node restarts: a new Outbox on the same folder finds the item where it was.
    restarted = outbox_of(archive)
    assert [(i.sop_uid, i.attempts) for i in restarted.pending()] == [(report.SOPInstanceUID, 1)]
    assert restarted.next_due_at() == now + BASE
    orthanc.start()
    not_yet = restarted.deliver_due(archive.client, now=now + BASE / 2)
    assert (not_yet.delivered, not_yet.retrying) == ([], [])

    second = restarted.deliver_due(archive.client, now=now + BASE)

    assert [item.sop_uid for item in second.delivered] == [report.SOPInstanceUID]
    assert len(orthanc.find_instances(SOPInstanceUID=report.SOPInstanceUID)) == 1
    assert state_of(archive, study_uid) == StudyState.DELIVERED
    assert restarted.next_due_at() is None


def test_retries_back_off_exponentially_up_to_the_cap(
    open_archive: Callable[..., Archive], orthanc: LocalOrthanc, new_patient: NewPatient
) -> None:
    archive = open_archive("dimse-get")
    current = chest_study(new_patient(), "2026-12-01")
    study_uid, version = make_reported(archive.node, current)
    outbox = outbox_of(archive, cap=35.0)
    outbox.put(study_uid, version, [draft_report(current)], now=0.0)
    orthanc.stop()

    delays = []
    now = 0.0
    for _ in range(4):
        [item] = outbox.deliver_due(archive.client, now=now).retrying
        delays.append(item.next_attempt_at - now)
        now = item.next_attempt_at

    assert delays == [10.0, 20.0, 35.0, 35.0]


def test_past_the_deadline_the_item_fails_and_so_does_the_study(
    open_archive: Callable[..., Archive], orthanc: LocalOrthanc, new_patient: NewPatient
) -> None:
    archive = open_archive("dicomweb", delivery_deadline_seconds=60)
    current = chest_study(new_patient(), "2026-12-01")
    study_uid, version = make_reported(archive.node, current)
    report = draft_report(current)
    outbox = Outbox.from_settings(archive.settings, archive.ledger, backoff_base_seconds=50)
    outbox.put(study_uid, version, [report], now=0.0)
    orthanc.stop()

    assert outbox.deliver_due(archive.client, now=0.0).retrying[0].next_attempt_at == 50.0
    # The next wait would end after the deadline: the last attempt is at the deadline.
    assert outbox.deliver_due(archive.client, now=50.0).retrying[0].next_attempt_at == 60.0
    [failed] = outbox.deliver_due(archive.client, now=60.0).failed

    assert (failed.state, failed.attempts) == ("failed", 3)
    assert "cannot connect" in failed.last_error
    assert outbox.pending() == [] and [i.sop_uid for i in outbox.failed()] == [
        report.SOPInstanceUID
    ]
    row = archive.ledger.get_study(study_uid)
    assert row is not None and row.state == StudyState.FAILED
    assert row.state_reason == f"report not delivered: {failed.last_error}"
    orthanc.start()
    assert outbox.deliver_due(archive.client, now=120.0).delivered == []  # failed items stay failed


def test_a_study_is_delivered_only_when_all_its_objects_are(
    open_archive: Callable[..., Archive], orthanc: LocalOrthanc, new_patient: NewPatient
) -> None:
    archive = open_archive("dicomweb", delivery_deadline_seconds=30)
    current = chest_study(new_patient(), "2026-12-01")
    study_uid, version = make_reported(archive.node, current)
    report, pdf = draft_report(current), pdf_rendition(current)
    del pdf.StudyInstanceUID  # an object this PACS refuses (HTTP 400)
    outbox = outbox_of(archive)
    outbox.put(study_uid, version, [report, pdf], now=0.0)

    first = outbox.deliver_due(archive.client, now=0.0)

    assert [i.sop_uid for i in first.delivered] == [report.SOPInstanceUID]
    assert "HTTP 400 Bad Request" in first.retrying[0].last_error
    assert state_of(archive, study_uid) == StudyState.REPORTED
    outbox.deliver_due(archive.client, now=10.0)
    assert [i.sop_uid for i in outbox.deliver_due(archive.client, now=30.0).failed] == [
        pdf.SOPInstanceUID
    ]
    assert state_of(archive, study_uid) == StudyState.FAILED


def test_an_unreadable_outbox_object_fails_at_once(
    open_archive: Callable[..., Archive], new_patient: NewPatient
) -> None:
    archive = open_archive("local")
    current = chest_study(new_patient(), "2026-12-01")
    study_uid, version = make_reported(archive.node, current)
    outbox = outbox_of(archive)
    [item] = outbox.put(study_uid, version, [draft_report(current)])
    outbox.files.path(f"{item.sop_uid}.dcm").write_bytes(b"not dicom")

    [failed] = outbox.deliver_due(archive.client).failed

    assert failed.last_error == "outbox object unreadable (InvalidDicomError)"
    assert state_of(archive, study_uid) == StudyState.FAILED


def test_one_deliverer_at_a_time(
    open_archive: Callable[..., Archive], new_patient: NewPatient
) -> None:
    archive = open_archive("local")
    current = chest_study(new_patient(), "2026-12-01")
    study_uid, version = make_reported(archive.node, current)
    outbox = outbox_of(archive)
    outbox.put(study_uid, version, [draft_report(current)])

    other_process = os.open(outbox.files.root / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(other_process, fcntl.LOCK_EX)
        busy = outbox.deliver_due(archive.client)
    finally:
        os.close(other_process)

    assert busy.busy and busy.delivered == [] and len(outbox.pending()) == 1
    assert len(outbox.deliver_due(archive.client).delivered) == 1


def test_put_needs_objects_with_sop_instance_uids(
    open_archive: Callable[..., Archive], new_patient: NewPatient
) -> None:
    archive = open_archive("local")
    outbox = outbox_of(archive)
    report = draft_report(chest_study(new_patient(), "2026-12-01"))
    with pytest.raises(ValueError, match="nothing to put"):
        outbox.put("1.2.3", 1, [])
    del report.SOPInstanceUID
    with pytest.raises(ValueError, match="valid SOP Instance UID"):
        outbox.put("1.2.3", 1, [report])
    assert outbox.pending() == []
