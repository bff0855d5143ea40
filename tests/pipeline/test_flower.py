"""Flower, the Celery monitor, against the Redis broker: the documented command works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from deployment import NodeDeployment, RedisServer, wait_until
from dicom_tools import free_port


@pytest.fixture
def redis_node(tmp_path):
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    node = NodeDeployment(tmp_path / "node", broker={"url": redis.url})
    yield node
    node.stop_all()
    redis.stop()


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def test_flower_sees_the_workers_and_the_queues(redis_node):
    redis_node.start_worker("io")
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LIBRA_")}
    environment.update(LIBRA_CONFIG=str(redis_node.config), FLOWER_UNAUTHENTICATED_API="true")
    celery = Path(sys.executable).parent / "celery"
    flower = subprocess.Popen(
        [str(celery), "-A", "workers.app", "flower", "--address=127.0.0.1", f"--port={port}"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        workers = wait_until(
            lambda: _try(lambda: get_json(f"{base}/api/workers?refresh=1")), 60, lambda: "no workers"
        )
        assert any(name.startswith("io@") for name in workers)
        queues = get_json(f"{base}/api/queues/length")
        assert {q["name"] for q in queues["active_queues"]} >= {"io"}
    finally:
        flower.terminate()
        flower.wait(timeout=10)


def _try(call):
    try:
        return call()
    except OSError:
        return None
