"""Starting workers: `libra-node worker`, and the ones `libra-node serve` runs itself.

A gpu worker loads the model before it consumes anything and runs a thread
pool as wide as the largest batch, so the dynamic batcher can gather studies.
An io worker runs a small prefork pool: time limits and worker-loss
detection work there.

With the embedded broker, `serve` starts one io and one gpu worker as child
processes (one process tree, no server). Children receive the parent's
effective settings as LIBRA_* variables, the configuration mechanism every
process of the node already understands.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from libra_node.config import ENV_PREFIX, Settings
from libra_node.logs import get_logger
from workers.app import GPU_QUEUE, IO_QUEUE, create_app

log = get_logger(__name__)

IO_CONCURRENCY = 2
PR_SET_PDEATHSIG = 1


def worker_argv(queues: list[str], max_batch: int) -> list[str]:
    if GPU_QUEUE in queues:
        pool, concurrency = "threads", max(max_batch, 1) + (IO_CONCURRENCY if IO_QUEUE in queues else 0)
    else:
        pool, concurrency = "threads", IO_CONCURRENCY
    name = "-".join(sorted(queues))
    return [
        "worker",
        f"--queues={','.join(queues)}",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--hostname={name}@{socket.gethostname()}",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=WARNING",
    ]


def run_worker(settings: Settings, queues: list[str]) -> int:
    """Run a Celery worker for ``queues`` until it is told to stop."""
    unknown = set(queues) - {IO_QUEUE, GPU_QUEUE}
    if unknown:
        raise ValueError(f"unknown queue(s): {', '.join(sorted(unknown))}; use io and/or gpu")
    app = create_app(settings)
    _warn_once_if_root()
    if GPU_QUEUE in queues:
        from workers.gpu import start_gpu_runtime

        start_gpu_runtime(settings)
    app.worker_main(worker_argv(queues, settings.model.max_batch))
    return 0


def _warn_once_if_root() -> None:
    """One structured line instead of Celery's multi-line warning on every start."""
    from celery.exceptions import SecurityWarning

    warnings.filterwarnings("ignore", category=SecurityWarning)
    if os.geteuid() == 0:
        log.warning("worker.running_as_root", advice="run the node under its own user")


def settings_environment(settings: Settings) -> dict[str, str]:
    """Every setting as a LIBRA_<SECTION>__<KEY> variable, for child processes."""
    environment: dict[str, str] = {}
    for section, values in settings.model_dump(mode="json").items():
        for key, value in values.items():
            if value is None:
                continue
            text = json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)
            environment[f"{ENV_PREFIX}{section.upper()}__{key.upper()}"] = text
    return environment


def spawn_worker(settings: Settings, queues: list[str], extra_env: dict[str, str]) -> subprocess.Popen[Any]:
    """A worker child process with exactly the parent's settings."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    environment = {**inherited, **settings_environment(settings), **extra_env}
    environment.pop("LIBRA_CONFIG", None)
    command = [sys.executable, "-m", "libra_node", "worker", "--queues", ",".join(queues)]
    log.info("worker.spawning", queues=",".join(queues))
    return subprocess.Popen(
        command,
        env=environment,
        cwd=str(Path.cwd()),
        preexec_fn=_die_with_parent,
        # Celery prints its banner and shutdown notes on stdout; logs go to stderr.
        stdout=subprocess.DEVNULL,
    )


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the parent dies, even by kill -9 (Linux)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class WorkerSupervisor:
    """The worker children of `libra-node serve`: started, restarted when they die, stopped.

    ``check`` is called periodically by the node; a child that exited on its
    own is started again (after a pause, so a child that cannot start does
    not spin). ``stop`` asks each child for a warm shutdown (finish the task
    at hand) and kills what is left after ``grace`` seconds.
    """

    RESTART_PAUSE = 5.0

    def __init__(self, settings: Settings, groups: list[list[str]], extra_env: dict[str, str]) -> None:
        self.settings = settings
        self.groups = groups
        self.extra_env = extra_env
        self.children: dict[str, subprocess.Popen[Any]] = {}
        self._died_at: dict[str, float] = {}

    def start(self) -> None:
        for queues in self.groups:
            self.children[",".join(queues)] = spawn_worker(self.settings, queues, self.extra_env)

    def check(self, now: float) -> None:
        for name, child in list(self.children.items()):
            if child.poll() is None:
                continue
            died_at = self._died_at.setdefault(name, now)
            if now - died_at < self.RESTART_PAUSE:
                continue
            log.warning("worker.restarting", queues=name, exit_code=child.returncode)
            self.children[name] = spawn_worker(self.settings, name.split(","), self.extra_env)
            del self._died_at[name]

    def stop(self, grace: float = 30.0) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()
        for child in self.children.values():
            try:
                child.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=10)
