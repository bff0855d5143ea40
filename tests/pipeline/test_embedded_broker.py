"""The embedded broker never shows a consumer a message that is still being written."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from kombu import Connection, Exchange, Queue

from workers.app import celery_config, create_app, embedded_broker_options
from workers.embedded_broker import TRANSPORT


def connection(settings) -> Connection:
    return Connection("filesystem://localhost", transport=TRANSPORT,
                      transport_options=embedded_broker_options(settings))


def test_the_embedded_broker_uses_the_whole_message_transport(make_settings) -> None:
    settings = make_settings()
    assert celery_config(settings)["broker_transport"] == TRANSPORT
    with create_app(settings).connection_for_write() as conn:
        assert type(conn.transport).__module__ == "workers.embedded_broker"
    assert celery_config(make_settings(broker={"url": "redis://127.0.0.1:6379/0"}))["broker_transport"] is None


def test_a_message_appears_in_the_queue_folder_only_when_complete(make_settings, monkeypatch) -> None:
    settings = make_settings()
    queue_folder = Path(embedded_broker_options(settings)["data_folder_out"])
    seen_at_rename: list[tuple[list[str], int]] = []
    rename = os.rename

    def watching_rename(source, target):
        visible = sorted(p.name for p in queue_folder.iterdir() if p.name.endswith(".msg"))
        seen_at_rename.append((visible, Path(source).stat().st_size))
        rename(source, target)

    monkeypatch.setattr(os, "rename", watching_rename)
    queue = Queue("io", Exchange("io"), routing_key="io")
    with connection(settings) as conn:
        conn.Producer().publish({"study": "x" * 5000}, exchange=queue.exchange,
                                routing_key="io", declare=[queue])

    assert len(seen_at_rename) == 1
    visible, size = seen_at_rename[0]
    assert visible == []  # nothing a consumer could take before the rename
    assert size > 5000  # the whole message was already written
    assert len(list(queue_folder.glob("*.io.msg"))) == 1
    assert list(queue_folder.glob(".*")) == []


def test_messages_published_while_a_consumer_polls_all_arrive_whole(make_settings) -> None:
    settings = make_settings()
    count = 300
    received: list[dict] = []
    with connection(settings) as producer_conn, connection(settings) as consumer_conn:
        Queue("io")(producer_conn.default_channel).declare()

        def publish() -> None:
            producer = producer_conn.Producer()
            for index in range(count):
                producer.publish({"index": index, "padding": "p" * 20000}, routing_key="io")

        publisher = threading.Thread(target=publish)
        publisher.start()
        simple = consumer_conn.SimpleQueue("io")
        while len(received) < count:
            message = simple.get(block=True, timeout=30)
            received.append(message.payload)
            message.ack()
        publisher.join()
        simple.close()

    assert sorted(m["index"] for m in received) == list(range(count))
