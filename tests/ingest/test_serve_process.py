"""`libra-node serve` as a process: clean stop on SIGTERM, nothing lost on kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE

from dicom_tools import associate_result, free_port
from libra_node.ledger import Ledger
from libra_node.pacs.dimse import gate_reactor
from libra_node.synthetic import SyntheticPatient, SyntheticStudy, make_chest_image

READY_TIMEOUT = 30.0


def write_config(folder: Path, port: int) -> Path:
    config = folder / "node.toml"
    config.write_text(
        f"""
[node]
state_dir = "{folder / 'state'}"
log_format = "json"

[listener]
port = {port}
quiet_seconds = 30
stable_seconds = 60
min_free_bytes = 0

[metrics]
port = 0
"""
    )
    return config


def start_serve(config: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBRA_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "libra_node", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode())
        if associate_result(port)[0]:
            return process
        time.sleep(0.1)
    process.kill()
    raise AssertionError("libra-node serve did not become ready")


def small_instances(count: int) -> list:
    study = SyntheticStudy(patient=SyntheticPatient(patient_id="KILL9"), views=("PA",),
                           rows=64, columns=64)
    return [make_chest_image(study, "PA", index) for index in range(count)]


def test_sigterm_finishes_the_open_association_then_exits_zero(tmp_path):
    port = free_port()
    process = start_serve(write_config(tmp_path, port), port)
    first, second = small_instances(2)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="LIBRA")
    pause_reactor = gate_reactor(assoc, timeout=30)
    pause_reactor()
    assert assoc.send_c_store(first).Status == 0

    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)

    assert not associate_result(port)[0], "a new association was accepted after SIGTERM"
    pause_reactor()
    assert assoc.send_c_store(second).Status == 0
    assoc.release()
    assert process.wait(timeout=20) == 0
    ledger = Ledger(f"sqlite:///{tmp_path / 'state' / 'ledger.sqlite3'}")
    assert ledger.get_instance(str(second.SOPInstanceUID)) is not None
    ledger.close()


def test_kill_9_loses_no_acknowledged_instance(tmp_path):
    port = free_port()
    config = write_config(tmp_path, port)
    process = start_serve(config, port)
    instances = small_instances(400)
    acknowledged: list[str] = []

    def send() -> None:
        ae = AE(ae_title="MODALITY")
        ae.dimse_timeout = ae.network_timeout = 5
        ae.add_requested_context(instances[0].SOPClassUID, instances[0].file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="LIBRA")
        pause_reactor = gate_reactor(assoc, timeout=5)
        for ds in instances:
            if not assoc.is_established:
                return
            pause_reactor()
            status = assoc.send_c_store(ds)
            if status and status.get("Status") == 0:
                acknowledged.append(str(ds.SOPInstanceUID))
        assoc.release()

    sender = threading.Thread(target=send)
    sender.start()
    while len(acknowledged) < 60:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    sender.join(timeout=60)
    assert 60 <= len(acknowledged) < len(instances), "the kill must land mid-stream"

    restarted = start_serve(config, port)
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(timeout=20) == 0

    spool = tmp_path / "state" / "spool"
    ledger = Ledger(f"sqlite:///{tmp_path / 'state' / 'ledger.sqlite3'}")
    for uid in acknowledged:
        instance = ledger.get_instance(uid)
        assert instance is not None, "an acknowledged instance is missing from the ledger"
        stored = dcmread(spool / instance.file_path)
        assert stored.pixel_array.shape == (64, 64)
    assert os.listdir(spool / ".incoming") == []
    recorded = ledger.all_instance_paths()
    on_disk = {str(p.relative_to(spool)) for p in spool.glob("*/*/*.dcm")}
    assert on_disk == recorded
    ledger.close()
    print(f"{len(acknowledged)} acknowledged before kill -9, {len(recorded)} recorded after restart")


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_idle_node_stops_cleanly_on_signal(tmp_path, signal_number):
    port = free_port()
    process = start_serve(write_config(tmp_path, port), port)
    process.send_signal(signal_number)
    assert process.wait(timeout=20) == 0
    stderr = process.stderr.read().decode()
    assert "node.stopped" in stderr
