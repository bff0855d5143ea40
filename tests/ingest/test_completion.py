"""When studies complete: quiet period, stable age, late instances, classification."""

from __future__ import annotations

import time

import pytest
from pynetdicom import AE

from dicom_tools import send_with_pynetdicom, storescu, write_datasets
from libra_node.completion import CompletionMonitor, CompletionPolicy, CompletionTracker
from libra_node.ledger import Ledger, StudyState
from libra_node.listener import ParsedInstance, instance_record
from libra_node.selection import ImageFacts
from libra_node.synthetic import SyntheticStudy, make_chest_study

T0 = 1_800_000_000.0


def record(ledger: Ledger, ds, now: float) -> None:
    facts = ImageFacts.from_dataset(ds)
    ledger.record_instance(
        instance_record(ParsedInstance(ds, facts), "1.2.840.10008.1.2.1", f"x/{facts.sop_instance_uid}", 1),
        now=now,
    )


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    yield ledger
    ledger.close()


def make_monitor(ledger, tracker=None, calls=None):
    calls = [] if calls is None else calls
    return CompletionMonitor(
        ledger,
        tracker or CompletionTracker(),
        CompletionPolicy(quiet_seconds=2.0, stable_seconds=30.0),
        on_complete=lambda uid, version: calls.append((uid, version)),
    )


def test_quiet_period_after_release(ledger):
    calls = []
    monitor = make_monitor(ledger, calls=calls)
    datasets = make_chest_study(SyntheticStudy())
    for ds in datasets:
        record(ledger, ds, T0)
    uid = str(datasets[0].StudyInstanceUID)

    assert monitor.check_once(now=T0 + 1.9) == []
    assert monitor.check_once(now=T0 + 2.0) == [uid]

    study = ledger.get_study(uid)
    assert (study.state, study.completion_rule, study.version) == (StudyState.COMPLETE, "quiet", 1)
    assert calls == [(uid, 1)]


def test_open_association_waits_for_the_stable_age(ledger):
    tracker = CompletionTracker()
    monitor = make_monitor(ledger, tracker)
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    record(ledger, ds, T0)
    tracker.instance_received(42, str(ds.StudyInstanceUID))

    assert monitor.check_once(now=T0 + 10) == []
    assert monitor.check_once(now=T0 + 30) == [str(ds.StudyInstanceUID)]
    assert ledger.get_study(str(ds.StudyInstanceUID)).completion_rule == "stable"


def test_release_of_the_association_allows_the_quiet_rule(ledger):
    tracker = CompletionTracker()
    monitor = make_monitor(ledger, tracker)
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    record(ledger, ds, T0)
    tracker.instance_received(7, str(ds.StudyInstanceUID))
    assert monitor.check_once(now=T0 + 5) == []

    tracker.association_ended(7)

    assert monitor.check_once(now=T0 + 5) == [str(ds.StudyInstanceUID)]


def test_late_instance_reopens_with_a_new_version_and_completes_again(ledger):
    calls = []
    monitor = make_monitor(ledger, calls=calls)
    study = SyntheticStudy(views=("PA", "LL"))
    pa, lateral = make_chest_study(study)
    record(ledger, pa, T0)
    monitor.check_once(now=T0 + 3)
    uid = str(pa.StudyInstanceUID)

    record(ledger, lateral, T0 + 100)

    reopened = ledger.get_study(uid)
    assert (reopened.state, reopened.version, reopened.state_reason) == (
        StudyState.RECEIVING, 2, "late instance")
    assert monitor.check_once(now=T0 + 101) == []
    assert monitor.check_once(now=T0 + 102) == [uid]
    assert calls == [(uid, 1), (uid, 2)]
    assert [(v, s) for v, s, _, _ in ledger.events_of(uid)] == [
        (1, "RECEIVING"), (1, "COMPLETE"), (2, "RECEIVING"), (2, "COMPLETE")]


def test_instance_arriving_during_completion_is_not_lost(ledger):
    monitor = make_monitor(ledger)
    pa, lateral = make_chest_study(SyntheticStudy())
    record(ledger, pa, T0)
    seen = ledger.get_study(str(pa.StudyInstanceUID))
    record(ledger, lateral, T0 + 2.5)  # arrives after the monitor read the row

    assert not monitor._finish(seen, "quiet", T0 + 2.5)
    assert ledger.get_study(str(pa.StudyInstanceUID)).state == StudyState.RECEIVING


def test_non_chest_study_is_skipped_with_reason(ledger):
    calls = []
    monitor = make_monitor(ledger, calls=calls)
    ds = make_chest_study(SyntheticStudy(views=("PA",), body_part="HAND",
                                         study_description="XR HAND"))[0]
    ds.SeriesDescription = "Hand PA"
    record(ledger, ds, T0)

    monitor.check_once(now=T0 + 3)

    study = ledger.get_study(str(ds.StudyInstanceUID))
    assert study.state == StudyState.SKIPPED
    assert "not of the chest" in study.state_reason
    assert calls == []


def test_lateral_only_chest_study_is_skipped_with_reason(ledger):
    monitor = make_monitor(ledger)
    ds = make_chest_study(SyntheticStudy(views=("LL",)))[0]
    record(ledger, ds, T0)

    monitor.check_once(now=T0 + 3)

    study = ledger.get_study(str(ds.StudyInstanceUID))
    assert study.state == StudyState.SKIPPED
    assert "frontal" in study.state_reason


def test_policy_table():
    policy = CompletionPolicy(quiet_seconds=2, stable_seconds=30)
    row = type("Row", (), {"study_uid": "s", "last_instance_at": 100.0})
    assert policy.rule_for(row, set(), 101.9) is None
    assert policy.rule_for(row, set(), 102.0) == "quiet"
    assert policy.rule_for(row, {"s"}, 129.9) is None
    assert policy.rule_for(row, {"s"}, 130.0) == "stable"


# --- with the real listener and real senders ---------------------------------------------


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_storescu_study_completes_one_quiet_period_after_release(start_node, tmp_path):
    node = start_node()  # quiet period 0.5 s
    datasets = make_chest_study(SyntheticStudy())
    files = write_datasets(datasets, tmp_path / "send")
    uid = str(datasets[0].StudyInstanceUID)

    assert storescu(node.listener.port, files).returncode == 0
    released = time.time()
    study = wait_for(lambda: (s := node.ledger.get_study(uid)) and s.state != StudyState.RECEIVING and s)

    delay = study.completed_at - released
    print(f"completion {delay:.3f} s after release (quiet period 0.5 s)")
    assert 0.4 <= delay <= 1.0
    assert study.state == StudyState.COMPLETE


def test_open_association_delays_completion_until_released(start_node, make_settings):
    node = start_node(make_settings(listener={"quiet_seconds": 0.3, "stable_seconds": 60}))
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    ae = AE(ae_title="KEEPOPEN")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.listener.port, ae_title="LIBRA")
    assert assoc.send_c_store(ds).Status == 0
    time.sleep(1.0)
    assert node.ledger.get_study(str(ds.StudyInstanceUID)).state == StudyState.RECEIVING

    assoc.release()

    wait_for(lambda: node.ledger.get_study(str(ds.StudyInstanceUID)).state == StudyState.COMPLETE)


def test_late_instance_over_the_network_bumps_the_version(start_node):
    node = start_node()
    pa, lateral = make_chest_study(SyntheticStudy())
    uid = str(pa.StudyInstanceUID)
    assert send_with_pynetdicom(node.listener.port, [pa]) == [0]
    wait_for(lambda: node.ledger.get_study(uid).state == StudyState.COMPLETE)

    assert send_with_pynetdicom(node.listener.port, [lateral]) == [0]

    assert node.ledger.get_study(uid).version == 2
    wait_for(lambda: node.ledger.get_study(uid).state == StudyState.COMPLETE)
    assert node.ledger.get_study(uid).version == 2
