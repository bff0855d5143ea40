"""A task that runs every few seconds in the background until the node stops.

Completion and the reconciler both poll the ledger; a tick that fails (a
ledger hiccup, a broker that is down) is logged and the next tick comes as
usual, so one bad moment never ends the loop for good.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from libra_node.logs import get_logger

log = get_logger(__name__)


class Periodic:
    def __init__(self, name: str, tick: Callable[[], object], every: float, first_at_once: bool) -> None:
        self.name = name
        self.tick = tick
        self.every = every
        self.first_at_once = first_at_once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        if not self.first_at_once and self._stop.wait(self.every):
            return
        while True:
            try:
                self.tick()
            except Exception as exc:  # logged; the next tick comes as usual
                log.error(f"{self.name}.failed", exc_info=exc)
            if self._stop.wait(self.every):
                return
