"""Every way a PACS can fail the node, each answered by a PacsError that says who, what and why.

Real peers throughout: Orthanc (plain, behind a bearer-token filter written
with its Python plugin, behind a TLS front door), dcmqrscp, and the node's own listener
playing a PACS that refuses, is full, or offers no query service. A socket
that accepts connections and never answers stands for a hung PACS.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from dicomweb_client import DICOMwebClient

from libra_node.config import Settings
from libra_node.node import Node
from libra_node.pacs import (
    DicomWebPacs,
    DimsePacs,
    LocalArchive,
    PacsAccessDenied,
    PacsMoveDestinationUnknown,
    PacsNotFound,
    PacsRejected,
    PacsTlsError,
    PacsUnavailable,
    open_pacs,
)
from libra_node.prior import find_prior
from libra_node.synthetic import SyntheticPatient, make_secondary_capture, SyntheticStudy
from libra_node.local_orthanc import Modality, LocalOrthanc
from pacs.dcmqrscp_server import DcmQrScp
from pacs.relays import StallingRelay, TlsFrontDoor
from pacs.testdata import (
    NODE_AE,
    ORTHANC_AE,
    Archive,
    chest_study,
    draft_report,
    facts_of,
    send_to_node,
    tls_certificate,
)
from dicom_tools import free_port, send_with_pynetdicom

NewPatient = Callable[..., SyntheticPatient]

PLUGIN_SCRIPT = """
import json
import os

import orthanc

TOKEN = os.environ["LIBRA_TEST_TOKEN"]


def only_with_token(uri, **request):
    return request.get("headers", {}).get("authorization") == "Bearer " + TOKEN


def busy(output, uri, **request):
    output.SendHttpStatusCode(503)


def stow_partly_failed(output, uri, **request):
    # 200 with a FailedSOPSequence: the PACS took the request but not every object.
    failed = {
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.88.11"]},
        "00081155": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.8.498.1"]},
        "00081197": {"vr": "US", "Value": [int(request["groups"][0], 16)]},
    }
    answer = {"00081198": {"vr": "SQ", "Value": [failed]}}
    output.AnswerBuffer(json.dumps(answer), "application/dicom+json")


orthanc.RegisterIncomingHttpRequestFilter(only_with_token)
# DICOMweb roots that fail the way some PACSes do: overloaded, or storing only part of a request.
orthanc.RegisterRestCallback("/busy/dicom-web/(.*)", busy)
orthanc.RegisterRestCallback("/stow-fails-([0-9A-F]{4})/dicom-web/studies", stow_partly_failed)
"""


def dimse(
    port: int, *, called: str = ORTHANC_AE, calling: str = NODE_AE, timeout: float = 5.0
) -> DimsePacs:
    return DimsePacs(
        host="127.0.0.1",
        port=port,
        called_ae_title=called,
        calling_ae_title=calling,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def token() -> str:
    return secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def token_orthanc(tmp_path_factory: pytest.TempPathFactory, token: str) -> Iterator[LocalOrthanc]:
    """Orthanc behind a bearer-token filter, with DICOMweb roots that fail (Python plugin)."""
    folder = tmp_path_factory.mktemp("token-orthanc")
    script = folder / "pacs_plugin.py"
    script.write_text(PLUGIN_SCRIPT)
    server = LocalOrthanc(
        folder,
        python_script=script,
        environment={"LIBRA_TEST_TOKEN": token},
        extra_config={"AuthenticationEnabled": False},
    )
    server.start()
    yield server
    server.stop()


@dataclass(frozen=True)
class HttpsPacs:
    url: str
    certificate: Path


@pytest.fixture(scope="module")
def https_pacs(
    tmp_path_factory: pytest.TempPathFactory, orthanc_server: LocalOrthanc
) -> Iterator[HttpsPacs]:
    """The module's Orthanc behind a TLS front door with a self-signed certificate."""
    certificate, key = tls_certificate(tmp_path_factory.mktemp("tls"))
    front = TlsFrontDoor(certificate, key, (orthanc_server.host, orthanc_server.http_port))
    front.start()
    yield HttpsPacs(f"https://127.0.0.1:{front.port}/dicom-web", certificate)
    front.stop()


@pytest.fixture
def hung_pacs() -> Iterator[int]:
    """A port whose listener accepts connections (the kernel does) and never says a word."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        yield int(listening.getsockname()[1])


@pytest.fixture
def node_as_pacs(
    node_settings: Callable[..., Settings], start_node: Callable[..., Node]
) -> Callable[..., Node]:
    """The node's own listener standing in for a PACS, configured as a test needs."""

    def start(**listener: object) -> Node:
        return start_node(node_settings(listener=listener))

    return start


# --- DIMSE ----------------------------------------------------------------------------------


def test_echo_answers_over_every_transport(archive: Archive) -> None:
    archive.client.echo()


@pytest.mark.parametrize("transport", ["dimse", "dicomweb"])
def test_echo_of_a_stopped_pacs_is_transient(
    open_archive: Callable[..., Archive], orthanc: LocalOrthanc, transport: str
) -> None:
    archive = open_archive(f"{transport}-get" if transport == "dimse" else transport)
    orthanc.stop()
    with pytest.raises(PacsUnavailable, match="cannot connect"):
        archive.client.echo()


def test_an_ae_title_the_pacs_does_not_know_is_told_to_register(
    orthanc: LocalOrthanc, new_patient: NewPatient
) -> None:
    patient = new_patient()
    with pytest.raises(PacsAccessDenied) as refused:
        dimse(orthanc.dicom_port, calling="STRANGER").find_studies(patient.patient_id)

    message = str(refused.value)
    assert not refused.value.transient
    assert message.startswith(
        f"C-FIND (study level) with PACS ORTHANC at 127.0.0.1:{orthanc.dicom_port}"
    )
    assert "register AE title STRANGER in the PACS (for Orthanc: DicomModalities)" in message
    assert patient.patient_id not in message


def test_a_wrong_called_ae_title_is_named(orthanc: LocalOrthanc) -> None:
    with pytest.raises(PacsRejected) as rejected:
        dimse(orthanc.dicom_port, called="NOT-ORTHANC").echo()
    message = str(rejected.value)
    assert "Called AE title not recognised" in message and "check pacs.ae_title" in message


def test_a_calling_ae_title_rejected_at_association_is_told_to_register(
    node_as_pacs: Callable[..., Node], new_patient: NewPatient
) -> None:
    pacs = node_as_pacs(allowed_callers=["MODALITY"])
    current = chest_study(new_patient(), "2026-12-01")
    with pytest.raises(PacsAccessDenied) as refused:
        dimse(pacs.listener.port, called=NODE_AE, calling="INTRUDER").store([draft_report(current)])
    assert "Calling AE title not recognised" in str(refused.value)
    assert "register the node's AE title INTRUDER in the PACS" in str(refused.value)


def test_a_peer_without_query_retrieve_says_it_offers_no_such_service(
    node_as_pacs: Callable[..., Node],
) -> None:
    pacs = node_as_pacs()
    with pytest.raises(PacsRejected, match="none of the proposed SOP classes"):
        dimse(pacs.listener.port, called=NODE_AE).find_studies("ANYONE")


def test_a_pacs_out_of_resources_is_transient_and_says_so(
    node_as_pacs: Callable[..., Node], new_patient: NewPatient
) -> None:
    pacs = node_as_pacs(min_free_bytes=1 << 62)
    current = chest_study(new_patient(), "2026-12-01")
    with pytest.raises(PacsUnavailable) as busy:
        dimse(pacs.listener.port, called=NODE_AE).store([draft_report(current)])
    assert busy.value.transient and busy.value.dicom_status == 0xA700
    assert (
        "DICOM status 0xA700 (Failure: Refused: Out of Resources): "
        "free disk space below the reserve" in str(busy.value)
    )


def test_a_hung_dimse_peer_times_out(hung_pacs: int) -> None:
    started = time.monotonic()
    with pytest.raises(PacsUnavailable, match=r"no answer within 0\.5 s"):
        dimse(hung_pacs, timeout=0.5).echo()
    assert time.monotonic() - started < 3


def test_a_pacs_that_hangs_in_the_middle_of_an_operation_times_out(orthanc: LocalOrthanc) -> None:
    relay = StallingRelay((orthanc.host, orthanc.dicom_port))
    relay.start()
    try:
        started = time.monotonic()
        with pytest.raises(
            PacsUnavailable, match=r"C-ECHO .* no answer within 0\.5 s, or the connection was lost"
        ):
            dimse(relay.port, timeout=0.5).echo()
        assert time.monotonic() - started < 3
    finally:
        relay.stop()


def test_a_pacs_at_its_association_limit_is_transient(node_as_pacs: Callable[..., Node]) -> None:
    pacs = node_as_pacs(max_associations=1)
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(Verification)
    held = holder.associate("127.0.0.1", pacs.listener.port, ae_title=NODE_AE)
    assert held.is_established
    try:
        with pytest.raises(PacsUnavailable, match="association rejected for now") as busy:
            dimse(pacs.listener.port, called=NODE_AE).echo()
    finally:
        held.release()
    assert busy.value.transient


def test_an_association_rejected_for_no_given_reason_says_so(
    node_as_pacs: Callable[..., Node],
) -> None:
    pacs = node_as_pacs(allowed_hosts=["10.0.0.0/8"])  # not us
    with pytest.raises(
        PacsRejected,
        match=r"association rejected \(Rejected Permanent, Service User: No reason given\)",
    ):
        dimse(pacs.listener.port, called=NODE_AE).echo()


def test_a_store_the_pacs_refuses_names_the_status_and_its_comment(
    node_as_pacs: Callable[..., Node], new_patient: NewPatient
) -> None:
    pacs = node_as_pacs()
    report = draft_report(chest_study(new_patient(), "2026-12-01"))
    del report.StudyInstanceUID
    with pytest.raises(PacsRejected) as refused:
        dimse(pacs.listener.port, called=NODE_AE).store([report])
    assert refused.value.dicom_status == 0xC001 and not refused.value.transient
    assert str(refused.value).endswith(
        "DICOM status 0xC001 (Failure: Cannot Understand): StudyInstanceUID is missing"
    )


def test_fetching_a_missing_instance_says_not_found(
    archive: Archive, new_patient: NewPatient
) -> None:
    study = chest_study(new_patient(), "2026-11-01")
    archive.seed(study)
    with pytest.raises(PacsNotFound, match="no such instance"):
        archive.client.fetch_instance(
            study[0].StudyInstanceUID, study[0].SeriesInstanceUID, "1.2.826.0.1.3680043.8.498.1"
        )


def test_c_get_of_an_image_the_node_does_not_take_is_refused_in_plain_words(
    orthanc: LocalOrthanc, new_patient: NewPatient
) -> None:
    scan = make_secondary_capture(SyntheticStudy(patient=new_patient()))
    scan.SOPClassUID = scan.file_meta.MediaStorageSOPClassUID = (
        "1.2.840.10008.5.1.4.1.1.4"  # MR image
    )
    orthanc.upload([scan])
    with pytest.raises(PacsRejected, match="holds the instance but did not send it"):
        dimse(orthanc.dicom_port).fetch_instance(
            scan.StudyInstanceUID, scan.SeriesInstanceUID, scan.SOPInstanceUID
        )


@pytest.mark.usefixtures("node_ae_registered")
def test_c_move_to_a_destination_orthanc_does_not_know_names_the_fix(
    open_archive: Callable[..., Archive], orthanc: LocalOrthanc, new_patient: NewPatient
) -> None:
    # The node queries as LIBRA-QUERY, which Orthanc knows; its listener's AE
    # title, LIBRA, the C-MOVE destination, Orthanc does not.
    orthanc.register_modality(Modality("libra-query", "LIBRA-QUERY", "127.0.0.1", free_port()))
    archive = open_archive("dimse-move", calling_ae_title="LIBRA-QUERY")
    orthanc.remove_modality("libra")
    patient = new_patient()
    current = chest_study(patient, "2026-12-01")
    prior = chest_study(patient, "2026-11-01")
    orthanc.upload(current + prior)

    with pytest.raises(PacsMoveDestinationUnknown) as unknown:
        find_prior(archive.client, facts_of(current))

    message = str(unknown.value)
    assert not unknown.value.transient
    assert message.startswith("C-MOVE to LIBRA with PACS ORTHANC")
    assert "register the node's AE title LIBRA with host 127.0.0.1 and port" in message
    assert "(for Orthanc: DicomModalities)" in message
    assert archive.ledger.instances_of(prior[0].StudyInstanceUID) == []


def test_the_standard_move_destination_unknown_status_names_the_fix(
    tmp_path: Path,
    node_settings: Callable[..., Settings],
    start_node: Callable[..., Node],
    new_patient: NewPatient,
) -> None:
    archive_scp = DcmQrScp(tmp_path / "dcmqrscp")
    archive_scp.start()
    try:
        study = chest_study(new_patient(), "2026-11-01")
        assert send_with_pynetdicom(
            archive_scp.port, study, called=archive_scp.ae_title, calling=NODE_AE
        ) == [0, 0]
        settings = node_settings(
            pacs={
                "transport": "dimse",
                "host": "127.0.0.1",
                "port": archive_scp.port,
                "ae_title": archive_scp.ae_title,
                "retrieve": "move",
                "timeout_seconds": 5,
            },
            listener={"port": 11999},
        )
        node = start_node(settings)
        with open_pacs(settings, node.ledger, node.spool) as client:
            with pytest.raises(PacsMoveDestinationUnknown) as unknown:
                client.fetch_instance(
                    study[0].StudyInstanceUID, study[0].SeriesInstanceUID, study[0].SOPInstanceUID
                )
    finally:
        archive_scp.stop()
    assert unknown.value.dicom_status == 0xA801
    assert "DICOM status 0xA801 (Failure: Move destination unknown)" in str(unknown.value)
    assert "register the node's AE title LIBRA with host 127.0.0.1 and port 11999" in str(
        unknown.value
    )


def test_c_move_needs_the_ledger_and_the_spool() -> None:
    with pytest.raises(ValueError, match="C-MOVE needs"):
        DimsePacs(
            host="127.0.0.1",
            port=104,
            called_ae_title="PACS",
            calling_ae_title=NODE_AE,
            retrieve="move",
            move_destination=NODE_AE,
        )


# --- DICOMweb --------------------------------------------------------------------------------


def test_wrong_credentials_are_named_without_echoing_them(orthanc: LocalOrthanc) -> None:
    client = DicomWebPacs(
        orthanc.dicomweb_url, username=orthanc.username, password="not-the-password"
    )
    with pytest.raises(PacsAccessDenied) as refused:
        client.find_studies("ANYONE")
    message = str(refused.value)
    assert refused.value.http_status == 401 and not refused.value.transient
    assert message == (
        f"QIDO-RS study search with DICOMweb service {orthanc.dicomweb_url} failed: "
        "HTTP 401 Unauthorized: "
        "the PACS refused the credentials; check pacs.username and pacs.password"
    )


def test_credentials_written_into_the_url_never_reach_a_message(orthanc: LocalOrthanc) -> None:
    url = f"http://{orthanc.username}:wrong-secret@127.0.0.1:{orthanc.http_port}/dicom-web"
    with pytest.raises(PacsAccessDenied) as refused:
        DicomWebPacs(url).echo()
    assert "wrong-secret" not in str(refused.value) and orthanc.username not in str(refused.value)
    assert f"DICOMweb service http://127.0.0.1:{orthanc.http_port}/dicom-web" in str(refused.value)


def test_missing_credentials_say_which_settings_to_give(orthanc: LocalOrthanc) -> None:
    with pytest.raises(PacsAccessDenied, match="the PACS requires credentials: set pacs.username"):
        DicomWebPacs(orthanc.dicomweb_url).echo()


def test_a_bearer_token_opens_the_pacs(
    token_orthanc: LocalOrthanc, token: str, new_patient: NewPatient
) -> None:
    patient = new_patient()
    study = chest_study(patient, "2026-11-01")
    client = DicomWebPacs(token_orthanc.dicomweb_url, token=token)
    client.store(study)
    assert [s.study_instance_uid for s in client.find_studies(patient.patient_id)] == [
        study[0].StudyInstanceUID
    ]


def test_a_wrong_bearer_token_is_named(token_orthanc: LocalOrthanc) -> None:
    with pytest.raises(PacsAccessDenied) as refused:
        DicomWebPacs(token_orthanc.dicomweb_url, token="wrong-token").echo()
    assert refused.value.http_status == 403
    assert str(refused.value).endswith(
        "HTTP 403 Forbidden: the PACS refused the credentials; check pacs.token"
    )


def test_http_503_is_transient(token_orthanc: LocalOrthanc, token: str) -> None:
    client = DicomWebPacs(f"{token_orthanc.url}/busy/dicom-web", token=token)
    with pytest.raises(PacsUnavailable) as busy:
        client.find_studies("ANYONE")
    assert busy.value.transient and busy.value.http_status == 503
    assert "HTTP 503 Service Unavailable: the PACS is busy or failing" in str(busy.value)


@pytest.mark.parametrize(
    ("reason", "expected"), [("A700", PacsUnavailable), ("0110", PacsRejected)]
)
def test_a_stow_that_stores_only_part_of_the_request_says_what_failed(
    token_orthanc: LocalOrthanc, token: str, new_patient: NewPatient, reason: str, expected: type
) -> None:
    report = draft_report(chest_study(new_patient(), "2026-12-01"))
    client = DicomWebPacs(f"{token_orthanc.url}/stow-fails-{reason}/dicom-web", token=token)
    with pytest.raises(expected) as failed:
        client.store([report])
    assert failed.value.dicom_status == int(reason, 16)
    assert str(failed.value).endswith(f"1 of 1 objects not stored (failure reasons 0x{reason})")


def test_an_answer_that_is_not_dicom_json_is_refused_in_plain_words(
    orthanc: LocalOrthanc, new_patient: NewPatient
) -> None:
    orthanc.upload(
        chest_study(new_patient(), "2026-11-01")
    )  # so that the wrong URL answers something
    client = DicomWebPacs(
        orthanc.url, username=orthanc.username, password=orthanc.password
    )  # REST root
    with pytest.raises(
        PacsRejected, match=r"QIDO-RS study search .* unexpected answer \(JSONDecodeError\)"
    ):
        client.find_studies("ANYONE")


def test_a_url_that_is_not_a_dicomweb_root_says_so(orthanc: LocalOrthanc) -> None:
    client = DicomWebPacs(
        f"{orthanc.url}/not-dicom-web", username=orthanc.username, password=orthanc.password
    )
    with pytest.raises(
        PacsNotFound, match=r"HTTP 404 Not Found: check that pacs.url is the DICOMweb root"
    ):
        client.echo()


def test_stow_of_an_object_the_pacs_cannot_take_is_refused(
    orthanc: LocalOrthanc, new_patient: NewPatient
) -> None:
    report = draft_report(chest_study(new_patient(), "2026-12-01"))
    del report.StudyInstanceUID
    client = DicomWebPacs(
        orthanc.dicomweb_url, username=orthanc.username, password=orthanc.password
    )
    with pytest.raises(PacsRejected, match="STOW-RS .* HTTP 400 Bad Request"):
        client.store([report])


def test_an_instance_the_pacs_serves_without_preamble_is_refused_in_plain_words(
    orthanc: LocalOrthanc, new_patient: NewPatient
) -> None:
    # Another STOW-RS client sent a file without preamble; Orthanc kept it as it came.
    study = chest_study(new_patient(), "2026-11-01")
    careless = DICOMwebClient(orthanc.dicomweb_url, session=requests.Session())
    careless._session.auth = orthanc.auth
    careless.store_instances(study[:1])
    client = DicomWebPacs(
        orthanc.dicomweb_url, username=orthanc.username, password=orthanc.password
    )
    with pytest.raises(PacsRejected, match="not a complete DICOM file"):
        client.fetch_instance(
            study[0].StudyInstanceUID, study[0].SeriesInstanceUID, study[0].SOPInstanceUID
        )


def test_a_hung_dicomweb_service_times_out(hung_pacs: int) -> None:
    started = time.monotonic()
    with pytest.raises(PacsUnavailable, match=r"no answer within 0\.5 s"):
        DicomWebPacs(f"http://127.0.0.1:{hung_pacs}/dicom-web", timeout=0.5).echo()
    assert time.monotonic() - started < 3


def test_tls_certificates_are_verified_by_default(
    https_pacs: HttpsPacs, orthanc: LocalOrthanc
) -> None:
    client = DicomWebPacs(https_pacs.url, username=orthanc.username, password=orthanc.password)
    with pytest.raises(PacsTlsError, match="give the CA that signed it in pacs.ca_bundle"):
        client.echo()


def test_tls_with_the_pacs_ca_bundle_works(
    https_pacs: HttpsPacs, orthanc: LocalOrthanc, new_patient: NewPatient
) -> None:
    patient = new_patient()
    study = chest_study(patient, "2026-11-01")
    client = DicomWebPacs(
        https_pacs.url,
        username=orthanc.username,
        password=orthanc.password,
        ca_bundle=str(https_pacs.certificate),
    )
    client.store(study)
    assert [s.study_instance_uid for s in client.find_studies(patient.patient_id)] == [
        study[0].StudyInstanceUID
    ]
    assert (
        client.fetch_instance(
            study[0].StudyInstanceUID, study[0].SeriesInstanceUID, study[0].SOPInstanceUID
        ).SOPInstanceUID
        == study[0].SOPInstanceUID
    )


@pytest.mark.filterwarnings(
    "ignore::urllib3.exceptions.InsecureRequestWarning"
)  # the point of the test
def test_tls_verification_can_be_switched_off(
    https_pacs: HttpsPacs, orthanc: LocalOrthanc
) -> None:
    DicomWebPacs(
        https_pacs.url, username=orthanc.username, password=orthanc.password, verify_tls=False
    ).echo()


# --- the node's own archive and the factory ----------------------------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the point of the test
def test_the_local_archive_refuses_an_object_without_uids(
    open_archive: Callable[..., Archive], new_patient: NewPatient
) -> None:
    archive = open_archive("local")
    report = draft_report(chest_study(new_patient(), "2026-12-01"))
    report.StudyInstanceUID = "not a uid"
    with pytest.raises(PacsRejected, match="without valid study and SOP instance UIDs"):
        archive.client.store([report])


def test_the_local_archive_says_when_a_spool_file_is_gone(
    open_archive: Callable[..., Archive], new_patient: NewPatient
) -> None:
    archive = open_archive("local")
    study = chest_study(new_patient(), "2026-11-01")
    send_to_node(archive.node, study)
    instance = archive.ledger.get_instance(study[0].SOPInstanceUID)
    assert instance is not None
    archive.node.spool.path(instance.file_path).unlink()
    with pytest.raises(PacsNotFound, match="spool file is missing"):
        archive.client.fetch_instance(
            study[0].StudyInstanceUID, study[0].SeriesInstanceUID, study[0].SOPInstanceUID
        )


@pytest.mark.parametrize(
    ("pacs", "expected"),
    [
        ({"transport": "none"}, LocalArchive),
        ({"transport": "dimse"}, DimsePacs),
        ({"transport": "dimse", "retrieve": "move"}, DimsePacs),
        ({"transport": "dicomweb", "url": "http://127.0.0.1:8042/dicom-web"}, DicomWebPacs),
    ],
)
def test_open_pacs_gives_the_configured_transport(
    node_settings: Callable[..., Settings], pacs: dict, expected: type
) -> None:
    settings = node_settings(pacs=pacs)
    with open_pacs(settings) as client:  # ledger and spool opened from the settings when needed
        assert type(client) is expected
        if isinstance(client, LocalArchive):
            assert client.find_studies("NOBODY") == []
