"""What the pipeline asks of a PACS, whatever the transport, and how that can fail.

``PacsClient`` is the one interface: find a patient's studies, list a study's
images (series then image level, headers only), fetch one instance, store
objects. DIMSE, DICOMweb and the node's own archive implement it.

Every failure is a ``PacsError`` whose message names the peer, the operation
and the DICOM status or HTTP code in plain words, and never patient data.
``PacsUnavailable`` is the transient kind (the PACS is down, busy or slow):
retrying later may succeed. Every other subclass needs a person to change
something (credentials, the PACS's list of known AE titles, the request).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pydicom.dataset import Dataset

from libra_node.selection import ImageFacts, StudyFacts

if TYPE_CHECKING:
    from libra_node.config import Settings


class PacsError(Exception):
    """A PACS operation failed; ``str(error)`` says who, what and why."""

    transient = False

    def __init__(
        self,
        peer: str,
        operation: str,
        detail: str,
        *,
        dicom_status: int | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(f"{operation} with {peer} failed: {detail}")
        self.peer = peer
        self.operation = operation
        self.detail = detail
        self.dicom_status = dicom_status
        self.http_status = http_status


class PacsUnavailable(PacsError):
    """Transient: connection refused or lost, no answer in time, PACS busy (5xx, 0xA7xx)."""

    transient = True


class PacsAccessDenied(PacsError):
    """The PACS refuses the node: wrong credentials, or its AE title is not registered."""


class PacsMoveDestinationUnknown(PacsError):
    """The PACS cannot send to the node's listener (C-MOVE destination unknown or unreachable)."""


class PacsNotFound(PacsError):
    """The PACS has no such object (or the configured URL is not a DICOMweb root)."""


class PacsTlsError(PacsError):
    """The PACS's TLS certificate could not be verified."""


class PacsRejected(PacsError):
    """The PACS refused or failed the request for a reason retrying will not fix."""


def url_without_credentials(url: str) -> str:
    """The URL as messages may show it: no user:password@ part."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def http_options(settings: Settings) -> dict[str, Any]:
    """Credentials, TLS and timeout of an HTTP-speaking PACS, from the [pacs] settings."""
    pacs = settings.pacs
    return {
        "username": pacs.username,
        "password": pacs.password,
        "token": pacs.token,
        "verify_tls": pacs.verify_tls,
        "ca_bundle": str(pacs.ca_bundle) if pacs.ca_bundle else None,
        "timeout": pacs.timeout_seconds,
    }


class PacsClient(abc.ABC):
    """One PACS, reached over one transport.

    ``peer`` describes the PACS for messages and logs (AE title and address,
    or URL), without credentials.
    """

    peer: str

    @abc.abstractmethod
    def echo(self) -> None:
        """Check that the PACS answers and accepts the node; raise PacsError if not."""

    @abc.abstractmethod
    def find_studies(
        self, patient_id: str, issuer: str = "", modalities: Sequence[str] = ()
    ) -> list[StudyFacts]:
        """The patient's studies (optionally only those holding ``modalities``).

        A PACS may ignore the modality filter or return partial dates: callers
        filter again (``selection.rank_prior_candidates`` does).
        """

    @abc.abstractmethod
    def find_images(self, study_uid: str) -> list[ImageFacts]:
        """Every instance of a study with the facts selection needs, without pixel data."""

    @abc.abstractmethod
    def fetch_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        """One whole instance, pixel data included."""

    @abc.abstractmethod
    def store(self, datasets: Sequence[Dataset]) -> None:
        """Store objects in the PACS; storing an object already there again is harmless."""

    def close(self) -> None:
        """Release what the client holds open (sessions, owned ledgers)."""

    def __enter__(self) -> "PacsClient":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
