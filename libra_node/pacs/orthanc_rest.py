"""Orthanc transport: Orthanc's own REST API through orthanc-api-client.

For sites whose PACS (or routing gateway) is Orthanc, and for the Orthanc
plugin's studies: prior lookup with ``/tools/find``, image headers with
``/series/{id}/instances-tags``, images with ``/instances/{id}/file``, and
reports stored with ``POST /instances``. pacs.url is Orthanc's base URL
(``http://orthanc:8042``), with HTTP basic authentication from
pacs.username / pacs.password or a bearer token from pacs.token.

Orthanc answers tag queries in its own JSON form; ``dataset_from_orthanc_tags``
turns that into a pydicom dataset, which the plugin also uses for the tags it
reads inside Orthanc.

Error messages carry the HTTP status and the operation, never the request URL:
Orthanc's URLs name resources, and lookups carry UIDs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import requests
from orthanc_api_client import OrthancApiClient
from orthanc_api_client import exceptions as api_errors
from pydicom import dcmread, dcmwrite
from pydicom.config import disable_value_validation
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag, Tag

from libra_node.config import Settings
from libra_node.logs import get_logger
from libra_node.pacs.base import (
    PacsAccessDenied,
    PacsClient,
    PacsError,
    PacsNotFound,
    PacsRejected,
    PacsUnavailable,
    http_options,
    url_without_credentials,
)
from libra_node.pacs.encoding import as_part10
from libra_node.pacs.query import image_facts, matching_modalities
from libra_node.selection import ImageFacts, StudyFacts

log = get_logger(__name__)

TRANSIENT_HTTP = frozenset({408, 425, 429})
STORED_STATUSES = frozenset({"Success", "AlreadyStored"})
# Value representations whose values Orthanc's JSON gives as decimal text.
INTEGER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
FLOAT_VRS = frozenset({"FL", "FD"})
# Bulk data and the like: never needed for selection, and Orthanc leaves them out.
SKIPPED_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def dataset_from_orthanc_tags(tags: dict[str, Any]) -> Dataset:
    """A dataset from Orthanc's "full" tag JSON (``{"0008,0016": {"Type": ..., "Value": ...}}``).

    Public attributes only; private tags, bulk data and values their VR cannot
    hold are left out: selection needs none of them. Invalid values are
    dropped silently, as pydicom's warnings would quote them (patient data).
    """
    ds = Dataset()
    with disable_value_validation():
        for key, entry in tags.items():
            tag = _parse_tag(key)
            if tag is None or tag.is_private or not dictionary_has_tag(tag):
                continue
            element = _element(tag, entry)
            if element is not None:
                ds.add(element)
    return ds


def _parse_tag(key: str) -> BaseTag | None:
    try:
        group, element = (int(part, 16) for part in key.split(","))
    except ValueError:
        return None
    return Tag(group, element)


def _element(tag: BaseTag, entry: dict[str, Any]) -> DataElement | None:
    kind, value = entry.get("Type"), entry.get("Value")
    if kind == "Sequence":
        return DataElement(tag, "SQ", [dataset_from_orthanc_tags(item) for item in value or []])
    vr = dictionary_VR(tag).split(" ")[0]  # "US or SS": either reads the same digits
    if kind != "String" or vr in SKIPPED_VRS or vr == "SQ":
        return None
    try:
        return DataElement(tag, vr, _typed(vr, value))
    except (TypeError, ValueError, OverflowError):
        return None  # a value the dictionary's VR cannot hold: leave it out


def _typed(vr: str, text: str) -> Any:
    if vr not in INTEGER_VRS | FLOAT_VRS:
        return text
    convert = int if vr in INTEGER_VRS else float
    values = [convert(part) for part in text.split("\\") if part.strip()]
    return values[0] if len(values) == 1 else values


class OrthancRestPacs(PacsClient):
    """An Orthanc server reached over its REST API."""

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
        self.url = url.rstrip("/") + "/"
        self.peer = f"Orthanc {url_without_credentials(self.url.rstrip('/'))}"
        self.timeout = timeout
        self.auth_kind = "token" if token else "basic" if username else "none"
        # requests takes these per request; an explicit CA bundle or False wins
        # over REQUESTS_CA_BUNDLE there, as it does for the DICOMweb transport.
        self._request_options: dict[str, Any] = {
            "timeout": timeout,
            "verify": ca_bundle if ca_bundle else verify_tls,
        }
        self.client = OrthancApiClient(
            self.url, user=username or None, pwd=password or None, api_token=token or None
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> "OrthancRestPacs":
        return cls(settings.pacs.url, **http_options(settings))

    def close(self) -> None:
        self.client.close()

    # --- the interface -------------------------------------------------------------

    def echo(self) -> None:
        self._json("system check", "get", "system")

    def find_studies(
        self, patient_id: str, issuer: str = "", modalities: Sequence[str] = ()
    ) -> list[StudyFacts]:
        query = {"PatientID": patient_id}
        if issuer:
            query["IssuerOfPatientID"] = issuer
        if modalities:
            query["ModalitiesInStudy"] = matching_modalities(modalities)
        studies = self._find("study search", "Study", query)
        # Orthanc 1.10 cannot return ModalitiesInStudy: read it off the patient's series.
        series = self._find("series search", "Series", {"PatientID": patient_id})
        modalities_of: dict[str, set[str]] = {}
        for item in series:
            modality = item.get("MainDicomTags", {}).get("Modality", "")
            modalities_of.setdefault(item.get("ParentStudy", ""), set()).add(modality.upper())
        return [self._study_facts(study, patient_id, issuer, modalities_of) for study in studies]

    @staticmethod
    def _study_facts(
        study: dict[str, Any], patient_id: str, issuer: str, modalities_of: dict[str, set[str]]
    ) -> StudyFacts:
        tags = study.get("MainDicomTags", {})
        patient = study.get("PatientMainDicomTags", {})
        return StudyFacts(
            study_instance_uid=tags.get("StudyInstanceUID", ""),
            patient_id=patient.get("PatientID", patient_id),
            # Orthanc matched on the issuer when one was asked for; it does not return it.
            issuer_of_patient_id=issuer,
            study_date=tags.get("StudyDate", ""),
            study_time=tags.get("StudyTime", ""),
            modalities=tuple(sorted(m for m in modalities_of.get(study.get("ID", ""), ()) if m)),
            study_description=tags.get("StudyDescription", ""),
        )

    def find_images(self, study_uid: str) -> list[ImageFacts]:
        study_id = self._lookup("study lookup", study_uid, "Study")
        images: list[ImageFacts] = []
        for series in self._json("series listing", "get", f"studies/{study_id}/series"):
            header = Dataset()
            header.SeriesInstanceUID = series.get("MainDicomTags", {}).get("SeriesInstanceUID", "")
            header.Modality = series.get("MainDicomTags", {}).get("Modality", "")
            tags_by_instance = self._json(
                "instance headers", "get", f"series/{series['ID']}/instances-tags"
            )
            images.extend(
                image_facts(dataset_from_orthanc_tags(tags), header, study_uid)
                for tags in tags_by_instance.values()
            )
        return images

    def fetch_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        operation = "instance retrieval"
        instance_id = self._lookup(operation, sop_uid, "Instance")
        content = self._request(operation, "get", f"instances/{instance_id}/file").content
        try:
            return dcmread(io.BytesIO(content))
        except (InvalidDicomError, ValueError, EOFError) as exc:
            detail = f"Orthanc sent a file that is not DICOM ({type(exc).__name__})"
            raise PacsRejected(self.peer, operation, detail) from None

    def store(self, datasets: Sequence[Dataset]) -> None:
        operation = "store (POST /instances)"
        for ds in datasets:
            buffer = io.BytesIO()
            dcmwrite(buffer, as_part10(ds), enforce_file_format=True)
            try:
                answer = self._json(operation, "post", "instances", data=buffer.getvalue())
            except PacsNotFound:
                # Orthanc answers 404 for an object that lacks an attribute it indexes.
                raise PacsRejected(
                    self.peer, operation,
                    "HTTP 404: Orthanc refused the object (a required attribute is missing, "
                    "or pacs.url is not Orthanc's root)",
                    http_status=404,
                ) from None
            status = answer.get("Status", "") if isinstance(answer, dict) else ""
            if status not in STORED_STATUSES:
                raise PacsRejected(self.peer, operation, f"Orthanc answered {status or 'nothing'}")
        log.info("pacs.stored", transport="orthanc", count=len(datasets))

    # --- requests and errors --------------------------------------------------------------

    def _find(self, operation: str, level: str, query: dict[str, str]) -> list[dict[str, Any]]:
        body = {"Level": level, "Query": query, "Expand": True}
        answer = self._json(operation, "post", "tools/find", json=body)
        if not isinstance(answer, list):
            raise PacsRejected(self.peer, operation, "unexpected answer (not a list)")
        return answer

    def _lookup(self, operation: str, uid: str, kind: str) -> str:
        """Orthanc's identifier of the study or instance with this UID."""
        found = self._json(operation, "post", "tools/lookup", data=uid)
        for item in found if isinstance(found, list) else []:
            if isinstance(item, dict) and item.get("Type") == kind and "ID" in item:
                return str(item["ID"])
        raise PacsNotFound(self.peer, operation, f"Orthanc has no such {kind.lower()}")

    def _json(self, operation: str, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(operation, method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise PacsRejected(self.peer, operation, "unexpected answer (not JSON)") from None

    def _request(self, operation: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One request through orthanc-api-client, its errors as PacsErrors."""
        send = self.client.get if method == "get" else self.client.post
        try:
            response = send(path, **self._request_options, **kwargs)
        except api_errors.NotAuthorized as exc:
            raise self._access_denied(operation, exc.http_status_code) from None
        except api_errors.ResourceNotFound:
            raise PacsNotFound(
                self.peer, operation, "HTTP 404: no such resource (check pacs.url)", http_status=404
            ) from None
        except api_errors.HttpError as exc:
            raise self._http_failure(operation, exc.http_status_code or 0) from None
        except (api_errors.ConnectionError, api_errors.TimeoutError):
            raise PacsUnavailable(
                self.peer, operation, "cannot connect, or no answer in time"
            ) from None
        except api_errors.OrthancApiException as exc:
            raise PacsRejected(self.peer, operation, type(exc).__name__) from None
        except ValueError:  # an error answer the client could not read
            raise PacsRejected(self.peer, operation, "unexpected answer (not JSON)") from None
        if response is None:
            # The client returns None for request failures it does not translate
            # (retries used up on 502/503, a connection cut mid-answer).
            raise PacsUnavailable(self.peer, operation, "no complete answer (busy or cut off)")
        return response

    def _access_denied(self, operation: str, code: int | None) -> PacsError:
        fix = {
            "token": "check pacs.token",
            "basic": "check pacs.username and pacs.password",
            "none": "Orthanc requires credentials: set pacs.username and pacs.password",
        }[self.auth_kind]
        return PacsAccessDenied(
            self.peer, operation, f"HTTP {code}: Orthanc refused the credentials; {fix}",
            http_status=code,
        )

    def _http_failure(self, operation: str, code: int) -> PacsError:
        if code >= 500 or code in TRANSIENT_HTTP:
            return PacsUnavailable(
                self.peer, operation, f"HTTP {code}: Orthanc is busy or failing", http_status=code
            )
        return PacsRejected(
            self.peer, operation, f"HTTP {code}: Orthanc refused the request", http_status=code
        )
