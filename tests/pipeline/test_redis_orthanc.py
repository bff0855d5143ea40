"""End to end in the production shape: Redis broker, Orthanc as the PACS, separate workers.

One deployment serves the whole module: a private redis-server, the Debian
Orthanc with the node's AE registered, `libra-node serve`, and one
`libra-node worker` per queue. Fault tests kill and restart parts of it and
leave it healthy for the next test.
"""

from __future__ import annotations

import datetime as dt
import io
import time

import pytest
from pydicom import dcmread

from deployment import NodeDeployment, RedisServer, wait_until
from dicom_tools import dciodvfy_errors, evidence_uids, storescu, write_datasets
from libra_node.ledger import StudyState
from libra_node.local_orthanc import LocalOrthanc, Modality
from libra_node.selection import ImageFacts, choose_frontal
from libra_node.synthetic import SyntheticPatient, SyntheticStudy, make_chest_study

DONE = {StudyState.DELIVERED, StudyState.FAILED, StudyState.SKIPPED}
STUCK_AFTER = 4


class Site:
    """The deployment plus helpers to act as modality and as radiologist."""

    def __init__(self, workdir, tiny_model) -> None:
        self.workdir = workdir
        self.redis = RedisServer(workdir / "redis")
        self.node = NodeDeployment(
            workdir / "node",
            model={"path": str(tiny_model), "max_new_tokens": 16},
            broker={"stuck_after_seconds": STUCK_AFTER, "reconcile_every_seconds": 1},
        )
        self.orthanc = LocalOrthanc(
            workdir / "orthanc", modalities=[Modality("LIBRA", "LIBRA", "127.0.0.1", self.node.port)]
        )

    def start(self) -> None:
        self.redis.start()
        self.orthanc.start()
        self.node.configure(
            broker={"url": self.redis.url},
            pacs={"transport": "dimse", "host": "127.0.0.1", "port": self.orthanc.dicom_port,
                  "ae_title": self.orthanc.ae_title, "timeout_seconds": 5},
        )
        self.node.start_node()
        self.node.start_worker("io")
        self.start_gpu_worker()

    def start_gpu_worker(self, **settings: str) -> None:
        self.node.start_worker("gpu", **settings)

    def stop(self) -> None:
        self.node.stop_all()
        self.orthanc.stop()
        self.redis.stop()

    def send(self, datasets, folder, to_node: bool = True, to_pacs: bool = True) -> float:
        """As a modality whose images the PACS routes to the node: PACS first, then node."""
        files = write_datasets(datasets, folder)
        if to_pacs:
            result = storescu(self.orthanc.dicom_port, files, called=self.orthanc.ae_title)
            assert result.returncode == 0, result.stderr
        if to_node:
            result = storescu(self.node.port, files)
            assert result.returncode == 0, result.stderr
        return time.time()

    def srs_in_orthanc(self, study_uid: str) -> list:
        found = self.orthanc.find_instances(StudyInstanceUID=study_uid, Modality="SR")
        return [dcmread(io.BytesIO(self.orthanc.rest("GET", f"/instances/{i['ID']}/file").content))
                for i in found]


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model):
    site = Site(tmp_path_factory.mktemp("site"), tiny_model)
    site.start()
    yield site
    site.stop()


def frontal_uid(datasets) -> str:
    return choose_frontal([ImageFacts.from_dataset(ds) for ds in datasets]).image.sop_instance_uid


def test_current_study_gets_its_draft_sr_in_orthanc_referencing_the_prior(site, tmp_path):
    patient = SyntheticPatient(patient_id="E2E-RO-1", name="Müller^Anna")
    prior = make_chest_study(SyntheticStudy(patient=patient, study_date=dt.date(2026, 3, 3)))
    current = make_chest_study(SyntheticStudy(patient=patient, reason_for_request="dyspnoea"))
    site.send(prior, tmp_path / "prior")
    last_image = site.send(current, tmp_path / "current")
    uid = str(current[0].StudyInstanceUID)

    study = site.node.wait_for_state(uid, DONE, timeout=120)

    assert study.state == StudyState.DELIVERED, study.state_reason
    srs = wait_until(lambda: site.srs_in_orthanc(uid), 10)
    print(f"last image acknowledged to SR stored in Orthanc: {study.delivered_at - last_image:.2f} s")
    assert len(srs) == 1
    sr = srs[0]
    assert sr.SOPInstanceUID == study.sr_sop_uid
    assert str(sr.PatientName) == "Müller^Anna"
    assert frontal_uid(current) in evidence_uids(sr, "CurrentRequestedProcedureEvidenceSequence")
    assert study.prior_study_uid == str(prior[0].StudyInstanceUID), (
        study.prior_reason, site.node.ledger().events_of(uid))
    assert frontal_uid(prior) in evidence_uids(sr, "PertinentOtherEvidenceSequence")
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


def test_worker_killed_during_inference_still_delivers_exactly_once(site, tmp_path):
    site.node.kill("worker-gpu")
    # A gpu worker that holds each job three seconds before running it: the kill lands mid-inference.
    site.start_gpu_worker(MODEL__BATCH_WAIT_SECONDS="3")
    current = make_chest_study(SyntheticStudy(patient=SyntheticPatient(patient_id="E2E-RO-2")))
    site.send(current, tmp_path)
    uid = str(current[0].StudyInstanceUID)
    wait_until(lambda: site.node.study(uid).state_reason == "waiting for inference", 30)
    wait_until(lambda: site.redis.held_by_workers("gpu") >= 1, 60,  # the worker holds the job
               lambda: f"held {site.redis.held_by_workers('gpu')}, queued {site.redis.queue_length('gpu')}")
    time.sleep(0.5)

    site.node.kill("worker-gpu")
    site.start_gpu_worker()

    study = site.node.wait_for_state(uid, DONE, timeout=60)
    assert study.state == StudyState.DELIVERED
    assert study.attempts >= 1  # the reconciler sent it round again
    time.sleep(2)  # anything duplicated would arrive now
    assert len(site.srs_in_orthanc(uid)) == 1
    events = [state for _, state, _, _ in site.node.ledger().events_of(uid)]
    assert events.count("DELIVERED") == 1


def test_redis_restarted_empty_mid_flight_is_recovered_by_the_reconciler(site, tmp_path):
    site.node.kill("worker-gpu")
    current = make_chest_study(SyntheticStudy(patient=SyntheticPatient(patient_id="E2E-RO-3")))
    site.send(current, tmp_path)
    uid = str(current[0].StudyInstanceUID)
    wait_until(lambda: site.redis.queue_length("gpu") == 1, 30)

    site.redis.restart_empty()  # no persistence: the job's message is gone
    assert site.redis.queue_length("gpu") == 0
    site.start_gpu_worker()

    study = site.node.wait_for_state(uid, DONE, timeout=90)
    assert study.state == StudyState.DELIVERED
    assert study.attempts >= 1
    assert len(site.srs_in_orthanc(uid)) == 1


def test_orthanc_down_at_delivery_is_delivered_when_back(site, tmp_path):
    site.node.kill("worker-gpu")
    site.start_gpu_worker(MODEL__BATCH_WAIT_SECONDS="2")
    current = make_chest_study(SyntheticStudy(patient=SyntheticPatient(patient_id="E2E-RO-4")))
    site.send(current, tmp_path)
    uid = str(current[0].StudyInstanceUID)
    wait_until(lambda: site.node.study(uid).state_reason == "waiting for inference", 30)

    site.orthanc.stop()
    reported = site.node.wait_for_state(uid, {StudyState.REPORTED, *DONE}, timeout=30)
    assert reported.state == StudyState.REPORTED
    time.sleep(3)  # at least one failed attempt
    assert site.node.study(uid).state == StudyState.REPORTED
    site.orthanc.start()

    study = site.node.wait_for_state(uid, DONE, timeout=60)
    assert study.state == StudyState.DELIVERED
    assert len(site.srs_in_orthanc(uid)) == 1
    site.node.kill("worker-gpu")
    site.start_gpu_worker()


def test_non_chest_study_is_skipped_and_nothing_reaches_orthanc(site, tmp_path):
    hand = make_chest_study(SyntheticStudy(
        patient=SyntheticPatient(patient_id="E2E-RO-5"), body_part="HAND",
        study_description="XR HAND", views=("PA",),
    ))
    hand[0].SeriesDescription = "Hand PA"
    site.send(hand, tmp_path)
    uid = str(hand[0].StudyInstanceUID)

    assert site.node.wait_for_state(uid, DONE).state == StudyState.SKIPPED
    time.sleep(1)
    assert site.srs_in_orthanc(uid) == []


def test_no_patient_data_in_any_log(site):
    logs = site.node.log("serve") + site.node.log("worker-io") + site.node.log("worker-gpu")
    assert "instance.stored" in logs  # the logs are there and in use
    for secret in ("E2E-RO-1", "Müller", "Anna", "DEMO-0001"):
        assert secret not in logs
    ledger = site.node.ledger()
    for state in StudyState:
        for study in ledger.studies_in(state):
            assert study.study_uid not in logs
