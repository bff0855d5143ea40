"""Fixtures for end-to-end pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from libra_node.model.tiny import write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    write_tiny_checkpoint(folder)
    return folder
