"""The gpu worker: the model, loaded once per process, behind a dynamic batcher.

``start_gpu_runtime`` loads Libra before the worker consumes its first
message (so a worker that takes work is a worker that is ready). The
``libra.infer`` task then only decodes the job, waits for its turn in a batch
and sends the findings to the io queue. gpu workers need the broker and the
model folder, nothing else: no ledger, no spool, no PACS.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celery import Task

from libra_node.config import Settings
from libra_node.logs import get_logger, phi_hash
from libra_node.metrics import METRICS
from libra_node.pipeline import InferenceJob, without_pixels
from workers.app import DELIVER_TASK, FAIL_TASK, GPU_TIME_LIMIT, IO_QUEUE
from workers.batching import InferenceBatcher

if TYPE_CHECKING:
    from libra_node.model.inference import GenerationResult

log = get_logger(__name__)


class GpuRuntime:
    """The model and its batcher. Torch is imported here, not when the module
    is: every process that sends tasks imports this module, only gpu workers
    build a runtime."""

    def __init__(self, settings: Settings) -> None:
        from libra_node.model.inference import LibraGenerator

        started = time.monotonic()
        self.generator = LibraGenerator.from_settings(settings.model)
        self.load_seconds = time.monotonic() - started
        self.batcher: InferenceBatcher[InferenceJob, GenerationResult] = InferenceBatcher(
            self._run, settings.model.max_batch, settings.model.batch_wait_seconds
        )
        METRICS.model_load_seconds.set(self.load_seconds)
        identity = self.generator.identity
        log.info(
            "gpu.ready",
            model=identity.name,
            demo_weights=identity.is_demo,
            device=str(self.generator.device),
            load_seconds=round(self.load_seconds, 2),
            max_batch=settings.model.max_batch,
        )
        if identity.is_demo:
            log.warning("gpu.demo_model", note="untrained demo weights: the text is not a report")

    def _run(self, jobs: Sequence[InferenceJob]) -> list[GenerationResult]:
        from libra_node.model.inference import GenerationRequest

        results = self.generator.generate(
            [GenerationRequest(job.current, job.prior, job.context) for job in jobs]
        )
        METRICS.batch_size.observe(len(jobs))
        METRICS.stage_seconds.labels(stage="inference").observe(results[0].total_seconds)
        _record_gpu_memory()
        return results


def _record_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        METRICS.gpu_memory_bytes.set(torch.cuda.max_memory_allocated())


_runtime: GpuRuntime | None = None


def start_gpu_runtime(settings: Settings) -> GpuRuntime:
    global _runtime
    if _runtime is None:
        _runtime = GpuRuntime(settings)
    return _runtime


def infer(task: Task, message: dict[str, Any], sent_at: float) -> None:
    if _runtime is None:
        raise RuntimeError("libra.infer ran in a worker that did not load the model (use --queues gpu)")
    METRICS.stage_seconds.labels(stage="queue_wait").observe(max(0.0, time.time() - sent_at))
    job = InferenceJob.from_message(message)
    try:
        result = _runtime.batcher.submit(job).result(timeout=GPU_TIME_LIMIT)
    except Exception as exc:  # a failed batch fails its studies, with the reason
        log.error("gpu.inference_failed", study=phi_hash(job.study_uid), exc_info=exc)
        task.app.send_task(
            FAIL_TASK, args=[job.study_uid, job.version, f"inference failed: {exc}"], queue=IO_QUEUE
        )
        return
    task.app.send_task(
        DELIVER_TASK,
        args=[without_pixels(message), result.to_dict(), _runtime.generator.identity.to_dict()],
        queue=IO_QUEUE,
    )
