"""The DICOM listener: a C-STORE SCP that acknowledges only what is safe on disk.

For every C-STORE the handler, in this order: checks free space, reads the
header, writes the instance to the spool (temporary file, fsync, rename,
directory fsync), records it in the ledger, tells the completion tracker,
and only then returns Success. Any failure on that path returns a failure
status with a short reason, and leaves neither a partial file nor a half row.

Association policy: the configured called AE title only; when configured,
only the listed calling AE titles and source addresses. Rejections use the
standard A-ASSOCIATE-RJ reasons, so the sender's log says what is wrong.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from libra_node.completion import CompletionTracker
from libra_node.config import Settings
from libra_node.ledger import InstanceRecord, Ledger, LedgerError, RecordOutcome
from libra_node.logs import get_logger, phi_hash
from libra_node.metrics import METRICS
from libra_node.selection import ImageFacts
from libra_node.spool import Spool, SpoolFullError, is_valid_uid

log = get_logger(__name__)

# C-STORE statuses (PS3.4 B.2.3). 0xA7xx: out of resources; 0xCxxx: cannot understand.
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_UNREADABLE_DATASET = 0xC000
STATUS_MISSING_UID = 0xC001
STATUS_UID_MISMATCH = 0xC002
STATUS_SPOOL_WRITE_FAILED = 0xC003
STATUS_LEDGER_FAILED = 0xC004
STATUS_INTERNAL_ERROR = 0xC005

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result 1 permanent, source 1 service-user.
REJECT_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
DIAGNOSTIC_NO_REASON = 0x01

# Large PDUs: a 10 MB radiograph in 16 KB PDUs means hundreds of Python-level
# reads; in 1 MiB PDUs, a handful. Senders cap it at their own limit anyway.
MAXIMUM_PDU_SIZE = 1 << 20

# Accept any storage SOP class a PACS may route, private ones included, in
# whatever transfer syntax it was proposed in: routing must never fail here.
_config.UNRESTRICTED_STORAGE_SERVICE = True


class StoreRefused(Exception):
    """The instance cannot be accepted; carries the DIMSE status to return."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


@dataclass(frozen=True)
class ParsedInstance:
    """The header of a received instance and what the ledger needs of it."""

    dataset: Dataset
    facts: ImageFacts


def parse_instance(raw: bytes, expected_sop_uid: str | None = None) -> ParsedInstance:
    """Read an encoded instance's header (no pixel data) and check its UIDs."""
    try:
        ds = dcmread(io.BytesIO(raw), stop_before_pixels=True)
        facts = ImageFacts.from_dataset(ds)
        patient_fields = (ds.get("PatientID", ""), ds.get("StudyDate", ""))
        str(patient_fields)  # pydicom decodes lazily: surface decoding errors here
    except Exception as exc:  # pydicom raises many types for broken input
        raise StoreRefused(
            STATUS_UNREADABLE_DATASET, f"dataset cannot be parsed ({type(exc).__name__})"
        ) from exc
    for name, uid in (
        ("StudyInstanceUID", facts.study_instance_uid),
        ("SeriesInstanceUID", facts.series_instance_uid),
        ("SOPInstanceUID", facts.sop_instance_uid),
        ("SOPClassUID", facts.sop_class_uid),
    ):
        if not uid:
            raise StoreRefused(STATUS_MISSING_UID, f"{name} is missing")
        if not is_valid_uid(uid):
            raise StoreRefused(STATUS_MISSING_UID, f"{name} is not a valid UID")
    if expected_sop_uid is not None and facts.sop_instance_uid != expected_sop_uid:
        raise StoreRefused(
            STATUS_UID_MISMATCH, "SOPInstanceUID differs from the C-STORE request's"
        )
    return ParsedInstance(ds, facts)


def instance_record(
    parsed: ParsedInstance, transfer_syntax: str, relative_path: str, size: int
) -> InstanceRecord:
    ds = parsed.dataset
    return InstanceRecord(
        facts=parsed.facts,
        patient_id=str(ds.get("PatientID", "") or ""),
        issuer_of_patient_id=str(ds.get("IssuerOfPatientID", "") or ""),
        study_date=str(ds.get("StudyDate", "") or ""),
        study_time=str(ds.get("StudyTime", "") or ""),
        accession_number=str(ds.get("AccessionNumber", "") or ""),
        study_description=str(ds.get("StudyDescription", "") or ""),
        transfer_syntax_uid=transfer_syntax,
        file_path=relative_path,
        size=size,
    )


class StoreHandler:
    """What happens to one C-STORE: durable first, acknowledged second."""

    def __init__(
        self, ledger: Ledger, spool: Spool, tracker: CompletionTracker, min_free_bytes: int
    ) -> None:
        self.ledger = ledger
        self.spool = spool
        self.tracker = tracker
        self.min_free_bytes = min_free_bytes

    def __call__(self, event: Event) -> Dataset:
        started = time.monotonic()
        try:
            outcome, study_uid = self._store(event)
        except StoreRefused as refused:
            METRICS.instances_rejected.labels(reason=f"0x{refused.status:04X}").inc()
            log.warning("instance.refused", status=f"0x{refused.status:04X}", reason=refused.comment)
            return _status(refused.status, refused.comment)
        except Exception as exc:  # a bug, not the sender's fault: say so, never ACK
            METRICS.instances_rejected.labels(reason=f"0x{STATUS_INTERNAL_ERROR:04X}").inc()
            log.error("instance.store_failed", error=type(exc).__name__)
            return _status(STATUS_INTERNAL_ERROR, "internal error, instance not stored")
        self.tracker.instance_received(id(event.assoc), study_uid)
        METRICS.store_seconds.observe(time.monotonic() - started)
        log.info("instance.stored", study=phi_hash(study_uid), outcome=outcome.value)
        return _status(STATUS_SUCCESS)

    def _store(self, event: Event) -> tuple[RecordOutcome, str]:
        if self.spool.free_bytes() < self.min_free_bytes:
            raise StoreRefused(STATUS_OUT_OF_RESOURCES, "free disk space below the reserve")
        request = event.request
        raw = event.encoded_dataset(include_meta=True)
        parsed = parse_instance(raw, str(request.AffectedSOPInstanceUID))
        facts = parsed.facts
        relative = self.spool.relative_path(
            facts.study_instance_uid, facts.series_instance_uid, facts.sop_instance_uid
        )
        try:
            previous = self.ledger.get_instance(facts.sop_instance_uid)
        except LedgerError as exc:
            raise StoreRefused(STATUS_LEDGER_FAILED, "ledger could not be read") from exc
        if previous is not None and self._same_as_stored(previous.file_path, raw):
            METRICS.instances_received.labels(outcome=RecordOutcome.DUPLICATE.value).inc()
            return RecordOutcome.DUPLICATE, facts.study_instance_uid

        self._write(relative, raw)
        transfer_syntax = str(event.context.transfer_syntax)
        record = instance_record(parsed, transfer_syntax, relative, len(raw))
        try:
            outcome = self.ledger.record_instance(record)
        except LedgerError as exc:
            if previous is None:
                self.spool.remove(relative)  # never acknowledged, never recorded: gone
            raise StoreRefused(STATUS_LEDGER_FAILED, "ledger could not record the instance") from exc
        METRICS.instances_received.labels(outcome=outcome.value).inc()
        METRICS.bytes_received.inc(len(raw))
        return outcome, facts.study_instance_uid

    def _same_as_stored(self, relative: str, raw: bytes) -> bool:
        """A re-sent instance is a duplicate only if its bytes are exactly the stored ones.

        Comparing bytes (only when the UID is already known) is exact and
        keeps a digest computation off the path of every new instance.
        """
        path = self.spool.path(relative)
        try:
            return path.stat().st_size == len(raw) and path.read_bytes() == raw
        except FileNotFoundError:
            return False

    def _write(self, relative: str, raw: bytes) -> None:
        try:
            self.spool.store(relative, raw)
        except SpoolFullError as exc:
            raise StoreRefused(STATUS_OUT_OF_RESOURCES, "disk full") from exc
        except OSError as exc:
            raise StoreRefused(
                STATUS_SPOOL_WRITE_FAILED, f"spool write failed ({exc.strerror or exc})"
            ) from exc


def _status(status: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


# Largest buffer allocated at once for a PDU (the node asks for 1 MiB PDUs).
READ_BLOCK = 4 * 1024 * 1024


def disable_nagle(event: Event) -> None:
    """Send each PDU at once (EVT_CONN_OPEN handler, both ends of DIMSE).

    DIMSE is request/response: Nagle's algorithm meeting the peer's delayed
    ACK costs up to 40 ms per exchange, several times per association.
    """
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def read_pdus_in_large_chunks(event: Event) -> None:
    """Read each PDU with as few system calls as the socket allows (EVT_CONN_OPEN handler).

    pynetdicom reads a PDU 4 KiB per ``recv`` into a growing bytearray: a
    1 MiB P-DATA takes 256 calls and as many copies, about a quarter of the
    time a 10 MB radiograph spends in the listener. ``recv_into`` a buffer of
    the PDU's size takes whatever the kernel holds in one call.
    """
    association_socket = event.assoc.dul.socket
    if association_socket is None:
        return

    def receive(nr_bytes: int) -> bytearray:
        return receive_exactly(association_socket.socket, nr_bytes)

    association_socket.recv = receive  # type: ignore[method-assign]


def receive_exactly(sock: socket.socket, nr_bytes: int) -> bytearray:
    """``nr_bytes`` from ``sock``; fewer only when the peer closed (as pynetdicom's recv).

    Buffers are allocated ``READ_BLOCK`` at a time, so a peer that announces a
    4 GiB PDU costs memory only for the bytes it really sends.
    """
    received = bytearray()
    while len(received) < nr_bytes:
        wanted = min(nr_bytes - len(received), READ_BLOCK)
        block = _receive_block(sock, wanted)
        if received:
            received += block
        else:
            received = block
        if len(block) < wanted:
            break
    return received


def _receive_block(sock: socket.socket, nr_bytes: int) -> bytearray:
    block = bytearray(nr_bytes)
    with memoryview(block) as view:
        filled = 0
        while filled < nr_bytes:
            count = sock.recv_into(view[filled:], nr_bytes - filled)
            if count == 0:
                break
            filled += count
    del block[filled:]
    return block


def _host_allowed(address: str, allowed: list[str]) -> bool:
    """Allowed entries are addresses or networks (10.0.0.0/8); empty allows all."""
    if not allowed:
        return True
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in allowed:
        try:
            if peer in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def make_tls_context(settings: Settings) -> ssl.SSLContext | None:
    listener = settings.listener
    if listener.tls_cert is None or listener.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(listener.tls_cert), str(listener.tls_key))
    if listener.tls_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(listener.tls_ca))
    return context


class StorageListener:
    """The listening AE: policy, handlers and a clean shutdown."""

    def __init__(
        self, settings: Settings, ledger: Ledger, spool: Spool, tracker: CompletionTracker
    ) -> None:
        self.settings = settings
        self.tracker = tracker
        self.store_handler = StoreHandler(
            ledger, spool, tracker, settings.listener.min_free_bytes
        )
        self.ae = self._make_ae()
        self.server: ThreadedAssociationServer | None = None

    def _make_ae(self) -> AE:
        listener = self.settings.listener
        ae = AE(ae_title=listener.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = list(listener.allowed_callers)
        ae.maximum_associations = listener.max_associations
        ae.maximum_pdu_size = MAXIMUM_PDU_SIZE
        ae.network_timeout = listener.network_timeout
        ae.acse_timeout = listener.network_timeout
        ae.dimse_timeout = listener.network_timeout
        ae.add_supported_context(Verification)
        return ae

    def _handle_requested(self, event: Event) -> None:
        address = event.assoc.requestor.address
        if not _host_allowed(address, self.settings.listener.allowed_hosts):
            METRICS.associations_rejected.labels(reason="host not allowed").inc()
            log.warning("association.rejected", reason="source address not allowed")
            event.assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, DIAGNOSTIC_NO_REASON)
            # As pynetdicom's own rejections do: let the DUL send the PDU and stop.
            event.assoc.kill()

    def _handle_rejected(self, event: Event) -> None:
        METRICS.associations_rejected.labels(reason="policy").inc()
        log.warning("association.rejected", reason="called or calling AE title not accepted")

    def _handle_closed(self, event: Event) -> None:
        self.tracker.association_ended(id(event.assoc))

    def _handle_echo(self, event: Event) -> int:
        return STATUS_SUCCESS

    def start(self) -> None:
        listener = self.settings.listener
        handlers = [
            (evt.EVT_C_STORE, self.store_handler),
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_REQUESTED, self._handle_requested),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_CONN_CLOSE, self._handle_closed),
            (evt.EVT_CONN_OPEN, disable_nagle),
            (evt.EVT_CONN_OPEN, read_pdus_in_large_chunks),
        ]
        self.server = self.ae.start_server(
            (listener.host, listener.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=make_tls_context(self.settings),
        )
        log.info(
            "listener.started",
            host=listener.host,
            port=self.port,
            ae_title=listener.ae_title,
            tls=listener.tls_cert is not None,
        )

    @property
    def port(self) -> int:
        if self.server is None:
            return self.settings.listener.port
        return int(self.server.server_address[1])

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting, let open associations finish, then close."""
        if self.server is None:
            return
        server, self.server = self.server, None
        threading.Thread(target=server.shutdown, daemon=True).start()
        deadline = time.monotonic() + drain_seconds
        # Connections that never asked for an association (port probes) are
        # not worth waiting for; established associations are.
        while time.monotonic() < deadline and any(
            association.is_established for association in server.active_associations
        ):
            time.sleep(0.05)
        for association in server.active_associations:
            association.abort()
        log.info("listener.stopped")


def recover_spool(spool: Spool, ledger: Ledger) -> tuple[int, int]:
    """After a crash: drop half-written files, record complete ones the ledger missed.

    A file renamed into the spool just before the process died was never
    acknowledged, but it is whole and fsynced, so it is kept and recorded
    rather than thrown away. Returns (discarded, recorded).
    """
    discarded = spool.discard_incomplete()
    known = ledger.all_instance_paths()
    recorded = 0
    for relative in spool.files():
        if relative in known:
            continue
        raw = spool.path(relative).read_bytes()
        try:
            parsed = parse_instance(raw)
            expected = spool.relative_path(
                parsed.facts.study_instance_uid,
                parsed.facts.series_instance_uid,
                parsed.facts.sop_instance_uid,
            )
        except (StoreRefused, ValueError):
            log.warning("recovery.unreadable_file_left_alone")
            continue
        if expected != relative:
            continue
        transfer_syntax = str(parsed.dataset.file_meta.get("TransferSyntaxUID", ""))
        ledger.record_instance(instance_record(parsed, transfer_syntax, relative, len(raw)))
        recorded += 1
    if discarded or recorded:
        log.info("recovery.done", discarded=discarded, recorded=recorded)
    return discarded, recorded
