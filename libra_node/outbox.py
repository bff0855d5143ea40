"""The outbox: reports waiting to reach the PACS, on disk until they do.

``put`` writes each object (the SR, and the PDF when enabled) into
``<state_dir>/outbox`` as ``<SOP Instance UID>.dcm`` with a sidecar
``<SOP Instance UID>.json`` (study, version, attempts, next attempt,
deadline, last error), both written atomically and fsynced like the spool.
Nothing is held in memory, so a restart picks up where the last process
stopped.

``deliver_due`` stores every object whose time has come. A success removes
the item; when the last object of a study version is stored, the ledger
moves the study from REPORTED to DELIVERED. A failure is retried with
exponential backoff until the delivery deadline, after which the item is
kept as failed (with the reason) and the study is FAILED. Storing an object
twice is harmless: it has the same SOP Instance UID, and PACSes accept the
same instance again.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from libra_node.config import Settings
from libra_node.ledger import Ledger, StudyState
from libra_node.logs import get_logger, phi_hash
from libra_node.pacs.base import PacsClient, PacsError
from libra_node.pacs.encoding import as_part10
from libra_node.spool import Spool, is_valid_uid

log = get_logger(__name__)

PENDING = "pending"
FAILED = "failed"
LOCK_FILE = ".lock"


@dataclass
class OutboxItem:
    """One object to deliver and how its delivery is going."""

    sop_uid: str
    study_uid: str
    version: int
    sop_class_uid: str
    # The SR of the same delivery: what the ledger records once all are stored
    # (a later version of the study names it as its predecessor).
    report_sop_uid: str
    created_at: float
    deadline_at: float
    report_series_uid: str = ""
    report_sop_class_uid: str = ""
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str = ""
    state: str = PENDING

    @classmethod
    def from_json(cls, text: str) -> "OutboxItem":
        return cls(**json.loads(text))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


@dataclass
class DeliveryReport:
    """What one ``deliver_due`` round did."""

    delivered: list[OutboxItem] = field(default_factory=list)
    retrying: list[OutboxItem] = field(default_factory=list)
    failed: list[OutboxItem] = field(default_factory=list)
    # True when another process was delivering from the same outbox: nothing was tried.
    busy: bool = False


class Outbox:
    def __init__(
        self,
        directory: Path,
        ledger: Ledger,
        deadline_seconds: float,
        backoff_base_seconds: float = 5.0,
        backoff_cap_seconds: float = 600.0,
    ) -> None:
        self.files = Spool(directory)
        self.files.discard_incomplete()
        self.ledger = ledger
        self.deadline_seconds = deadline_seconds
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_cap_seconds = backoff_cap_seconds

    @classmethod
    def from_settings(cls, settings: Settings, ledger: Ledger, **backoff: float) -> "Outbox":
        return cls(
            settings.node.state_dir / "outbox",
            ledger,
            settings.pacs.delivery_deadline_seconds,
            **backoff,
        )

    # --- adding and listing ----------------------------------------------------------

    def put(
        self, study_uid: str, version: int, datasets: Sequence[Dataset], now: float | None = None
    ) -> list[OutboxItem]:
        """Queue a study version's objects; the first SR among them is the report."""
        if not datasets:
            raise ValueError("nothing to put in the outbox")
        now = time.time() if now is None else now
        report = next((ds for ds in datasets if ds.get("Modality") == "SR"), datasets[0])
        items = []
        for ds in datasets:
            sop_uid = str(ds.get("SOPInstanceUID", ""))
            if not is_valid_uid(sop_uid):
                raise ValueError("an outbox object needs a valid SOP Instance UID")
            item = OutboxItem(
                sop_uid=sop_uid,
                study_uid=study_uid,
                version=version,
                sop_class_uid=str(ds.get("SOPClassUID", "")),
                report_sop_uid=str(report.SOPInstanceUID),
                report_series_uid=str(report.get("SeriesInstanceUID", "")),
                report_sop_class_uid=str(report.get("SOPClassUID", "")),
                created_at=now,
                deadline_at=now + self.deadline_seconds,
                next_attempt_at=now,
            )
            buffer = io.BytesIO()
            dcmwrite(buffer, as_part10(ds), enforce_file_format=True)
            # Object first, record second: a record always has its object.
            self.files.store(f"{sop_uid}.dcm", buffer.getvalue())
            self._save(item)
            items.append(item)
        log.info("outbox.put", study=phi_hash(study_uid), version=version, objects=len(items))
        return items

    def pending(self) -> list[OutboxItem]:
        return [item for item in self._items() if item.state == PENDING]

    def failed(self) -> list[OutboxItem]:
        return [item for item in self._items() if item.state == FAILED]

    def next_due_at(self) -> float | None:
        """When ``deliver_due`` next has something to do; None when nothing is pending."""
        return min((item.next_attempt_at for item in self.pending()), default=None)

    def dataset(self, item: OutboxItem) -> Dataset:
        return dcmread(self.files.path(f"{item.sop_uid}.dcm"))

    def _items(self) -> list[OutboxItem]:
        items = []
        for path in sorted(self.files.root.glob("*.json")):
            try:
                items.append(OutboxItem.from_json(path.read_text()))
            except FileNotFoundError:
                continue  # delivered by another process meanwhile
        return sorted(items, key=lambda item: (item.created_at, item.sop_uid))

    def _save(self, item: OutboxItem) -> None:
        self.files.store(f"{item.sop_uid}.json", item.to_json().encode())

    def _remove(self, item: OutboxItem) -> None:
        # Record first: an object without a record is never delivered twice.
        self.files.remove(f"{item.sop_uid}.json")
        self.files.remove(f"{item.sop_uid}.dcm")

    # --- delivering --------------------------------------------------------------------

    def deliver_due(self, pacs: PacsClient, now: float | None = None) -> DeliveryReport:
        """Try every pending object whose next attempt is due; one deliverer at a time."""
        now = time.time() if now is None else now
        report = DeliveryReport()
        with self._exclusive() as acquired:
            if not acquired:
                report.busy = True
                return report
            for item in self.pending():
                if item.next_attempt_at <= now:
                    self._attempt(pacs, item, now, report)
        return report

    def _attempt(
        self, pacs: PacsClient, item: OutboxItem, now: float, report: DeliveryReport
    ) -> None:
        try:
            ds = self.dataset(item)
        except (OSError, InvalidDicomError) as exc:
            self._give_up(item, f"outbox object unreadable ({type(exc).__name__})", now, report)
            return
        try:
            pacs.store([ds])
        except PacsError as exc:
            self._retry_or_give_up(item, str(exc), now, report)
            return
        self._remove(item)
        report.delivered.append(item)
        log.info("outbox.delivered", study=phi_hash(item.study_uid), attempts=item.attempts + 1)
        self._record_delivery(item, pacs, now)

    def _record_delivery(self, item: OutboxItem, pacs: PacsClient, now: float) -> None:
        """DELIVERED once every object of the study version is stored."""
        if any((i.study_uid, i.version) == (item.study_uid, item.version) for i in self.pending()):
            return
        moved = self.ledger.transition(
            item.study_uid,
            StudyState.DELIVERED,
            f"report stored in {pacs.peer}",
            from_states=[StudyState.REPORTED],
            version=item.version,
            now=now,
            delivered_at=now,
            sr_sop_uid=item.report_sop_uid,
            sr_series_uid=item.report_series_uid,
            sr_sop_class_uid=item.report_sop_class_uid,
            sr_version=item.version,
        )
        if not moved:
            # A newer version of the study exists, or someone gave up on it:
            # the stored object is harmless, the ledger row is theirs.
            log.warning("outbox.delivered_but_study_moved_on", study=phi_hash(item.study_uid))

    def _retry_or_give_up(
        self, item: OutboxItem, error: str, now: float, report: DeliveryReport
    ) -> None:
        if now >= item.deadline_at:
            self._give_up(item, error, now, report)
            return
        item.attempts += 1
        item.last_error = error
        delay = min(self.backoff_cap_seconds, self.backoff_base_seconds * 2 ** (item.attempts - 1))
        item.next_attempt_at = min(now + delay, item.deadline_at)
        self._save(item)
        report.retrying.append(item)
        log.warning(
            "outbox.retrying",
            study=phi_hash(item.study_uid),
            attempts=item.attempts,
            in_seconds=round(item.next_attempt_at - now, 3),
            error=error,
        )

    def _give_up(self, item: OutboxItem, error: str, now: float, report: DeliveryReport) -> None:
        item.attempts += 1
        item.last_error = error
        item.state = FAILED
        self._save(item)
        report.failed.append(item)
        self.ledger.transition(
            item.study_uid,
            StudyState.FAILED,
            f"report not delivered: {error}",
            from_states=[StudyState.REPORTED],
            version=item.version,
            now=now,
        )
        log.error(
            "outbox.failed", study=phi_hash(item.study_uid), attempts=item.attempts, error=error
        )

    @contextmanager
    def _exclusive(self) -> Iterator[bool]:
        """A lock shared by every process using this outbox; never waits."""
        fd = os.open(self.files.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the lock
