"""Shared fixtures for the model tests: tiny checkpoints, loaded generators, test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from libra_node.model.image_processing import prepare_pixels
from libra_node.model.inference import LibraGenerator
from libra_node.model.tiny import write_tiny_checkpoint

# One thread: the suite shares a small machine with other test processes,
# and an oversubscribed torch thread pool is many times slower.
torch.set_num_threads(1)

# Short outputs keep every generation in the tens of milliseconds.
TEST_NEW_TOKENS = 16


@pytest.fixture(scope="session")
def tiny_7b_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "libra-tiny-7b", "7b")


@pytest.fixture(scope="session")
def tiny_3b_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "libra-tiny-3b", "3b")


@pytest.fixture(scope="session")
def generator_7b(tiny_7b_dir: Path) -> LibraGenerator:
    return LibraGenerator.load(tiny_7b_dir, max_new_tokens=TEST_NEW_TOKENS)


@pytest.fixture(scope="session")
def generator_3b(tiny_3b_dir: Path) -> LibraGenerator:
    return LibraGenerator.load(tiny_3b_dir, max_new_tokens=TEST_NEW_TOKENS)


@pytest.fixture(scope="session")
def rg1_path() -> Path:
    """A real CR chest PA radiograph (MONOCHROME1, 15 bits, uncompressed)."""
    return Path(get_testdata_file("RG1_UNCR.dcm"))


@pytest.fixture(scope="session")
def rg1_pixels(rg1_path: Path) -> np.ndarray:
    return prepare_pixels(rg1_path)


@pytest.fixture(scope="session")
def noise_pixels() -> tuple[np.ndarray, np.ndarray]:
    """Two different made-up images, already in the model's input format."""
    rng = np.random.default_rng(7)
    return (
        rng.integers(0, 256, (518, 518), dtype=np.uint8),
        rng.integers(0, 256, (518, 518), dtype=np.uint8),
    )
