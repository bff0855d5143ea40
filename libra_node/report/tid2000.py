"""The draft's content tree: TID 2000, Basic Diagnostic Imaging Report.

highdicom has no TID 2000 helper, so the tree is built from its generic
content items. The root CONTAINER (LN 18748-4) holds, in order:

- HAS CONCEPT MOD  Language of Content Item and Descendants = English
- HAS OBS CONTEXT  Observer Type = Device, with the model as the device
- HAS CONCEPT MOD  Procedure reported = plain chest X-ray (TID 2000 row 3
  makes this a concept modifier, not observation context)
- CONTAINS  Current Procedure Descriptions: the AI-draft notice (and the
  demo notice), then the technique when known
- CONTAINS  Request (indication) and History, when the context has them
- CONTAINS  Prior Procedure Descriptions: the prior's date, or that there
  was none
- CONTAINS  Findings > TEXT Finding, INFERRED FROM the images it was made from
- CONTAINS  Impressions > TEXT Impression, only when the model wrote one
"""

from __future__ import annotations

from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    ImageContentItem,
    LanguageOfContentItemAndDescendants,
    ObserverContext,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.sr.codedict import codes

from libra_node.draft import ImageReference
from libra_node.report import wording
from libra_node.report.draft_report import DraftReport
from libra_node.report.uids import device_observer_uid

ENGLISH = CodedConcept("en", "RFC5646", "English")
# SNOMED CT 399208008 |Plain chest X-ray (procedure)|.
CHEST_RADIOGRAPH = CodedConcept("399208008", "SCT", "Plain chest X-ray")

CONTAINS = RelationshipTypeValues.CONTAINS
INFERRED_FROM = RelationshipTypeValues.INFERRED_FROM


def _heading(name: CodedConcept, children: list[ContentItem]) -> ContainerContentItem:
    """A CONTAINS CONTAINER section with its content items."""
    container = ContainerContentItem(name=name, relationship_type=CONTAINS)
    container.ContentSequence = ContentSequence(children, is_root=False)
    return container


def _text(name: CodedConcept, value: str) -> TextContentItem:
    return TextContentItem(name=name, value=value, relationship_type=CONTAINS)


def _image(purpose: CodedConcept, image: ImageReference) -> ImageContentItem:
    return ImageContentItem(
        name=purpose,
        referenced_sop_class_uid=image.sop_class_uid,
        referenced_sop_instance_uid=image.sop_instance_uid,
        relationship_type=INFERRED_FROM,
    )


def _observer_context(draft: DraftReport, manufacturer: str) -> list[ContentItem]:
    device = DeviceObserverIdentifyingAttributes(
        uid=device_observer_uid(draft.model),
        name=f"{draft.model.name} (AI draft generator)",
        manufacturer_name=manufacturer,
        model_name=draft.model.name,
    )
    return list(
        ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    )


def _procedure_descriptions(draft: DraftReport) -> ContainerContentItem:
    texts = wording.notices(draft.model)
    if draft.context.technique:
        texts.append(draft.context.technique)
    items: list[ContentItem] = [_text(codes.DCM.ProcedureDescription, text) for text in texts]
    return _heading(codes.DCM.CurrentProcedureDescriptions, items)


def _clinical_headings(draft: DraftReport) -> list[ContentItem]:
    headings: list[ContentItem] = []
    if draft.context.indication:
        headings.append(
            _heading(codes.DCM.Request, [_text(codes.DCM.Request, draft.context.indication)])
        )
    if draft.context.history:
        headings.append(
            _heading(codes.DCM.History, [_text(codes.DCM.History, draft.context.history)])
        )
    return headings


def _prior_descriptions(draft: DraftReport) -> ContainerContentItem:
    texts = [wording.comparison(draft.prior_study_date)]
    if draft.context.comparison:
        texts.append(draft.context.comparison)
    items: list[ContentItem] = [_text(codes.DCM.ProcedureDescription, text) for text in texts]
    return _heading(codes.DCM.PriorProcedureDescriptions, items)


def _findings(draft: DraftReport) -> ContainerContentItem:
    finding = _text(codes.DCM.Finding, draft.findings)
    # The current images illustrate the finding; the prior is the baseline
    # the model compared against.
    sources = [_image(codes.DCM.BestIllustrationOfFinding, image) for image in draft.current_images]
    sources += [_image(codes.DCM.Baseline, image) for image in draft.prior_images]
    finding.ContentSequence = ContentSequence(sources, is_root=False)
    return _heading(codes.DCM.Findings, [finding])


def _impressions(draft: DraftReport) -> list[ContentItem]:
    if not draft.impression.strip():
        return []
    return [_heading(codes.DCM.Impressions, [_text(codes.DCM.Impression, draft.impression)])]


def report_content(draft: DraftReport, manufacturer: str) -> ContainerContentItem:
    """The root CONTAINER of the draft's TID 2000 content tree."""
    root = ContainerContentItem(
        name=codes.LN.DiagnosticImagingReport,
        template_id="2000",
        is_content_continuous=False,
    )
    children: list[ContentItem] = [
        *LanguageOfContentItemAndDescendants(ENGLISH),
        *_observer_context(draft, manufacturer),
        CodeContentItem(
            name=codes.DCM.ProcedureReported,
            value=CHEST_RADIOGRAPH,
            relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD,
        ),
        _procedure_descriptions(draft),
        *_clinical_headings(draft),
        _prior_descriptions(draft),
        _findings(draft),
        *_impressions(draft),
    ]
    root.ContentSequence = ContentSequence(children, is_root=False)
    return root
