"""The report pipeline's stages as plain functions; the Celery tasks call them.

    COMPLETE --enqueue--> QUEUED --prepare (io)--> job --infer (gpu)--> findings
             --write_report (io)--> REPORTED (SR in the outbox) --deliver--> DELIVERED

Every stage checks, before doing anything, that the study is still in the
state and version it was sent for: a re-delivered or re-queued message for a
study that has moved on does nothing. The ledger stays the source of truth;
messages only say "look at this study now".
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import io
import re
from collections.abc import Callable
from dataclasses import astuple, dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset

from libra_node.config import Settings
from libra_node.draft import ClinicalContext, ImageReference, ModelIdentity
from libra_node.ledger import Ledger, Study, StudyState
from libra_node.logs import get_logger, phi_hash
from libra_node.metrics import METRICS
from libra_node.model.image_processing import prepare_pixels
from libra_node.model.prompting import clinical_context_from_datasets
from libra_node.outbox import Outbox
from libra_node.pacs import PacsClient
from libra_node.prior import current_study_facts, find_prior, record_prior
from libra_node.report import DocumentReference, DraftReport, build_pdf, build_sr
from libra_node.spool import Spool

log = get_logger(__name__)

SendTask = Callable[[str, int], None]


class StageFailed(Exception):
    """A permanent failure: the study goes to FAILED with this reason."""


# --- the job handed from the io stage to the gpu stage ------------------------------


@dataclass(frozen=True)
class InferenceJob:
    """One study ready for the model; small enough to travel as a message.

    Images are the model's 518 x 518 grey input, PNG-compressed (about 150 kB
    each), so gpu workers need no access to the spool or the PACS.
    """

    study_uid: str
    version: int
    current: np.ndarray
    prior: np.ndarray | None
    context: ClinicalContext
    current_image: ImageReference
    prior_image: ImageReference | None
    prior_study_date: str  # DICOM DA, empty without a prior
    header: dict[str, Any]  # the current image's header as DICOM JSON, for the SR

    def to_message(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "version": self.version,
            "current": _png_base64(self.current),
            "prior": _png_base64(self.prior) if self.prior is not None else None,
            "context": self.context.to_dict(),
            "current_image": self.current_image.to_dict(),
            "prior_image": self.prior_image.to_dict() if self.prior_image else None,
            "prior_study_date": self.prior_study_date,
            "header": self.header,
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> "InferenceJob":
        return cls(
            study_uid=message["study_uid"],
            version=int(message["version"]),
            current=_png_array(message["current"]),
            prior=_png_array(message["prior"]) if message.get("prior") else None,
            context=ClinicalContext.from_dict(message["context"]),
            current_image=ImageReference.from_dict(message["current_image"]),
            prior_image=ImageReference.from_dict(message["prior_image"])
            if message.get("prior_image")
            else None,
            prior_study_date=message.get("prior_study_date", ""),
            header=message["header"],
        )


def without_pixels(message: dict[str, Any]) -> dict[str, Any]:
    """The job's message minus its images: what the report writer needs."""
    return {key: value for key, value in message.items() if key not in ("current", "prior")}


def _png_base64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _png_array(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text))) as image:
        return np.asarray(image, dtype=np.uint8)


# --- stage 0: complete -> queued ---------------------------------------------------


def enqueue(ledger: Ledger, study_uid: str, version: int, send_prepare: SendTask) -> bool:
    """COMPLETE -> QUEUED, then hand the study to the io queue.

    The state changes first: if the process dies before the message is sent,
    the reconciler finds the study QUEUED for too long and sends it again.
    """
    if not ledger.transition(
        study_uid, StudyState.QUEUED, "waiting for prior lookup and inference",
        from_states=[StudyState.COMPLETE], version=version,
    ):
        return False
    send_prepare(study_uid, version)
    study = ledger.get_study(study_uid)
    if study is not None and study.completed_at is not None:
        METRICS.stage_seconds.labels(stage="complete_to_queued").observe(
            max(0.0, study.state_changed_at - study.completed_at)
        )
    return True


def current_study(ledger: Ledger, study_uid: str, version: int, *states: StudyState) -> Study | None:
    """The study if it is still in one of ``states`` at ``version``; None if it moved on."""
    study = ledger.get_study(study_uid)
    if study is None or study.version != version or study.state not in states:
        log.info("stage.stale_message", study=phi_hash(study_uid), version=version)
        return None
    return study


def fail(ledger: Ledger, study_uid: str, version: int, reason: str) -> None:
    ledger.transition(
        study_uid, StudyState.FAILED, reason,
        from_states=[StudyState.QUEUED, StudyState.REPORTED], version=version,
    )
    log.warning("study.failed", study=phi_hash(study_uid), version=version, reason=reason)


# --- stage 1 (io): prior lookup and image preparation -------------------------------


def read_current_frontal(
    ledger: Ledger, spool: Spool, pacs: PacsClient, study: Study
) -> tuple[Dataset, ImageReference]:
    """The chosen frontal image: from the spool, or from the PACS for studies
    the node never received itself (the Orthanc plugin's)."""
    instance = ledger.get_instance(study.frontal_sop_uid)
    if instance is None:
        raise StageFailed("the chosen frontal image is no longer in the ledger")
    facts = instance.facts
    reference = ImageReference(
        facts.study_instance_uid, facts.series_instance_uid, facts.sop_instance_uid, facts.sop_class_uid
    )
    if not instance.file_path:
        return pacs.fetch_instance(*astuple(reference)[:3]), reference
    try:
        dataset = dcmread(spool.path(instance.file_path))
    except FileNotFoundError as exc:
        raise StageFailed("the chosen frontal image is missing from the spool") from exc
    except Exception as exc:  # pydicom raises many types for damaged files
        raise StageFailed(f"the frontal image cannot be read ({type(exc).__name__})") from exc
    return dataset, reference


# Value representations of bulk data: never needed by the SR, often megabytes.
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def report_header(dataset: Dataset) -> dict[str, Any]:
    """The current image's header as DICOM JSON: public attributes, no bulk data."""
    header = Dataset()
    for element in dataset:
        if element.tag.is_private or element.VR in _BULK_VRS or element.tag == 0x7FE00010:
            continue
        header.add(element)
    return header.to_json_dict()


def model_input(dataset: Dataset, settings: Settings, what: str) -> np.ndarray:
    try:
        return prepare_pixels(dataset, pad_color=settings.model.pad_color)
    except Exception as exc:  # undecodable pixel data, unsupported photometric, ...
        raise StageFailed(f"the {what} image cannot be decoded ({exc})") from exc


def clinical_context(current: Dataset, prior_study_date: str) -> ClinicalContext:
    """Indication, history and technique from the current image; the prior's date."""
    context = clinical_context_from_datasets(current)
    comparison = ""
    if re.fullmatch(r"\d{8}", prior_study_date or ""):
        comparison = f"{prior_study_date[:4]}-{prior_study_date[4:6]}-{prior_study_date[6:]}"
    return ClinicalContext(context.indication, context.history, comparison, context.technique)


def image_reference(dataset: Dataset) -> ImageReference:
    return ImageReference(
        str(dataset.StudyInstanceUID),
        str(dataset.SeriesInstanceUID),
        str(dataset.SOPInstanceUID),
        str(dataset.SOPClassUID),
    )


def prepare_job(
    settings: Settings, ledger: Ledger, spool: Spool, pacs: PacsClient, study_uid: str, version: int
) -> InferenceJob | None:
    """Find and fetch the prior, turn both images into model input. None: stale message.

    PACS errors propagate: the task retries the transient ones.
    """
    study = current_study(ledger, study_uid, version, StudyState.QUEUED)
    if study is None:
        return None
    ledger.touch(study_uid, version, StudyState.QUEUED, "looking up the prior")
    current, current_ref = read_current_frontal(ledger, spool, pacs, study)
    current_pixels = model_input(current, settings, "current")
    prior = find_prior(pacs, current_study_facts(study))
    prior_pixels, prior_ref, prior_date = None, None, ""
    if prior.found and prior.image is not None and prior.study is not None:
        try:
            prior_pixels = model_input(prior.image, settings, "prior")
            prior_ref, prior_date = image_reference(prior.image), prior.study.study_date
        except StageFailed as exc:
            prior = dataclasses.replace(
                prior, image=None, reason=f"{prior.reason}, but {exc}; compared with itself"
            )
    record_prior(ledger, study_uid, version, prior)
    ledger.touch(study_uid, version, StudyState.QUEUED, "waiting for inference")
    return InferenceJob(
        study_uid=study_uid,
        version=version,
        current=current_pixels,
        prior=prior_pixels,
        context=clinical_context(current, prior_date),
        current_image=current_ref,
        prior_image=prior_ref,
        prior_study_date=prior_date,
        header=report_header(current),
    )


# --- stage 3 (io): the report -----------------------------------------------------------


def clean_findings(text: str) -> str:
    """Model text as SR text: no control characters, no tabs (DICOM forbids them)."""
    text = text.replace("\t", " ")
    text = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", text)
    return text.strip()


def draft_time(study: Study) -> dt.datetime:
    """The draft's creation time: when this version completed, so retries are identical."""
    moment = study.completed_at or study.last_instance_at
    return dt.datetime.fromtimestamp(moment, tz=dt.timezone.utc).replace(microsecond=0)


def parse_da(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value, "%Y%m%d").date()
    except (TypeError, ValueError):
        return None


def predecessor_of(study: Study, version: int) -> DocumentReference | None:
    """The SR last delivered for an earlier version of the study, if any."""
    if not study.sr_sop_uid or study.sr_version >= version:
        return None
    return DocumentReference(
        study_instance_uid=study.study_uid,
        series_instance_uid=study.sr_series_uid,
        sop_instance_uid=study.sr_sop_uid,
        sop_class_uid=study.sr_sop_class_uid,
    )


def write_report(
    settings: Settings,
    ledger: Ledger,
    outbox: Outbox,
    job: dict[str, Any],
    findings: str,
    model: ModelIdentity,
) -> bool:
    """Build the SR (and PDF) for a job's findings and put them in the outbox.

    QUEUED -> REPORTED first, outbox second: a crash in between leaves a
    REPORTED study with nothing to deliver, which the reconciler sends
    round again. False: the message is stale (already reported, or the
    study moved on).
    """
    study_uid, version = job["study_uid"], int(job["version"])
    study = current_study(ledger, study_uid, version, StudyState.QUEUED)
    if study is None:
        return False
    text = clean_findings(findings)
    if not text:
        raise StageFailed("the model produced no findings text")
    header = Dataset.from_json(job["header"])
    prior_image = job.get("prior_image")
    draft = DraftReport(
        current_header=header,
        current_images=[ImageReference.from_dict(job["current_image"])],
        prior_images=[ImageReference.from_dict(prior_image)] if prior_image else [],
        prior_study_date=parse_da(job.get("prior_study_date", "")),
        findings=text,
        context=ClinicalContext.from_dict(job["context"]),
        model=model,
        created_at=draft_time(study),
        study_version=version,
        predecessor=predecessor_of(study, version),
    )
    documents: list[Dataset] = [build_sr(draft, settings.report)]
    if settings.report.pdf:
        documents.append(build_pdf(draft, settings.report))
    if not ledger.transition(
        study_uid, StudyState.REPORTED, "draft written, waiting for delivery",
        from_states=[StudyState.QUEUED], version=version,
    ):
        return False
    outbox.put(study_uid, version, documents)
    return True
