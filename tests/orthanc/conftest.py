"""Fixtures for the Orthanc tests: one plain Orthanc per module, fresh patients per test."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from libra_node.local_orthanc import LocalOrthanc, orthanc_available
from libra_node.synthetic import SyntheticPatient


@pytest.fixture(scope="module")
def plain_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    """Orthanc with the DICOMweb plugin only; tests that stop it leave restarting to ``orthanc``."""
    assert orthanc_available(), "Orthanc and its DICOMweb plugin (Debian packages) are required"
    server = LocalOrthanc(tmp_path_factory.mktemp("orthanc"), stable_age=1)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def orthanc(plain_orthanc: LocalOrthanc) -> LocalOrthanc:
    plain_orthanc.start()
    return plain_orthanc


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from libra_node.model.tiny import write_tiny_checkpoint  # imports torch: only when needed

    folder = tmp_path_factory.mktemp("tiny-model")
    write_tiny_checkpoint(folder)
    return folder


@pytest.fixture
def new_patient() -> Callable[..., SyntheticPatient]:
    """A patient no other test uses (patient IDs name the test run, never a person)."""

    def make(issuer: str = "") -> SyntheticPatient:
        return SyntheticPatient(patient_id=f"ORT-{uuid.uuid4().hex[:12]}", issuer=issuer)

    return make


# The plugin's modules live in orthanc/, which Orthanc puts on its Python path;
# the tests drive the same modules in process.
PLUGIN_FOLDER = Path(__file__).resolve().parents[2] / "orthanc"
if str(PLUGIN_FOLDER) not in sys.path:
    sys.path.insert(0, str(PLUGIN_FOLDER))
