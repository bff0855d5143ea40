"""`libra-node demo`: the node's main job on one machine, with nothing to install.

Starts a node in a temporary state folder, makes up a patient with a prior
and a current chest radiograph study, sends both by C-STORE as a modality
would, and follows the current study through the node.
"""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pynetdicom import AE

from libra_node.config import Settings, load_settings
from libra_node.ledger import StudyState
from libra_node.node import Node
from libra_node.synthetic import SyntheticPatient, SyntheticStudy, make_chest_study

Print = Callable[[str], None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_settings(workdir: Path) -> Settings:
    return load_settings(
        None,
        node={"state_dir": workdir / "state", "log_level": "WARNING", "log_format": "text"},
        listener={"port": _free_port(), "quiet_seconds": 1.0, "min_free_bytes": 0},
        metrics={"port": 0},
    )


def demo_studies() -> tuple[list, list]:
    """A prior (PA + lateral, six months ago) and a current study (PA + lateral)."""
    patient = SyntheticPatient(patient_id="DEMO-0001", name="Demo^Patient")
    prior = SyntheticStudy(
        patient=patient, study_date=dt.date(2026, 6, 2), accession_number="DEMO-PRIOR", seed=1
    )
    current = SyntheticStudy(
        patient=patient,
        study_date=dt.date(2026, 12, 1),
        accession_number="DEMO-CURRENT",
        reason_for_request="Cough and fever for five days",
        seed=2,
    )
    return make_chest_study(prior), make_chest_study(current)


def send(settings: Settings, datasets: list) -> None:
    ae = AE(ae_title="DEMO_MODALITY")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", settings.listener.port, ae_title=settings.listener.ae_title)
    if not assoc.is_established:
        raise RuntimeError("the demo node refused the association")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if not status or status.Status != 0:
                raise RuntimeError("the demo node did not store an instance")
    finally:
        assoc.release()


def wait_for_state(node: Node, study_uid: str, states: set[StudyState], timeout: float) -> StudyState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        study = node.ledger.get_study(study_uid)
        if study is not None and study.state in states:
            return study.state
        time.sleep(0.05)
    raise TimeoutError("the study did not get through the node in time")


def run_demo(print_line: Print = print, keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="libra-demo-"))
    settings = demo_settings(workdir)
    node = Node(settings)
    node.start()
    try:
        prior, current = demo_studies()
        print_line(f"node listening on 127.0.0.1:{settings.listener.port} (AE {settings.listener.ae_title})")
        send(settings, prior)
        print_line("sent the prior study (2 images) by C-STORE")
        send(settings, current)
        print_line("sent the current study (2 images) by C-STORE")
        study_uid = str(current[0].StudyInstanceUID)
        state = wait_for_state(node, study_uid, {StudyState.COMPLETE, StudyState.SKIPPED}, 30)
        study = node.ledger.get_study(study_uid)
        print_line(f"current study is {state.value}: {study.state_reason}; "
                   f"frontal image chosen by {study.frontal_rule}")
        print_line(f"ledger: {node.ledger.count_by_state()}")
        print_line("this build runs the listener and completion only: the report pipeline "
                   "(prior lookup, Libra, SR delivery) is not wired into the demo yet")
    finally:
        node.stop()
        if keep:
            print_line(f"state kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0
