"""The pipeline's Celery tasks: thin wrappers that retry, fail and hand on.

    libra.prepare       (io)  prior lookup and fetch, images to model input
    libra.infer         (gpu) Libra on the current and prior image (workers.gpu)
    libra.deliver       (io)  the SR (and PDF) into the outbox and on to the PACS
    libra.deliver_outbox (io) another delivery attempt, when one is due
    libra.fail          (io)  a gpu worker's failure, recorded in the ledger

The work itself is in ``libra_node.pipeline``. Transient faults (PACS down,
ledger busy) are retried with exponential backoff; anything else fails the
study with its reason. Each task checks the ledger before acting, so a
message delivered twice does its work once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from celery import Celery, Task
from celery.exceptions import MaxRetriesExceededError

from libra_node import pipeline
from libra_node.config import Settings
from libra_node.draft import ModelIdentity
from libra_node.ledger import Ledger, LedgerError
from libra_node.logs import get_logger, phi_hash
from libra_node.metrics import METRICS
from libra_node.outbox import Outbox
from libra_node.pacs import PacsClient, PacsError, open_pacs
from libra_node.spool import Spool
from workers.app import (
    DELIVER_OUTBOX_TASK,
    DELIVER_TASK,
    FAIL_TASK,
    GPU_QUEUE,
    INFER_TASK,
    IO_QUEUE,
    PREPARE_TASK,
)

log = get_logger(__name__)

RETRY_BACKOFF_SECONDS = 2.0
RETRY_BACKOFF_MAX_SECONDS = 300.0
MAX_RETRIES = 10  # about 40 minutes of a PACS or ledger that does not answer


class IoResources:
    """Ledger, spool and outbox of one io worker process, opened on first use.

    Opened lazily so that a forked pool child opens its own database
    connections instead of sharing its parent's.
    """

    _by_app: dict[int, "IoResources"] = {}
    _lock = threading.Lock()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ledger = Ledger(settings.ledger_url)
        self.spool = Spool(settings.spool_dir)
        self.outbox = Outbox.from_settings(settings, self.ledger)

    def pacs(self) -> PacsClient:
        return open_pacs(self.settings, self.ledger, self.spool)

    @classmethod
    def of(cls, app: Celery) -> "IoResources":
        with cls._lock:
            if id(app) not in cls._by_app:
                cls._by_app[id(app)] = cls(app.libra_settings)  # type: ignore[attr-defined]
            return cls._by_app[id(app)]


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, LedgerError) or (isinstance(exc, PacsError) and exc.transient)


def _retry_or_fail(task: Task, ledger: Ledger, study_uid: str, version: int, stage: str,
                   exc: Exception) -> None:
    """Retry a transient fault with exponential backoff; fail the study otherwise."""
    if not _is_transient(exc):
        pipeline.fail(ledger, study_uid, version, f"{stage} failed: {exc}")
        return
    retries = task.request.retries
    METRICS.retries.labels(stage=stage).inc()
    log.warning("task.retrying", study=phi_hash(study_uid), stage=stage, attempt=retries + 1,
                error=str(exc))
    try:
        countdown = min(RETRY_BACKOFF_MAX_SECONDS, RETRY_BACKOFF_SECONDS * 2**retries)
        raise task.retry(exc=exc, countdown=countdown)
    except MaxRetriesExceededError:
        pipeline.fail(ledger, study_uid, version, f"{stage} gave up after {retries} retries: {exc}")


def prepare(task: Task, study_uid: str, version: int) -> None:
    resources = IoResources.of(task.app)
    started = time.monotonic()
    try:
        with resources.pacs() as pacs:
            job = pipeline.prepare_job(
                resources.settings, resources.ledger, resources.spool, pacs, study_uid, version
            )
    except pipeline.StageFailed as exc:
        pipeline.fail(resources.ledger, study_uid, version, str(exc))
        return
    except (PacsError, LedgerError) as exc:
        _retry_or_fail(task, resources.ledger, study_uid, version, "prior lookup", exc)
        return
    if job is None:
        return
    METRICS.stage_seconds.labels(stage="prepare").observe(time.monotonic() - started)
    task.app.send_task(INFER_TASK, args=[job.to_message(), time.time()], queue=GPU_QUEUE)


def deliver(task: Task, job: dict[str, Any], result: dict[str, Any], model: dict[str, Any]) -> None:
    resources = IoResources.of(task.app)
    study_uid, version = job["study_uid"], int(job["version"])
    try:
        pipeline.write_report(
            resources.settings, resources.ledger, resources.outbox,
            job, result["text"], ModelIdentity.from_dict(model),
        )
    except pipeline.StageFailed as exc:
        pipeline.fail(resources.ledger, study_uid, version, str(exc))
        return
    except LedgerError as exc:
        _retry_or_fail(task, resources.ledger, study_uid, version, "report writing", exc)
        return
    pump_outbox(task.app, resources)


def pump_outbox(app: Celery, resources: IoResources) -> None:
    """Deliver what is due; schedule another attempt when the next one is due."""
    with resources.pacs() as pacs:
        report = resources.outbox.deliver_due(pacs)
    for item in report.delivered:
        METRICS.stage_seconds.labels(stage="delivery").observe(time.time() - item.created_at)
        study = resources.ledger.get_study(item.study_uid)
        if study is not None and study.delivered_at is not None and item.sop_uid == item.report_sop_uid:
            METRICS.stage_seconds.labels(stage="last_image_to_delivered").observe(
                study.delivered_at - study.last_instance_at
            )
    if report.retrying:
        METRICS.retries.labels(stage="delivery").inc(len(report.retrying))
    next_due = resources.outbox.next_due_at()
    if next_due is not None and (report.retrying or report.busy):
        app.send_task(DELIVER_OUTBOX_TASK, countdown=max(0.5, next_due - time.time()), queue=IO_QUEUE)


def deliver_outbox(task: Task) -> None:
    pump_outbox(task.app, IoResources.of(task.app))


def fail(task: Task, study_uid: str, version: int, reason: str) -> None:
    pipeline.fail(IoResources.of(task.app).ledger, study_uid, version, reason)


def register_tasks(app: Celery) -> None:
    from workers.gpu import infer

    app.task(name=PREPARE_TASK, bind=True, max_retries=MAX_RETRIES)(prepare)
    app.task(name=INFER_TASK, bind=True)(infer)
    app.task(name=DELIVER_TASK, bind=True, max_retries=MAX_RETRIES)(deliver)
    app.task(name=DELIVER_OUTBOX_TASK, bind=True)(deliver_outbox)
    app.task(name=FAIL_TASK, bind=True)(fail)
