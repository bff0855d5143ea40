"""The draft report as an Encapsulated PDF, a second rendition for viewers
that show SR poorly.

It joins the same study as the SR, in a series of its own, with UIDs from
``pdf_uids`` (never the SR's) and the same fixed creation time, so that a
retry writes the same bytes. It names the SR it renders in its Source
Instance Sequence.
"""

from __future__ import annotations

from highdicom.base import SOPClass
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    ComprehensiveSRStorage,
    EncapsulatedPDFStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
)

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
from libra_node.report.pdf_layout import render_report_pdf
from libra_node.report.uids import pdf_uids, sr_uids

log = get_logger(__name__)

PDF_SERIES_NUMBER = 991
_SR_CLASSES = {"enhanced": EnhancedSRStorage, "comprehensive": ComprehensiveSRStorage}


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _source_sr(draft: DraftReport, settings: ReportSettings) -> Dataset:
    """A reference to the SR this PDF renders (it has the same study version)."""
    uids = sr_uids(draft.study_instance_uid, draft.study_version, draft.model)
    item = Dataset()
    item.ReferencedSOPClassUID = _SR_CLASSES[settings.sop_class]
    item.ReferencedSOPInstanceUID = uids.sop_instance_uid
    return item


def _new_document(draft: DraftReport, settings: ReportSettings) -> SOPClass:
    header = header_source(draft)
    uids = pdf_uids(draft.study_instance_uid, draft.study_version, draft.model)
    created = draft.created_at.replace(microsecond=0)
    document = SOPClass(
        study_instance_uid=draft.study_instance_uid,
        series_instance_uid=uids.series_instance_uid,
        series_number=PDF_SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid,
        sop_class_uid=EncapsulatedPDFStorage,
        instance_number=draft.study_version,
        modality="DOC",
        manufacturer=settings.manufacturer,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        patient_id=header.get("PatientID"),
        patient_name=header.get("PatientName"),
        patient_birth_date=header.get("PatientBirthDate"),
        patient_sex=header.get("PatientSex"),
        accession_number=header.get("AccessionNumber"),
        study_id=header.get("StudyID"),
        study_date=header.get("StudyDate"),
        study_time=header.get("StudyTime"),
        referring_physician_name=header.get("ReferringPhysicianName"),
        series_description=wording.series_description(settings.series_description, draft.model),
        manufacturer_model_name=draft.model.name,
        software_versions=draft.model.node_version,
        institution_name=settings.institution_name or None,
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
    )
    document.copy_patient_and_study_information(header)
    document.ContributingEquipmentSequence = [algorithm_equipment(draft, settings)]
    chosen_set = character_set(draft, settings)
    if chosen_set is not None:
        document.SpecificCharacterSet = chosen_set
    pin_creation_time(document, created)
    return document


def build_pdf(draft: DraftReport, settings: ReportSettings) -> Dataset:
    """The draft as an Encapsulated PDF instance ready to be written or sent."""
    check_settings(settings)
    document = _new_document(draft, settings)
    pdf = render_report_pdf(draft)
    # SC Equipment: a document synthesized by software, not scanned.
    document.ConversionType = "SYN"
    document.AcquisitionDateTime = document.ContributingEquipmentSequence[0].ContributionDateTime
    document.BurnedInAnnotation = "YES"
    document.DocumentTitle = wording.document_title(draft.model)
    document.ConceptNameCodeSequence = [
        _code_item(
            codes.LN.DiagnosticImagingReport.value,
            codes.LN.DiagnosticImagingReport.scheme_designator,
            codes.LN.DiagnosticImagingReport.meaning,
        )
    ]
    document.VerificationFlag = "UNVERIFIED"
    document.SourceInstanceSequence = [_source_sr(draft, settings)]
    document.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # OB values are padded to an even length; the length says where the PDF ends.
    document.EncapsulatedDocumentLength = len(pdf)
    document.EncapsulatedDocument = pdf if len(pdf) % 2 == 0 else pdf + b"\x00"
    log.info(
        "report.pdf_built",
        study=phi_hash(draft.study_instance_uid),
        version=draft.study_version,
        pdf_bytes=len(pdf),
    )
    return document
