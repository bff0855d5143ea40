"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from libra_node.config import Settings, load_settings
from libra_node.node import Node

SettingsFactory = Callable[..., Settings]


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {key: dict(value) for key, value in base.items()}
    for section, values in overrides.items():
        merged.setdefault(section, {}).update(values)
    return merged


@pytest.fixture
def make_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SettingsFactory:
    """Settings for a node confined to tmp_path, on a free port, fast completion."""
    for variable in [v for v in os.environ if v.startswith("LIBRA_")]:
        monkeypatch.delenv(variable)

    def factory(**sections: dict[str, Any]) -> Settings:
        base = {
            "node": {"state_dir": tmp_path / "state", "log_format": "text"},
            "listener": {"port": 0, "quiet_seconds": 0.5, "stable_seconds": 5.0, "min_free_bytes": 0},
            "metrics": {"port": 0},
        }
        return load_settings(None, **_merge(base, sections))

    return factory


@pytest.fixture
def start_node(make_settings: SettingsFactory) -> Iterator[Callable[..., Node]]:
    """Start in-process nodes; every one is stopped at the end of the test."""
    nodes: list[Node] = []

    def starter(settings: Settings | None = None, **kwargs: Any) -> Node:
        node = Node(settings or make_settings(), **kwargs)
        node.start()
        nodes.append(node)
        return node

    yield starter
    for node in nodes:
        node.stop()


@pytest.fixture(scope="session")
def rg1_path() -> Path:
    """The real CR chest PA radiograph shipped with pydicom-data."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("RG1_UNCR.dcm"))
