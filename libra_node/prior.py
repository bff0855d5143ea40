"""Find the prior: the patient's most recent earlier chest radiograph, and one frontal image of it.

The rules are the training data's (LIBRA.md, "Prior choice"): same patient
(PatientID, and IssuerOfPatientID when the current study names one), a CR or
DX study strictly before the current study's day (studies of the same day
share that day's prior), most recent first. ``selection.rank_prior_candidates``
orders the PACS's answer; here each candidate's images are listed and the
first candidate that is a chest radiograph with a frontal view wins. A
candidate that is not (another body part, lateral views only) is passed
over with its reason, and the next older one is tried. Only the chosen
frontal image is downloaded.

PACS errors are not caught: ``PacsUnavailable`` is for the caller to retry.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from libra_node.ledger import Ledger, Study
from libra_node.logs import get_logger, phi_hash
from libra_node.pacs.base import PacsClient
from libra_node.selection import (
    RADIOGRAPH_IMAGE_CLASSES,
    RADIOGRAPH_MODALITIES,
    FrontalChoice,
    ImageFacts,
    StudyFacts,
    choose_frontal,
    classify_study,
    image_view,
    rank_prior_candidates,
)

log = get_logger(__name__)

NO_EARLIER_STUDY = "no earlier chest radiograph for this patient"


@dataclass(frozen=True)
class PassedOver:
    """An earlier study that was considered and not used."""

    study: StudyFacts
    reason: str


@dataclass(frozen=True)
class PriorResult:
    """The prior chosen for a study, or why there is none."""

    study: StudyFacts | None
    image: Dataset | None
    image_facts: ImageFacts | None
    frontal_rule: str
    reason: str
    passed_over: tuple[PassedOver, ...] = ()

    @property
    def found(self) -> bool:
        return self.image is not None


def find_prior(pacs: PacsClient, current: StudyFacts) -> PriorResult:
    """The most recent earlier chest radiograph of the patient, with its frontal image."""
    if not current.patient_id:
        return PriorResult(None, None, None, "", "current study has no patient ID to look up")
    if current.when is None:
        return PriorResult(None, None, None, "", "current study has no date to compare with")
    found = pacs.find_studies(
        current.patient_id, current.issuer_of_patient_id, modalities=sorted(RADIOGRAPH_MODALITIES)
    )
    candidates = rank_prior_candidates(current, found)
    passed_over: list[PassedOver] = []
    for study in candidates.ranked:
        frontal, problem = _frontal_image(pacs.find_images(study.study_instance_uid), study)
        if frontal is None:
            passed_over.append(PassedOver(study, problem))
            continue
        image = pacs.fetch_instance(
            frontal.image.study_instance_uid,
            frontal.image.series_instance_uid,
            frontal.image.sop_instance_uid,
        )
        result = PriorResult(
            study,
            image,
            frontal.image,
            frontal.rule,
            _chosen_reason(study, passed_over),
            tuple(passed_over),
        )
        log.info(
            "prior.found",
            study=phi_hash(current.study_instance_uid),
            prior=phi_hash(study.study_instance_uid),
            passed_over=len(passed_over),
        )
        return result
    reason = _none_reason(passed_over, candidates.excluded)
    log.info("prior.none", study=phi_hash(current.study_instance_uid), passed_over=len(passed_over))
    return PriorResult(None, None, None, "", reason, tuple(passed_over))


def _frontal_image(images: list[ImageFacts], study: StudyFacts) -> tuple[FrontalChoice | None, str]:
    """The earlier study's frontal image, or None and why it cannot be the prior."""
    classification = classify_study(images, study.study_description)
    if not classification.is_chest_radiograph:
        return None, f"earlier study is not a chest radiograph: {classification.reason}"
    frontal = choose_frontal(images)
    if frontal is not None:
        return frontal, ""
    views = {
        image_view(image)[0]
        for image in images
        if image.sop_class_uid in RADIOGRAPH_IMAGE_CLASSES
        and image.modality.upper() in RADIOGRAPH_MODALITIES
    }
    if views == {"lateral"}:
        return None, "earlier study has lateral views only"
    return None, "earlier study has no frontal view"


def _chosen_reason(study: StudyFacts, passed_over: list[PassedOver]) -> str:
    when = study.when
    day = when.date().isoformat() if when else study.study_date
    if not passed_over:
        return f"most recent earlier chest radiograph ({day})"
    skipped = "; ".join(p.reason for p in passed_over)
    return (
        f"most recent usable earlier chest radiograph ({day}); "
        f"more recent ones passed over: {skipped}"
    )


def _none_reason(passed_over: list[PassedOver], excluded: dict[str, str]) -> str:
    if len(passed_over) == 1:
        return passed_over[0].reason
    if passed_over:
        return f"no usable earlier chest radiograph ({'; '.join(p.reason for p in passed_over)})"
    left_out = sorted(set(excluded.values()) - {"the current study itself"})
    if left_out:
        return f"{NO_EARLIER_STUDY} (studies left out: {'; '.join(left_out)})"
    return NO_EARLIER_STUDY


def record_prior(ledger: Ledger, study_uid: str, version: int, result: PriorResult) -> bool:
    """Write which prior was used and why into the study's row (False: version moved on)."""
    reason = result.reason
    if result.found and result.frontal_rule:
        reason = f"{reason}; frontal image by {result.frontal_rule}"
    return ledger.update_study(
        study_uid,
        version,
        prior_study_uid=result.study.study_instance_uid if result.study else "",
        prior_sop_uid=result.image_facts.sop_instance_uid if result.image_facts else "",
        prior_study_date=result.study.study_date if result.study else "",
        prior_reason=reason,
    )


def current_study_facts(study: Study) -> StudyFacts:
    """The ledger's row of the current study, as the facts a prior lookup starts from."""
    return StudyFacts(
        study_instance_uid=study.study_uid,
        patient_id=study.patient_id,
        issuer_of_patient_id=study.issuer_of_patient_id,
        study_date=study.study_date,
        study_time=study.study_time,
        study_description=study.study_description,
    )
