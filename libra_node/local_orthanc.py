"""A local Orthanc (Debian packages): configured, started, stopped, torn down.

The demo's ``--pacs orthanc`` and the tests use it as the PACS. ``LocalOrthanc`` writes one JSON configuration into a temporary folder (free
loopback ports, HTTP basic authentication, storage and index in that folder,
the DICOMweb plugin, optionally the Python plugin with a script), runs
``Orthanc CONFIG.json`` and waits until its REST API answers. It can be
stopped and started again on the same ports and storage, which is how tests
take "the PACS" down and bring it back.

Orthanc 1.10 has no bind-address option: its ports listen on all interfaces.
The node only ever connects to 127.0.0.1, and authentication stays on.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import requests
from pydicom import dcmwrite
from pydicom.dataset import Dataset


PLUGIN_FOLDER = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = PLUGIN_FOLDER / "libOrthancDicomWeb.so"
PYTHON_PLUGIN = PLUGIN_FOLDER / "libOrthancPython.so"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def orthanc_binary() -> str | None:
    """The Debian package's executable (in /usr/sbin, which may not be on PATH)."""
    found = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    return found if os.access(found, os.X_OK) else None


def orthanc_available() -> bool:
    return orthanc_binary() is not None and DICOMWEB_PLUGIN.is_file()


@dataclass(frozen=True)
class Modality:
    """A DICOM peer Orthanc knows: C-FIND/C-GET/C-MOVE from it are allowed."""

    name: str
    ae_title: str
    host: str
    port: int

    def as_config(self) -> list[object]:
        return [self.ae_title, self.host, self.port]


class LocalOrthanc:
    """One Orthanc process with its own configuration, ports and storage."""

    def __init__(
        self,
        workdir: Path,
        *,
        ae_title: str = "ORTHANC",
        username: str = "libra",
        password: str | None = None,
        modalities: Iterable[Modality] = (),
        stable_age: int = 60,
        python_script: Path | None = None,
        environment: dict[str, str] | None = None,
        extra_config: dict[str, object] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.username = username
        self.password = password or secrets.token_urlsafe(12)
        self.modalities = list(modalities)
        self.stable_age = stable_age
        self.python_script = python_script
        # Extra environment for the process; the Python plugin runs Debian's own
        # Python, so a script that imports the node's packages needs PYTHONPATH here.
        self.environment = dict(environment or {})
        self.extra_config = dict(extra_config or {})
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self._process: subprocess.Popen[bytes] | None = None

    # --- what clients need to know ---------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- configuration ---------------------------------------------------------------

    def config(self) -> dict[str, object]:
        storage = self.workdir / "storage"
        plugins = [str(DICOMWEB_PLUGIN)]
        config: dict[str, object] = {
            "Name": "libra-local-pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "TemporaryDirectory": str(self.workdir / "tmp"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "DicomModalities": {m.name: m.as_config() for m in self.modalities},
            "StableAge": self.stable_age,
            "SaveJobs": False,
            "SynchronousCMove": True,
            "DicomAssociationCloseDelay": 0,
            "DicomScuTimeout": 5,
            "HttpTimeout": 10,
            "MetricsEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            "Plugins": plugins,
        }
        if self.python_script is not None:
            plugins.append(str(PYTHON_PLUGIN))
            config["PythonScript"] = str(self.python_script)
        config.update(self.extra_config)
        return config

    def write_config(self) -> Path:
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        return self.config_path

    # --- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        self.write_config()
        (self.workdir / "tmp").mkdir(exist_ok=True)
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [orthanc_binary() or "Orthanc", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            # DCMTK, inside Orthanc, sends each PDU at once only with TCP_NODELAY set:
            # without it every DIMSE exchange can wait 40 ms for a delayed ACK.
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TCP_NODELAY": "1", **self.environment},
        )
        log.close()
        self._wait_until_ready(timeout)

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited at start; see {self.log_path}:\n{self.log_tail()}"
                )
            try:
                # Any HTTP answer means the server is up (a plugin's filter may refuse it).
                requests.get(f"{self.url}/system", auth=self.auth, timeout=1)
                return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> "LocalOrthanc":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- REST helpers for seeding and checking -----------------------------------------

    def rest(self, method: str, path: str, **kwargs: object) -> requests.Response:
        response = requests.request(
            method,
            f"{self.url}{path}",
            auth=self.auth,
            timeout=30,
            **kwargs,  # type: ignore[arg-type]
        )
        response.raise_for_status()
        return response

    def upload(self, datasets: Iterable[Dataset]) -> None:
        """Store instances through the REST API, as any other sender would."""
        for ds in datasets:
            buffer = io.BytesIO()
            dcmwrite(buffer, ds, enforce_file_format=True)
            self.rest("POST", "/instances", data=buffer.getvalue())

    def find_instances(self, **query: str) -> list[dict[str, object]]:
        """Instances matching a query on DICOM keywords, with their main tags."""
        response = self.rest(
            "POST",
            "/tools/find",
            json={"Level": "Instance", "Query": query, "Expand": True},
        )
        return list(response.json())

    def register_modality(self, modality: Modality) -> None:
        """Add (or update) a DICOM peer at run time, without a restart."""
        self.rest(
            "PUT",
            f"/modalities/{modality.name}",
            json={"AET": modality.ae_title, "Host": modality.host, "Port": modality.port},
        )
        self.modalities = [m for m in self.modalities if m.name != modality.name] + [modality]

    def remove_modality(self, name: str) -> None:
        self.rest("DELETE", f"/modalities/{name}")
        self.modalities = [m for m in self.modalities if m.name != name]

    def instance_file(self, sop_instance_uid: str) -> bytes:
        """The stored DICOM file of an instance, found by its SOP Instance UID."""
        found = self.rest("POST", "/tools/lookup", data=sop_instance_uid).json()
        instance = next(item for item in found if item["Type"] == "Instance")
        return self.rest("GET", f"/instances/{instance['ID']}/file").content
