"""DIMSE transport (pynetdicom): C-ECHO, C-FIND, C-GET or C-MOVE, C-STORE.

Each operation opens its own short association proposing only the contexts
it needs: Verification for C-ECHO, the Study Root FIND model for queries,
the GET model plus the radiograph storage classes in the SCP role for C-GET
(the PACS needs no configuration for that), the MOVE model for C-MOVE, and
the objects' own storage classes for C-STORE. Every wait is bounded by
``pacs.timeout_seconds``.

C-MOVE sends the instance to the node's own listener. The ledger is told
beforehand (``expect_retrieval``), so the listener keeps the prior without
opening a study to report, and the instance is then read from the spool.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    UID,
)
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu_primitives import (
    A_ABORT,
    A_ASSOCIATE,
    A_P_ABORT,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.status import (
    GENERAL_STATUS,
    QR_FIND_SERVICE_CLASS_STATUS,
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
    STORAGE_SERVICE_CLASS_STATUS,
    StatusDictType,
)

from libra_node.config import Settings
from libra_node.ledger import Ledger
from libra_node.listener import disable_nagle
from libra_node.logs import get_logger, phi_hash
from libra_node.pacs.base import (
    PacsAccessDenied,
    PacsClient,
    PacsError,
    PacsMoveDestinationUnknown,
    PacsNotFound,
    PacsRejected,
    PacsUnavailable,
)
from libra_node.pacs.encoding import as_part10
from libra_node.pacs.query import (
    IMAGE_KEYS,
    SEQUENCE_KEYS,
    SERIES_KEYS,
    STUDY_KEYS,
    image_facts,
    matching_modalities,
    study_facts,
)
from libra_node.selection import RADIOGRAPH_IMAGE_CLASSES, ImageFacts, StudyFacts
from libra_node.spool import Spool

log = get_logger(__name__)

FIND_MODEL = StudyRootQueryRetrieveInformationModelFind
GET_MODEL = StudyRootQueryRetrieveInformationModelGet
MOVE_MODEL = StudyRootQueryRetrieveInformationModelMove

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
# Offered one per context for C-GET, so the PACS can send a prior as it is
# stored instead of transcoding (which it may not be able to do).
COMPRESSED = [
    JPEG2000Lossless,
    JPEG2000,
    JPEGLosslessSV1,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
]

PENDING = (0xFF00, 0xFF01)
# How often an image-level C-FIND that came back short is asked before giving up.
IMAGE_FIND_ATTEMPTS = 3
# A-ABORT source 0: the peer's application chose to abort (not the network).
ABORT_BY_PEER_APPLICATION = 0
# A-ASSOCIATE-RJ (PS3.8 7.1.1.9): result 2 transient; source 1 service-user,
# whose reasons 3 and 7 are the calling and the called AE title.
REJECTED_TRANSIENT = 2
SOURCE_SERVICE_USER = 1
CALLING_AE_NOT_RECOGNISED = 3
CALLED_AE_NOT_RECOGNISED = 7

_UID_IN_TEXT = re.compile(r"\d+(?:\.\d+){3,}")


def status_meaning(code: int, statuses: StatusDictType) -> str:
    category, text = statuses.get(code, GENERAL_STATUS.get(code, ("Unknown", "")))
    return f"{category}: {text}" if text else category


def _is_success_or_warning(code: int) -> bool:
    return code == 0x0000 or code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF


def _is_transient(code: int) -> bool:
    """Out of resources (0xA7xx) or a resource limitation: worth trying again later."""
    return 0xA700 <= code <= 0xA7FF or code == 0x0213


@dataclass
class AssociationWatch:
    """EVT_ACSE_RECV handler: what the PACS said at the association level."""

    accepted: bool = False
    rejection: A_ASSOCIATE | None = None
    aborts: list[A_ABORT | A_P_ABORT] = field(default_factory=list)

    def on_acse(self, event: Event) -> None:
        primitive = event.primitive  # type: ignore[attr-defined]
        if isinstance(primitive, A_ASSOCIATE) and primitive.result is not None:
            if primitive.result == 0:
                self.accepted = True
            else:
                self.rejection = primitive
        elif isinstance(primitive, (A_ABORT, A_P_ABORT)):
            self.aborts.append(primitive)

    @property
    def aborted_by_peer_application(self) -> bool:
        return any(
            isinstance(p, A_ABORT) and p.abort_source == ABORT_BY_PEER_APPLICATION
            for p in self.aborts
        )


class ReactorGate:
    """A stand-in for pynetdicom's reactor checkpoint that can tell when the reactor is stopped.

    pynetdicom's association reactor polls the DIMSE queue between operations,
    and ``send_c_find`` and friends pause it first. But their pause only
    checks a flag the reactor sets just *before* it waits, so an operation
    can start while the reactor is on its way out of the wait; the reactor
    then takes the operation's response off the queue and drops it
    ("Received unexpected C-FIND service message"). Under load that happens:
    a pending answer goes missing, or the final one, and the operation times
    out. This gate reports the reactor as stopped only while it is truly
    blocked, and ``pause`` is called before every operation.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._open = True
        self._reactor_blocked = False

    # The threading.Event interface pynetdicom uses.
    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        with self._condition:
            self._open = True
            self._condition.notify_all()

    def clear(self) -> None:
        with self._condition:
            self._open = False

    def wait(self, timeout: float | None = None) -> bool:
        with self._condition:
            while not self._open:
                self._reactor_blocked = True
                self._condition.notify_all()
                if not self._condition.wait(timeout) and timeout is not None:
                    break
            self._reactor_blocked = False
            return self._open

    def pause(self, timeout: float, reactor_alive: Callable[[], bool]) -> bool:
        """Close the gate and wait until the reactor is blocked at it (False: it never came)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            self._open = False
            while not self._reactor_blocked:
                left = deadline - time.monotonic()
                if left <= 0 or not reactor_alive():
                    return False
                self._condition.wait(min(left, 0.05))
            return True


def gate_reactor(assoc: Association, timeout: float) -> Callable[[], bool]:
    """Put a ReactorGate on an established association.

    Call what it returns before each operation on the association.
    """
    gate = ReactorGate()
    assoc._reactor_checkpoint = gate  # type: ignore[assignment]
    return lambda: gate.pause(timeout, assoc.is_alive)


@dataclass
class _Session:
    assoc: Association
    watch: AssociationWatch
    pause_reactor: Callable[[], bool]


class DimsePacs(PacsClient):
    """A PACS reached over DIMSE."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        called_ae_title: str,
        calling_ae_title: str,
        timeout: float = 30.0,
        retrieve: str = "get",
        move_destination: str = "",
        move_destination_address: tuple[str, int] | None = None,
        ledger: Ledger | None = None,
        spool: Spool | None = None,
        owns_ledger: bool = False,
    ) -> None:
        if retrieve not in ("get", "move"):
            raise ValueError("retrieve must be 'get' or 'move'")
        if retrieve == "move" and (not move_destination or ledger is None or spool is None):
            raise ValueError("C-MOVE needs the listener's AE title, the ledger and the spool")
        self.host = host
        self.port = port
        self.called_ae_title = called_ae_title
        self.calling_ae_title = calling_ae_title
        self.timeout = timeout
        self.retrieve = retrieve
        self.move_destination = move_destination
        self.move_destination_address = move_destination_address
        self.ledger = ledger
        self.spool = spool
        self.owns_ledger = owns_ledger
        self.peer = (
            f"PACS {called_ae_title} at {host}:{port} (DIMSE, calling AE {calling_ae_title})"
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        ledger: Ledger | None = None,
        spool: Spool | None = None,
        *,
        owns_ledger: bool = False,
    ) -> "DimsePacs":
        pacs = settings.pacs
        return cls(
            host=pacs.host,
            port=pacs.port,
            called_ae_title=pacs.ae_title,
            calling_ae_title=settings.pacs_calling_ae_title,
            timeout=pacs.timeout_seconds,
            retrieve=pacs.retrieve,
            move_destination=settings.listener.ae_title,
            move_destination_address=(settings.listener.host, settings.listener.port),
            ledger=ledger,
            spool=spool,
            owns_ledger=owns_ledger,
        )

    def close(self) -> None:
        if self.owns_ledger and self.ledger is not None:
            self.ledger.close()

    # --- the interface -------------------------------------------------------------

    def echo(self) -> None:
        operation = "C-ECHO"
        with self._associate(operation, [build_context(Verification)]) as session:
            session.pause_reactor()
            status = session.assoc.send_c_echo()
            code = self._status_code(operation, status, session)
            if code != 0x0000:
                raise self._failure(operation, code, GENERAL_STATUS, status)

    def find_studies(
        self, patient_id: str, issuer: str = "", modalities: Sequence[str] = ()
    ) -> list[StudyFacts]:
        query = _query("STUDY", STUDY_KEYS)
        query.PatientID = patient_id
        query.IssuerOfPatientID = issuer
        query.ModalitiesInStudy = matching_modalities(modalities)
        if not (patient_id + issuer).isascii():
            query.SpecificCharacterSet = "ISO_IR 192"
        answers = self._find("C-FIND (study level)", query)
        return [study_facts(answer, patient_id) for answer in answers]

    def find_images(self, study_uid: str) -> list[ImageFacts]:
        series_query = _query("SERIES", SERIES_KEYS)
        series_query.StudyInstanceUID = study_uid
        images: list[ImageFacts] = []
        # One association for the series query and every image query after it.
        with self._associate("C-FIND", [build_context(FIND_MODEL)]) as session:
            for series in self._find("C-FIND (series level)", series_query, session):
                images.extend(
                    image_facts(image, series, study_uid)
                    for image in self._series_images(study_uid, series, session)
                )
        return images

    def _series_images(self, study_uid: str, series: Dataset, session: _Session) -> list[Dataset]:
        """The image-level answers for one series, asked again when some are missing.

        An answer can arrive short: a pending response lost on the way (as
        pynetdicom's reactor once dropped them, see ReactorGate) or a PACS
        that lists less than it holds. Taken at face value, a prior's frontal
        image would be passed over, so the answer is checked against the
        series' own count (or against "a series is never empty" when the
        PACS gives none).
        """
        operation = "C-FIND (image level)"
        expected = _instances_in_series(series)
        query = _query("IMAGE", IMAGE_KEYS)
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = series.get("SeriesInstanceUID", "")
        for attempt in range(1, IMAGE_FIND_ATTEMPTS + 1):
            answers = self._find(operation, query, session)
            if len(answers) >= expected:
                return answers
            log.warning("pacs.find_incomplete", transport="dimse", answers=len(answers),
                        expected=expected, attempt=attempt)
            time.sleep(0.1 * attempt)
        raise PacsUnavailable(
            self.peer, operation,
            f"the PACS listed {len(answers)} of the {expected} image(s) a series holds, "
            f"{IMAGE_FIND_ATTEMPTS} times",
        )

    def fetch_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        if self.retrieve == "move":
            return self._fetch_by_move(study_uid, series_uid, sop_uid)
        return self._fetch_by_get(study_uid, series_uid, sop_uid)

    def store(self, datasets: Sequence[Dataset]) -> None:
        operation = "C-STORE"
        prepared = [as_part10(ds) for ds in datasets]
        with self._associate(operation, _storage_contexts(prepared)) as session:
            for ds in prepared:
                session.pause_reactor()
                status = session.assoc.send_c_store(ds)
                code = self._status_code(operation, status, session)
                if not _is_success_or_warning(code):
                    raise self._failure(operation, code, STORAGE_SERVICE_CLASS_STATUS, status)
        log.info("pacs.stored", transport="dimse", count=len(prepared))

    # --- retrieval -------------------------------------------------------------------------

    def _fetch_by_get(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        operation = "C-GET"
        received: list[Dataset] = []

        def on_store(event: Event) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            received.append(ds)
            return 0x0000

        contexts = [build_context(GET_MODEL), *_retrieve_contexts()]
        roles = [
            build_role(sop_class, scp_role=True) for sop_class in sorted(RADIOGRAPH_IMAGE_CLASSES)
        ]
        query = _instance_query(study_uid, series_uid, sop_uid)
        with self._associate(operation, contexts, roles, [(evt.EVT_C_STORE, on_store)]) as session:
            session.pause_reactor()
            code = self._retrieve(operation, session.assoc.send_c_get(query, GET_MODEL), session)
        for ds in received:
            if ds.get("SOPInstanceUID") == sop_uid:
                return ds
        raise self._nothing_retrieved(operation, code, QR_GET_SERVICE_CLASS_STATUS, query)

    def _fetch_by_move(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        operation = f"C-MOVE to {self.move_destination}"
        assert self.ledger is not None and self.spool is not None  # checked in __init__
        query = _instance_query(study_uid, series_uid, sop_uid)
        # Announce the study before asking, so the listener keeps it as a prior.
        self.ledger.expect_retrieval(study_uid, seconds=self.timeout * 4)
        try:
            with self._associate(operation, [build_context(MOVE_MODEL)]) as session:
                session.pause_reactor()
                responses = session.assoc.send_c_move(query, self.move_destination, MOVE_MODEL)
                code = self._retrieve(operation, responses, session)
        finally:
            self.ledger.end_retrieval(study_uid)
        # The listener recorded the instance before acknowledging it, and the
        # PACS answers the C-MOVE only after that acknowledgement.
        instance = self.ledger.get_instance(sop_uid)
        arrived = instance is not None and self.spool.path(instance.file_path).exists()
        if not (arrived and _is_success_or_warning(code)):
            raise self._nothing_retrieved(operation, code, QR_MOVE_SERVICE_CLASS_STATUS, query)
        assert instance is not None
        log.info("pacs.moved", study=phi_hash(study_uid))
        return dcmread(self.spool.path(instance.file_path))

    def _retrieve(
        self,
        operation: str,
        responses: Iterator[tuple[Dataset, Dataset | None]],
        session: _Session,
    ) -> int:
        """Follow C-GET/C-MOVE responses to the final status and return it."""
        code = 0x0000
        for status, _identifier in responses:
            code = self._status_code(operation, status, session)
            if code not in PENDING:
                break
        return code

    def _nothing_retrieved(
        self, operation: str, code: int, statuses: StatusDictType, query: Dataset
    ) -> PacsError:
        """Why the requested instance did not arrive, as precisely as the PACS lets us tell."""
        detail = f"DICOM status 0x{code:04X} ({status_meaning(code, statuses)})"
        if code == 0xA801 or _is_transient(code):
            return self._failure(operation, code, statuses)
        # Many PACSes (Orthanc among them) answer a generic 0xC000 both for a
        # missing instance and for a destination they cannot send to: ask.
        if not self._find("C-FIND (image level)", query):
            return PacsNotFound(
                self.peer, operation, f"{detail}; the PACS has no such instance", dicom_status=code
            )
        if self.retrieve == "move":
            return PacsMoveDestinationUnknown(
                self.peer, operation, f"{detail}; {self._register_hint()}", dicom_status=code
            )
        return PacsRejected(
            self.peer,
            operation,
            f"{detail}; the PACS holds the instance but did not send it "
            "(the node accepts CR, DX and secondary capture images over C-GET)",
            dicom_status=code,
        )

    def _register_hint(self) -> str:
        host, port = self.move_destination_address or ("<node address>", "<listener port>")
        return (
            f"the PACS does not know or cannot reach the move destination: register the node's "
            f"AE title {self.move_destination} with host {host} and port {port} in the PACS "
            f"(for Orthanc: DicomModalities)"
        )

    # --- queries ---------------------------------------------------------------------------

    def _find(
        self, operation: str, query: Dataset, session: _Session | None = None
    ) -> list[Dataset]:
        """All answers to one C-FIND, on the given association or a new one."""
        if session is None:
            with self._associate(operation, [build_context(FIND_MODEL)]) as own_session:
                return self._find(operation, query, own_session)
        answers: list[Dataset] = []
        session.pause_reactor()
        for status, identifier in session.assoc.send_c_find(query, FIND_MODEL):
            code = self._status_code(operation, status, session)
            if code in PENDING:
                if identifier is not None:
                    answers.append(identifier)
                continue
            if not _is_success_or_warning(code):
                raise self._failure(operation, code, QR_FIND_SERVICE_CLASS_STATUS, status)
            break
        return answers

    # --- associations and statuses ---------------------------------------------------

    @contextmanager
    def _associate(
        self,
        operation: str,
        contexts: list[PresentationContext],
        roles: Sequence[SCP_SCU_RoleSelectionNegotiation] = (),
        handlers: Sequence[EventHandlerType] = (),
    ) -> Iterator[_Session]:
        ae = AE(ae_title=self.calling_ae_title)
        ae.connection_timeout = self.timeout
        ae.acse_timeout = self.timeout
        ae.dimse_timeout = self.timeout
        ae.network_timeout = self.timeout
        watch = AssociationWatch()
        started = time.monotonic()
        assoc = ae.associate(
            self.host,
            self.port,
            contexts=contexts,
            ae_title=self.called_ae_title,
            ext_neg=list(roles) or None,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, disable_nagle),
                (evt.EVT_ACSE_RECV, watch.on_acse),
                *handlers,
            ],
        )
        if not assoc.is_established:
            raise self._association_failure(operation, watch, time.monotonic() - started)
        try:
            yield _Session(assoc, watch, gate_reactor(assoc, self.timeout))
        finally:
            if assoc.is_established:
                assoc.release()

    def _association_failure(
        self, operation: str, watch: AssociationWatch, elapsed: float
    ) -> PacsError:
        rejection = watch.rejection
        if rejection is not None:
            reason = f"{rejection.result_str}, {rejection.source_str}: {rejection.reason_str}"
            if rejection.result == REJECTED_TRANSIENT:
                return PacsUnavailable(
                    self.peer, operation, f"association rejected for now ({reason})"
                )
            if rejection.result_source == SOURCE_SERVICE_USER:
                if rejection.diagnostic == CALLING_AE_NOT_RECOGNISED:
                    return PacsAccessDenied(
                        self.peer,
                        operation,
                        f"association rejected ({reason}): register the node's AE title "
                        f"{self.calling_ae_title} in the PACS",
                    )
                if rejection.diagnostic == CALLED_AE_NOT_RECOGNISED:
                    return PacsRejected(
                        self.peer,
                        operation,
                        f"association rejected ({reason}): the PACS does not answer to AE title "
                        f"{self.called_ae_title}; check pacs.ae_title",
                    )
            return PacsRejected(self.peer, operation, f"association rejected ({reason})")
        if watch.accepted:
            return PacsRejected(
                self.peer,
                operation,
                "the PACS accepted the association but none of the proposed SOP classes, "
                "so it does not offer this service",
            )
        if elapsed < self.timeout * 0.9:
            return PacsUnavailable(
                self.peer, operation, "cannot connect (connection refused or closed)"
            )
        return PacsUnavailable(self.peer, operation, f"no answer within {self.timeout:g} s")

    def _status_code(self, operation: str, status: Dataset | None, session: _Session) -> int:
        """The response's status; a response without one means the association ended."""
        if status is not None and "Status" in status:
            return int(status.Status)
        # Let the association thread finish so that the abort (if any) is seen.
        session.assoc.join(timeout=min(self.timeout, 5.0))
        if session.watch.aborted_by_peer_application:
            raise PacsAccessDenied(
                self.peer,
                operation,
                "the PACS aborted the association instead of answering, which is how PACSes "
                f"such as Orthanc refuse an AE title they do not know: register AE title "
                f"{self.calling_ae_title} in the PACS (for Orthanc: DicomModalities)",
            )
        raise PacsUnavailable(
            self.peer, operation, f"no answer within {self.timeout:g} s, or the connection was lost"
        )

    def _failure(
        self, operation: str, code: int, statuses: StatusDictType, status: Dataset | None = None
    ) -> PacsError:
        detail = f"DICOM status 0x{code:04X} ({status_meaning(code, statuses)})"
        comment = str(status.get("ErrorComment", "")) if status is not None else ""
        if comment:
            detail += f": {_UID_IN_TEXT.sub('<uid>', comment)}"
        if _is_transient(code):
            return PacsUnavailable(self.peer, operation, detail, dicom_status=code)
        if code == 0xA801:
            return PacsMoveDestinationUnknown(
                self.peer, operation, f"{detail}; {self._register_hint()}", dicom_status=code
            )
        return PacsRejected(self.peer, operation, detail, dicom_status=code)


# --- datasets and contexts ------------------------------------------------------------------


def _instances_in_series(series: Dataset) -> int:
    """NumberOfSeriesRelatedInstances from a series answer; 1 when absent or unreadable."""
    try:
        return max(1, int(series.get("NumberOfSeriesRelatedInstances") or 1))
    except (TypeError, ValueError):
        return 1


def _query(level: str, keys: Sequence[str]) -> Dataset:
    """A C-FIND identifier asking for ``keys`` (empty values: return, don't match)."""
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword in keys:
        setattr(query, keyword, [] if keyword in SEQUENCE_KEYS else "")
    return query


def _instance_query(study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid
    query.SOPInstanceUID = sop_uid
    return query


def _retrieve_contexts() -> list[PresentationContext]:
    contexts = []
    for sop_class in sorted(RADIOGRAPH_IMAGE_CLASSES):
        contexts.append(build_context(sop_class, UNCOMPRESSED))
        contexts.extend(build_context(sop_class, syntax) for syntax in COMPRESSED)
    return contexts


def _storage_contexts(datasets: Sequence[Dataset]) -> list[PresentationContext]:
    syntaxes: dict[str, list[UID]] = {}
    for ds in datasets:
        syntax = UID(ds.file_meta.TransferSyntaxUID)
        offered = syntaxes.setdefault(str(ds.SOPClassUID), [])
        for candidate in [syntax, *(UNCOMPRESSED if not syntax.is_compressed else [])]:
            if candidate not in offered:
                offered.append(candidate)
    return [build_context(sop_class, offered) for sop_class, offered in syntaxes.items()]
