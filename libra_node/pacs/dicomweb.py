"""DICOMweb transport (dicomweb-client): QIDO-RS, WADO-RS, STOW-RS.

Authentication is HTTP basic (pacs.username / pacs.password) or a bearer
token (pacs.token); TLS certificates are verified unless pacs.verify_tls is
false, against pacs.ca_bundle when given. dicomweb-client's own retries are
switched off: the pipeline and the outbox decide when to try again.

Error messages carry the HTTP status and the operation, never the request
URL: its path and query hold UIDs and patient IDs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from libra_node.config import Settings
from libra_node.logs import get_logger
from libra_node.pacs.base import (
    PacsAccessDenied,
    PacsClient,
    PacsError,
    PacsNotFound,
    PacsRejected,
    PacsTlsError,
    PacsUnavailable,
    http_options,
    url_without_credentials,
)
from libra_node.pacs.encoding import as_part10
from libra_node.pacs.query import (
    IMAGE_KEYS,
    SERIES_KEYS,
    STUDY_KEYS,
    image_facts,
    study_facts,
)
from libra_node.selection import RADIOGRAPH_MODALITIES, ImageFacts, StudyFacts

log = get_logger(__name__)
# dicomweb-client logs request URLs and search filters (UIDs, patient IDs) at
# INFO and DEBUG: keep it to warnings whatever the node's own log level.
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)

T = TypeVar("T")

# Retrying may help: request timeout, too many requests, and server-side trouble.
TRANSIENT_HTTP = frozenset({408, 425, 429})
# What to tell the admin when the PACS answers 401 or 403, by what the node sent.
CREDENTIAL_FIXES = {
    "token": "check pacs.token",
    "basic": "check pacs.username and pacs.password",
    "none": "the PACS requires credentials: set pacs.username and pacs.password, or pacs.token",
}


class _PacsSession(requests.Session):
    """A session whose explicit TLS settings win over REQUESTS_CA_BUNDLE and friends.

    requests lets those environment variables replace a session's ``verify``;
    pacs.ca_bundle and pacs.verify_tls must mean what they say.
    """

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self.verify is not True:
            merged["verify"] = self.verify
        return merged


def _ignore_bulk_data(tag: object, vr: object, uri: object) -> None:
    """Metadata names pixel data by URI; selection never needs it."""
    return None


def _from_json(items: Sequence[dict]) -> list[Dataset]:
    return [Dataset.from_json(item, bulk_data_uri_handler=_ignore_bulk_data) for item in items]


class DicomWebPacs(PacsClient):
    """A PACS reached over DICOMweb."""

    def __init__(
        self,
        url: str,
        *,
        username: str = "",
        password: str = "",
        token: str = "",
        verify_tls: bool = True,
        ca_bundle: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.auth_kind = "token" if token else "basic" if username else "none"
        self.peer = f"DICOMweb service {url_without_credentials(self.url)}"
        self.session = _PacsSession()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        elif username:
            self.session.auth = (username, password)
        self.session.verify = ca_bundle if ca_bundle else verify_tls
        self.client = DICOMwebClient(self.url, session=self.session, timeout=timeout)
        self.client.set_http_retry_params(retry=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> "DicomWebPacs":
        return cls(settings.pacs.url, **http_options(settings))

    def close(self) -> None:
        self.session.close()

    # --- the interface -------------------------------------------------------------

    def echo(self) -> None:
        self._call(
            "QIDO-RS study search",
            lambda: self.client.search_for_studies(limit=1),
            not_found="check that pacs.url is the DICOMweb root (for Orthanc: .../dicom-web)",
        )

    def find_studies(
        self, patient_id: str, issuer: str = "", modalities: Sequence[str] = ()
    ) -> list[StudyFacts]:
        filters: dict[str, object] = {"PatientID": patient_id}
        if issuer:
            filters["IssuerOfPatientID"] = issuer
        if modalities:
            # QIDO-RS matches a list of values given as comma-separated.
            filters["ModalitiesInStudy"] = ",".join(sorted({m.upper() for m in modalities}))
        answers = self._call(
            "QIDO-RS study search",
            lambda: _from_json(
                self.client.search_for_studies(search_filters=filters, fields=list(STUDY_KEYS))
            ),
            not_found="check that pacs.url is the DICOMweb root (for Orthanc: .../dicom-web)",
        )
        return [study_facts(answer, patient_id) for answer in answers]

    def find_images(self, study_uid: str) -> list[ImageFacts]:
        series_answers = self._call(
            "QIDO-RS series search",
            lambda: _from_json(self.client.search_for_series(study_uid, fields=list(SERIES_KEYS))),
        )
        images: list[ImageFacts] = []
        for series in series_answers:
            images.extend(
                image_facts(image, series, study_uid)
                for image in self._series_images(study_uid, series)
            )
        return images

    def _series_images(self, study_uid: str, series: Dataset) -> list[Dataset]:
        """Radiograph series: full headers (WADO-RS metadata); others: a QIDO-RS listing.

        QIDO-RS answers leave out sequences (view and anatomic region codes),
        which frontal selection reads, so radiographs get their metadata.
        """
        series_uid = str(series.get("SeriesInstanceUID", ""))
        if str(series.get("Modality", "")).upper() in RADIOGRAPH_MODALITIES:
            return self._call(
                "WADO-RS series metadata",
                lambda: _from_json(self.client.retrieve_series_metadata(study_uid, series_uid)),
            )
        return self._call(
            "QIDO-RS instance search",
            lambda: _from_json(
                self.client.search_for_instances(study_uid, series_uid, fields=list(IMAGE_KEYS))
            ),
        )

    def fetch_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        return self._call(
            "WADO-RS instance retrieval",
            lambda: self.client.retrieve_instance(study_uid, series_uid, sop_uid),
            not_found="the PACS has no such instance",
        )

    def store(self, datasets: Sequence[Dataset]) -> None:
        operation = "STOW-RS"
        files = [as_part10(ds) for ds in datasets]
        answer = self._call(operation, lambda: self.client.store_instances(files))
        failures = answer.get("FailedSOPSequence") or []
        if failures:
            reasons = sorted({int(item.get("FailureReason", 0x0110)) for item in failures})
            detail = (
                f"{len(failures)} of {len(datasets)} objects not stored "
                f"(failure reasons {', '.join(f'0x{r:04X}' for r in reasons)})"
            )
            if all(0xA700 <= r <= 0xA7FF for r in reasons):
                raise PacsUnavailable(self.peer, operation, detail, dicom_status=reasons[0])
            raise PacsRejected(self.peer, operation, detail, dicom_status=reasons[0])
        log.info("pacs.stored", transport="dicomweb", count=len(datasets))

    # --- errors -----------------------------------------------------------------------

    def _call(self, operation: str, request: Callable[[], T], not_found: str = "") -> T:
        try:
            return request()
        except requests.HTTPError as exc:
            raise self._http_failure(operation, exc.response, not_found) from None
        except requests.exceptions.SSLError:
            raise PacsTlsError(
                self.peer,
                operation,
                "the TLS certificate could not be verified; give the CA that signed it in "
                "pacs.ca_bundle",
            ) from None
        except requests.Timeout:
            raise PacsUnavailable(
                self.peer, operation, f"no answer within {self.timeout:g} s"
            ) from None
        except requests.ConnectionError:
            raise PacsUnavailable(
                self.peer, operation, "cannot connect (connection refused or closed)"
            ) from None
        except InvalidDicomError:
            # dicomweb-client reads only complete files (128-byte preamble,
            # "DICM"); a PACS keeps what a careless STOW-RS client sent it.
            raise PacsRejected(
                self.peer, operation, "the PACS sent an instance that is not a complete DICOM file"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            # A malformed answer: not DICOM JSON, not multipart, not what was asked.
            raise PacsRejected(
                self.peer, operation, f"unexpected answer ({type(exc).__name__})"
            ) from None

    def _http_failure(
        self, operation: str, response: requests.Response | None, not_found: str
    ) -> PacsError:
        code = response.status_code if response is not None else 0
        reason = response.reason if response is not None else ""
        detail = f"HTTP {code} {reason}".rstrip()
        if code in (401, 403):
            fix = CREDENTIAL_FIXES[self.auth_kind]
            return PacsAccessDenied(
                self.peer,
                operation,
                f"{detail}: the PACS refused the credentials; {fix}",
                http_status=code,
            )
        if code == 404:
            return PacsNotFound(
                self.peer,
                operation,
                f"{detail}: {not_found or 'no such resource'}",
                http_status=code,
            )
        if code >= 500 or code in TRANSIENT_HTTP:
            return PacsUnavailable(
                self.peer, operation, f"{detail}: the PACS is busy or failing", http_status=code
            )
        return PacsRejected(
            self.peer, operation, f"{detail}: the PACS refused the request", http_status=code
        )
