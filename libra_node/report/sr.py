"""The draft report as a DICOM Structured Report (Enhanced SR by default).

The SR joins the current study (same patient and study attributes, same
Specific Character Set where it can hold the text) in a new series of its
own. It is flagged PARTIAL, UNVERIFIED and PRELIMINARY: this node never
verifies a report, that takes a radiologist. Its UIDs come from
``sr_uids`` and every time-dependent value from ``draft.created_at``, so a
retry with the same draft writes the same bytes.
"""

from __future__ import annotations

import copy
import datetime as dt

from highdicom import ContributingEquipment
from highdicom.sr import ComprehensiveSR, EnhancedSR
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DT

from libra_node.config import ReportSettings
from libra_node.logs import get_logger, phi_hash
from libra_node.report import wording
from libra_node.report.charset import choose_character_set
from libra_node.report.draft_report import DraftReport
from libra_node.report.tid2000 import CHEST_RADIOGRAPH, report_content
from libra_node.report.uids import sr_uids

log = get_logger(__name__)

SR_SERIES_NUMBER = 990

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


def _reference_dataset(study: str, series: str, instance: str, sop_class: str) -> Dataset:
    item = Dataset()
    item.StudyInstanceUID = study
    item.SeriesInstanceUID = series
    item.SOPInstanceUID = instance
    item.SOPClassUID = sop_class
    return item


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


def _evidence(draft: DraftReport) -> list[Dataset]:
    """The images the draft was made from, the first carrying the header.

    highdicom takes the patient and study attributes from the first item
    and splits the items into current and pertinent-other evidence by
    StudyInstanceUID.
    """
    others = [
        _reference_dataset(
            image.study_instance_uid,
            image.series_instance_uid,
            image.sop_instance_uid,
            image.sop_class_uid,
        )
        for image in (*draft.current_images[1:], *draft.prior_images)
    ]
    return [header_source(draft), *others]


def _predecessors(draft: DraftReport) -> list[Dataset] | None:
    earlier = draft.predecessor
    if earlier is None:
        return None
    return [
        _reference_dataset(
            earlier.study_instance_uid,
            earlier.series_instance_uid,
            earlier.sop_instance_uid,
            earlier.sop_class_uid,
        )
    ]


def check_settings(settings: ReportSettings) -> None:
    """Refuse settings that would make invalid Long String (LO) values."""
    for name in ("manufacturer", "institution_name", "series_description"):
        value = getattr(settings, name)
        if len(value) > 64 or "\\" in value:
            raise ValueError(f"report.{name} must be at most 64 characters, without a backslash")
    if not settings.manufacturer.strip():
        raise ValueError("report.manufacturer must not be empty: it names the equipment that wrote the report")


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


def report_texts(draft: DraftReport, settings: ReportSettings) -> list[str]:
    """Every text the node adds, to choose a character set that holds them."""
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


def build_sr(draft: DraftReport, settings: ReportSettings) -> EnhancedSR | ComprehensiveSR:
    """The draft as an SR document ready to be written or sent."""
    check_settings(settings)
    uids = sr_uids(draft.study_instance_uid, draft.study_version, draft.model)
    sr_class = ComprehensiveSR if settings.sop_class == "comprehensive" else EnhancedSR
    created = draft.created_at.replace(microsecond=0)
    document = sr_class(
        evidence=_evidence(draft),
        content=report_content(draft, settings.manufacturer),
        series_instance_uid=uids.series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=draft.study_version,
        manufacturer=settings.manufacturer,
        institution_name=settings.institution_name or None,
        is_complete=False,
        is_final=False,
        is_verified=False,
        performed_procedure_codes=[CHEST_RADIOGRAPH],
        previous_versions=_predecessors(draft),
        contributing_equipment=[algorithm_equipment(draft, settings)],
        series_description=wording.series_description(settings.series_description, draft.model),
        manufacturer_model_name=draft.model.name,
        software_versions=draft.model.node_version,
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
        # Set below: highdicom refuses the common form ['', 'ISO 2022 IR 87'].
        specific_character_set=None,
    )
    character_set = choose_character_set(draft.current_header, report_texts(draft, settings))
    if character_set is not None:
        document.SpecificCharacterSet = character_set
    pin_creation_time(document, created)
    log.info(
        "report.sr_built",
        study=phi_hash(draft.study_instance_uid),
        version=draft.study_version,
        sop_class=settings.sop_class,
        has_prior=draft.has_prior,
    )
    return document
