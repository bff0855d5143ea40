"""The running node: listener, completion and pipeline wired together.

``Node`` owns the long-lived parts and their order of start and stop;
``serve_until_signalled`` is what ``libra-node serve`` runs. Without the
pipeline (``pipeline=False``) a node only receives and completes studies,
which is what the ingest tests and benchmarks exercise.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

from libra_node import pipeline as stages
from libra_node.completion import CompletionMonitor, CompletionPolicy, CompletionTracker, OnComplete
from libra_node.config import Settings
from libra_node.ledger import Ledger, StudyState
from libra_node.listener import StorageListener, recover_spool
from libra_node.logs import get_logger, phi_hash
from libra_node.ops_endpoint import OpsEndpoint, PipelineStateCollector, metrics_registry
from libra_node.outbox import Outbox
from libra_node.reconciler import Reconciler
from libra_node.spool import Spool
from workers.app import GPU_QUEUE, TaskSender, create_app, queue_depths, workers_consuming
from workers.launch import WorkerSupervisor

log = get_logger(__name__)

SUPERVISE_EVERY_SECONDS = 1.0


class PipelineDriver:
    """The node's side of the pipeline: hand-off to Celery, reconciler, worker children."""

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self.settings = settings
        self.ledger = ledger
        self.app = create_app(settings)
        self.sender = TaskSender(self.app)
        self.outbox = Outbox.from_settings(settings, ledger)
        self.reconciler = Reconciler(
            ledger,
            self.outbox,
            self.sender.prepare,
            self.sender.pump_outbox,
            stuck_after=settings.broker.stuck_after_seconds,
            every=settings.broker.reconcile_every_seconds,
        )
        self.workers = self._worker_supervisor() if settings.spawns_workers else None

    def _worker_supervisor(self) -> WorkerSupervisor:
        groups = [["io"]]
        if self.settings.model.path is not None:
            groups.append(["gpu"])
        else:
            log.warning("pipeline.no_model", note="model.path is not set: studies wait in QUEUED")
        # Children report metrics through the shared folder, not their own port.
        return WorkerSupervisor(self.settings, groups, {"LIBRA_METRICS__PORT": "0"})

    def on_complete(self, study_uid: str, version: int) -> None:
        """A study just completed: queue it (the reconciler retries if this fails)."""
        try:
            stages.enqueue(self.ledger, study_uid, version, self.sender.prepare)
        except Exception as exc:  # broker down: the study stays COMPLETE, the reconciler queues it
            log.error("pipeline.enqueue_failed", study=phi_hash(study_uid), exc_info=exc)

    def start(self) -> None:
        if self.workers is not None:
            self.workers.start()
        self.reconciler.start()

    def supervise(self) -> None:
        if self.workers is not None:
            self.workers.check(time.time())

    def stop(self) -> None:
        self.reconciler.stop()
        if self.workers is not None:
            self.workers.stop()


class Node:
    def __init__(
        self, settings: Settings, pipeline: bool = False, on_complete: OnComplete | None = None
    ) -> None:
        self.settings = settings
        # Spool and ledger hold patient data: the node's user only.
        settings.node.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ledger = Ledger(settings.ledger_url)
        self.spool = Spool(settings.spool_dir)
        self.tracker = CompletionTracker()
        self.pipeline = PipelineDriver(settings, self.ledger) if pipeline else None
        self.monitor = CompletionMonitor(
            self.ledger,
            self.tracker,
            CompletionPolicy(settings.listener.quiet_seconds, settings.listener.stable_seconds),
            on_complete=self.pipeline.on_complete if self.pipeline else on_complete,
        )
        self.listener = StorageListener(settings, self.ledger, self.spool, self.tracker)
        self.ops = self._ops_endpoint() if settings.metrics.port else None

    def _ops_endpoint(self) -> OpsEndpoint:
        depths = self._queue_depths
        registry = metrics_registry([PipelineStateCollector(self.ledger, depths)])
        checks = {
            "listener": lambda: None if self.listener.server is not None else "not listening",
            "ledger": lambda: self.ledger.count_by_state() and None,
            "broker": self._broker_problem,
            "model": self._model_problem,
        }
        metrics = self.settings.metrics
        return OpsEndpoint(metrics.host, metrics.port, registry, checks)

    def _queue_depths(self) -> dict[str, int | None]:
        if self.pipeline is None:
            return {}
        return queue_depths(self.pipeline.app)

    def _broker_problem(self) -> str | None:
        if self.pipeline is None:
            return "pipeline not running"
        depths = self._queue_depths()
        return None if all(d is not None for d in depths.values()) else "broker unreachable"

    def _model_problem(self) -> str | None:
        if self.pipeline is None:
            return "pipeline not running"
        if self.settings.model.path is None and self.settings.spawns_workers:
            return "no model configured (model.path)"
        if not workers_consuming(self.pipeline.app, GPU_QUEUE):
            return "no gpu worker with a loaded model answers"
        return None

    def start(self) -> None:
        recover_spool(self.spool, self.ledger)
        self.listener.start()
        self.monitor.start()
        if self.pipeline is not None:
            self.pipeline.start()
        if self.ops is not None:
            self.ops.start()
            log.info("ops.listening", host=self.settings.metrics.host, port=self.ops.port)

    def supervise(self) -> None:
        """Called periodically by the serving loop: restart dead worker children."""
        if self.pipeline is not None:
            self.pipeline.supervise()

    def stop(self) -> None:
        self.listener.stop()
        self.monitor.stop()
        if self.pipeline is not None:
            self.pipeline.stop()
        if self.ops is not None:
            self.ops.stop()
        self.ledger.close()

    def wait_for(self, study_uid: str, states: set[StudyState], timeout: float) -> StudyState:
        """Block until the study reaches one of ``states`` (demo and tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            study = self.ledger.get_study(study_uid)
            if study is not None and study.state in states:
                return study.state
            time.sleep(0.05)
        raise TimeoutError("the study did not reach the expected state in time")


def serve_until_signalled(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT, then drain open associations and exit 0."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("node.stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    node = Node(settings, pipeline=True)
    node.start()
    log.info("node.ready", port=node.listener.port)
    while not stop.wait(SUPERVISE_EVERY_SECONDS):
        node.supervise()
    node.stop()
    log.info("node.stopped")
    return 0
