"""The "orthanc" transport against a real Orthanc: lookups, retrieval, storage and every failure."""

from __future__ import annotations

import http.server
import io
import logging
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from pydicom import dcmread

from dicom_tools import free_port
from libra_node.config import load_settings
from libra_node.local_orthanc import LocalOrthanc
from libra_node.pacs import (
    OrthancRestPacs,
    PacsAccessDenied,
    PacsNotFound,
    PacsRejected,
    PacsUnavailable,
    open_pacs,
)
from libra_node.pacs.orthanc_rest import dataset_from_orthanc_tags
from libra_node.prior import find_prior
from libra_node.selection import choose_frontal
from pacs.testdata import chest_study, draft_report, facts_of, scanned_document_study, sop_uids


def client_for(orthanc: LocalOrthanc, **overrides: object) -> OrthancRestPacs:
    options: dict[str, object] = {
        "username": orthanc.username, "password": orthanc.password, "timeout": 5.0
    }
    options.update(overrides)
    return OrthancRestPacs(orthanc.url, **options)  # type: ignore[arg-type]


@pytest.fixture
def pacs(orthanc: LocalOrthanc) -> Iterator[OrthancRestPacs]:
    client = client_for(orthanc)
    yield client
    client.close()


# --- settings -----------------------------------------------------------------------------


def test_open_pacs_gives_the_orthanc_transport_for_its_settings(orthanc: LocalOrthanc) -> None:
    settings = load_settings(None, pacs={
        "transport": "orthanc", "url": orthanc.url,
        "username": orthanc.username, "password": orthanc.password,
    })
    with open_pacs(settings) as client:
        assert isinstance(client, OrthancRestPacs)
        client.echo()
        assert orthanc.password not in client.peer


# --- lookups ---------------------------------------------------------------------------------


def test_find_studies_returns_the_patients_studies_with_modalities(pacs, orthanc, new_patient):
    patient = new_patient()
    older = chest_study(patient, "2026-03-02", modality="CR")
    newer = chest_study(patient, "2026-06-01")
    document = scanned_document_study(patient, "2026-05-01")
    orthanc.upload([*older, *newer, *document])
    orthanc.upload(chest_study(new_patient(), "2026-06-01"))  # someone else

    found = {s.study_instance_uid: s for s in pacs.find_studies(patient.patient_id)}
    radiographs = pacs.find_studies(patient.patient_id, modalities=["CR", "DX"])

    assert set(found) == {
        str(older[0].StudyInstanceUID), str(newer[0].StudyInstanceUID),
        str(document[0].StudyInstanceUID),
    }
    first = found[str(older[0].StudyInstanceUID)]
    assert (first.patient_id, first.study_date, first.study_time) == (
        patient.patient_id, "20260302", "101500"
    )
    assert first.modalities == ("CR",)
    assert {s.study_instance_uid for s in radiographs} == {
        str(older[0].StudyInstanceUID), str(newer[0].StudyInstanceUID)
    }
    assert pacs.find_studies("NOBODY-" + patient.patient_id) == []


def test_find_studies_matches_the_issuer_of_patient_id(pacs, orthanc, new_patient):
    patient = new_patient(issuer="HOSPITAL-A")
    orthanc.upload(chest_study(patient, "2026-03-02"))

    found = pacs.find_studies(patient.patient_id, "HOSPITAL-A")
    assert [s.issuer_of_patient_id for s in found] == ["HOSPITAL-A"]
    assert pacs.find_studies(patient.patient_id, "HOSPITAL-B") == []


def test_find_images_reads_full_headers_so_the_frontal_view_is_found(pacs, orthanc, new_patient):
    study = chest_study(new_patient(), "2026-03-02", views=("LL", "PA"), omit_view_position=True)
    orthanc.upload(study)

    images = pacs.find_images(str(study[0].StudyInstanceUID))

    assert {image.sop_instance_uid for image in images} == sop_uids(study)
    frontal = choose_frontal(images)
    assert frontal is not None and frontal.image.sop_instance_uid == str(study[1].SOPInstanceUID)
    assert frontal.rule.startswith("ViewCodeSequence")  # read from a sequence, not a main tag
    assert {image.modality for image in images} == {"DX"}
    assert all(image.series_number is not None for image in images)


def test_fetch_instance_returns_the_whole_image(pacs, orthanc, new_patient):
    study = chest_study(new_patient(), "2026-03-02", views=("PA",))
    orthanc.upload(study)
    ds = study[0]

    fetched = pacs.fetch_instance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                  str(ds.SOPInstanceUID))

    assert fetched.SOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(fetched.pixel_array, ds.pixel_array)


def test_prior_lookup_over_the_orthanc_transport(pacs, orthanc, new_patient):
    patient = new_patient()
    prior = chest_study(patient, "2026-03-02")
    current = chest_study(patient, "2026-06-01")
    orthanc.upload([*prior, *current])

    result = find_prior(pacs, facts_of(current))

    assert result.found, result.reason
    assert result.study.study_instance_uid == str(prior[0].StudyInstanceUID)
    assert str(result.image.SOPInstanceUID) in sop_uids(prior, "PA")


# --- storage --------------------------------------------------------------------------------


def test_store_puts_the_report_into_the_study_and_storing_again_is_harmless(pacs, orthanc,
                                                                            new_patient):
    study = chest_study(new_patient(), "2026-03-02", views=("PA",))
    orthanc.upload(study)
    report = draft_report(study)

    pacs.store([report])
    pacs.store([report])

    stored = orthanc.find_instances(SOPInstanceUID=str(report.SOPInstanceUID))
    assert len(stored) == 1
    stored_file = orthanc.instance_file(str(report.SOPInstanceUID))
    assert dcmread(io.BytesIO(stored_file)).StudyInstanceUID == study[0].StudyInstanceUID


def test_store_of_an_object_orthanc_cannot_read_is_rejected(pacs, new_patient):
    broken = draft_report(chest_study(new_patient(), "2026-03-02", views=("PA",)))
    del broken.StudyInstanceUID  # Orthanc refuses instances without one

    with pytest.raises(PacsRejected) as caught:
        pacs.store([broken])
    assert not caught.value.transient


# --- failures -----------------------------------------------------------------------------


def test_wrong_password_is_access_denied_and_not_retried(orthanc):
    with client_for(orthanc, password="wrong") as client, pytest.raises(PacsAccessDenied) as caught:
        client.echo()
    assert not caught.value.transient
    assert caught.value.http_status == 401
    assert "pacs.username and pacs.password" in str(caught.value)


def test_missing_credentials_say_which_settings_to_set(orthanc):
    with client_for(orthanc, username="", password="") as client, pytest.raises(
        PacsAccessDenied, match="set pacs.username"
    ):
        client.echo()


def test_unknown_instance_is_not_found(pacs, new_patient):
    with pytest.raises(PacsNotFound) as caught:
        pacs.fetch_instance("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert not caught.value.transient
    assert "1.2.3.4.5" not in str(caught.value)  # no UIDs in messages
    with pytest.raises(PacsNotFound):
        pacs.find_images("1.2.3.999")


def test_a_url_that_is_not_orthancs_root_is_not_found(orthanc):
    with OrthancRestPacs(orthanc.dicomweb_url, username=orthanc.username,
                         password=orthanc.password) as client, pytest.raises(PacsNotFound):
        client.echo()


def test_orthanc_down_is_transient(orthanc, new_patient):
    client = client_for(orthanc)
    orthanc.stop()
    try:
        with pytest.raises(PacsUnavailable) as caught:
            client.find_studies(new_patient().patient_id)
        assert caught.value.transient
    finally:
        client.close()


class _FailingHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with the status and body the server was told to give."""

    def _answer(self) -> None:
        status, body = self.server.answer  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _FailingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "error", "transient"),
    [
        (500, b'{"Message": "Internal error"}', PacsUnavailable, True),
        (429, b"{}", PacsUnavailable, True),
        (400, b'{"Message": "Bad request"}', PacsRejected, False),
        (200, b"<html>a login page</html>", PacsRejected, False),
        (200, b'{"not": "a list"}', PacsRejected, False),
    ],
)
def test_error_answers_map_to_the_pacs_errors(failing_server, status, body, error, transient):
    failing_server.answer = (status, body)  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{failing_server.server_address[1]}"
    with OrthancRestPacs(url, timeout=5) as client, pytest.raises(error) as caught:
        client.find_studies("PATIENT-SECRET")
    assert caught.value.transient is transient
    assert "PATIENT-SECRET" not in str(caught.value)


def test_storing_logs_no_patient_data(pacs, orthanc, new_patient, caplog):
    patient = new_patient()
    study = chest_study(patient, "2026-03-02", views=("PA",))
    orthanc.upload(study)
    caplog.set_level(logging.DEBUG)

    pacs.find_studies(patient.patient_id)
    pacs.store([draft_report(study)])

    assert "pacs.stored" in caplog.text
    assert patient.patient_id not in caplog.text
    assert str(study[0].StudyInstanceUID) not in caplog.text


# --- Orthanc's tag JSON ----------------------------------------------------------------------


def test_orthanc_tag_json_becomes_a_dataset_without_private_or_bulk_data(recwarn, caplog) -> None:
    tags = {
        "0008,0016": {"Type": "String", "Value": "1.2.840.10008.5.1.4.1.1.1"},
        "0008,0008": {"Name": "ImageType", "Type": "String", "Value": "ORIGINAL\\PRIMARY"},
        "0020,0011": {"Name": "SeriesNumber", "Type": "String", "Value": "3"},
        "0028,0010": {"Name": "Rows", "Type": "String", "Value": "2048"},
        "0018,1164": {"Name": "ImagerPixelSpacing", "Type": "String", "Value": "0.1\\0.1"},
        "0054,0220": {"Name": "ViewCodeSequence", "Type": "Sequence", "Value": [
            {"0008,0100": {"Name": "CodeValue", "Type": "String", "Value": "399348003"}},
        ]},
        "0009,0010": {"Name": "PrivateCreator", "Type": "String", "Value": "ACME"},
        "7fe0,0010": {"Name": "PixelData", "Type": "TooLong"},
        "0020,0013": {"Name": "InstanceNumber", "Type": "String", "Value": "not a number"},
        "0028,0011": {"Name": "Columns", "Type": "String", "Value": "wide"},
        "junk": {"Type": "String", "Value": "x"},
    }

    ds = dataset_from_orthanc_tags(tags)

    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY"]
    assert ds.SeriesNumber == 3 and ds.Rows == 2048
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.1, 0.1]
    assert ds.ViewCodeSequence[0].CodeValue == "399348003"
    assert "PixelData" not in ds and "Columns" not in ds and "InstanceNumber" not in ds
    assert not any(element.tag.is_private for element in ds)
    # pydicom would quote an invalid value in a warning and a log line: patient data.
    assert not recwarn.list and "not a number" not in caplog.text
