"""dcmtk's dcmqrscp as a second, independent query/retrieve archive.

Orthanc answers a C-MOVE to an unknown destination with a generic 0xC000;
dcmqrscp answers with the standard 0xA801 "Move destination unknown", so
the node's handling of the standard status is tested against it.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from dicom_tools import free_port


class DcmQrScp:
    """One dcmqrscp process (forking mode) with a single storage area."""

    def __init__(self, workdir: Path, ae_title: str = "ARCHIVE") -> None:
        self.workdir = Path(workdir)
        self.ae_title = ae_title
        self.port = free_port()
        self.storage = self.workdir / "storage"
        self.config_path = self.workdir / "dcmqrscp.cfg"
        self.log_path = self.workdir / "dcmqrscp.log"
        self._process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f"NetworkTCPPort  = {self.port}\n"
            "MaxPDUSize      = 16384\n"
            "MaxAssociations = 16\n\n"
            "HostTable BEGIN\nHostTable END\n\n"
            "VendorTable BEGIN\nVendorTable END\n\n"
            "AETable BEGIN\n"
            f"{self.ae_title}  {self.storage}  RW  (100, 1024mb)  ANY\n"
            "AETable END\n"
        )

    def start(self, timeout: float = 10.0) -> None:
        self.write_config()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                ["dcmqrscp", "-c", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"dcmqrscp did not listen within {timeout} s: {self.log_path.read_text()}"
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
