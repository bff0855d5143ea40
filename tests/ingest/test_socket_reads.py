"""The listener's PDU reader: whole PDUs in few calls, short only when the peer hangs up."""

from __future__ import annotations

import socket
import threading
import tracemalloc

from libra_node.listener import READ_BLOCK, receive_exactly


def send_in_pieces(sock: socket.socket, payload: bytes, piece: int, close: bool) -> threading.Thread:
    def run() -> None:
        for start in range(0, len(payload), piece):
            sock.sendall(payload[start:start + piece])
        if close:
            sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_pdu_sent_in_small_pieces_is_read_whole_and_nothing_more() -> None:
    reader, writer = socket.socketpair()
    payload = bytes(range(256)) * 8192  # 2 MiB
    sender = send_in_pieces(writer, payload + b"next PDU", piece=1500, close=False)

    data = receive_exactly(reader, len(payload))
    sender.join()

    assert data == payload
    assert receive_exactly(reader, 8) == b"next PDU"
    reader.close()
    writer.close()


def test_a_pdu_longer_than_one_block_is_read_across_blocks() -> None:
    reader, writer = socket.socketpair()
    payload = b"\x5a" * (READ_BLOCK + 12345)
    sender = send_in_pieces(writer, payload, piece=65536, close=False)

    data = receive_exactly(reader, len(payload))
    sender.join()

    assert len(data) == len(payload) and data == payload
    reader.close()
    writer.close()


def test_a_peer_that_hangs_up_early_gives_what_it_sent() -> None:
    reader, writer = socket.socketpair()
    sender = send_in_pieces(writer, b"only this", piece=4, close=True)

    data = receive_exactly(reader, 1000)
    sender.join()

    assert data == b"only this"
    reader.close()
    writer.close()


def test_an_announced_huge_pdu_costs_memory_only_for_what_arrives() -> None:
    reader, writer = socket.socketpair()
    sender = send_in_pieces(writer, b"x" * 1000, piece=1000, close=True)

    tracemalloc.start()
    data = receive_exactly(reader, 4 * 1024**3 - 1)  # what a 4-byte PDU length allows
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    sender.join()

    assert data == b"x" * 1000
    assert peak < 2 * READ_BLOCK
    reader.close()
    writer.close()
