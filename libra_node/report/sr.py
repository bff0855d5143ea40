"""The draft report as a DICOM Structured Report (Enhanced SR by default).

The SR joins the current study (same patient and study attributes, same
Specific Character Set where it can hold the text) in a new series of its
own. It is flagged PARTIAL, UNVERIFIED and PRELIMINARY: this node never
verifies a report, that takes a radiologist. Its UIDs come from
``sr_uids`` and every time-dependent value from ``draft.created_at``, so a
retry with the same draft writes the same bytes.
"""

from __future__ import annotations

from highdicom.sr import ComprehensiveSR, EnhancedSR
from pydicom.dataset import Dataset

from libra_node.config import ReportSettings
from libra_node.logs import get_logger, phi_hash
from libra_node.report import wording
from libra_node.report.document import (
    algorithm_equipment,
    character_set,
    check_settings,
    header_source,
    pin_creation_time,
)
from libra_node.report.draft_report import DraftReport
from libra_node.report.tid2000 import CHEST_RADIOGRAPH, report_content
from libra_node.report.uids import sr_uids

log = get_logger(__name__)

SR_SERIES_NUMBER = 990


def _reference_dataset(study: str, series: str, instance: str, sop_class: str) -> Dataset:
    item = Dataset()
    item.StudyInstanceUID = study
    item.SeriesInstanceUID = series
    item.SOPInstanceUID = instance
    item.SOPClassUID = sop_class
    return item


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
    chosen_set = character_set(draft, settings)
    if chosen_set is not None:
        document.SpecificCharacterSet = chosen_set
    pin_creation_time(document, created)
    log.info(
        "report.sr_built",
        study=phi_hash(draft.study_instance_uid),
        version=draft.study_version,
        sop_class=settings.sop_class,
        has_prior=draft.has_prior,
    )
    return document
