"""The C-STORE listener against real senders: dcmtk storescu and pynetdicom."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filereader import _read_file_meta_info, read_file_meta_info, read_preamble
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from dicom_tools import associate_result, send_with_pynetdicom, storescu, write_datasets
from libra_node.ledger import StudyState
from libra_node.synthetic import SyntheticStudy, make_chest_study, make_secondary_capture


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the file meta: what travelled on the wire."""
    with path.open("rb") as handle:
        read_preamble(handle, force=False)
        _read_file_meta_info(handle)
        return handle.read()


def test_storescu_study_is_stored_exactly_and_recorded(start_node, tmp_path):
    node = start_node()
    datasets = make_chest_study(SyntheticStudy(views=("PA", "LL")))
    files = write_datasets(datasets, tmp_path / "send")

    result = storescu(node.listener.port, files)

    assert result.returncode == 0, result.stderr
    study_uid = str(datasets[0].StudyInstanceUID)
    instances = node.ledger.instances_of(study_uid)
    assert {i.facts.sop_instance_uid for i in instances} == {str(d.SOPInstanceUID) for d in datasets}
    for sent, instance in zip(sorted(files), sorted(instances, key=lambda i: i.file_path)):
        stored = node.spool.path(instance.file_path)
        assert stored.parts[-3:-1] == (study_uid, instance.facts.series_instance_uid)
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert instance.size == stored.stat().st_size
    by_uid = {i.facts.sop_instance_uid: i for i in instances}
    for path in files:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(node.spool.path(by_uid[uid].file_path)) == dataset_bytes(path)
    study = node.ledger.get_study(study_uid)
    assert study.patient_id == "DEMO-0001"
    assert study.accession_number == "ACC0001"
    assert {i.facts.view_position for i in instances} == {"PA", "LL"}
    assert stat.S_IMODE(node.spool.root.stat().st_mode) == 0o700


def test_real_chest_radiograph_from_pynetdicom(start_node, rg1_path):
    node = start_node()
    ds = dcmread(rg1_path)

    assert send_with_pynetdicom(node.listener.port, [ds]) == [0x0000]

    instance = node.ledger.get_instance(str(ds.SOPInstanceUID))
    assert instance is not None
    assert instance.facts.modality == "CR"
    assert instance.size > 7_000_000
    assert dataset_bytes(node.spool.path(instance.file_path)) == dataset_bytes(rg1_path)


COMPRESSED_SAMPLES = [
    ("RG1_J2KR.dcm", JPEG2000Lossless),
    ("SC_rgb_jpeg_dcmtk.dcm", JPEGBaseline8Bit),
    ("JPEG-LL.dcm", JPEGLosslessSV1),
    ("emri_small_jpeg_ls_lossless.dcm", JPEGLSLossless),
    ("MR_small_RLE.dcm", RLELossless),
    ("image_dfl.dcm", DeflatedExplicitVRLittleEndian),
]


@pytest.mark.parametrize(("name", "syntax"), COMPRESSED_SAMPLES)
def test_compressed_transfer_syntaxes_are_stored_as_received(start_node, name, syntax):
    node = start_node()
    path = Path(get_testdata_file(name))
    ds = dcmread(path, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == syntax

    assert send_with_pynetdicom(node.listener.port, [path]) == [0x0000]

    instance = node.ledger.get_instance(str(ds.SOPInstanceUID))
    assert instance.transfer_syntax_uid == syntax
    stored = node.spool.path(instance.file_path)
    assert dcmread(stored).file_meta.TransferSyntaxUID == syntax
    if syntax == DeflatedExplicitVRLittleEndian:
        # Senders re-deflate on the way out, so only the inflated content can match.
        assert dcmread(stored) == dcmread(path)
    else:
        assert dataset_bytes(stored) == dataset_bytes(path)


def test_private_sop_class_is_accepted(start_node, tmp_path):
    node = start_node()
    ds = make_secondary_capture(SyntheticStudy())
    ds.SOPClassUID = "1.3.12.2.1107.5.9.1"  # a vendor's private storage class
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID

    assert send_with_pynetdicom(node.listener.port, [ds]) == [0x0000]
    assert node.ledger.get_instance(str(ds.SOPInstanceUID)).facts.sop_class_uid == ds.SOPClassUID


def test_same_instance_again_is_success_without_duplicate(start_node):
    node = start_node()
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    assert send_with_pynetdicom(node.listener.port, [ds]) == [0x0000]
    study_uid = str(ds.StudyInstanceUID)
    before = (node.ledger.get_study(study_uid), node.ledger.events_of(study_uid))

    assert send_with_pynetdicom(node.listener.port, [ds]) == [0x0000]

    assert len(node.ledger.instances_of(study_uid)) == 1
    assert (node.ledger.get_study(study_uid), node.ledger.events_of(study_uid)) == before
    assert len(list(node.spool.files())) == 1


def test_changed_content_wins_and_raises_the_version(start_node):
    node = start_node()
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    assert send_with_pynetdicom(node.listener.port, [ds]) == [0x0000]
    study_uid = str(ds.StudyInstanceUID)
    assert node.ledger.get_study(study_uid).version == 1

    ds.ImageComments = "corrected at the modality"
    assert send_with_pynetdicom(node.listener.port, [ds]) == [0x0000]

    instance = node.ledger.get_instance(str(ds.SOPInstanceUID))
    assert dcmread(node.spool.path(instance.file_path)).ImageComments == "corrected at the modality"
    assert node.ledger.get_study(study_uid).version == 2
    assert len(node.ledger.instances_of(study_uid)) == 1


def test_echo_is_answered(start_node):
    node = start_node()
    result = subprocess.run(
        ["echoscu", "-aec", "LIBRA", "127.0.0.1", str(node.listener.port)],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_wrong_called_ae_title_is_rejected_then_listener_keeps_serving(start_node):
    node = start_node()
    established, rejection = associate_result(node.listener.port, called="SOMEONE_ELSE")
    assert not established
    assert rejection == (1, 1, 7)  # permanent, service-user, called AE title not recognised
    assert associate_result(node.listener.port)[0]


def test_calling_ae_title_outside_the_allow_list_is_rejected(start_node, make_settings):
    node = start_node(make_settings(listener={"allowed_callers": ["PACS1", "CR_ROOM2"]}))
    established, rejection = associate_result(node.listener.port, calling="INTRUDER")
    assert not established
    assert rejection == (1, 1, 3)  # calling AE title not recognised
    assert associate_result(node.listener.port, calling="CR_ROOM2")[0]


def test_source_address_outside_the_allow_list_is_rejected(start_node, make_settings):
    node = start_node(make_settings(listener={"allowed_hosts": ["10.20.30.0/24"]}))
    established, rejection = associate_result(node.listener.port)
    assert not established
    assert rejection == (1, 1, 1)  # permanent, service-user, no reason given
    allowed = start_node(make_settings(
        node={"state_dir": node.settings.node.state_dir.parent / "other"},
        listener={"allowed_hosts": ["10.20.30.0/24", "127.0.0.1"]},
    ))
    assert associate_result(allowed.listener.port)[0]


def test_disk_guard_refuses_with_out_of_resources(start_node, make_settings, tmp_path):
    node = start_node(make_settings(listener={"min_free_bytes": 1 << 60}))
    files = write_datasets(make_chest_study(SyntheticStudy(views=("PA",))), tmp_path / "send")

    statuses = send_with_pynetdicom(node.listener.port, [dcmread(files[0])])

    assert statuses == [0xA700]
    assert list(node.spool.files()) == []
    assert node.ledger.count_by_state()["RECEIVING"] == 0
    assert associate_result(node.listener.port)[0]


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A real 1 MiB file system, so that a write genuinely runs out of space."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_refuses_and_leaves_no_partial_file(start_node, make_settings, tiny_filesystem):
    settings = make_settings(listener={"spool_dir": tiny_filesystem / "spool"})
    node = start_node(settings)
    big = make_chest_study(SyntheticStudy(views=("PA",), rows=1024, columns=1024))[0]  # 2 MiB
    small = make_chest_study(SyntheticStudy(views=("PA",), rows=64, columns=64))[0]

    assert send_with_pynetdicom(node.listener.port, [big]) == [0xA700]
    assert list(node.spool.files()) == []
    assert os.listdir(node.spool.incoming) == []
    assert node.ledger.get_instance(str(big.SOPInstanceUID)) is None

    assert send_with_pynetdicom(node.listener.port, [small]) == [0x0000]


def test_dataset_without_study_uid_is_refused(start_node):
    node = start_node()
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    del ds.StudyInstanceUID

    assert send_with_pynetdicom(node.listener.port, [ds]) == [0xC001]
    assert list(node.spool.files()) == []


# pydicom warns, rightly, when the sender encodes the invalid UID.
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_uid_that_could_escape_the_spool_is_refused(start_node):
    node = start_node()
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    ds.SeriesInstanceUID = "../../etc"

    assert send_with_pynetdicom(node.listener.port, [ds]) == [0xC001]
    assert list(node.spool.files()) == []


def test_unparseable_dataset_is_refused_and_listener_keeps_serving(start_node, tmp_path):
    node = start_node()
    good = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    broken = tmp_path / "broken.dcm"
    good.save_as(broken, enforce_file_format=True)
    raw = broken.read_bytes()
    meta_end = len(raw) - len(dataset_bytes(broken))
    # A sequence of undefined length whose only item claims more bytes than follow.
    garbage = (
        bytes.fromhex("08001511") + b"SQ" + bytes(2) + bytes.fromhex("ffffffff")
        + bytes.fromhex("feff00e0") + bytes.fromhex("10000000") + b"abc"
    )
    broken.write_bytes(raw[:meta_end] + garbage)

    # pynetdicom streams a file's bytes untouched (storescu would refuse to read it).
    assert send_with_pynetdicom(node.listener.port, [broken]) == [0xC000]

    assert list(node.spool.files()) == []
    assert send_with_pynetdicom(node.listener.port, [good]) == [0x0000]


def test_sop_instance_uid_differing_from_the_request_is_refused(start_node, tmp_path):
    node = start_node()
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    path = write_datasets([ds], tmp_path / "send")[0]
    # The file meta (what a streaming sender announces) and the data set disagree.
    on_disk = dcmread(path)
    on_disk.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    on_disk.save_as(path, enforce_file_format=False)
    assert read_file_meta_info(path).MediaStorageSOPInstanceUID == "1.2.3.4.5"

    assert send_with_pynetdicom(node.listener.port, [path]) == [0xC002]
    assert list(node.spool.files()) == []


def test_completed_study_reaches_complete_with_frontal_choice(start_node):
    node = start_node()
    datasets = make_chest_study(SyntheticStudy(views=("LL", "PA")))
    assert send_with_pynetdicom(node.listener.port, datasets) == [0, 0]
    study_uid = str(datasets[0].StudyInstanceUID)

    study = _wait_for_state(node, study_uid, StudyState.COMPLETE)

    assert study.frontal_sop_uid == str(datasets[1].SOPInstanceUID)
    assert study.frontal_rule == "ViewPosition PA"
    assert study.completion_rule == "quiet"


def _wait_for_state(node, study_uid, state, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        study = node.ledger.get_study(study_uid)
        if study is not None and study.state == state:
            return study
        time.sleep(0.05)
    raise AssertionError(f"study did not reach {state.value}: {node.ledger.get_study(study_uid)}")


def test_spool_write_failure_is_refused_and_leaves_nothing(start_node):
    node = start_node()
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    # A file where the study's folder should be: the rename into place fails.
    (node.spool.root / str(ds.StudyInstanceUID)).write_text("in the way")

    assert send_with_pynetdicom(node.listener.port, [ds]) == [0xC003]

    assert list(node.spool.files()) == []
    assert os.listdir(node.spool.incoming) == []
    assert node.ledger.get_instance(str(ds.SOPInstanceUID)) is None


def test_ledger_failure_is_refused_and_the_file_is_removed(start_node):
    import sqlalchemy as sa

    node = start_node()
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    with node.ledger.engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE series RENAME TO series_elsewhere")

    # The instance is written, then the ledger cannot record it: refused, file removed.
    assert send_with_pynetdicom(node.listener.port, [ds]) == [0xC004]

    assert list(node.spool.files()) == []
    with node.ledger.engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE series_elsewhere RENAME TO series")
        assert connection.execute(sa.text("SELECT count(*) FROM studies")).scalar() == 0
    assert send_with_pynetdicom(node.listener.port, [ds]) == [0x0000]


def test_unreadable_ledger_is_refused_before_anything_is_written(start_node):
    node = start_node()
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    with node.ledger.engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE instances RENAME TO instances_elsewhere")

    assert send_with_pynetdicom(node.listener.port, [ds]) == [0xC004]
    assert list(node.spool.files()) == []


def test_unexpected_error_is_a_clear_refusal_and_the_listener_keeps_serving(start_node, make_settings, tmp_path):
    import shutil

    node = start_node(make_settings(listener={"min_free_bytes": 1}))
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    shutil.rmtree(node.spool.root)  # an operator removed the spool under the running node

    assert send_with_pynetdicom(node.listener.port, [ds]) == [0xC005]

    node.spool.root.mkdir(mode=0o700)
    node.spool.incoming.mkdir(mode=0o700)
    assert send_with_pynetdicom(node.listener.port, [ds]) == [0x0000]
