"""The plugin inside the real Debian Orthanc, with the node's workers on a private Redis.

One site serves the module: Orthanc (DICOMweb and Python plugins, this
project's orthanc/libra_plugin.py, StableAge 1 s), a redis-server as the
broker, and `libra-node worker --queues io` and `--queues gpu` with the tiny
model. Orthanc finds the node's packages through PYTHONPATH and its settings
through LIBRA_CONFIG, as the README tells sites to do. A modality (dcmtk's
storescu) sends to Orthanc; the draft SR must appear in the same study in
Orthanc. Tests that stop a part start it again.
"""

from __future__ import annotations

import datetime as dt
import io
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset

from deployment import NodeDeployment, RedisServer, wait_until
from dicom_tools import dciodvfy_errors, evidence_uids, storescu, write_datasets
from libra_node.ledger import Study, StudyState
from libra_node.local_orthanc import LocalOrthanc
from libra_node.selection import ImageFacts, choose_frontal
from libra_node.synthetic import SyntheticPatient, SyntheticStudy, make_chest_study

REPOSITORY = Path(__file__).resolve().parents[2]
PLUGIN_SCRIPT = REPOSITORY / "orthanc" / "libra_plugin.py"
DONE = {StudyState.DELIVERED, StudyState.FAILED, StudyState.SKIPPED}
PATIENT_PREFIX = "ORT-E2E-"


def plugin_environment(config: Path) -> dict[str, str]:
    """What the README tells sites to give Orthanc: the node's packages and its settings.

    The project's root joins site-packages here because the test environment
    installs the project in editable mode (a .pth file, which PYTHONPATH does
    not read); an image installs it into site-packages itself.
    """
    site_packages = sysconfig.get_paths()["purelib"]
    return {"PYTHONPATH": f"{site_packages}:{REPOSITORY}", "LIBRA_CONFIG": str(config)}


class OrthancSite:
    def __init__(self, workdir: Path, tiny_model: Path) -> None:
        self.redis = RedisServer(workdir / "redis")
        self.orthanc = LocalOrthanc(workdir / "orthanc", stable_age=1, python_script=PLUGIN_SCRIPT)
        self.node = NodeDeployment(
            workdir / "node",
            model={"path": str(tiny_model), "max_new_tokens": 16},
            broker={"url": self.redis.url, "stuck_after_seconds": 10, "reconcile_every_seconds": 1},
            pacs={"transport": "orthanc", "url": self.orthanc.url,
                  "username": self.orthanc.username, "password": self.orthanc.password,
                  "timeout_seconds": 5},
        )
        self.orthanc.environment.update(plugin_environment(self.node.config))

    def start(self) -> None:
        self.redis.start()
        self.orthanc.start()
        # Info lines too, so that the test of the log sees everything the plugin says.
        self.orthanc.rest("PUT", "/tools/log-level", data="verbose")
        self.node.start_worker("io")
        self.node.start_worker("gpu")

    def stop(self) -> None:
        self.node.stop_all()
        self.orthanc.stop()
        self.redis.stop()

    def send(self, datasets: list[Dataset], folder: Path) -> None:
        """As a modality: C-STORE into Orthanc."""
        result = storescu(self.orthanc.dicom_port, write_datasets(datasets, folder),
                          called=self.orthanc.ae_title)
        assert result.returncode == 0, result.stderr

    def restart_orthanc(self) -> None:
        self.orthanc.restart()
        self.orthanc.rest("PUT", "/tools/log-level", data="verbose")

    def wait_for(self, study_uid: str, states: set[StudyState], version: int = 1,
                 timeout: float = 90) -> Study:
        def reached() -> Study | None:
            study = self.node.study(study_uid)
            return study if study and study.state in states and study.version >= version else None

        return wait_until(reached, timeout, lambda: self.diagnosis(study_uid))

    def diagnosis(self, study_uid: str) -> str:
        return (f"study: {self.node.study(study_uid)}\n--- orthanc\n{self.orthanc.log_tail(40)}\n"
                f"--- io\n{self.node.log('worker-io')}\n--- gpu\n{self.node.log('worker-gpu')}")

    def srs(self, study_uid: str) -> list[Dataset]:
        found = self.orthanc.find_instances(StudyInstanceUID=study_uid, Modality="SR")
        paths = [f"/instances/{item['ID']}/file" for item in found]
        return [dcmread(io.BytesIO(self.orthanc.rest("GET", path).content)) for path in paths]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[OrthancSite]:
    site = OrthancSite(tmp_path_factory.mktemp("orthanc-site"), tiny_model)
    site.start()
    yield site
    site.stop()


@pytest.fixture
def live(site: OrthancSite) -> OrthancSite:
    """The site with every part running (a test that stopped one leaves it to this)."""
    site.orthanc.start()
    if site.redis._process is None:
        site.redis.start()
    return site


def cxr(patient_number: int, day: dt.date = dt.date(2026, 12, 1), views=("PA", "LL"),
        **options) -> list[Dataset]:
    patient = SyntheticPatient(patient_id=f"{PATIENT_PREFIX}{patient_number}",
                               name=f"Secret^Person{patient_number}")
    return make_chest_study(SyntheticStudy(patient=patient, study_date=day, views=views,
                                           rows=128, columns=128, **options))


def frontal_uid(datasets: list[Dataset]) -> str:
    return choose_frontal([ImageFacts.from_dataset(ds) for ds in datasets]).image.sop_instance_uid


# --- the draft report ---------------------------------------------------------------------


def test_a_chest_xray_sent_to_orthanc_gets_a_valid_draft_sr_in_the_same_study(live, tmp_path):
    study = cxr(1)
    uid = str(study[0].StudyInstanceUID)

    live.send(study, tmp_path)
    row = live.wait_for(uid, DONE)

    assert row.state == StudyState.DELIVERED, row.state_reason
    assert row.completion_rule == "orthanc-stable"
    (sr,) = live.srs(uid)
    assert sr.StudyInstanceUID == uid and sr.SOPInstanceUID == row.sr_sop_uid
    assert sr.VerificationFlag == "UNVERIFIED"
    assert frontal_uid(study) in evidence_uids(sr, "CurrentRequestedProcedureEvidenceSequence")
    sr_path = tmp_path / "sr.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    assert dciodvfy_errors(sr_path) == []
    states = [state for _, state, _, _ in live.node.ledger().events_of(uid)]
    assert states == ["RECEIVING", "COMPLETE", "QUEUED", "REPORTED", "DELIVERED"]


def test_the_patients_prior_in_orthanc_is_referenced(live, tmp_path):
    prior = cxr(2, dt.date(2026, 5, 1))
    live.orthanc.upload(prior)  # already in the archive
    current = cxr(2, reason_for_request="fever")
    current_uid = str(current[0].StudyInstanceUID)

    live.send(current, tmp_path)
    row = live.wait_for(current_uid, DONE)

    assert row.state == StudyState.DELIVERED, row.state_reason
    assert row.prior_study_uid == str(prior[0].StudyInstanceUID)
    (sr,) = live.srs(current_uid)
    assert frontal_uid(prior) in evidence_uids(sr, "PertinentOtherEvidenceSequence")


def test_stable_again_gives_no_second_report_but_a_new_image_gives_a_new_version(live, tmp_path):
    study = cxr(3, views=("PA",))
    uid = str(study[0].StudyInstanceUID)
    live.send(study, tmp_path / "first")
    first = live.wait_for(uid, DONE)
    # Storing the SR made the study unstable; let it become stable again and be looked at.
    time.sleep(3.5)

    assert [sr.SOPInstanceUID for sr in live.srs(uid)] == [first.sr_sop_uid]
    assert live.node.study(uid).version == 1

    live.send(cxr(3, views=("LL",), study_uid=uid), tmp_path / "late")
    second = live.wait_for(uid, DONE, version=2)

    assert second.state == StudyState.DELIVERED and second.sr_sop_uid != first.sr_sop_uid
    new_sr = next(sr for sr in live.srs(uid) if sr.SOPInstanceUID == second.sr_sop_uid)
    predecessor = new_sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.sr_sop_uid
    time.sleep(3.5)  # stable once more after the second SR: still two reports
    assert len(live.srs(uid)) == 2


# --- no loss ------------------------------------------------------------------------------


def test_a_study_stored_just_before_orthanc_stops_is_reported_after_the_restart(live, tmp_path):
    live.orthanc.stable_age = 60
    live.restart_orthanc()
    study = cxr(4, views=("PA",))
    uid = str(study[0].StudyInstanceUID)
    live.send(study, tmp_path)
    (found,) = live.orthanc.rest("POST", "/tools/lookup", data=uid).json()
    assert live.orthanc.rest("GET", f"/studies/{found['ID']}").json()["IsStable"] is False

    live.orthanc.stop()
    live.orthanc.stable_age = 1
    live.restart_orthanc()
    row = live.wait_for(uid, DONE)

    assert row.state == StudyState.DELIVERED, row.state_reason
    assert len(live.srs(uid)) == 1


def test_broker_down_at_submit_orthanc_keeps_serving_and_the_study_is_reported_later(live,
                                                                                     tmp_path):
    live.redis.stop()
    study = cxr(5, views=("PA",))
    uid = str(study[0].StudyInstanceUID)
    live.send(study, tmp_path / "during")

    row = live.wait_for(uid, {StudyState.COMPLETE}, timeout=30)
    assert "broker unreachable" in row.state_reason
    assert requests.get(f"{live.orthanc.url}/system", auth=live.orthanc.auth, timeout=5).ok
    live.send(cxr(6, views=("PA",)), tmp_path / "still-accepting")

    live.redis.start()
    assert live.wait_for(uid, DONE).state == StudyState.DELIVERED
    assert len(live.srs(uid)) == 1


# --- inside Orthanc's process ---------------------------------------------------------------


def test_orthanc_never_loads_torch_and_the_plugin_logs_no_patient_data(live):
    maps = Path(f"/proc/{live.orthanc._process.pid}/maps").read_text()  # the running Orthanc
    assert "libpython3.11" in maps  # the plugin's Python is there ...
    assert "libtorch" not in maps  # ... but never torch

    lines = [line for line in live.orthanc.log_path.read_text(errors="replace").splitlines()
             if '"logger"' in line or "libra plugin" in line]
    assert any("orthanc.study_fed" in line for line in lines)
    for line in lines:
        assert PATIENT_PREFIX not in line and "Secret" not in line
        assert "1.2.826.0.1.3680043" not in line  # the synthetic studies' UID root


@pytest.mark.parametrize(
    ("environment", "reason"),
    [
        ({"PYTHONPATH": "/nonexistent", "LIBRA_CONFIG": ""}, "cannot import the node's packages"),
        ({"LIBRA_CONFIG": "/nonexistent/node.toml"}, "does not exist"),
    ],
    ids=["packages-missing", "settings-missing"],
)
def test_a_plugin_that_cannot_start_leaves_orthanc_running(tmp_path, environment, reason):
    environment = {**plugin_environment(tmp_path / "unused.toml"), **environment}
    orthanc = LocalOrthanc(tmp_path / "orthanc", stable_age=1, python_script=PLUGIN_SCRIPT,
                           environment=environment)
    with orthanc:
        orthanc.upload(cxr(7, views=("PA",)))
        assert orthanc.rest("GET", "/system").json()["Version"]
    log = orthanc.log_path.read_text(errors="replace")
    assert "libra plugin: disabled: " in log and reason in log
