"""What the Orthanc plugin does, apart from Orthanc itself (so tests can drive it over HTTP).

Orthanc says "this study is stable"; the node's pipeline wants ledger rows
and a COMPLETE study. In between:

- ``ChangeFollower`` reads Orthanc's change log from a durable cursor. A
  study is *pending* from its first new instance until it has been fed while
  stable; the cursor never passes a pending study's first change, so after
  any restart the replay from the cursor finds every study not yet fed
  (including one that was still unstable when Orthanc stopped: Orthanc keeps
  stability in memory and never announces that study again).
- ``StudyFeeder`` reads a stable study's radiograph instances through
  Orthanc's own REST API, records the ones the ledger does not know (with
  an empty file path: the io workers fetch them from Orthanc), completes the
  study with the node's own rules and submits it. A study that becomes stable
  again without a new image (the node's own SR stored into it, say) changes
  nothing; one with a new image gets a new version, hence a new SR.
- ``Submitter`` hands a COMPLETE study to the io queue; when the broker cannot
  take it, the study goes back to COMPLETE, where the reconciler finds it.
- ``FeederLoop`` is the plugin's one background thread: it follows the change
  log when woken (STABLE_STUDY) or every poll period, and runs the node's
  reconciler (queue COMPLETE studies, re-send stuck ones, pump the outbox),
  so an Orthanc site needs no `libra-node serve`. Nothing in it ever raises
  into Orthanc.

``assemble`` wires these together from the node's settings and sends tasks
through the node's own Celery app (which never imports torch: that happens
only in gpu workers).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.dataset import Dataset

from libra_node.completion import finish_study
from libra_node.config import Settings
from libra_node.ledger import InstanceRecord, Ledger, StudyState
from libra_node.listener import ParsedInstance, instance_record
from libra_node.logs import get_logger, phi_hash
from libra_node.pacs.orthanc_rest import dataset_from_orthanc_tags
from libra_node.outbox import Outbox
from libra_node.pipeline import enqueue
from libra_node.reconciler import Reconciler
from libra_node.selection import RADIOGRAPH_IMAGE_CLASSES, RADIOGRAPH_MODALITIES, ImageFacts
from libra_node.spool import is_valid_uid
from workers.app import TaskSender, create_app

log = get_logger("libra_node.orthanc_plugin")

COMPLETION_RULE = "orthanc-stable"
SendTask = Callable[[str, int], None]


class ResourceGone(Exception):
    """The Orthanc resource was deleted in the meantime."""


class OrthancApi(Protocol):
    """What the plugin needs of Orthanc: its REST API (in process) and one durable value."""

    def get_json(self, path: str) -> Any:
        """GET a REST path; ResourceGone for an unknown resource."""

    def load_cursor(self) -> str | None:
        """The stored cursor as written, None when none was ever stored."""

    def save_cursor(self, value: str) -> None:
        """Store the cursor durably, next to the change log it refers to."""


# --- one study ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedResult:
    outcome: str  # "not a radiograph study", "unchanged", or the state completion chose
    added: int  # instances new to the ledger


class StudyFeeder:
    """A stable Orthanc study into the ledger, completed by the node's rules, then submitted."""

    def __init__(self, api: OrthancApi, ledger: Ledger, submit: SendTask) -> None:
        self.api = api
        self.ledger = ledger
        self.submit = submit

    def feed(self, study: dict[str, Any]) -> FeedResult:
        """``study`` is Orthanc's JSON for a stable study (``GET /studies/{id}``)."""
        study_uid = study.get("MainDicomTags", {}).get("StudyInstanceUID", "")
        images = list(self._radiograph_images(study["ID"], study_uid))
        if not images:
            return self._logged(study_uid, FeedResult("not a radiograph study", 0))
        known = {i.facts.sop_instance_uid for i in self.ledger.instances_of(study_uid)}
        added = 0
        for instance_id, ds, facts in images:
            if facts.sop_instance_uid not in known:
                self.ledger.record_instance(self._record(instance_id, ds, facts))
                added += 1
        row = self.ledger.get_study(study_uid)
        if row is None or row.state is not StudyState.RECEIVING:
            return self._logged(study_uid, FeedResult("unchanged", added))
        state = finish_study(self.ledger, row, COMPLETION_RULE)
        if state is StudyState.COMPLETE:
            self.submit(study_uid, row.version)
        outcome = state.value if state else "changed meanwhile"
        return self._logged(study_uid, FeedResult(outcome, added))

    def _radiograph_images(
        self, orthanc_id: str, study_uid: str
    ) -> Iterator[tuple[str, Dataset, ImageFacts]]:
        """CR and DX image instances only: SRs, PDFs, key objects and the like never count."""
        for series in self.api.get_json(f"/studies/{orthanc_id}/series"):
            modality = str(series.get("MainDicomTags", {}).get("Modality", "")).upper()
            if modality not in RADIOGRAPH_MODALITIES:
                continue
            tags_by_instance = self.api.get_json(f"/series/{series['ID']}/instances-tags")
            for instance_id, tags in tags_by_instance.items():
                ds = dataset_from_orthanc_tags(tags)
                facts = ImageFacts.from_dataset(ds)
                is_image = facts.sop_class_uid in RADIOGRAPH_IMAGE_CLASSES
                if is_image and _uids_usable(facts, study_uid):
                    yield instance_id, ds, facts

    def _record(self, instance_id: str, ds: Dataset, facts: ImageFacts) -> InstanceRecord:
        size = int(self.api.get_json(f"/instances/{instance_id}").get("FileSize", 0))
        metadata = self.api.get_json(f"/instances/{instance_id}/metadata?expand")
        # No file path: the image stays in Orthanc, where the io workers fetch it.
        return instance_record(
            ParsedInstance(ds, facts), str(metadata.get("TransferSyntax", "")), "", size
        )

    @staticmethod
    def _logged(study_uid: str, result: FeedResult) -> FeedResult:
        log.info("orthanc.study_fed", study=phi_hash(study_uid), outcome=result.outcome,
                 added=result.added)
        return result


def _uids_usable(facts: ImageFacts, study_uid: str) -> bool:
    return (
        facts.study_instance_uid == study_uid
        and is_valid_uid(facts.series_instance_uid)
        and is_valid_uid(facts.sop_instance_uid)
    )


# --- the change log -----------------------------------------------------------------------


class ChangeFollower:
    """Feeds every study that becomes stable, exactly from where the last run stopped.

    The cursor is a change sequence number: every change up to it is settled.
    It is stored through ``api.save_cursor`` (Orthanc's global properties in
    the plugin), so it lives and dies with the change log it counts in.
    """

    def __init__(
        self, api: OrthancApi, feeder: StudyFeeder, *, scan_on_first_start: bool = True,
        page_size: int = 200,
    ) -> None:
        self.api = api
        self.feeder = feeder
        self.scan_on_first_start = scan_on_first_start
        self.page_size = page_size
        self.position: int | None = None  # the last change read
        self.saved: int | None = None
        # Orthanc study ID -> sequence number of its first change not yet settled.
        self.pending: dict[str, int] = {}

    def follow(self) -> int:
        """Read new changes, feed the pending studies that are stable, store the cursor.

        Returns how many studies failed to feed (they stay pending and are
        tried again next time; the cursor waits for them).
        """
        if self.position is None:
            self._start()
        self._read_changes()
        failed = self._settle()
        self._save_cursor()
        return failed

    def _start(self) -> None:
        last = int(self.api.get_json("/changes?last")["Last"])
        cursor = _parse_cursor(self.api.load_cursor())
        if cursor is not None and cursor <= last:
            self.position = self.saved = cursor
            log.info("orthanc.replay", changes=last - cursor)
            return
        if cursor is not None:
            log.warning("orthanc.cursor_ahead", note="Orthanc's change log was reset: scanning")
        if cursor is not None or self.scan_on_first_start:
            # Every study there now, as if each had just changed; the log covers later ones.
            scanned = {study_id: last for study_id in self._all_studies()}
            self.pending.update(scanned)
            log.info("orthanc.first_scan", studies=len(scanned))
        self.position = last

    def _all_studies(self) -> Iterator[str]:
        since = 0
        while page := self.api.get_json(f"/studies?since={since}&limit={self.page_size}"):
            yield from page
            since += len(page)

    def _read_changes(self) -> None:
        while True:
            page = self.api.get_json(f"/changes?since={self.position}&limit={self.page_size}")
            for change in page.get("Changes", []):
                self._note(change)
                self.position = int(change["Seq"])
            if page.get("Done", True) or not page.get("Changes"):
                return

    def _note(self, change: dict[str, Any]) -> None:
        kind = change.get("ChangeType")
        if kind == "StableStudy":
            study_id = change["ID"]
        elif kind == "NewInstance":
            try:
                study_id = self.api.get_json(f"/instances/{change['ID']}/study")["ID"]
            except ResourceGone:
                return
        else:
            return
        self.pending.setdefault(study_id, int(change["Seq"]))

    def _settle(self) -> int:
        """Feed each pending study that is stable now, oldest first; count the failures."""
        failed = 0
        for study_id, _ in sorted(self.pending.items(), key=lambda item: item[1]):
            try:
                study = self.api.get_json(f"/studies/{study_id}")
                if study.get("IsStable"):
                    self.feeder.feed(study)
                    del self.pending[study_id]
            except ResourceGone:
                del self.pending[study_id]
            except Exception as exc:  # one bad study must not hold up the others
                failed += 1
                log.error("orthanc.feed_failed", error=type(exc).__name__)
        return failed

    @property
    def cursor(self) -> int | None:
        if self.position is None:
            return None
        if self.pending:
            return min(self.pending.values()) - 1
        return self.position

    def _save_cursor(self) -> None:
        cursor = self.cursor
        if cursor is not None and cursor != self.saved:
            self.api.save_cursor(str(cursor))
            self.saved = cursor


def _parse_cursor(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit():
        log.warning("orthanc.cursor_unreadable", note="scanning Orthanc's studies instead")
        return None
    return int(value)


# --- handing studies to the pipeline -----------------------------------------------------------


class Submitter:
    """COMPLETE -> QUEUED -> a libra.prepare message; back to COMPLETE when the broker fails."""

    def __init__(self, ledger: Ledger, send_task: SendTask) -> None:
        self.ledger = ledger
        self.send_task = send_task

    def send_prepare(self, study_uid: str, version: int) -> None:
        """Send, or put the study back to COMPLETE (where the reconciler picks it up) and raise."""
        try:
            self.send_task(study_uid, version)
        except Exception:
            self.ledger.transition(
                study_uid, StudyState.COMPLETE, "broker unreachable; queued again when it answers",
                from_states=[StudyState.QUEUED], version=version,
            )
            raise

    def submit(self, study_uid: str, version: int) -> None:
        try:
            if enqueue(self.ledger, study_uid, version, self.send_prepare):
                log.info("orthanc.study_submitted", study=phi_hash(study_uid), version=version)
        except Exception as exc:  # the study is COMPLETE again: the reconciler retries
            log.warning("orthanc.submit_failed", study=phi_hash(study_uid), version=version,
                        error=type(exc).__name__)


# --- the background thread ------------------------------------------------------------------


class FeederLoop:
    """Follows the change log when woken or every ``poll_seconds``; reconciles every so often.

    ``wake`` is what Orthanc's callback calls: it only puts a note on a
    queue. Failures are logged (by kind, never with patient data) and retried
    after ``retry_seconds``; none leaves the thread.
    """

    def __init__(
        self,
        follower: ChangeFollower,
        reconcile: Callable[[], object],
        *,
        poll_seconds: float,
        retry_seconds: float = 5.0,
    ) -> None:
        self.follower = follower
        self.reconcile = reconcile
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self._wakeups: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_reconcile = 0.0

    def wake(self, orthanc_study_id: str = "") -> None:
        self._wakeups.put_nowait(orthanc_study_id)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="libra-orthanc", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wakeups.put_nowait(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> bool:
        """One round: follow, then reconcile when due. False when something failed."""
        healthy = True
        try:
            healthy = self.follower.follow() == 0
        except Exception as exc:  # nothing may escape into Orthanc's process
            log.error("orthanc.follow_failed", error=type(exc).__name__)
            healthy = False
        if time.monotonic() >= self._next_reconcile:
            self._next_reconcile = time.monotonic() + self.poll_seconds
            try:
                self.reconcile()
            except Exception as exc:  # broker or ledger down: the next round tries again
                log.error("orthanc.reconcile_failed", error=type(exc).__name__)
                healthy = False
        return healthy

    def _run(self) -> None:
        while not self._stop.is_set():
            healthy = self.run_once()
            self._wait(self.poll_seconds if healthy else self.retry_seconds)

    def _wait(self, seconds: float) -> None:
        try:
            self._wakeups.get(timeout=seconds)
        except queue.Empty:
            return
        while True:  # one round covers every note that came meanwhile
            try:
                self._wakeups.get_nowait()
            except queue.Empty:
                return


# --- wiring ------------------------------------------------------------------------------------


def assemble(
    api: OrthancApi, settings: Settings, *, scan_on_first_start: bool = True
) -> FeederLoop:
    """The plugin's loop for these settings: ledger, broker, change follower, reconciler."""
    # The ledger and outbox hold patient data: the node's user only.
    settings.node.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ledger = Ledger(settings.ledger_url)
    sender = TaskSender(create_app(settings))
    submitter = Submitter(ledger, sender.prepare)
    follower = ChangeFollower(
        api, StudyFeeder(api, ledger, submitter.submit), scan_on_first_start=scan_on_first_start
    )
    reconciler = Reconciler(
        ledger,
        Outbox.from_settings(settings, ledger),
        submitter.send_prepare,
        sender.pump_outbox,
        stuck_after=settings.broker.stuck_after_seconds,
        every=settings.broker.reconcile_every_seconds,
    )
    return FeederLoop(
        follower, reconciler.run_once, poll_seconds=settings.broker.reconcile_every_seconds
    )
