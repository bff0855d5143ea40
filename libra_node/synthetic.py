"""Synthetic chest radiograph studies for the demo, the tests and benchmarks.

The images are made up (two darker lung fields, a brighter mediastinum and
diaphragm) but the headers are what a real CR or DX modality sends, complete
enough to pass dciodvfy: patient and study modules, view position and view
code, body part and anatomic region, presentation LUT shape.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes
from pydicom.uid import (
    ExplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    generate_uid,
)

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_PRESENTATION_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")
SECONDARY_CAPTURE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")

# CID 4010 (DX View) and CID 4031 (Common Anatomic Regions), from pydicom's
# copy of the standard's code tables.
VIEW_CODES: dict[str, Code] = {
    "PA": codes.SCT.PosteroAnterior,
    "AP": codes.SCT.AnteroPosterior,
    "LL": codes.SCT.LeftLateral,
    "RL": codes.SCT.RightLateral,
}
REGION_CODES: dict[str, Code] = {
    "CHEST": codes.SCT.Chest,
    "HAND": codes.SCT.Hand,
    "ABDOMEN": codes.SCT.Abdomen,
}


@dataclass(frozen=True)
class SyntheticPatient:
    patient_id: str = "DEMO-0001"
    name: str = "Demo^Patient"
    birth_date: str = "19600101"
    sex: str = "F"
    issuer: str = ""
    character_set: str = "ISO_IR 100"


@dataclass
class SyntheticStudy:
    """Parameters of one study; every image shares its patient and study UIDs."""

    patient: SyntheticPatient = field(default_factory=SyntheticPatient)
    study_date: dt.date = dt.date(2026, 12, 1)
    study_time: str = "101500"
    views: tuple[str, ...] = ("PA", "LL")
    modality: str = "DX"
    body_part: str = "CHEST"
    photometric: str = "MONOCHROME2"
    rows: int = 256
    columns: int = 256
    accession_number: str = "ACC0001"
    study_description: str = "XR CHEST 2 VIEWS"
    reason_for_request: str = ""
    study_uid: str = field(default_factory=generate_uid)
    # Leave out ViewPosition (and ViewCodeSequence) to exercise fallbacks.
    omit_view_position: bool = False
    omit_view_code: bool = False
    seed: int = 0


def chest_pixels(rows: int, columns: int, seed: int = 0, bits: int = 12) -> np.ndarray:
    """A plausible frontal chest pattern with noise, as unsigned 16-bit."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    y /= rows
    x /= columns
    body = np.exp(-(((x - 0.5) / 0.42) ** 6 + ((y - 0.5) / 0.55) ** 6))
    left_lung = np.exp(-(((x - 0.32) / 0.13) ** 2 + ((y - 0.45) / 0.25) ** 2))
    right_lung = np.exp(-(((x - 0.68) / 0.13) ** 2 + ((y - 0.45) / 0.25) ** 2))
    mediastinum = np.exp(-(((x - 0.5) / 0.07) ** 2 + ((y - 0.5) / 0.4) ** 2))
    attenuation = 0.2 + 0.6 * body - 0.45 * (left_lung + right_lung) + 0.3 * mediastinum
    attenuation += 0.02 * rng.standard_normal((rows, columns))
    max_value = (1 << bits) - 1
    return np.clip(attenuation * max_value, 0, max_value).astype(np.uint16)


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _file_meta(sop_class: UID, sop_instance: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _patient_and_study(ds: Dataset, study: SyntheticStudy) -> None:
    patient = study.patient
    ds.SpecificCharacterSet = patient.character_set
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    if patient.issuer:
        ds.IssuerOfPatientID = patient.issuer
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.study_date.strftime("%Y%m%d")
    ds.StudyTime = study.study_time
    ds.StudyID = "1"
    ds.AccessionNumber = study.accession_number
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.study_description
    if study.reason_for_request:
        ds.ReasonForTheRequestedProcedure = study.reason_for_request


def _view_attributes(ds: Dataset, view: str, study: SyntheticStudy) -> None:
    if not study.omit_view_position:
        ds.ViewPosition = view
    else:
        ds.ViewPosition = ""
    ds.ViewCodeSequence = Sequence()
    if not study.omit_view_code and view in VIEW_CODES:
        ds.ViewCodeSequence.append(_code_item(VIEW_CODES[view]))
    frontal = view in ("PA", "AP")
    ds.PatientOrientation = ["L", "F"] if frontal else ["A", "F"]


def make_chest_image(study: SyntheticStudy, view: str, index: int = 0) -> Dataset:
    """One CR or DX image of the study, ready to be written or sent."""
    sop_class = CR_IMAGE_STORAGE if study.modality == "CR" else DX_PRESENTATION_STORAGE
    sop_instance = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_instance)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    _patient_and_study(ds, study)

    ds.Modality = study.modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = index + 1
    ds.SeriesDescription = f"{study.body_part.title()} {view}"
    ds.InstanceNumber = 1
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = study.study_time
    ds.Manufacturer = "libra-node synthetic"
    ds.BodyPartExamined = study.body_part
    region = REGION_CODES.get(study.body_part.upper())
    ds.AnatomicRegionSequence = Sequence([_code_item(region)] if region else [])
    _view_attributes(ds, view, study)
    ds.ImageLaterality = "U"
    ds.PresentationLUTShape = "IDENTITY" if study.photometric == "MONOCHROME2" else "INVERSE"
    ds.BurnedInAnnotation = "NO"
    if study.modality == "DX":
        ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.DetectorType = "SCINTILLATOR"
        ds.PositionerType = ""
        ds.AcquisitionContextSequence = Sequence()
        ds.PixelIntensityRelationship = "LIN"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        ds.ImagerPixelSpacing = [0.15, 0.15]
        ds.LossyImageCompression = "00"
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]

    pixels = chest_pixels(study.rows, study.columns, seed=study.seed + index)
    if view not in ("PA", "AP"):
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    if study.photometric == "MONOCHROME1":
        pixels = (4095 - pixels).astype(np.uint16)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = study.photometric
    ds.Rows = study.rows
    ds.Columns = study.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.PixelData = pixels.tobytes()
    return ds


def make_chest_study(study: SyntheticStudy) -> list[Dataset]:
    """All images of a study, one series per view, as a modality sends them."""
    return [make_chest_image(study, view, index) for index, view in enumerate(study.views)]


def make_secondary_capture(study: SyntheticStudy) -> Dataset:
    """A non-radiograph object in the same study (e.g. a scanned requisition)."""
    sop_instance = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(SECONDARY_CAPTURE_STORAGE, sop_instance)
    ds.SOPClassUID = SECONDARY_CAPTURE_STORAGE
    ds.SOPInstanceUID = sop_instance
    _patient_and_study(ds, study)
    ds.Modality = "OT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ConversionType = "DF"
    ds.Laterality = ""
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 8
    ds.Columns = 8
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(64)
    return ds
