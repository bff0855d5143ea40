"""The reconciler: no study is ever left behind, whatever the broker forgot.

Messages can be lost: an embedded broker's worker is killed, Redis restarts
without persistence, a worker dies mid-task. The ledger cannot forget, so at
start-up and then periodically the reconciler walks it:

- COMPLETE studies (completed, never queued) are queued;
- QUEUED studies without progress for ``stuck_after`` are sent again;
- REPORTED studies without progress get their outbox pumped, or, when the
  outbox has nothing for them (a crash between the two), go round again;
- a study sent round ``MAX_ATTEMPTS`` times is FAILED rather than retried forever.

Sending a study twice is harmless: every stage checks the ledger first, and
the SR's UIDs are the same each time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from libra_node import pipeline
from libra_node.ledger import Ledger, Study, StudyState
from libra_node.logs import get_logger, phi_hash
from libra_node.outbox import Outbox
from libra_node.periodic import Periodic

log = get_logger(__name__)

MAX_ATTEMPTS = 5


@dataclass
class ReconcileReport:
    queued: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    outbox_pumped: bool = False


class Reconciler:
    def __init__(
        self,
        ledger: Ledger,
        outbox: Outbox,
        send_prepare: Callable[[str, int], None],
        pump_outbox: Callable[[], None],
        stuck_after: float,
        every: float,
    ) -> None:
        self.ledger = ledger
        self.outbox = outbox
        self.send_prepare = send_prepare
        self.pump_outbox = pump_outbox
        self.stuck_after = stuck_after
        self._loop = Periodic("reconciler", self.run_once, every, first_at_once=True)

    def run_once(self, now: float | None = None) -> ReconcileReport:
        now = time.time() if now is None else now
        report = ReconcileReport()
        for study in self.ledger.studies_in(StudyState.COMPLETE):
            if pipeline.enqueue(self.ledger, study.study_uid, study.version, self.send_prepare):
                report.queued.append(study.study_uid)
        stuck = self.ledger.stuck_studies(
            [StudyState.QUEUED, StudyState.REPORTED], older_than=now - self.stuck_after
        )
        for study in stuck:
            self._unstick(study, report)
        if self.outbox.pending():
            self.pump_outbox()
            report.outbox_pumped = True
        if report.queued or report.resent or report.failed:
            log.info(
                "reconciler.done",
                queued=len(report.queued),
                resent=len(report.resent),
                failed=len(report.failed),
            )
        return report

    def _unstick(self, study: Study, report: ReconcileReport) -> None:
        uid, version = study.study_uid, study.version
        if study.attempts >= MAX_ATTEMPTS:
            pipeline.fail(self.ledger, uid, version,
                          f"no progress after {study.attempts} attempts: {study.state_reason}")
            report.failed.append(uid)
            return
        if study.state is StudyState.REPORTED:
            if any(item.study_uid == uid and item.version == version for item in self.outbox.pending()):
                return  # the outbox is retrying it; the pump below takes care
            # Reported but nothing to deliver: the writer died in between. Again from the top.
            if not self.ledger.transition(
                uid, StudyState.QUEUED, "report went missing before delivery; queued again",
                from_states=[StudyState.REPORTED], version=version,
            ):
                return
        self.ledger.touch(
            uid, version, StudyState.QUEUED,
            f"queued again after {self.stuck_after:.0f} s without progress", attempt=True,
        )
        self.send_prepare(uid, version)
        report.resent.append(uid)
        log.warning("reconciler.resent", study=phi_hash(uid), version=version,
                    attempt=study.attempts + 1)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
