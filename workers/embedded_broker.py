"""The embedded broker: kombu's filesystem transport, with messages that appear whole.

kombu writes a message file where consumers look (create, lock, write), and
its consumers take files without the lock. Under load a worker can take a
file between create and write, read nothing, and stop with a JSONDecodeError.
Here a message is written under a name no consumer matches and then renamed
into place, which is atomic within a folder.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

# Celery's broker_transport setting for the embedded broker.
TRANSPORT = "workers.embedded_broker:Transport"


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """Put a message on ``queue``: written aside, then renamed into the queue folder."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.partial")  # matches no queue
        try:
            with open(partial, "wb") as out:
                out.write(str_to_bytes(dumps(payload)))
            os.rename(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add a message to {self.data_folder_out!r}") from exc


class Transport(filesystem.Transport):
    Channel = Channel
