"""DICOM TLS: the listener with a certificate, checked with dcmtk's storescu +tls."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dicom_tools import storescu, write_datasets
from libra_node.synthetic import SyntheticStudy, make_chest_study


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _issue(folder: Path, name: str, ca_key: Path, ca_cert: Path, san: str) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    extensions = folder / f"{name}.ext"
    extensions.write_text(f"subjectAltName={san}\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(extensions))
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A throw-away CA with a server and a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = folder / "ca.key", folder / "ca.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
             "-out", str(ca_cert), "-days", "2", "-subj", "/CN=Test hospital CA")
    server_key, server_cert = _issue(folder, "node", ca_key, ca_cert, "IP:127.0.0.1,DNS:localhost")
    client_key, client_cert = _issue(folder, "modality", ca_key, ca_cert, "DNS:modality")
    return {
        "ca": ca_cert,
        "server_key": server_key,
        "server_cert": server_cert,
        "client_key": client_key,
        "client_cert": client_cert,
    }


def _tls_args(pki: dict[str, Path]) -> list[str]:
    return ["+tls", str(pki["client_key"]), str(pki["client_cert"]), "+cf", str(pki["ca"])]


def test_storescu_over_tls_with_client_certificate(start_node, make_settings, pki, tmp_path):
    settings = make_settings(listener={
        "tls_cert": pki["server_cert"], "tls_key": pki["server_key"], "tls_ca": pki["ca"],
    })
    node = start_node(settings)
    files = write_datasets(make_chest_study(SyntheticStudy(views=("PA",))), tmp_path / "send")

    result = storescu(node.listener.port, files, extra=_tls_args(pki))

    assert result.returncode == 0, result.stderr
    assert len(list(node.spool.files())) == 1


def test_plain_connection_to_tls_listener_stores_nothing(start_node, make_settings, pki, tmp_path):
    node = start_node(make_settings(listener={
        "tls_cert": pki["server_cert"], "tls_key": pki["server_key"],
    }))
    files = write_datasets(make_chest_study(SyntheticStudy(views=("PA",))), tmp_path / "send")

    result = storescu(node.listener.port, files, timeout=60)

    assert result.returncode != 0
    assert list(node.spool.files()) == []


def test_client_without_certificate_is_refused_when_ca_is_set(start_node, make_settings, pki, tmp_path):
    node = start_node(make_settings(listener={
        "tls_cert": pki["server_cert"], "tls_key": pki["server_key"], "tls_ca": pki["ca"],
    }))
    files = write_datasets(make_chest_study(SyntheticStudy(views=("PA",))), tmp_path / "send")

    result = storescu(node.listener.port, files, extra=["+tla", "+cf", str(pki["ca"])], timeout=60)

    assert result.returncode != 0
    assert list(node.spool.files()) == []
