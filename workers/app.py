"""The Celery app: broker, queues and the reliability settings of every task.

Two queues: ``io`` for network work (prior lookup and fetch, delivery), ``gpu``
for inference, so that a slow PACS never holds a GPU and a busy GPU never
holds a delivery. With ``broker.url`` empty the broker is embedded: kombu's
filesystem transport (made to write whole messages, see embedded_broker.py)
in the node's state folder, no server to run.

``celery -A workers.app flower`` (and any other celery command) finds the app
configured from the same settings as the node (``LIBRA_CONFIG`` and
``LIBRA_*`` variables).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from libra_node.config import Settings, load_settings
from workers.embedded_broker import TRANSPORT as EMBEDDED_TRANSPORT

IO_QUEUE = "io"
GPU_QUEUE = "gpu"
PREPARE_TASK = "libra.prepare"
INFER_TASK = "libra.infer"
DELIVER_TASK = "libra.deliver"
DELIVER_OUTBOX_TASK = "libra.deliver_outbox"
FAIL_TASK = "libra.fail"

# The embedded broker polls its folder; 20 ms keeps a hand-off well under 100 ms.
EMBEDDED_POLLING_SECONDS = 0.02
# Hard limits per task; the soft limit comes a little earlier so the task can
# record why it stopped. Inference on a 7B model takes seconds, not minutes.
IO_TIME_LIMIT = 300
GPU_TIME_LIMIT = 600


def embedded_broker_options(settings: Settings) -> dict[str, Any]:
    folder = settings.broker_dir
    for name in ("queue", "processed", "control"):
        (folder / name).mkdir(parents=True, exist_ok=True, mode=0o700)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "store_processed": False,
        "control_folder": str(folder / "control"),
        "polling_interval": EMBEDDED_POLLING_SECONDS,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    if settings.broker.url:
        broker_url = settings.broker.url
        # A message taken by a worker that died comes back after this long;
        # the ledger's reconciler usually re-queues the study sooner.
        transport_options: dict[str, Any] = {"visibility_timeout": 2 * GPU_TIME_LIMIT}
    else:
        broker_url = "filesystem://localhost"  # the host part is unused; naming it avoids a warning
        transport_options = embedded_broker_options(settings)
    return {
        "broker_url": broker_url,
        # The filesystem transport with whole-message writes (embedded_broker.py).
        "broker_transport": None if settings.broker.url else EMBEDDED_TRANSPORT,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "result_backend": settings.broker.result_backend or None,
        "task_ignore_result": not settings.broker.result_backend,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_queues": [
            Queue(IO_QUEUE, Exchange(IO_QUEUE), routing_key=IO_QUEUE),
            Queue(GPU_QUEUE, Exchange(GPU_QUEUE), routing_key=GPU_QUEUE),
        ],
        "task_default_queue": IO_QUEUE,
        "task_routes": {
            PREPARE_TASK: {"queue": IO_QUEUE, "routing_key": IO_QUEUE},
            DELIVER_TASK: {"queue": IO_QUEUE, "routing_key": IO_QUEUE},
            DELIVER_OUTBOX_TASK: {"queue": IO_QUEUE, "routing_key": IO_QUEUE},
            FAIL_TASK: {"queue": IO_QUEUE, "routing_key": IO_QUEUE},
            INFER_TASK: {"queue": GPU_QUEUE, "routing_key": GPU_QUEUE},
        },
        # A task is acknowledged only once it has finished; a worker that dies
        # mid-task gives its message back instead of losing it.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": IO_TIME_LIMIT,
        "task_soft_time_limit": IO_TIME_LIMIT - 30,
        "task_annotations": {
            INFER_TASK: {"time_limit": GPU_TIME_LIMIT, "soft_time_limit": GPU_TIME_LIMIT - 30}
        },
        # Flower and `celery events` need these.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app for these settings, with the pipeline's tasks registered."""
    from workers.tasks import register_tasks

    settings = settings or load_settings()
    app = Celery("libra_node", set_as_current=False)
    app.config_from_object(celery_config(settings))
    app.libra_settings = settings  # type: ignore[attr-defined]
    register_tasks(app)
    return app


def __getattr__(name: str) -> Any:
    # `celery -A workers.app` looks for `app` here; build it only when asked,
    # so that importing this module never reads settings as a side effect.
    if name == "app":
        return create_app()
    raise AttributeError(name)


class TaskSender:
    """What the node's side sends: a study to the io queue, a nudge to the outbox."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def prepare(self, study_uid: str, version: int) -> None:
        self.app.send_task(PREPARE_TASK, args=[study_uid, version], queue=IO_QUEUE)

    def pump_outbox(self) -> None:
        self.app.send_task(DELIVER_OUTBOX_TASK, queue=IO_QUEUE)


def queue_depths(app: Celery) -> dict[str, int | None]:
    """Messages waiting in each queue; None for a queue the broker cannot tell about."""
    depths: dict[str, int | None] = {IO_QUEUE: None, GPU_QUEUE: None}
    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
            channel = connection.default_channel
            for name in depths:
                try:
                    depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except Exception:  # a queue nobody declared yet holds nothing
                    depths[name] = 0
    except Exception:  # broker unreachable: say so rather than fail
        return depths
    return depths


def workers_consuming(app: Celery, queue: str, timeout: float = 1.0) -> list[str]:
    """Names of the workers that answer and consume ``queue`` (a gpu worker: model loaded)."""
    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception:
        return []
    return sorted(name for name, queues in replies.items() if any(q.get("name") == queue for q in queues))
