"""DraftReport refuses input that cannot become a valid report."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import warnings

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from libra_node.draft import ClinicalContext, ImageReference
from libra_node.report import DocumentReference, DraftReport, InvalidDraftError, sr_uids


def _other_study(image: ImageReference) -> ImageReference:
    return dataclasses.replace(image, study_instance_uid=generate_uid())


def _header_without_study_uid(draft: DraftReport) -> Dataset:
    header = copy.deepcopy(draft.current_header)
    del header.StudyInstanceUID
    return header


def _header_with_study_uid(draft: DraftReport, uid: str) -> Dataset:
    header = copy.deepcopy(draft.current_header)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID we want
        header.StudyInstanceUID = uid
    return header


REFUSALS = {
    "empty findings": (lambda d: {"findings": ""}, "findings are empty"),
    "blank findings": (lambda d: {"findings": " \n "}, "findings are empty"),
    "findings not text": (lambda d: {"findings": None}, "findings must be text"),
    "no study uid": (
        lambda d: {"current_header": _header_without_study_uid(d)},
        "no StudyInstanceUID",
    ),
    "bad study uid": (
        lambda d: {"current_header": _header_with_study_uid(d, "1.2.x")},
        "not a valid UID",
    ),
    "header not a dataset": (
        lambda d: {"current_header": {"StudyInstanceUID": "1.2.3"}},
        "pydicom Dataset",
    ),
    "no current images": (lambda d: {"current_images": []}, "no current images"),
    "current image of another study": (
        lambda d: {"current_images": [_other_study(d.current_images[0])]},
        "another study",
    ),
    "invalid image uid": (
        lambda d: {
            "current_images": [dataclasses.replace(d.current_images[0], sop_instance_uid="abc")]
        },
        "invalid sop_instance_uid",
    ),
    "prior in the current study": (
        lambda d: {"prior_images": [d.current_images[0]]},
        "prior image belongs to the current study",
    ),
    "prior without date": (lambda d: {"prior_study_date": None}, "without the prior study's date"),
    "date without prior": (lambda d: {"prior_images": []}, "without a prior image"),
    "date as text": (lambda d: {"prior_study_date": "20250614"}, "must be a datetime.date"),
    "version zero": (lambda d: {"study_version": 0}, "1 or more"),
    "version not an integer": (lambda d: {"study_version": "2"}, "must be an integer"),
    "naive date for created_at": (
        lambda d: {"created_at": dt.date(2026, 1, 1)},
        "datetime.datetime",
    ),
    "control character": (lambda d: {"findings": "Clear\x00 lungs"}, "U\\+0000"),
    "tab": (lambda d: {"impression": "Normal\tstudy"}, "U\\+0009"),
    "control character in context": (
        lambda d: {"context": ClinicalContext(history="bad\x07")},
        "context.history",
    ),
    "context of the wrong type": (lambda d: {"context": {"history": "x"}}, "ClinicalContext"),
    "long model name": (
        lambda d: {"model": dataclasses.replace(d.model, name="x" * 65)},
        "longer than 64",
    ),
    "empty revision": (
        lambda d: {"model": dataclasses.replace(d.model, revision="")},
        "model.revision is empty",
    ),
    "backslash in model name": (
        lambda d: {"model": dataclasses.replace(d.model, name="libra\\7b")},
        "backslash",
    ),
    "predecessor is itself": (
        lambda d: {
            "predecessor": DocumentReference(
                d.study_instance_uid,
                sr_uids(d.study_instance_uid, 1, d.model).series_instance_uid,
                sr_uids(d.study_instance_uid, 1, d.model).sop_instance_uid,
                "1.2.840.10008.5.1.4.1.1.88.22",
            )
        },
        "predecessor is this very SR",
    ),
    "invalid predecessor uid": (
        lambda d: {"predecessor": DocumentReference(d.study_instance_uid, "1.2", "", "1.2.3")},
        "predecessor has an invalid sop_instance_uid",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_invalid_input_is_refused_with_a_clear_error(make_draft, case: str) -> None:
    valid = make_draft()
    changes, message = REFUSALS[case]
    with pytest.raises(InvalidDraftError, match=message):
        make_draft(**changes(valid))


def test_a_valid_draft_is_accepted_and_frozen(make_draft) -> None:
    draft = make_draft(current_images=[make_draft().current_images[0]])
    assert isinstance(draft.current_images, tuple) and isinstance(draft.prior_images, tuple)
    assert draft.study_instance_uid == draft.current_header.StudyInstanceUID
    assert draft.has_prior
    with pytest.raises(dataclasses.FrozenInstanceError):
        draft.findings = "changed"  # type: ignore[misc]


def test_document_reference_round_trips_through_a_dict(make_draft) -> None:
    reference = DocumentReference("1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.88.22")
    assert DocumentReference.from_dict(reference.to_dict()) == reference
