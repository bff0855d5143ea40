"""Fixtures for the PACS tests: a real Orthanc, the node, and one archive per transport.

One Orthanc serves a whole test module (it starts in well under a second,
but there is no need to pay that per test); every test seeds its own
patients, with fresh patient IDs, so tests never see each other's studies.
A test that stops Orthanc leaves it to the ``orthanc`` fixture to start it
again for the next one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dicom_tools import free_port
from libra_node.config import Settings
from libra_node.node import Node
from libra_node.pacs import open_pacs
from libra_node.synthetic import SyntheticPatient
from libra_node.local_orthanc import Modality, LocalOrthanc, orthanc_available
from pacs.testdata import NODE_AE, NODE_MODALITY, ORTHANC_AE, Archive, pacs_section, send_to_node

# --- Orthanc ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    assert orthanc_available(), "Orthanc and its DICOMweb plugin (Debian packages) are required"
    server = LocalOrthanc(
        tmp_path_factory.mktemp("orthanc"),
        ae_title=ORTHANC_AE,
        # Registered with a placeholder port; tests that C-MOVE register the real one.
        modalities=[Modality(NODE_MODALITY, NODE_AE, "127.0.0.1", free_port())],
        extra_config={"DicomCheckCalledAet": True},
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def orthanc(orthanc_server: LocalOrthanc) -> LocalOrthanc:
    """The module's Orthanc, running (again, if the previous test stopped it)."""
    orthanc_server.start()
    return orthanc_server


# --- patients ----------------------------------------------------------------------------


@pytest.fixture
def new_patient() -> Callable[..., SyntheticPatient]:
    """A patient no other test uses."""

    def make(name: str = "Test^Patient", issuer: str = "") -> SyntheticPatient:
        return SyntheticPatient(patient_id=f"PAT-{uuid.uuid4().hex[:12]}", name=name, issuer=issuer)

    return make


# --- the node and its settings ------------------------------------------------------------


@pytest.fixture
def node_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """The shared test settings, without the metrics endpoint (nodes here need no fixed port)."""

    def make(**sections: Any) -> Settings:
        return make_settings(metrics={"port": 0}, **sections)

    return make


ARCHIVES = ["dimse-get", "dimse-move", "dicomweb", "local"]


@pytest.fixture
def open_archive(
    orthanc: LocalOrthanc, node_settings: Callable[..., Settings], start_node: Callable[..., Node]
) -> Iterator[Callable[..., Archive]]:
    """Open an archive by name ('dimse-get', 'dimse-move', 'dicomweb', 'local')."""
    opened: list[Archive] = []

    def open_(name: str, **pacs_overrides: Any) -> Archive:
        transport, _, retrieve = name.partition("-")
        transport = {"local": "none"}.get(transport, transport)
        pacs = pacs_section(orthanc, transport, **pacs_overrides)
        if retrieve:
            pacs["retrieve"] = retrieve
        settings = node_settings(pacs=pacs)
        node = start_node(settings)
        if retrieve == "move":
            orthanc.register_modality(
                Modality(NODE_MODALITY, NODE_AE, "127.0.0.1", node.listener.port)
            )
        client = open_pacs(settings, node.ledger, node.spool)
        seed = (
            (lambda datasets: send_to_node(node, datasets))
            if transport == "none"
            else orthanc.upload
        )
        archive = Archive(name, client, node, settings, seed)
        opened.append(archive)
        return archive

    yield open_
    for archive in opened:
        archive.client.close()


@pytest.fixture(params=ARCHIVES)
def archive(request: pytest.FixtureRequest, open_archive: Callable[..., Archive]) -> Archive:
    """Each archive in turn: the same scenario over every transport."""
    return open_archive(request.param)


@pytest.fixture
def node_ae_registered(orthanc: LocalOrthanc) -> Iterator[None]:
    """Tests that remove the node from Orthanc's modalities put it back afterwards."""
    yield
    orthanc.register_modality(Modality(NODE_MODALITY, NODE_AE, "127.0.0.1", free_port()))
