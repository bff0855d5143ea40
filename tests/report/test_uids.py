"""Deterministic document UIDs."""

from __future__ import annotations

import dataclasses

import pytest
from pydicom.uid import UID

from libra_node.draft import ModelIdentity
from libra_node.report import pdf_uids, sr_uids
from libra_node.report.uids import UID_PREFIX, device_observer_uid

STUDY = "1.2.826.0.1.3680043.8.498.1234567890"
MODEL = ModelIdentity(name="libra-v1.0-7b", variant="7b", revision="a1b2c3d", node_version="0.1.0")


def test_same_inputs_give_the_same_uids() -> None:
    assert sr_uids(STUDY, 1, MODEL) == sr_uids(STUDY, 1, ModelIdentity(**MODEL.to_dict()))
    assert pdf_uids(STUDY, 1, MODEL) == pdf_uids(STUDY, 1, MODEL)


def test_uids_are_valid_and_under_one_prefix() -> None:
    for uids in (sr_uids(STUDY, 7, MODEL), pdf_uids(STUDY, 7, MODEL)):
        for uid in (uids.series_instance_uid, uids.sop_instance_uid):
            assert UID(uid).is_valid and len(uid) <= 64
            assert uid.startswith(UID_PREFIX)


def test_each_identifying_input_changes_the_instance() -> None:
    base = sr_uids(STUDY, 1, MODEL).sop_instance_uid
    variants = [
        sr_uids(STUDY + "1", 1, MODEL),
        sr_uids(STUDY, 2, MODEL),
        sr_uids(STUDY, 1, dataclasses.replace(MODEL, name="libra-v1.0-3b")),
        sr_uids(STUDY, 1, dataclasses.replace(MODEL, variant="3b")),
        sr_uids(STUDY, 1, dataclasses.replace(MODEL, revision="fffffff")),
    ]
    instances = {uids.sop_instance_uid for uids in variants}
    assert base not in instances and len(instances) == len(variants)


def test_fields_do_not_run_into_each_other() -> None:
    """('libra-v1', '07b') and ('libra-v10', '7b') must not hash alike."""
    one = dataclasses.replace(MODEL, name="libra-v1", variant="07b")
    other = dataclasses.replace(MODEL, name="libra-v10", variant="7b")
    assert sr_uids(STUDY, 1, one) != sr_uids(STUDY, 1, other)


def test_versions_share_a_series_but_not_an_instance() -> None:
    first, second = sr_uids(STUDY, 1, MODEL), sr_uids(STUDY, 2, MODEL)
    assert first.series_instance_uid == second.series_instance_uid
    assert first.sop_instance_uid != second.sop_instance_uid


def test_node_upgrade_keeps_the_uids() -> None:
    """A report waiting for delivery must not be duplicated by an upgrade."""
    upgraded = dataclasses.replace(MODEL, node_version="0.2.0")
    assert sr_uids(STUDY, 1, upgraded) == sr_uids(STUDY, 1, MODEL)


def test_pdf_and_sr_never_share_uids() -> None:
    sr, pdf = sr_uids(STUDY, 1, MODEL), pdf_uids(STUDY, 1, MODEL)
    assert {sr.series_instance_uid, sr.sop_instance_uid}.isdisjoint(
        {pdf.series_instance_uid, pdf.sop_instance_uid}
    )
    assert device_observer_uid(MODEL) not in {sr.sop_instance_uid, pdf.sop_instance_uid}


def test_version_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="1 or more"):
        sr_uids(STUDY, 0, MODEL)
