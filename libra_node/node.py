"""The running node: listener, completion and pipeline wired together.

``Node`` owns the long-lived parts and their order of start and stop;
``serve_until_signalled`` is what ``libra-node serve`` runs.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from libra_node.completion import CompletionMonitor, CompletionPolicy, CompletionTracker, OnComplete
from libra_node.config import Settings
from libra_node.ledger import Ledger
from libra_node.listener import StorageListener, recover_spool
from libra_node.logs import get_logger
from libra_node.spool import Spool

log = get_logger(__name__)


class Node:
    def __init__(self, settings: Settings, on_complete: OnComplete | None = None) -> None:
        self.settings = settings
        # Spool and ledger hold patient data: the node's user only.
        settings.node.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ledger = Ledger(settings.ledger_url)
        self.spool = Spool(settings.spool_dir)
        self.tracker = CompletionTracker()
        self.monitor = CompletionMonitor(
            self.ledger,
            self.tracker,
            CompletionPolicy(settings.listener.quiet_seconds, settings.listener.stable_seconds),
            on_complete=on_complete,
        )
        self.listener = StorageListener(settings, self.ledger, self.spool, self.tracker)

    def start(self) -> None:
        recover_spool(self.spool, self.ledger)
        self.listener.start()
        self.monitor.start()

    def stop(self) -> None:
        self.listener.stop()
        self.monitor.stop()
        self.ledger.close()


def serve_until_signalled(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT, then drain open associations and exit 0."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("node.stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    node = Node(settings)
    node.start()
    log.info("node.ready", port=node.listener.port)
    stop.wait()
    node.stop()
    log.info("node.stopped")
    return 0
