"""Everything the writers need to know about one draft report.

``DraftReport`` checks its input when it is made, in the manner of
highdicom's constructors: an object that exists is one the SR and PDF
writers can turn into valid documents. Each refusal is an
``InvalidDraftError`` whose message names what is wrong.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import RE_VALID_UID

from libra_node.draft import ClinicalContext, ImageReference, ModelIdentity
from libra_node.report.uids import sr_uids

# DICOM text values (UT, ST, LO) may hold LF, FF and CR but no other control
# character, not even TAB (ESC only as part of a character set's encoding).
_FORBIDDEN_CONTROL = re.compile(r"[\x00-\x09\x0b\x0e-\x1f\x7f]")
# Long String (LO) values: the model's name, revision and node version go
# into equipment attributes of this VR.
_LO_MAX = 64


def _is_valid_uid(value: str) -> bool:
    # pydicom's UID() warns on invalid values; a refusal is clearer.
    return len(value) <= 64 and re.fullmatch(RE_VALID_UID, value) is not None


class InvalidDraftError(ValueError):
    """The draft cannot become a valid document; the message says why."""


@dataclass(frozen=True)
class DocumentReference:
    """An earlier document (an SR this one replaces), by its UIDs."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> DocumentReference:
        return cls(
            study_instance_uid=str(dataset.StudyInstanceUID),
            series_instance_uid=str(dataset.SeriesInstanceUID),
            sop_instance_uid=str(dataset.SOPInstanceUID),
            sop_class_uid=str(dataset.SOPClassUID),
        )

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DocumentReference:
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class DraftReport:
    """One study's draft report and what it was made from.

    ``current_header`` holds at least the Patient and General Study module
    attributes of the current images (the pipeline reads it from the current
    frontal image without pixels). ``created_at`` is when the draft was
    written; a retry passes the same value and gets byte-identical documents.
    """

    current_header: Dataset
    current_images: Sequence[ImageReference]
    findings: str
    context: ClinicalContext
    model: ModelIdentity
    created_at: dt.datetime
    prior_images: Sequence[ImageReference] = ()
    prior_study_date: dt.date | None = None
    impression: str = ""
    study_version: int = 1
    predecessor: DocumentReference | None = None
    # Filled in from current_header by __post_init__.
    study_instance_uid: str = field(init=False)

    def __post_init__(self) -> None:
        # Tuples: the draft must not change under the writer's feet.
        object.__setattr__(self, "current_images", tuple(self.current_images))
        object.__setattr__(self, "prior_images", tuple(self.prior_images))
        object.__setattr__(self, "study_instance_uid", _study_uid(self.current_header))
        _check_version_and_time(self)
        _check_images(self)
        _check_texts(self)
        _check_model(self.model)
        _check_predecessor(self)

    @property
    def has_prior(self) -> bool:
        return bool(self.prior_images)


def _study_uid(header: Dataset) -> str:
    if not isinstance(header, Dataset):
        raise InvalidDraftError("current_header must be a pydicom Dataset")
    value = str(header.get("StudyInstanceUID") or "").strip()
    if not value:
        raise InvalidDraftError("current_header has no StudyInstanceUID")
    if not _is_valid_uid(value):
        raise InvalidDraftError(f"current_header's StudyInstanceUID {value!r} is not a valid UID")
    return value


def _check_version_and_time(draft: DraftReport) -> None:
    if isinstance(draft.study_version, bool) or not isinstance(draft.study_version, int):
        raise InvalidDraftError("study_version must be an integer")
    if draft.study_version < 1:
        raise InvalidDraftError(f"study_version must be 1 or more, not {draft.study_version}")
    if not isinstance(draft.created_at, dt.datetime):
        raise InvalidDraftError("created_at must be a datetime.datetime")


def _check_reference(image: ImageReference, role: str) -> None:
    for name in ("study_instance_uid", "series_instance_uid", "sop_instance_uid", "sop_class_uid"):
        value = str(getattr(image, name) or "")
        if not _is_valid_uid(value):
            raise InvalidDraftError(f"{role} image has an invalid {name}: {value!r}")


def _check_images(draft: DraftReport) -> None:
    if not draft.current_images:
        raise InvalidDraftError(
            "no current images: the report must name the images it was made from"
        )
    for image in draft.current_images:
        _check_reference(image, "current")
        if image.study_instance_uid != draft.study_instance_uid:
            raise InvalidDraftError("a current image belongs to another study than current_header")
    for image in draft.prior_images:
        _check_reference(image, "prior")
        if image.study_instance_uid == draft.study_instance_uid:
            raise InvalidDraftError("a prior image belongs to the current study")
    if draft.prior_study_date is not None and not isinstance(draft.prior_study_date, dt.date):
        raise InvalidDraftError("prior_study_date must be a datetime.date")
    if draft.prior_images and draft.prior_study_date is None:
        raise InvalidDraftError("prior images were given without the prior study's date")
    if draft.prior_study_date is not None and not draft.prior_images:
        raise InvalidDraftError("a prior study date was given without a prior image")


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidDraftError(f"{name} must be text, not {type(value).__name__}")
    match = _FORBIDDEN_CONTROL.search(value)
    if match:
        raise InvalidDraftError(
            f"{name} contains the control character U+{ord(match.group()):04X}, "
            "which DICOM text cannot hold"
        )


def _check_texts(draft: DraftReport) -> None:
    _check_text("findings", draft.findings)
    if not draft.findings.strip():
        raise InvalidDraftError("findings are empty: there is no report to write")
    _check_text("impression", draft.impression)
    if not isinstance(draft.context, ClinicalContext):
        raise InvalidDraftError("context must be a ClinicalContext")
    for name, value in draft.context.to_dict().items():
        _check_text(f"context.{name}", value)


def _check_model(model: ModelIdentity) -> None:
    if not isinstance(model, ModelIdentity):
        raise InvalidDraftError("model must be a ModelIdentity")
    for name in ("name", "variant", "revision", "node_version"):
        value = getattr(model, name)
        _check_text(f"model.{name}", value)
        if not value.strip():
            raise InvalidDraftError(f"model.{name} is empty")
        if len(value) > _LO_MAX:
            raise InvalidDraftError(f"model.{name} is longer than {_LO_MAX} characters")
        if "\\" in value:
            # A backslash separates values in LO attributes.
            raise InvalidDraftError(f"model.{name} contains a backslash")


def _check_predecessor(draft: DraftReport) -> None:
    earlier = draft.predecessor
    if earlier is None:
        return
    if not isinstance(earlier, DocumentReference):
        raise InvalidDraftError("predecessor must be a DocumentReference")
    for name, value in earlier.to_dict().items():
        if not _is_valid_uid(str(value)):
            raise InvalidDraftError(f"predecessor has an invalid {name}: {value!r}")
    own = sr_uids(draft.study_instance_uid, draft.study_version, draft.model)
    if earlier.sop_instance_uid == own.sop_instance_uid:
        raise InvalidDraftError(
            "predecessor is this very SR (same study version): "
            "a new version needs a higher study_version"
        )
