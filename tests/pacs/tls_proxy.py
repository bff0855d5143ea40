"""A TLS-terminating front door for a plain HTTP server, as hospitals put before a PACS.

Orthanc 1.10.1 as packaged here crashes on its first TLS handshake
(SslEnabled), so HTTPS tests reach the real Orthanc through this relay:
real TLS on the outside, bytes passed through unchanged on the inside.
"""

from __future__ import annotations

import select
import socket
import socketserver
import ssl
import threading
from pathlib import Path


class _Relay(socketserver.BaseRequestHandler):
    server: "TlsFrontDoor"

    def handle(self) -> None:
        try:
            client = self.server.tls.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client refused our certificate: exactly what some tests expect
        with client, socket.create_connection(self.server.backend) as backend:
            pipes = {client: backend, backend: client}
            while True:
                readable, _, _ = select.select(list(pipes), [], [], 30)
                if not readable:
                    return
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    # TLS may hold decrypted bytes that select() cannot see.
                    while isinstance(source, ssl.SSLSocket) and source.pending():
                        data += source.recv(source.pending())
                    pipes[source].sendall(data)


class TlsFrontDoor(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, certificate: Path, key: Path, backend: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", 0), _Relay)
        self.backend = backend
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(str(certificate), str(key))
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
