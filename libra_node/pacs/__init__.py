"""One PACS interface, four ways to reach an archive.

``open_pacs(settings)`` gives the client that pacs.transport names:
"dimse" (C-FIND, C-GET or C-MOVE, C-STORE), "dicomweb" (QIDO-RS, WADO-RS,
STOW-RS), "orthanc" (Orthanc's REST API) or "none" (the node's own ledger and
spool as the archive, the report folder as the destination). Callers see
only ``PacsClient`` and the ``PacsError`` hierarchy; ``error.transient``
says whether to retry.
"""

from __future__ import annotations

from libra_node.config import Settings
from libra_node.ledger import Ledger
from libra_node.pacs.base import (
    PacsAccessDenied,
    PacsClient,
    PacsError,
    PacsMoveDestinationUnknown,
    PacsNotFound,
    PacsRejected,
    PacsTlsError,
    PacsUnavailable,
)
from libra_node.pacs.dicomweb import DicomWebPacs
from libra_node.pacs.dimse import DimsePacs
from libra_node.pacs.local import LocalArchive
from libra_node.pacs.orthanc_rest import OrthancRestPacs
from libra_node.spool import Spool

__all__ = [
    "DicomWebPacs",
    "DimsePacs",
    "LocalArchive",
    "OrthancRestPacs",
    "PacsAccessDenied",
    "PacsClient",
    "PacsError",
    "PacsMoveDestinationUnknown",
    "PacsNotFound",
    "PacsRejected",
    "PacsTlsError",
    "PacsUnavailable",
    "open_pacs",
]


def open_pacs(
    settings: Settings, ledger: Ledger | None = None, spool: Spool | None = None
) -> PacsClient:
    """The client for the configured transport.

    The node's own archive and C-MOVE retrieval need the ledger and the spool:
    pass the node's, or they are opened from the settings (and closed with
    the client).
    """
    transport = settings.pacs.transport
    if transport == "dicomweb":
        return DicomWebPacs.from_settings(settings)
    if transport == "orthanc":
        return OrthancRestPacs.from_settings(settings)
    if transport == "dimse" and settings.pacs.retrieve == "get":
        return DimsePacs.from_settings(settings)
    owns_ledger = ledger is None
    ledger = ledger or Ledger(settings.ledger_url)
    spool = spool or Spool(settings.spool_dir)
    if transport == "dimse":
        return DimsePacs.from_settings(settings, ledger, spool, owns_ledger=owns_ledger)
    return LocalArchive(ledger, spool, settings.report_dir, owns_ledger=owns_ledger)
