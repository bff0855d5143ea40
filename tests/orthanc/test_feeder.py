"""The plugin's work driven in process against a real Orthanc (over HTTP instead of in process).

The same classes run inside Orthanc in test_plugin.py; here each rule and
each failure path is checked directly: what is recorded, when a study is
submitted, how the cursor moves, and what happens when a part fails.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from deployment import wait_until
from libra_feeder import (
    COMPLETION_RULE,
    ChangeFollower,
    FeederLoop,
    FeedResult,
    ResourceGone,
    StudyFeeder,
    Submitter,
)
from libra_node.ledger import Ledger, LedgerError, StudyState
from libra_node.local_orthanc import LocalOrthanc
from libra_node.outbox import Outbox
from libra_node.reconciler import Reconciler
from libra_node.synthetic import SyntheticPatient
from pacs.testdata import chest_study, draft_report, scanned_document_study, sop_uids


class HttpOrthanc:
    """The plugin's view of Orthanc, over HTTP; the cursor kept like a global property."""

    def __init__(self, orthanc: LocalOrthanc) -> None:
        self.orthanc = orthanc
        self.cursor: str | None = None

    def get_json(self, path: str) -> Any:
        response = requests.get(self.orthanc.url + path, auth=self.orthanc.auth, timeout=10)
        if response.status_code == 404:
            raise ResourceGone(path)
        response.raise_for_status()
        return response.json()

    def load_cursor(self) -> str | None:
        return self.cursor

    def save_cursor(self, value: str) -> None:
        self.cursor = value


class Sent:
    """Records the libra.prepare messages; can be told to fail like an unreachable broker."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, int]] = []
        self.broker_down = False

    def __call__(self, study_uid: str, version: int) -> None:
        if self.broker_down:
            raise ConnectionRefusedError("broker unreachable")
        self.messages.append((study_uid, version))

    def of(self, study_uid: str) -> list[int]:
        """The versions sent for one study (a follower also sees other tests' studies)."""
        return [version for uid, version in self.messages if uid == study_uid]


class Plugin:
    """The plugin's parts, as libra_feeder.assemble wires them, with a recording broker."""

    def __init__(self, orthanc: LocalOrthanc, ledger: Ledger, api: HttpOrthanc | None = None,
                 **options: Any) -> None:
        self.api = api or HttpOrthanc(orthanc)
        self.ledger = ledger
        self.sent = Sent()
        self.submitter = Submitter(ledger, self.sent)
        self.feeder = StudyFeeder(self.api, ledger, self.submitter.submit)
        self.follower = ChangeFollower(self.api, self.feeder, **options)

    def follow_until(self, condition: Callable[[], Any], timeout: float = 15) -> Any:
        def step() -> Any:
            self.follower.follow()
            return condition()
        return wait_until(step, timeout, lambda: f"pending {self.follower.pending}")


@pytest.fixture
def ledger(tmp_path) -> Iterator[Ledger]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    yield ledger
    ledger.close()


@pytest.fixture
def plugin(orthanc: LocalOrthanc, ledger: Ledger) -> Plugin:
    plugin = Plugin(orthanc, ledger, scan_on_first_start=False)
    plugin.follower.follow()  # start after what earlier tests stored
    return plugin


def state_of(ledger: Ledger, study_uid: str) -> StudyState | None:
    study = ledger.get_study(study_uid)
    return study.state if study else None


# --- one study (fed directly: no need to wait for Orthanc's stable age) ----------------------


def orthanc_study_id(orthanc: LocalOrthanc, study_uid: str) -> str:
    found = orthanc.rest("POST", "/tools/lookup", data=study_uid).json()
    return next(item["ID"] for item in found if item["Type"] == "Study")


def feed_now(plugin: Plugin, orthanc: LocalOrthanc, study_uid: str) -> FeedResult:
    study_id = orthanc_study_id(orthanc, study_uid)
    return plugin.feeder.feed(plugin.api.get_json(f"/studies/{study_id}"))


def test_a_chest_study_is_recorded_completed_and_submitted(plugin, orthanc, ledger, new_patient):
    study = chest_study(new_patient(), "2026-06-01")
    uid = str(study[0].StudyInstanceUID)
    orthanc.upload(study)

    result = feed_now(plugin, orthanc, uid)

    assert (result.outcome, result.added) == ("COMPLETE", 2)
    assert plugin.sent.messages == [(uid, 1)]
    row = ledger.get_study(uid)
    assert row.state == StudyState.QUEUED and row.completion_rule == COMPLETION_RULE
    assert row.frontal_sop_uid in sop_uids(study, "PA")
    instances = ledger.instances_of(uid)
    assert {i.facts.sop_instance_uid for i in instances} == sop_uids(study)
    assert all(i.file_path == "" and i.size > 0 and i.transfer_syntax_uid for i in instances)
    assert row.patient_id == study[0].PatientID


def test_fed_again_without_a_new_image_is_not_reported_again(plugin, orthanc, ledger, new_patient):
    study = chest_study(new_patient(), "2026-06-01")
    uid = str(study[0].StudyInstanceUID)
    orthanc.upload(study)
    feed_now(plugin, orthanc, uid)
    events = ledger.events_of(uid)

    orthanc.upload([draft_report(study)])  # the node's own SR, stored back
    result = feed_now(plugin, orthanc, uid)

    assert (result.outcome, result.added) == ("unchanged", 0)
    assert plugin.sent.messages == [(uid, 1)]
    assert ledger.events_of(uid) == events
    assert len(ledger.instances_of(uid)) == len(study)  # the SR is never recorded


def test_a_new_image_in_a_reported_study_gives_a_new_version(plugin, orthanc, ledger, new_patient):
    patient = new_patient()
    study = chest_study(patient, "2026-06-01", views=("PA",))
    uid = str(study[0].StudyInstanceUID)
    orthanc.upload(study)
    feed_now(plugin, orthanc, uid)
    assert ledger.transition(uid, StudyState.DELIVERED, from_states=[StudyState.QUEUED])

    orthanc.upload(chest_study(patient, "2026-06-01", views=("LL",), study_uid=uid))
    result = feed_now(plugin, orthanc, uid)

    assert (result.outcome, result.added) == ("COMPLETE", 1)
    assert plugin.sent.messages == [(uid, 1), (uid, 2)]
    assert ledger.get_study(uid).version == 2


def test_a_radiograph_of_another_body_part_is_skipped_with_its_reason(plugin, orthanc, ledger,
                                                                      new_patient):
    hand = chest_study(new_patient(), "2026-06-01", views=("PA",), body_part="HAND",
                       study_description="XR HAND")
    hand[0].SeriesDescription = "Hand PA"
    uid = str(hand[0].StudyInstanceUID)
    orthanc.upload(hand)

    assert feed_now(plugin, orthanc, uid).outcome == "SKIPPED"

    assert "not of the chest" in ledger.get_study(uid).state_reason
    assert plugin.sent.messages == []


def test_a_study_without_radiographs_stays_out_of_the_ledger(plugin, orthanc, ledger, new_patient):
    document = scanned_document_study(new_patient(), "2026-06-01")
    uid = str(document[0].StudyInstanceUID)
    orthanc.upload(document)

    assert feed_now(plugin, orthanc, uid).outcome == "not a radiograph study"

    assert ledger.get_study(uid) is None


def test_instances_with_unusable_uids_are_left_out(plugin, orthanc, ledger, new_patient):
    study = chest_study(new_patient(), "2026-06-01")
    uid = str(study[0].StudyInstanceUID)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom rightly warns about the invalid UID
        study[1].SOPInstanceUID = study[1].file_meta.MediaStorageSOPInstanceUID = "1.2.bad..uid"
        orthanc.upload(study)

    result = feed_now(plugin, orthanc, uid)

    assert result.added == 1
    assert {i.facts.sop_instance_uid for i in ledger.instances_of(uid)} == {
        str(study[0].SOPInstanceUID)
    }


# --- following the change log ----------------------------------------------------------------


def stable_changes(orthanc: LocalOrthanc, study_uid: str) -> list[int]:
    """Sequence numbers of the study's StableStudy changes."""
    study_id = orthanc_study_id(orthanc, study_uid)
    changes = orthanc.rest("GET", "/changes?since=0&limit=100000").json()["Changes"]
    return [c["Seq"] for c in changes if c["ChangeType"] == "StableStudy" and c["ID"] == study_id]


def test_a_study_is_fed_when_it_becomes_stable_and_once_only(plugin, orthanc, ledger, new_patient):
    study = chest_study(new_patient(), "2026-06-01", views=("PA",))
    uid = str(study[0].StudyInstanceUID)
    orthanc.upload(study)
    plugin.follower.follow()
    assert plugin.follower.pending and plugin.sent.messages == []  # not stable yet

    plugin.follow_until(lambda: plugin.sent.of(uid))
    orthanc.upload([draft_report(study)])  # stable once more
    plugin.follow_until(lambda: len(stable_changes(orthanc, uid)) == 2
                        and plugin.follower.position >= stable_changes(orthanc, uid)[-1]
                        and not plugin.follower.pending)

    assert plugin.sent.of(uid) == [1]
    assert int(plugin.api.cursor) == plugin.follower.position


# --- the cursor across restarts ---------------------------------------------------------------


def test_a_study_unstable_when_orthanc_stops_is_fed_after_the_restart(orthanc, ledger,
                                                                      new_patient):
    api = HttpOrthanc(orthanc)
    before = Plugin(orthanc, ledger, api, scan_on_first_start=False)
    before.follower.follow()
    study = chest_study(new_patient(), "2026-06-01")
    uid = str(study[0].StudyInstanceUID)
    orthanc.upload(study)
    before.follower.follow()  # sees the new instances; the study is not stable yet
    assert before.follower.pending and before.sent.messages == []
    assert int(api.cursor) < min(before.follower.pending.values())

    orthanc.restart()  # Orthanc forgets that the study was unstable and never announces it
    after = Plugin(orthanc, ledger, api)  # same cursor, as in Orthanc's database
    after.follower.follow()

    assert after.sent.messages == [(uid, 1)]
    assert int(api.cursor) == after.follower.position


def test_first_start_scans_the_stored_studies_once(orthanc, ledger, new_patient):
    study = chest_study(new_patient(), "2026-06-01", views=("PA",))
    orthanc.upload(study)
    uid = str(study[0].StudyInstanceUID)
    plugin = Plugin(orthanc, ledger)

    plugin.follow_until(lambda: (uid, 1) in plugin.sent.messages)

    last = orthanc.rest("GET", "/changes?last").json()["Last"]
    assert int(plugin.api.cursor) <= last
    count = len(plugin.sent.messages)
    plugin.follower.follow()
    assert len(plugin.sent.messages) == count


def test_first_start_without_scan_leaves_stored_studies_alone(orthanc, ledger, new_patient):
    old = chest_study(new_patient(), "2026-06-01", views=("PA",))
    orthanc.upload(old)
    wait_until(lambda: stable_changes(orthanc, str(old[0].StudyInstanceUID)), 15)
    plugin = Plugin(orthanc, ledger, scan_on_first_start=False)
    plugin.follower.follow()
    new = chest_study(new_patient(), "2026-06-02", views=("PA",))
    orthanc.upload(new)

    plugin.follow_until(lambda: plugin.sent.messages)

    assert plugin.sent.messages == [(str(new[0].StudyInstanceUID), 1)]
    assert ledger.get_study(str(old[0].StudyInstanceUID)) is None


@pytest.mark.parametrize("stored", ["not a number", "999999999"])
def test_an_unusable_cursor_means_a_scan(orthanc, ledger, new_patient, stored, caplog):
    study = chest_study(new_patient(), "2026-06-01", views=("PA",))
    orthanc.upload(study)
    api = HttpOrthanc(orthanc)
    api.cursor = stored
    plugin = Plugin(orthanc, ledger, api)
    caplog.set_level(logging.WARNING, "libra_node")

    plugin.follow_until(lambda: (str(study[0].StudyInstanceUID), 1) in plugin.sent.messages)

    assert "orthanc.cursor_" in caplog.text
    assert int(api.cursor) <= orthanc.rest("GET", "/changes?last").json()["Last"]


def test_a_study_deleted_while_pending_is_dropped(orthanc, ledger, new_patient):
    plugin = Plugin(orthanc, ledger, scan_on_first_start=False)
    plugin.follower.follow()
    study = chest_study(new_patient(), "2026-06-01", views=("PA",))
    orthanc.upload(study)
    plugin.follower.follow()
    (study_id,) = plugin.follower.pending
    orthanc.rest("DELETE", f"/studies/{study_id}")

    plugin.follower.follow()

    assert plugin.follower.pending == {}
    assert ledger.get_study(str(study[0].StudyInstanceUID)) is None


# --- failures ----------------------------------------------------------------------------------


def test_broker_down_leaves_the_study_complete_and_the_reconciler_queues_it_later(
    plugin, orthanc, ledger, new_patient, tmp_path, caplog
):
    study = chest_study(new_patient(), "2026-06-01", views=("PA",))
    uid = str(study[0].StudyInstanceUID)
    plugin.sent.broker_down = True
    orthanc.upload(study)

    plugin.follow_until(lambda: state_of(ledger, uid) == StudyState.COMPLETE)

    assert "broker unreachable" in ledger.get_study(uid).state_reason
    assert "orthanc.submit_failed" in caplog.text
    reconciler = Reconciler(ledger, Outbox(tmp_path / "outbox", ledger, 3600),
                            plugin.submitter.send_prepare, lambda: None, 300, 1)
    with pytest.raises(ConnectionRefusedError):
        reconciler.run_once()  # still down: back to COMPLETE again
    assert state_of(ledger, uid) == StudyState.COMPLETE
    plugin.sent.broker_down = False
    reconciler.run_once()
    assert state_of(ledger, uid) == StudyState.QUEUED
    assert plugin.sent.messages == [(uid, 1)]


def test_a_study_that_fails_to_feed_holds_the_cursor_and_is_retried(plugin, orthanc, ledger,
                                                                    new_patient, monkeypatch):
    study = chest_study(new_patient(), "2026-06-01", views=("PA",))
    uid = str(study[0].StudyInstanceUID)
    record = ledger.record_instance

    def ledger_down(*args: Any, **kwargs: Any) -> Any:
        raise LedgerError("ledger write failed: OperationalError")

    monkeypatch.setattr(ledger, "record_instance", ledger_down)
    orthanc.upload(study)
    wait_until(lambda: plugin.follower.follow() == 1, 15)
    held = int(plugin.api.cursor)
    assert held < min(plugin.follower.pending.values())

    monkeypatch.setattr(ledger, "record_instance", record)
    assert plugin.follower.follow() == 0

    assert plugin.sent.messages == [(uid, 1)]
    assert int(plugin.api.cursor) > held


def test_the_loop_survives_failures_and_logs_them_without_patient_data(orthanc, ledger,
                                                                       new_patient, caplog):
    caplog.set_level(logging.INFO, "libra_node")
    patient = new_patient()

    class Broken:
        def follow(self) -> int:
            raise RuntimeError(f"something about {patient.patient_id}")

    def reconcile_fails() -> None:
        raise ConnectionRefusedError(patient.patient_id)

    loop = FeederLoop(
        Broken(), reconcile_fails, poll_seconds=0.05, retry_seconds=0.05  # type: ignore[arg-type]
    )
    loop.start()
    loop.wake("some-study")
    time.sleep(0.3)
    loop.stop()

    assert not loop._thread.is_alive()
    assert "orthanc.follow_failed" in caplog.text and "orthanc.reconcile_failed" in caplog.text
    assert patient.patient_id not in caplog.text


def test_feeding_logs_no_patient_data(plugin, orthanc, ledger, caplog):
    patient = SyntheticPatient(patient_id="ORT-PHI-CHECK", name="Secret^Person")
    study = chest_study(patient, "2026-06-01", views=("PA",))
    caplog.set_level(logging.DEBUG)
    orthanc.upload(study)

    plugin.follow_until(lambda: plugin.sent.messages)

    assert "orthanc.study_fed" in caplog.text
    for secret in ("ORT-PHI-CHECK", "Secret", str(study[0].StudyInstanceUID),
                   str(study[0].SOPInstanceUID)):
        assert secret not in caplog.text
