"""When is a study complete?

DICOM has no "end of study" message, so the node decides from what it sees:
a study is complete once every association that sent it has ended and no
instance has arrived for the quiet period, or, whatever the associations do,
once no instance has arrived for the stable age (a PACS that keeps one
association open for hours, a study spread over several associations).

A complete study is classified at once: a chest radiograph with a frontal
image becomes COMPLETE (and is handed on), anything else SKIPPED with the
reason. An instance arriving later reopens the study (see the ledger).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from libra_node.ledger import Ledger, Study, StudyState
from libra_node.logs import get_logger, phi_hash
from libra_node.metrics import METRICS
from libra_node.periodic import Periodic
from libra_node.selection import choose_frontal, classify_study

log = get_logger(__name__)

OnComplete = Callable[[str, int], None]


def finish_study(ledger: Ledger, study: Study, rule: str, now: float | None = None) -> StudyState | None:
    """Classify a study that is complete by ``rule`` and record the outcome.

    A chest radiograph with a frontal image becomes COMPLETE (with the image
    and the rule that chose it), anything else SKIPPED with the reason.
    None: the study changed since it was read (a new instance), nothing done.
    """
    now = time.time() if now is None else now
    images = [instance.facts for instance in ledger.instances_of(study.study_uid)]
    classification = classify_study(images, study.study_description)
    frontal = choose_frontal(images) if classification.is_chest_radiograph else None
    if not classification.is_chest_radiograph:
        state, reason, extra = StudyState.SKIPPED, classification.reason, {}
    elif frontal is None:
        state, reason, extra = StudyState.SKIPPED, "chest radiograph without a frontal view", {}
    else:
        state, reason = StudyState.COMPLETE, classification.reason
        extra = {"frontal_sop_uid": frontal.image.sop_instance_uid, "frontal_rule": frontal.rule}
    if not ledger.complete(study.study_uid, study.last_instance_at, state, reason, rule, now=now, **extra):
        return None
    METRICS.studies_completed.labels(outcome=state.value).inc()
    METRICS.stage_seconds.labels(stage="receive_to_complete").observe(
        max(0.0, now - study.first_instance_at)
    )
    log.info(
        "study.complete",
        study=phi_hash(study.study_uid),
        version=study.version,
        rule=rule,
        state=state.value,
        reason=reason,
    )
    return state


class CompletionTracker:
    """Which studies have an association still open, in memory.

    After a restart nothing is open, so every RECEIVING study falls back to
    the quiet period, which is right: its associations died with the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._studies_by_association: dict[int, set[str]] = defaultdict(set)

    def instance_received(self, association: int, study_uid: str) -> None:
        with self._lock:
            self._studies_by_association[association].add(study_uid)

    def association_ended(self, association: int) -> None:
        with self._lock:
            self._studies_by_association.pop(association, None)

    def studies_with_open_associations(self) -> set[str]:
        with self._lock:
            return set().union(*self._studies_by_association.values())


@dataclass(frozen=True)
class CompletionPolicy:
    quiet_seconds: float = 2.0
    stable_seconds: float = 30.0

    def rule_for(self, study: Study, open_studies: set[str], now: float) -> str | None:
        """'quiet' or 'stable' when the study is complete by that rule, else None."""
        idle = now - study.last_instance_at
        if idle >= self.stable_seconds:
            return "stable"
        if idle >= self.quiet_seconds and study.study_uid not in open_studies:
            return "quiet"
        return None


class CompletionMonitor:
    """Polls the ledger's RECEIVING studies and completes the ones that are due."""

    def __init__(
        self,
        ledger: Ledger,
        tracker: CompletionTracker,
        policy: CompletionPolicy,
        on_complete: OnComplete | None = None,
        poll_seconds: float = 0.1,
    ) -> None:
        self.ledger = ledger
        self.tracker = tracker
        self.policy = policy
        self.on_complete = on_complete
        self._loop = Periodic("completion", self.check_once, poll_seconds, first_at_once=False)

    def check_once(self, now: float | None = None) -> list[str]:
        """Complete every due study; returns their UIDs."""
        now = time.time() if now is None else now
        open_studies = self.tracker.studies_with_open_associations()
        completed = []
        for study in self.ledger.studies_in(StudyState.RECEIVING):
            rule = self.policy.rule_for(study, open_studies, now)
            if rule and self._finish(study, rule, now):
                completed.append(study.study_uid)
        return completed

    def _finish(self, study: Study, rule: str, now: float) -> bool:
        state = finish_study(self.ledger, study, rule, now)
        if state is None:
            return False  # an instance arrived meanwhile: wait for the next quiet period
        if state is StudyState.COMPLETE and self.on_complete is not None:
            self.on_complete(study.study_uid, study.version)
        return True

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
