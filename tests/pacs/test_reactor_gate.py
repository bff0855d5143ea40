"""Back-to-back DIMSE operations on one association lose no response.

pynetdicom's association reactor could take an operation's response off the
queue and drop it ("Received unexpected C-FIND service message") when the
operation started while the reactor was leaving its pause. ``ReactorGate``
reports the reactor as paused only while it is blocked.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from libra_node.local_orthanc import LocalOrthanc
from libra_node.pacs import DimsePacs
from libra_node.pacs.dimse import ReactorGate
from pacs.testdata import NODE_AE, ORTHANC_AE, chest_study


class FakeReactor(threading.Thread):
    """pynetdicom's reactor loop in miniature: wait at the gate, count a round, sleep 1 ms."""

    def __init__(self, gate: ReactorGate) -> None:
        super().__init__(daemon=True)
        self.gate = gate
        self.rounds = 0
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            time.sleep(0.001)
            self.gate.wait()
            self.rounds += 1


def test_a_paused_reactor_does_not_move_until_the_gate_opens() -> None:
    gate = ReactorGate()
    reactor = FakeReactor(gate)
    reactor.start()
    for _ in range(20):
        assert gate.pause(timeout=2, reactor_alive=reactor.is_alive)
        rounds = reactor.rounds
        time.sleep(0.01)
        assert reactor.rounds == rounds  # blocked at the gate, not merely flagged
        gate.set()
        deadline = time.monotonic() + 2
        while reactor.rounds == rounds and time.monotonic() < deadline:
            time.sleep(0.001)
        assert reactor.rounds > rounds  # and free again once opened
    reactor.stopping = True
    gate.set()
    reactor.join(timeout=2)


def test_pausing_a_reactor_that_has_ended_returns_at_once() -> None:
    gate = ReactorGate()
    started = time.monotonic()
    assert not gate.pause(timeout=5, reactor_alive=lambda: False)
    assert time.monotonic() - started < 1


class DroppedResponses(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "unexpected" in message or "find_incomplete" in message:
            self.messages.append(message)


@pytest.mark.usefixtures("node_ae_registered")
def test_hundreds_of_queries_beside_a_retrieval_lose_no_answer(
    orthanc: LocalOrthanc, new_patient
) -> None:
    # Without the gate, about one query in 150 lost an answer here.
    study = chest_study(new_patient(), "2026-04-01")
    orthanc.upload(study)
    frontal = study[0]
    client = DimsePacs(host="127.0.0.1", port=orthanc.dicom_port, called_ae_title=ORTHANC_AE,
                       calling_ae_title=NODE_AE, timeout=5)
    dropped = DroppedResponses()
    logging.getLogger().addHandler(dropped)
    stop = threading.Event()

    def retrieve_meanwhile() -> None:
        while not stop.is_set():
            client.fetch_instance(str(frontal.StudyInstanceUID), str(frontal.SeriesInstanceUID),
                                  str(frontal.SOPInstanceUID))

    retriever = threading.Thread(target=retrieve_meanwhile)
    retriever.start()
    try:
        counts = [len(client.find_images(str(frontal.StudyInstanceUID))) for _ in range(300)]
    finally:
        stop.set()
        retriever.join(timeout=30)
        logging.getLogger().removeHandler(dropped)

    assert set(counts) == {len(study)}
    assert dropped.messages == []
