"""The gpu worker's dynamic batcher, alone and with the tiny model."""

from __future__ import annotations

import threading
import time

import pytest

from libra_node.draft import ClinicalContext
from libra_node.model.image_processing import prepare_pixels
from libra_node.model.inference import GenerationRequest, LibraGenerator
from libra_node.model.tiny import write_tiny_checkpoint
from libra_node.synthetic import SyntheticStudy, make_chest_image
from workers.batching import InferenceBatcher


def test_waiting_requests_are_gathered_into_one_batch():
    batches: list[list[int]] = []
    release = threading.Event()

    def run(requests):
        release.wait(5)
        batches.append(list(requests))
        return [r * 10 for r in requests]

    batcher = InferenceBatcher(run, max_batch=4, max_wait=0.05)
    first = batcher.submit(1)  # starts a batch of one that blocks in run()
    time.sleep(0.2)
    later = [batcher.submit(n) for n in (2, 3, 4, 5, 6)]  # queue up meanwhile
    release.set()

    assert first.result(5) == 10
    assert [f.result(5) for f in later] == [20, 30, 40, 50, 60]
    assert batches == [[1], [2, 3, 4, 5], [6]]
    batcher.stop()


def test_a_lone_request_waits_at_most_max_wait():
    batcher = InferenceBatcher(lambda rs: list(rs), max_batch=8, max_wait=0.1)
    started = time.monotonic()
    assert batcher.submit("x").result(5) == "x"
    assert time.monotonic() - started < 1.0
    batcher.stop()


def test_a_failing_batch_fails_each_of_its_requests():
    def run(requests):
        raise RuntimeError("CUDA out of memory")

    batcher = InferenceBatcher(run, max_batch=2, max_wait=0.05)
    futures = [batcher.submit(1), batcher.submit(2)]
    for future in futures:
        with pytest.raises(RuntimeError, match="out of memory"):
            future.result(5)
    # The batcher survives a failed batch.
    batcher._run_batch = lambda rs: list(rs)
    assert batcher.submit(3).result(5) == 3
    batcher.stop()


def test_invalid_batch_size_is_refused():
    with pytest.raises(ValueError):
        InferenceBatcher(lambda rs: list(rs), max_batch=0, max_wait=0.1)


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    write_tiny_checkpoint(folder)
    return LibraGenerator.load(folder, max_new_tokens=24)


def test_batched_through_the_batcher_equals_one_by_one(tiny_generator):
    studies = [SyntheticStudy(seed=seed, views=("PA",)) for seed in range(3)]
    requests = [
        GenerationRequest(
            prepare_pixels(make_chest_image(study, "PA")),
            None if index == 0 else prepare_pixels(make_chest_image(studies[0], "PA")),
            ClinicalContext(indication=f"case {index}"),
        )
        for index, study in enumerate(studies)
    ]
    one_by_one = [tiny_generator.generate([request])[0].text for request in requests]

    hold = threading.Event()

    def run(batch):
        hold.wait(5)
        return tiny_generator.generate(batch)

    batcher = InferenceBatcher(run, max_batch=3, max_wait=0.5)
    futures = [batcher.submit(request) for request in requests]
    hold.set()
    results = [future.result(30) for future in futures]

    assert [r.text for r in results] == one_by_one
    assert len(set(one_by_one)) == 3  # different inputs, different texts: rows were not mixed up
    assert max(r.batch_size for r in results) > 1
    batcher.stop()
