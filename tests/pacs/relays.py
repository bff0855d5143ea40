"""TCP relays in front of a real server, for failures the server itself will not produce.

``TlsFrontDoor`` puts real TLS before a plain HTTP server, as hospitals put
a terminating proxy before a PACS (Orthanc 1.10.1 as packaged here crashes
on its first TLS handshake with SslEnabled). ``StallingRelay`` passes the
association handshake through and then swallows everything, like a PACS
that hangs in the middle of an operation.
"""

from __future__ import annotations

import select
import socket
import socketserver
import ssl
import threading
from pathlib import Path


class Relay(socketserver.ThreadingTCPServer):
    """Accepts on a free loopback port and serves each connection in a thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, handler: type[socketserver.BaseRequestHandler], backend: tuple[str, int]
    ) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.backend = backend
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def _pump(
    client: socket.socket, backend: socket.socket, replies_to_pass: int | None = None
) -> None:
    """Copy bytes both ways until either side closes.

    With ``replies_to_pass``, only that many reads from the backend reach the
    client; later traffic is read and dropped, so the client waits in vain.
    """
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
            if source is backend and replies_to_pass is not None:
                if replies_to_pass == 0:
                    continue
                replies_to_pass -= 1
            elif source is client and replies_to_pass == 0:
                continue
            pipes[source].sendall(data)


class _TlsHandler(socketserver.BaseRequestHandler):
    server: "TlsFrontDoor"

    def handle(self) -> None:
        try:
            client = self.server.tls.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client refused our certificate: what some tests expect
        with client, socket.create_connection(self.server.backend) as backend:
            _pump(client, backend)


class TlsFrontDoor(Relay):
    def __init__(self, certificate: Path, key: Path, backend: tuple[str, int]) -> None:
        super().__init__(_TlsHandler, backend)
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(str(certificate), str(key))


class _StallHandler(socketserver.BaseRequestHandler):
    server: "StallingRelay"

    def handle(self) -> None:
        with socket.create_connection(self.server.backend) as backend:
            _pump(self.request, backend, replies_to_pass=1)  # the A-ASSOCIATE-AC, nothing more


class StallingRelay(Relay):
    def __init__(self, backend: tuple[str, int]) -> None:
        super().__init__(_StallHandler, backend)
