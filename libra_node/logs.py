"""Structured logging without patient data.

Log lines carry event names and fields, never names, patient IDs or UIDs in
clear. Identifiers that ops need to correlate lines go through ``phi_hash``,
which gives a short keyed digest: stable within one installation, useless
for looking anybody up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from typing import Any

_HASH_KEY_ENV = "LIBRA_LOG_HASH_KEY"
OWN_LOGGERS = ("libra_node", "workers")
_DEFAULT_HASH_KEY = b"libra-node"


def phi_hash(value: str | None) -> str:
    """A short, keyed digest of an identifier, for correlating log lines."""
    if not value:
        return "-"
    key = os.environ.get(_HASH_KEY_ENV, "").encode() or _DEFAULT_HASH_KEY
    return hashlib.blake2s(str(value).encode(), key=key[:32], digest_size=6).hexdigest()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event and its fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            # Exception type and message only: tracebacks may quote datasets.
            exc_type, exc, _ = record.exc_info
            entry["error"] = f"{exc_type.__name__ if exc_type else 'Error'}: {exc}"
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable form of the same information, for terminals."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            tail += f" error={type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return f"{line} {tail}".rstrip()


class EventLogger:
    """A thin wrapper: ``log.info("instance.stored", study=phi_hash(uid))``."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, exc_info: Any = None, **fields: Any) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, exc_info=exc_info, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, **fields)

    def error(self, event: str, exc_info: Any = None, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info=exc_info, **fields)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is now, not to the one it was created with
    (tests and embedding applications replace sys.stderr)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def get_logger(name: str) -> EventLogger:
    return EventLogger(name)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send the node's logs to stderr; keep library chatter out of them.

    Only the node's own loggers follow ``level``. Every library stays at
    WARNING or above: several log patient IDs, UIDs or whole datasets at
    INFO and DEBUG (pynetdicom, dicomweb_client, highdicom).
    """
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    node_level = logging.getLevelName(level.upper())
    root.setLevel(max(logging.WARNING, node_level))
    for own in OWN_LOGGERS:
        logging.getLogger(own).setLevel(node_level)
