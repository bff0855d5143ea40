"""The pipeline's stages and the reconciler, without Celery: real ledger, spool and outbox."""

from __future__ import annotations

import datetime as dt
import json
import time

import numpy as np
import pytest
from pydicom import dcmread

from dicom_tools import dciodvfy_errors, send_with_pynetdicom
from libra_node import pipeline
from libra_node.draft import ClinicalContext, ModelIdentity
from libra_node.ledger import StudyState
from libra_node.outbox import Outbox
from libra_node.pacs import LocalArchive
from libra_node.reconciler import MAX_ATTEMPTS, Reconciler
from libra_node.synthetic import SyntheticPatient, SyntheticStudy, make_chest_study

MODEL = ModelIdentity("libra-v1.0-7b", "7b", "abc123", "0.1.0")


@pytest.fixture
def node(start_node):
    return start_node()


def receive(node, datasets) -> str:
    assert send_with_pynetdicom(node.listener.port, datasets) == [0] * len(datasets)
    uid = str(datasets[0].StudyInstanceUID)
    node.wait_for(uid, {StudyState.COMPLETE, StudyState.SKIPPED}, timeout=10)
    return uid


def archive(node) -> LocalArchive:
    return LocalArchive(node.ledger, node.spool, node.settings.report_dir)


def queue(node, uid: str) -> int:
    version = node.ledger.get_study(uid).version
    sent = []
    assert pipeline.enqueue(node.ledger, uid, version, lambda u, v: sent.append((u, v)))
    assert sent == [(uid, version)]
    return version


def test_job_message_round_trip_is_exact_and_compact(node):
    patient = SyntheticPatient(patient_id="ST-1")
    prior = make_chest_study(SyntheticStudy(patient=patient, study_date=dt.date(2025, 1, 2)))
    current = make_chest_study(SyntheticStudy(patient=patient, reason_for_request="cough"))
    receive(node, prior)
    uid = receive(node, current)
    version = queue(node, uid)

    job = pipeline.prepare_job(node.settings, node.ledger, node.spool, archive(node), uid, version)

    message = job.to_message()
    size = len(json.dumps(message))
    print(f"job message: {size / 1000:.0f} kB")
    assert size < 600_000  # two 518 x 518 images, compressed
    back = pipeline.InferenceJob.from_message(message)
    assert np.array_equal(back.current, job.current) and back.current.shape == (518, 518)
    assert np.array_equal(back.prior, job.prior)
    assert back.context == ClinicalContext("cough", "", "2025-01-02", "PA view")
    assert back.prior_image.study_instance_uid == str(prior[0].StudyInstanceUID)
    study = node.ledger.get_study(uid)
    assert study.prior_study_uid == str(prior[0].StudyInstanceUID)
    assert "most recent earlier chest radiograph" in study.prior_reason


def test_stale_messages_do_nothing(node):
    uid = receive(node, make_chest_study(SyntheticStudy(patient=SyntheticPatient(patient_id="ST-2"))))
    version = queue(node, uid)
    assert pipeline.prepare_job(node.settings, node.ledger, node.spool, archive(node), uid, version + 1) is None
    assert not pipeline.enqueue(node.ledger, uid, version, lambda u, v: pytest.fail("sent twice"))


@pytest.mark.parametrize(
    ("charset", "name"),
    [("ISO_IR 100", "Müller^Jürgen"), ("ISO_IR 192", "李^小龙"), (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう")],
)
def test_header_survives_the_message_with_its_character_set(node, tmp_path, charset, name):
    study = SyntheticStudy(patient=SyntheticPatient(patient_id="ST-3", name=name), views=("PA",))
    images = make_chest_study(study)
    images[0].SpecificCharacterSet = charset
    uid = receive(node, images)
    version = queue(node, uid)
    job = pipeline.prepare_job(node.settings, node.ledger, node.spool, archive(node), uid, version)
    outbox = Outbox.from_settings(node.settings, node.ledger)

    assert pipeline.write_report(node.settings, node.ledger, outbox, job.to_message(), "No acute findings.", MODEL)

    [item] = outbox.pending()
    path = outbox.files.path(f"{item.sop_uid}.dcm")
    sr = dcmread(path)
    assert str(sr.PatientName) == name
    assert dciodvfy_errors(path) == []
    assert node.ledger.get_study(uid).state == StudyState.REPORTED


def test_findings_are_cleaned_and_empty_findings_fail(node):
    assert pipeline.clean_findings(" The heart\tis normal.\x07 ") == "The heart is normal."
    uid = receive(node, make_chest_study(SyntheticStudy(patient=SyntheticPatient(patient_id="ST-4"), views=("PA",))))
    version = queue(node, uid)
    job = pipeline.prepare_job(node.settings, node.ledger, node.spool, archive(node), uid, version)
    outbox = Outbox.from_settings(node.settings, node.ledger)
    with pytest.raises(pipeline.StageFailed, match="no findings"):
        pipeline.write_report(node.settings, node.ledger, outbox, job.to_message(), " \t ", MODEL)


def deliver_version(node, uid: str, findings: str) -> str:
    version = queue(node, uid)
    job = pipeline.prepare_job(node.settings, node.ledger, node.spool, archive(node), uid, version)
    outbox = Outbox.from_settings(node.settings, node.ledger)
    assert pipeline.write_report(node.settings, node.ledger, outbox, job.to_message(), findings, MODEL)
    report = outbox.deliver_due(archive(node))
    assert len(report.delivered) == 1
    study = node.ledger.get_study(uid)
    assert study.state == StudyState.DELIVERED
    return study.sr_sop_uid


def test_a_late_image_gives_a_new_sr_naming_its_predecessor(node):
    pa, lateral = make_chest_study(SyntheticStudy(patient=SyntheticPatient(patient_id="ST-5")))
    uid = receive(node, [pa])
    first = deliver_version(node, uid, "First draft.")

    receive(node, [lateral])
    second = deliver_version(node, uid, "Second draft.")

    assert second != first
    sr = dcmread(node.settings.report_dir / uid / f"{second}.dcm")
    [predecessor] = sr.PredecessorDocumentsSequence
    referenced = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == first
    assert node.ledger.get_study(uid).sr_version == 2


def test_retried_report_is_byte_identical(node):
    uid = receive(node, make_chest_study(SyntheticStudy(patient=SyntheticPatient(patient_id="ST-6"), views=("PA",))))
    version = queue(node, uid)
    job = pipeline.prepare_job(node.settings, node.ledger, node.spool, archive(node), uid, version).to_message()
    outbox = Outbox.from_settings(node.settings, node.ledger)
    pipeline.write_report(node.settings, node.ledger, outbox, job, "Same text.", MODEL)
    [item] = outbox.pending()
    first = outbox.files.path(f"{item.sop_uid}.dcm").read_bytes()
    # The message comes again (broker redelivery): the study is REPORTED, nothing happens.
    assert not pipeline.write_report(node.settings, node.ledger, outbox, job, "Same text.", MODEL)
    # The reconciler sends it round again from the start: the same SR, to the byte.
    node.ledger.transition(uid, StudyState.QUEUED, "again", from_states=[StudyState.REPORTED])
    assert pipeline.write_report(node.settings, node.ledger, outbox, job, "Same text.", MODEL)
    [again] = outbox.pending()
    assert again.sop_uid == item.sop_uid
    assert outbox.files.path(f"{again.sop_uid}.dcm").read_bytes() == first


# --- the reconciler -----------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []
        self.pumps = 0

    def send(self, uid: str, version: int) -> None:
        self.sent.append((uid, version))

    def pump(self) -> None:
        self.pumps += 1


def reconciler(node, recorder: Recorder) -> Reconciler:
    outbox = Outbox.from_settings(node.settings, node.ledger)
    return Reconciler(node.ledger, outbox, recorder.send, recorder.pump, stuck_after=60, every=1)


def test_reconciler_queues_complete_and_resends_stuck_studies(node):
    recorder = Recorder()
    complete = receive(node, make_chest_study(SyntheticStudy(patient=SyntheticPatient(patient_id="RC-1"), views=("PA",))))
    stuck = receive(node, make_chest_study(SyntheticStudy(patient=SyntheticPatient(patient_id="RC-2"), views=("PA",))))
    queue(node, stuck)
    fresh = receive(node, make_chest_study(SyntheticStudy(patient=SyntheticPatient(patient_id="RC-3"), views=("PA",))))
    queue(node, fresh)

    report = reconciler(node, recorder).run_once(now=time.time() + 30)
    assert report.queued == [complete] and report.resent == []

    report = reconciler(node, recorder).run_once(now=time.time() + 120)
    assert set(report.resent) == {complete, stuck, fresh}
    assert node.ledger.get_study(stuck).attempts == 1
    assert (stuck, 1) in recorder.sent


def test_reconciler_gives_up_after_max_attempts(node):
    recorder = Recorder()
    uid = receive(node, make_chest_study(SyntheticStudy(patient=SyntheticPatient(patient_id="RC-4"), views=("PA",))))
    queue(node, uid)
    for _ in range(MAX_ATTEMPTS):
        reconciler(node, recorder).run_once(now=time.time() + 120)
    assert node.ledger.get_study(uid).state == StudyState.QUEUED

    reconciler(node, recorder).run_once(now=time.time() + 120)

    study = node.ledger.get_study(uid)
    assert study.state == StudyState.FAILED
    assert f"no progress after {MAX_ATTEMPTS} attempts" in study.state_reason


def test_reported_study_with_nothing_in_the_outbox_goes_round_again(node):
    recorder = Recorder()
    uid = receive(node, make_chest_study(SyntheticStudy(patient=SyntheticPatient(patient_id="RC-5"), views=("PA",))))
    version = queue(node, uid)
    node.ledger.transition(uid, StudyState.REPORTED, "written", from_states=[StudyState.QUEUED])

    report = reconciler(node, recorder).run_once(now=time.time() + 120)

    assert report.resent == [uid]
    assert node.ledger.get_study(uid).state == StudyState.QUEUED
    assert recorder.sent[-1] == (uid, version)


def test_reported_study_waiting_in_the_outbox_is_pumped_not_resent(node):
    recorder = Recorder()
    uid = receive(node, make_chest_study(SyntheticStudy(patient=SyntheticPatient(patient_id="RC-6"), views=("PA",))))
    version = queue(node, uid)
    job = pipeline.prepare_job(node.settings, node.ledger, node.spool, archive(node), uid, version)
    outbox = Outbox.from_settings(node.settings, node.ledger)
    pipeline.write_report(node.settings, node.ledger, outbox, job.to_message(), "Text.", MODEL)

    report = reconciler(node, recorder).run_once(now=time.time() + 120)

    assert report.resent == [] and report.outbox_pumped
    assert recorder.pumps == 1
    assert node.ledger.get_study(uid).state == StudyState.REPORTED
