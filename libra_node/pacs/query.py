"""What the node asks a PACS for, and how the answers become selection facts.

C-FIND and QIDO-RS ask for the same attributes and return the same kind of
dataset, so both transports share the keys and the conversions here.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from libra_node.selection import ImageFacts, StudyFacts

# Study level: what rank_prior_candidates needs to order and filter studies.
STUDY_KEYS = (
    "StudyInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "StudyDate",
    "StudyTime",
    "ModalitiesInStudy",
    "StudyDescription",
)
# Series level: enough to know which series hold radiographs, and how many images
# each holds (to tell a complete image-level answer from a short one).
SERIES_KEYS = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "NumberOfSeriesRelatedInstances",
)
# Image level: what classify_study and choose_frontal read (ImageFacts.from_dataset).
IMAGE_KEYS = (
    "SOPInstanceUID",
    "SOPClassUID",
    "InstanceNumber",
    "ViewPosition",
    "ViewCodeSequence",
    "PatientOrientation",
    "AnatomicRegionSequence",
    "BodyPartExamined",
    "ProtocolName",
    "ImageComments",
    "AcquisitionDeviceProcessingDescription",
)
SEQUENCE_KEYS = frozenset({"ViewCodeSequence", "AnatomicRegionSequence"})
# Series attributes an image-level answer may leave out; copied from the series answer.
INHERITED_SERIES_KEYS = ("Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined")


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def _multi(ds: Dataset, keyword: str) -> tuple[str, ...]:
    value = ds.get(keyword)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(part for part in value.split("\\") if part)
    return tuple(str(part) for part in value if part)


def study_facts(answer: Dataset, queried_patient_id: str) -> StudyFacts:
    """A study-level answer as StudyFacts.

    A PACS that matched on PatientID but does not return it is taken at its
    word; one that returns another ID is kept as it is, so that ranking drops it.
    """
    return StudyFacts(
        study_instance_uid=_text(answer, "StudyInstanceUID"),
        patient_id=_text(answer, "PatientID") if "PatientID" in answer else queried_patient_id,
        issuer_of_patient_id=_text(answer, "IssuerOfPatientID"),
        study_date=_text(answer, "StudyDate"),
        study_time=_text(answer, "StudyTime"),
        modalities=_multi(answer, "ModalitiesInStudy"),
        study_description=_text(answer, "StudyDescription"),
    )


def image_facts(image: Dataset, series: Dataset, study_uid: str) -> ImageFacts:
    """An image-level answer as ImageFacts, completed from its series' answer."""
    merged = Dataset()
    merged.update(image)
    for keyword in INHERITED_SERIES_KEYS:
        if not merged.get(keyword) and series.get(keyword):
            setattr(merged, keyword, series.get(keyword))
    if not merged.get("StudyInstanceUID"):
        merged.StudyInstanceUID = study_uid
    if not merged.get("SeriesInstanceUID"):
        merged.SeriesInstanceUID = series.get("SeriesInstanceUID", "")
    return ImageFacts.from_dataset(merged)


def matching_modalities(modalities: Sequence[str]) -> str:
    """ModalitiesInStudy as a multi-valued matching key: CR\\DX."""
    return "\\".join(sorted({m.upper() for m in modalities if m}))
