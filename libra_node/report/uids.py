"""Deterministic UIDs for the documents the node writes.

A retry or a re-delivery of the same draft must produce the same SR, or the
PACS would hold two reports for one study. So every UID is a hash of what
identifies the document: the study, its version (it goes up when the study
grows after a report was sent) and the model that wrote the text. The scheme:

    pydicom.uid.generate_uid(UID_PREFIX, entropy_srcs=[key])

where ``key`` joins, with a unit separator, the fixed word "libra-node", the
kind of UID ("sr-series", "sr-instance", "pdf-series", "pdf-instance",
"device"), the StudyInstanceUID, the study version (instances only) and the
model's name, variant and weights revision. pydicom hashes the key with
SHA-512 and appends the digits to the prefix.

The node's own version is deliberately not part of the key: upgrading the
node while a study waits for delivery must not produce a second report.
One series holds all versions of a study's SR (and one the PDFs), so a
radiologist finds them together; the instance number is the study version.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import PYDICOM_ROOT_UID, UID, generate_uid

from libra_node.draft import ModelIdentity

# pydicom's root, which pydicom allows its users to generate UIDs under.
UID_PREFIX = PYDICOM_ROOT_UID
_SEPARATOR = "\x1f"  # generate_uid joins entropy sources without one


@dataclass(frozen=True)
class DocumentUids:
    """Where a document lives: its series and its own SOP Instance UID."""

    series_instance_uid: UID
    sop_instance_uid: UID


def _derive(kind: str, *parts: str) -> UID:
    key = _SEPARATOR.join(("libra-node", kind, *parts))
    return generate_uid(UID_PREFIX, entropy_srcs=[key])


def _model_key(model: ModelIdentity) -> tuple[str, str, str]:
    return (model.name, model.variant, model.revision)


def _document_uids(
    document: str, study_uid: str, study_version: int, model: ModelIdentity
) -> DocumentUids:
    if study_version < 1:
        raise ValueError(f"study version must be 1 or more, not {study_version}")
    return DocumentUids(
        series_instance_uid=_derive(f"{document}-series", str(study_uid), *_model_key(model)),
        sop_instance_uid=_derive(
            f"{document}-instance", str(study_uid), str(study_version), *_model_key(model)
        ),
    )


def sr_uids(study_uid: str, study_version: int, model: ModelIdentity) -> DocumentUids:
    """The UIDs the draft SR for this study version and model has (or will have)."""
    return _document_uids("sr", study_uid, study_version, model)


def pdf_uids(study_uid: str, study_version: int, model: ModelIdentity) -> DocumentUids:
    """The UIDs of the PDF rendition; never equal to the SR's."""
    return _document_uids("pdf", study_uid, study_version, model)


def device_observer_uid(model: ModelIdentity) -> UID:
    """The UID that identifies the model as the SR's observer device."""
    return _derive("device", *_model_key(model))
