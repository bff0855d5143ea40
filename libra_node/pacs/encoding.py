"""Objects leave the node as complete DICOM files.

A dataset built in memory may lack file meta information or the 128-byte
preamble. DIMSE needs the transfer syntax to pick a presentation context;
STOW-RS sends whatever bytes the encoder writes, and a PACS such as Orthanc
keeps them as they came, so a file without preamble would later be served
to viewers (and to WADO-RS clients that insist on one) as it is.
"""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

PREAMBLE = b"\x00" * 128


def as_part10(ds: Dataset) -> Dataset:
    """The dataset itself when it is already complete, else a shallow copy that is."""
    meta = getattr(ds, "file_meta", None)
    complete = (
        getattr(ds, "preamble", None) is not None
        and meta is not None
        and all(
            meta.get(k)
            for k in ("TransferSyntaxUID", "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID")
        )
    )
    if complete:
        return ds
    finished = copy.copy(ds)
    finished.preamble = PREAMBLE
    finished.file_meta = (
        FileMetaDataset(copy.deepcopy(meta)) if meta is not None else FileMetaDataset()
    )
    finished.file_meta.TransferSyntaxUID = (
        finished.file_meta.get("TransferSyntaxUID") or ExplicitVRLittleEndian
    )
    finished.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    finished.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return finished
