"""`libra-node demo`: the node's main job on one machine, with nothing to install.

Writes an untrained demo checkpoint unless a model is configured, starts a
node (listener, completion, embedded broker, io and gpu workers) in a
temporary state folder, makes up a patient with a prior and a current chest
radiograph study, sends both by C-STORE as a modality would, waits for the
current study's draft SR, prints it and copies it to the output folder. With
``--pacs orthanc`` a local Orthanc plays the PACS: priors are looked up in it
and the SR is stored into it.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE

from libra_node.config import Settings, load_settings
from libra_node.ledger import StudyState
from libra_node.local_orthanc import free_port
from libra_node.node import Node
from libra_node.pacs.dimse import gate_reactor
from libra_node.synthetic import SyntheticPatient, SyntheticStudy, make_chest_study

Print = Callable[[str], None]
DEMO_TIMEOUT_SECONDS = 180


def demo_settings(
    workdir: Path, model_path: Path, port: int, pacs: dict[str, Any] | None = None
) -> Settings:
    return load_settings(
        None,
        node={"state_dir": workdir / "state", "log_level": "WARNING", "log_format": "text"},
        listener={"port": port, "quiet_seconds": 1.0, "min_free_bytes": 0},
        model={"path": model_path, "max_new_tokens": 64},
        metrics={"port": 0},
        pacs=pacs or {"transport": "none"},
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


def send(host: str, port: int, called: str, datasets: list) -> None:
    ae = AE(ae_title="DEMO_MODALITY")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError(f"{called} at {host}:{port} refused the association")
    pause_reactor = gate_reactor(assoc, timeout=30)
    try:
        for ds in datasets:
            pause_reactor()
            status = assoc.send_c_store(ds)
            if not status or status.Status != 0:
                raise RuntimeError(f"{called} did not store an instance")
    finally:
        assoc.release()


@contextmanager
def model_folder(workdir: Path, configured: Path | None, print_line: Print) -> Iterator[Path]:
    if configured is not None:
        yield configured
        return
    from libra_node.model.tiny import write_tiny_checkpoint

    folder = workdir / "tiny-model"
    write_tiny_checkpoint(folder)
    print_line("wrote an UNTRAINED DEMO checkpoint (random weights): the findings are meaningless")
    yield folder


@contextmanager
def local_orthanc(workdir: Path, node_port: int, print_line: Print) -> Iterator[dict[str, Any]]:
    from libra_node.local_orthanc import LocalOrthanc, Modality

    orthanc = LocalOrthanc(workdir / "orthanc", modalities=[Modality("LIBRA", "LIBRA", "127.0.0.1", node_port)])
    orthanc.start()
    print_line(f"started a local Orthanc as the PACS: {orthanc.url} (DICOM port {orthanc.dicom_port})")
    try:
        yield {
            "transport": "dimse",
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
            "ae_title": orthanc.ae_title,
            "_orthanc": orthanc,
        }
    finally:
        orthanc.stop()


def run_demo(
    print_line: Print = print,
    pacs: str = "none",
    output_dir: Path = Path("demo-output"),
    model_path: Path | None = None,
    keep: bool = False,
) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="libra-demo-"))
    try:
        with model_folder(workdir, model_path, print_line) as model:
            node_port = free_port()
            if pacs == "orthanc":
                with local_orthanc(workdir, node_port, print_line) as pacs_settings:
                    orthanc = pacs_settings.pop("_orthanc")
                    return _run(workdir, model, pacs_settings, node_port, output_dir, print_line, orthanc)
            return _run(workdir, model, None, node_port, output_dir, print_line, None)
    finally:
        if keep:
            print_line(f"state kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(
    workdir: Path,
    model: Path,
    pacs: dict[str, Any] | None,
    node_port: int,
    output_dir: Path,
    print_line: Print,
    orthanc: Any,
) -> int:
    settings = demo_settings(workdir, model, node_port, pacs)
    node = Node(settings, pipeline=True)
    node.start()
    try:
        prior, current = demo_studies()
        if orthanc is not None:
            # The PACS already holds the patient's earlier study.
            send("127.0.0.1", orthanc.dicom_port, orthanc.ae_title, prior)
            print_line("stored the prior study (2 images) in the PACS")
        else:
            send("127.0.0.1", node_port, settings.listener.ae_title, prior)
            print_line("sent the prior study (2 images) to the node by C-STORE")
        started = time.monotonic()
        send("127.0.0.1", node_port, settings.listener.ae_title, current)
        print_line(f"sent the current study (2 images) to the node on port {node_port}")
        study_uid = str(current[0].StudyInstanceUID)
        state = node.wait_for(
            study_uid, {StudyState.DELIVERED, StudyState.FAILED, StudyState.SKIPPED}, DEMO_TIMEOUT_SECONDS
        )
        study = node.ledger.get_study(study_uid)
        print_line(f"current study {state.value} {time.monotonic() - started:.1f} s after its last image: "
                   f"{study.state_reason}")
        if state is not StudyState.DELIVERED:
            return 1
        print_line(f"prior: {study.prior_reason}")
        return _show_report(settings, study_uid, study.sr_sop_uid, output_dir, print_line, orthanc)
    finally:
        node.stop()


def _show_report(
    settings: Settings, study_uid: str, sr_uid: str, output_dir: Path, print_line: Print, orthanc: Any
) -> int:
    from libra_node.report import render_sr_text

    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{sr_uid}.dcm"
    if orthanc is not None:
        target.write_bytes(orthanc.instance_file(sr_uid))
        print_line(f"the SR is in Orthanc, in the same study ({orthanc.url})")
    else:
        shutil.copyfile(settings.report_dir / study_uid / f"{sr_uid}.dcm", target)
    print_line("")
    print_line(render_sr_text(dcmread(target)))
    print_line("")
    print_line(f"SR written to {target.resolve()} (libra-node show {target} prints it again)")
    return 0
