"""Dynamic batching for the gpu worker.

Celery hands the gpu worker one study per task. The worker runs several task
threads (as many as the largest batch), and each thread submits its study
here and waits. One inference thread takes the first waiting study, gathers
whoever else arrives within ``max_wait`` (up to ``max_batch``), runs them as
one batch and hands each thread its own result. A lone study waits at most
``max_wait``; a busy GPU fills its batches without waiting at all, because
studies queue up while the previous batch runs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")


class InferenceBatcher(Generic[Request, Result]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[Request]], list[Result]],
        max_batch: int,
        max_wait: float,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._waiting: queue.Queue[tuple[Request, Future[Result]]] = queue.Queue()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="inference-batcher", daemon=True)
        self._thread.start()
        self.batch_sizes: list[int] = []  # for metrics and tests

    def submit(self, request: Request) -> Future[Result]:
        if self._stopped.is_set():
            raise RuntimeError("the inference batcher has stopped")
        future: Future[Result] = Future()
        self._waiting.put((request, future))
        return future

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _gather(self) -> list[tuple[Request, Future[Result]]]:
        try:
            batch = [self._waiting.get(timeout=0.1)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self._waiting.get(timeout=remaining) if remaining > 0 else self._waiting.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _loop(self) -> None:
        while not self._stopped.is_set():
            batch = self._gather()
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                results = self._run_batch([request for request, _ in batch])
            except Exception as exc:  # every waiting thread gets the failure
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                future.set_result(result)
