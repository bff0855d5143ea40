"""Helpers the tests share: free ports, files on disk, real senders."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from libra_node.local_orthanc import free_port  # noqa: F401  (shared by the tests)
from libra_node.pacs.dimse import gate_reactor


def write_datasets(datasets: Iterable[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def storescu(
    port: int,
    files: Sequence[Path],
    called: str = "LIBRA",
    calling: str = "MODALITY",
    extra: Sequence[str] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu, the sending modality of most tests."""
    env = dict(os.environ, TCP_NODELAY="1")
    command = ["storescu", "-aec", called, "-aet", calling, *extra, "127.0.0.1", str(port)]
    return subprocess.run(
        [*command, *map(str, files)], capture_output=True, text=True, timeout=timeout, env=env
    )


def send_with_pynetdicom(
    port: int,
    datasets: Sequence[Dataset | Path],
    called: str = "LIBRA",
    calling: str = "PYNETDICOM",
) -> list[int]:
    """Send over one association; returns each C-STORE status (-1: none came back).

    A Path is sent as the file's encoded bytes, untouched; a Dataset is
    encoded by pynetdicom.
    """
    ae = AE(ae_title=calling)
    contexts = set()
    for item in datasets:
        meta = read_file_meta_info(item) if isinstance(item, Path) else item.file_meta
        contexts.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise ConnectionError("association not established")
    statuses = []
    pause_reactor = gate_reactor(assoc, timeout=30)
    # Stream files as they are on disk instead of decoding and re-encoding them.
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        for ds in datasets:
            pause_reactor()
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else -1)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    return statuses


def associate_result(
    port: int, called: str = "LIBRA", calling: str = "PYNETDICOM"
) -> tuple[bool, tuple[int, int, int] | None]:
    """Try an association with Verification; (established, (result, source, reason))."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if assoc.is_established:
        assoc.release()
        return True, None
    rejection = None
    if assoc.is_rejected and assoc.acceptor.primitive is not None:
        primitive = assoc.acceptor.primitive
        rejection = (primitive.result, primitive.result_source, primitive.diagnostic)
    return False, rejection


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def evidence_uids(sr: Dataset, keyword: str) -> set[str]:
    """SOP Instance UIDs listed in an SR evidence sequence."""
    return {
        str(instance.ReferencedSOPInstanceUID)
        for study in sr.get(keyword, [])
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
