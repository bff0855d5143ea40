"""Real processes for end-to-end tests: the node, its workers, a Redis server.

``NodeDeployment`` writes one TOML configuration and starts `libra-node serve`
and `libra-node worker` processes from it, exactly as an operator would;
``RedisServer`` runs a private redis-server without persistence on a free
port, so a test can restart it empty without touching the machine's Redis.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from dicom_tools import associate_result, free_port
from libra_node.ledger import Ledger, Study, StudyState


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class RedisServer:
    """A private redis-server that keeps nothing on disk: a restart empties it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def restart_empty(self) -> None:
        self.stop()
        self.start()

    def queue_length(self, queue: str) -> int:
        return int(redis.Redis(port=self.port).llen(queue))

    def held_by_workers(self, routing_key: str) -> int:
        """Messages a worker has taken but not acknowledged (kombu's ``unacked`` hash)."""
        held = redis.Redis(port=self.port).hvals("unacked")
        return sum(1 for value in held if json.loads(value)[2] == routing_key)


class NodeDeployment:
    """One node configuration and the processes started from it."""

    def __init__(self, workdir: Path, **sections: dict[str, Any]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.metrics_port = free_port()
        self.state_dir = workdir / "state"
        base: dict[str, dict[str, Any]] = {
            "node": {"state_dir": str(self.state_dir), "log_format": "json"},
            "listener": {"port": self.port, "quiet_seconds": 0.5, "stable_seconds": 10,
                         "min_free_bytes": 0},
            "metrics": {"port": self.metrics_port},
            "broker": {"stuck_after_seconds": 300, "reconcile_every_seconds": 1},
        }
        workdir.mkdir(parents=True, exist_ok=True)
        self.sections = base
        self.config = workdir / "node.toml"
        self.configure(**sections)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def configure(self, **sections: dict[str, Any]) -> None:
        """Change settings; processes started afterwards use them."""
        for section, values in sections.items():
            self.sections.setdefault(section, {}).update(values)
        write_toml(self.config, self.sections)

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("LIBRA_")}
        environment.update(env or {})
        log = (self.workdir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "libra_node", *args, "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=log, env=environment,
        )
        log.close()
        self.processes[name] = process
        return process

    def start_node(self, timeout: float = 60) -> None:
        process = self._spawn("serve", "serve")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"serve exited:\n{self.log('serve')}")
            if associate_result(self.port)[0]:
                return
            time.sleep(0.1)
        raise RuntimeError(f"serve did not become ready:\n{self.log('serve')}")

    def start_worker(self, queues: str, **settings: str) -> subprocess.Popen[bytes]:
        """A worker; ``settings`` override the configuration, e.g. MODEL__BATCH_WAIT_SECONDS="3"."""
        # Workers on this host leave the metrics port to serve.
        env = {f"LIBRA_{key}": value for key, value in {"METRICS__PORT": "0", **settings}.items()}
        return self._spawn(f"worker-{queues}", "worker", "--queues", queues, env=env)

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.kill()
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.processes.clear()

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def ledger(self) -> Ledger:
        return Ledger(f"sqlite:///{self.state_dir / 'ledger.sqlite3'}")

    def study(self, study_uid: str) -> Study | None:
        ledger = self.ledger()
        try:
            return ledger.get_study(study_uid)
        finally:
            ledger.close()

    def wait_for_state(
        self, study_uid: str, states: set[StudyState], timeout: float = 60
    ) -> Study:
        return wait_until(
            lambda: (s := self.study(study_uid)) is not None and s.state in states and s,
            timeout,
            lambda: f"study state {self.study(study_uid)}\n{self.log('serve')}",
        )


def wait_until(predicate: Callable[[], Any], timeout: float, describe: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"condition not reached within {timeout} s: {describe()}")
