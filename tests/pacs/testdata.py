"""Studies, reports and settings the PACS tests build; plain functions, no fixtures."""

from __future__ import annotations

import datetime as dt
import subprocess
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_tools import send_with_pynetdicom
from libra_node.config import Settings
from libra_node.ledger import Ledger, StudyState
from libra_node.node import Node
from libra_node.pacs import PacsClient
from libra_node.selection import StudyFacts
from libra_node.synthetic import (
    SyntheticPatient,
    SyntheticStudy,
    make_chest_study,
    make_secondary_capture,
)
from libra_node.local_orthanc import LocalOrthanc

ORTHANC_AE = "ORTHANC"
NODE_AE = "LIBRA"  # the listener's default AE title, which the node also calls with
NODE_MODALITY = "libra"
TIMEOUT = 5.0
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def chest_study(
    patient: SyntheticPatient,
    day: str,
    time_of_day: str = "101500",
    views: Sequence[str] = ("PA", "LL"),
    modality: str = "DX",
    **options: Any,
) -> list[Dataset]:
    """A chest study on ``day`` (YYYY-MM-DD), one series per view."""
    study = SyntheticStudy(
        patient=patient,
        study_date=dt.date.fromisoformat(day),
        study_time=time_of_day,
        views=tuple(views),
        modality=modality,
        rows=64,
        columns=64,
        accession_number=f"A{uuid.uuid4().hex[:10]}",
        **options,
    )
    return make_chest_study(study)


def scanned_document_study(patient: SyntheticPatient, day: str) -> list[Dataset]:
    """A study holding only a scanned document (modality OT): not a radiograph."""
    study = SyntheticStudy(
        patient=patient, study_date=dt.date.fromisoformat(day), study_description="SCAN"
    )
    return [make_secondary_capture(study)]


def compressed_chest_study(patient: SyntheticPatient, day: str) -> list[Dataset]:
    """The real CR chest PA radiograph of pydicom-data, JPEG 2000 lossless, as this patient's."""
    ds = dcmread(get_testdata_file("RG1_J2KR.dcm"))
    ds.PatientID = patient.patient_id
    ds.PatientName = patient.name
    ds.StudyDate = dt.date.fromisoformat(day).strftime("%Y%m%d")
    ds.StudyTime = "120000"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return [ds]


def with_study_date(datasets: list[Dataset], study_date: str) -> list[Dataset]:
    """Give a study a date as some PACSes hold it (partial, e.g. '202611')."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom rightly warns that it is not a full DA
        for ds in datasets:
            ds.StudyDate = study_date
    return datasets


def facts_of(datasets: Sequence[Dataset]) -> StudyFacts:
    """The current study as the pipeline describes it to find_prior."""
    ds = datasets[0]
    return StudyFacts(
        study_instance_uid=str(ds.StudyInstanceUID),
        patient_id=str(ds.PatientID),
        issuer_of_patient_id=str(ds.get("IssuerOfPatientID", "")),
        study_date=str(ds.StudyDate),
        study_time=str(ds.StudyTime),
        study_description=str(ds.get("StudyDescription", "")),
    )


def sop_uids(datasets: Sequence[Dataset], view: str | None = None) -> set[str]:
    return {str(ds.SOPInstanceUID) for ds in datasets if view is None or ds.ViewPosition == view}


def draft_report(current: Sequence[Dataset], text: str = "AI DRAFT - NOT VERIFIED") -> Dataset:
    """A small Basic Text SR in the current study, standing in for the node's report."""
    source = current[0]
    ds = _object_in_study(source, BASIC_TEXT_SR, "SR")
    ds.CompletionFlag = "PARTIAL"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    content = Dataset()
    content.RelationshipType = "CONTAINS"
    content.ValueType = "TEXT"
    content.TextValue = text
    ds.ContentSequence = [content]
    return ds


def pdf_rendition(current: Sequence[Dataset]) -> Dataset:
    """An Encapsulated PDF in the current study, standing in for the report's PDF."""
    ds = _object_in_study(current[0], ENCAPSULATED_PDF, "DOC")
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.DocumentTitle = "AI DRAFT - NOT VERIFIED"
    ds.BurnedInAnnotation = "YES"
    ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    return ds


def _object_in_study(source: Dataset, sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in (
        "SpecificCharacterSet",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    ):
        if keyword in source:
            setattr(ds, keyword, source.get(keyword))
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 900
    ds.InstanceNumber = 1
    ds.Manufacturer = "libra-node tests"
    ds.ContentDate = source.StudyDate
    ds.ContentTime = source.StudyTime
    return ds


# --- the node and its settings ----------------------------------------------------------


@dataclass
class Archive:
    """A PACS the node talks to, how tests put studies into it, and the node beside it."""

    name: str
    client: PacsClient
    node: Node
    settings: Settings
    seed: Callable[[Sequence[Dataset]], None]

    @property
    def ledger(self) -> Ledger:
        return self.node.ledger


def pacs_section(orthanc: LocalOrthanc, transport: str, **overrides: Any) -> dict[str, Any]:
    """The [pacs] settings that point the node at the test Orthanc."""
    section: dict[str, Any] = {"transport": transport, "timeout_seconds": TIMEOUT}
    if transport == "dimse":
        section.update(host=orthanc.host, port=orthanc.dicom_port, ae_title=ORTHANC_AE)
    elif transport == "dicomweb":
        section.update(
            url=orthanc.dicomweb_url, username=orthanc.username, password=orthanc.password
        )
    section.update(overrides)
    return section


def send_to_node(node: Node, datasets: Sequence[Dataset]) -> None:
    statuses = send_with_pynetdicom(node.listener.port, list(datasets), called=NODE_AE)
    assert statuses == [0x0000] * len(datasets)


def make_reported(node: Node, datasets: Sequence[Dataset]) -> tuple[str, int]:
    """Receive a study and walk it to REPORTED, as the pipeline would; (study UID, version)."""
    send_to_node(node, datasets)
    study_uid = str(datasets[0].StudyInstanceUID)
    node.monitor.check_once(now=time.time() + 3600)  # complete it now, not after the quiet period
    study = node.ledger.get_study(study_uid)
    assert study is not None and study.state == StudyState.COMPLETE, study
    for before, after in (
        (StudyState.COMPLETE, StudyState.QUEUED),
        (StudyState.QUEUED, StudyState.REPORTED),
    ):
        assert node.ledger.transition(study_uid, after, from_states=[before], version=study.version)
    return study_uid, study.version


def tls_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key: (certificate, key)."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    request = "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1"
    san = "subjectAltName=IP:127.0.0.1"
    subprocess.run(
        ["openssl", *request.split(), "-addext", san, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key
