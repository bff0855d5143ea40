"""What the SR and the PDF rendition share as documents of the same study.

Both take the patient and study attributes from the current header, name
the model as the equipment that wrote them, refuse settings that would
make invalid values, choose a character set that holds all their text,
and take every time-dependent value from the draft, not from the clock.
"""

from __future__ import annotations

import copy
import datetime as dt

from highdicom import ContributingEquipment
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DT

from libra_node.config import ReportSettings
from libra_node.report import wording
from libra_node.report.charset import CharacterSet, choose_character_set
from libra_node.report.draft_report import DraftReport

# Patient and General Study attributes highdicom reads from the first
# evidence item; Type 2, so absent ones are written empty.
_REQUIRED_HEADER_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def header_source(draft: DraftReport) -> Dataset:
    """The current header as the first current image, complete enough for
    highdicom to copy the Patient and General Study modules from it."""
    first_image = draft.current_images[0]
    source = copy.deepcopy(draft.current_header)
    for keyword in _REQUIRED_HEADER_KEYWORDS:
        if keyword not in source:
            setattr(source, keyword, None)
    source.SeriesInstanceUID = first_image.series_instance_uid
    source.SOPInstanceUID = first_image.sop_instance_uid
    source.SOPClassUID = first_image.sop_class_uid
    return source


def check_settings(settings: ReportSettings) -> None:
    """Refuse settings that would make invalid Long String (LO) values."""
    for name in ("manufacturer", "institution_name", "series_description"):
        value = getattr(settings, name)
        if len(value) > 64 or "\\" in value:
            raise ValueError(f"report.{name} must be at most 64 characters, without a backslash")
    if not settings.manufacturer.strip():
        raise ValueError(
            "report.manufacturer must not be empty: it names the equipment that wrote the report"
        )


def algorithm_equipment(draft: DraftReport, settings: ReportSettings) -> ContributingEquipment:
    """The model, as the equipment that processed the images into this text."""
    model = draft.model
    return ContributingEquipment(
        manufacturer=settings.manufacturer,
        # CID 7005 has no "Processing Algorithm"; Processing Equipment
        # (DCM 109102) is the purpose it defines for software like this.
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name,
        software_versions=[model.node_version, model.revision],
        institution_name=settings.institution_name or None,
        contribution_datetime=draft.created_at,
        contribution_description=f"AI draft report: {wording.model_description(model)}",
    )


def character_set(draft: DraftReport, settings: ReportSettings) -> CharacterSet:
    """The header's character set, or UTF-8 where it cannot hold the text."""
    return choose_character_set(draft.current_header, _report_texts(draft, settings))


def _report_texts(draft: DraftReport, settings: ReportSettings) -> list[str]:
    """Every text the node adds to a document."""
    return [
        draft.findings,
        draft.impression,
        *draft.context.to_dict().values(),
        *wording.notices(draft.model),
        wording.model_description(draft.model),
        settings.series_description,
        settings.institution_name,
        settings.manufacturer,
    ]


def pin_creation_time(document: Dataset, created_at: dt.datetime) -> None:
    """Replace the clock readings highdicom takes with the draft's own time.

    highdicom stamps the instance creation and its own processing
    contribution with the current time; the acquisition equipment keeps
    the time it came with.
    """
    document.InstanceCreationDate = created_at.strftime("%Y%m%d")
    document.InstanceCreationTime = created_at.strftime("%H%M%S")
    processing = codes.DCM.ProcessingEquipment.value
    for equipment in document.get("ContributingEquipmentSequence", []):
        if equipment.PurposeOfReferenceCodeSequence[0].CodeValue == processing:
            equipment.ContributionDateTime = DT(created_at)
