"""End to end on the embedded broker with no PACS: one `libra-node serve`, nothing else."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
import urllib.request

import pytest
from pydicom import dcmread

from deployment import NodeDeployment
from dicom_tools import dciodvfy_errors, evidence_uids, storescu, write_datasets
from libra_node.ledger import StudyState
from libra_node.selection import ImageFacts, choose_frontal
from libra_node.synthetic import SyntheticPatient, SyntheticStudy, make_chest_study

DONE = {StudyState.DELIVERED, StudyState.FAILED, StudyState.SKIPPED}


@pytest.fixture(scope="module")
def node(tmp_path_factory, tiny_model):
    workdir = tmp_path_factory.mktemp("embedded")
    deployment = NodeDeployment(workdir, model={"path": str(tiny_model), "max_new_tokens": 32})
    deployment.start_node()
    yield deployment
    deployment.stop_all()


def send_study(node, datasets, folder):
    result = storescu(node.port, write_datasets(datasets, folder))
    assert result.returncode == 0, result.stderr
    return time.time()


def frontal_uid(datasets) -> str:
    return choose_frontal([ImageFacts.from_dataset(ds) for ds in datasets]).image.sop_instance_uid


def test_prior_then_current_gives_a_valid_sr_referencing_both(node, tmp_path):
    patient = SyntheticPatient(patient_id="E2E-EMB-1")
    prior = make_chest_study(SyntheticStudy(patient=patient, study_date=dt.date(2026, 5, 1)))
    current = make_chest_study(SyntheticStudy(patient=patient, reason_for_request="fever"))
    send_study(node, prior, tmp_path / "prior")
    last_image = send_study(node, current, tmp_path / "current")
    uid = str(current[0].StudyInstanceUID)

    study = node.wait_for_state(uid, DONE, timeout=90)

    assert study.state == StudyState.DELIVERED, study.state_reason
    print(f"last image acknowledged to SR stored: {study.delivered_at - last_image:.2f} s")
    assert study.prior_study_uid == str(prior[0].StudyInstanceUID)
    sr_path = node.state_dir / "reports" / uid / f"{study.sr_sop_uid}.dcm"
    assert dciodvfy_errors(sr_path) == []
    sr = dcmread(sr_path)
    assert sr.StudyInstanceUID == uid
    assert sr.VerificationFlag == "UNVERIFIED"
    assert frontal_uid(current) in evidence_uids(sr, "CurrentRequestedProcedureEvidenceSequence")
    assert frontal_uid(prior) in evidence_uids(sr, "PertinentOtherEvidenceSequence")
    events = [state for _, state, _, _ in node.ledger().events_of(uid)]
    assert events == ["RECEIVING", "COMPLETE", "QUEUED", "REPORTED", "DELIVERED"]


def test_non_chest_study_is_skipped_and_nothing_is_written(node, tmp_path):
    hand = make_chest_study(SyntheticStudy(
        patient=SyntheticPatient(patient_id="E2E-EMB-2"), body_part="HAND",
        study_description="XR HAND", views=("PA",),
    ))
    hand[0].SeriesDescription = "Hand PA"
    send_study(node, hand, tmp_path)
    uid = str(hand[0].StudyInstanceUID)

    study = node.wait_for_state(uid, DONE)

    assert study.state == StudyState.SKIPPED
    assert "not of the chest" in study.state_reason
    time.sleep(1)
    assert not (node.state_dir / "reports" / uid).exists()


def test_corrupt_image_fails_with_reason_and_the_node_keeps_serving(node, tmp_path):
    patient = SyntheticPatient(patient_id="E2E-EMB-3")
    broken = make_chest_study(SyntheticStudy(patient=patient, views=("PA",)))
    broken[0].PixelData = broken[0].PixelData[:1000]  # far fewer bytes than Rows x Columns
    send_study(node, broken, tmp_path / "broken")

    failed = node.wait_for_state(str(broken[0].StudyInstanceUID), DONE)

    assert failed.state == StudyState.FAILED
    assert "cannot be decoded" in failed.state_reason
    good = make_chest_study(SyntheticStudy(patient=patient, views=("PA",)))
    send_study(node, good, tmp_path / "good")
    assert node.wait_for_state(str(good[0].StudyInstanceUID), DONE).state == StudyState.DELIVERED


def test_status_command_and_ops_endpoint(node, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "libra_node", "status", "--json", "--config", str(node.config)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert set(status["studies"]) >= {"RECEIVING", "COMPLETE", "SKIPPED", "QUEUED", "REPORTED",
                                      "DELIVERED", "FAILED"}
    assert set(status["queues"]) == {"io", "gpu"}
    assert all(isinstance(depth, int) for depth in status["queues"].values())
    ledger = node.ledger()
    assert status["studies"] == ledger.count_by_state()
    failures = status["recent_failures"]
    assert all("E2E" not in json.dumps(f) for f in failures)  # no patient IDs
    for failure in failures:
        assert set(failure) == {"study", "version", "reason", "failed_seconds_ago"}

    health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/health", timeout=10))
    assert health == {"status": "ok", "listener": "ok", "ledger": "ok", "broker": "ok", "model": "ok"}
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10).read().decode()
    for name in ("libra_instances_received_total", "libra_studies{state=\"DELIVERED\"}",
                 "libra_queue_depth{queue=\"gpu\"}", "libra_stage_seconds_bucket{le=\"1.0\",stage=\"inference\"}",
                 "libra_model_load_seconds", "libra_inference_batch_size_count",
                 "libra_stage_seconds_count{stage=\"last_image_to_delivered\"}",
                 "libra_stage_seconds_count{stage=\"complete_to_queued\"}"):
        assert name in metrics, name
    assert "E2E-EMB" not in metrics
