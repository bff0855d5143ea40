"""Libra draft reports for the chest X-rays stored in this Orthanc: the orthanc-python script.

Orthanc runs this file with its Python plugin (configuration key
"PythonScript"). The plugin needs:

- the node's packages on the embedded Python's path: PYTHONPATH in Orthanc's
  environment names the node environment's site-packages (the Python plugin
  embeds the system's Python 3.11, which must match the environment's);
- the node's settings: LIBRA_CONFIG (a TOML file) and/or LIBRA_* variables
  in Orthanc's environment, the same as the node's workers use;
- optionally a "LibraNode" section in Orthanc's configuration:
  {"FirstStartScan": false} makes the very first start skip the studies
  already stored (default true: every stable chest study not yet in the
  ledger is reported).

What runs inside Orthanc's process is small: the change callback notes
STABLE_STUDY and returns at once; one background thread (libra_feeder) reads
the study through Orthanc's in-process REST API, records and completes it in
the node's ledger, and sends it to the io queue, where the node's workers
take over with Orthanc as their PACS (transport "orthanc" or "dicomweb").
Nothing here lets an exception reach Orthanc: if the node's packages or
settings cannot be loaded, the plugin logs why and stays idle while Orthanc
runs on. Log lines carry hashed identifiers only.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import orthanc

# Orthanc keeps global properties below 1024 for itself; this one holds the
# plugin's change-log cursor, in Orthanc's own database beside the change log.
CURSOR_PROPERTY = 5471
CONFIG_SECTION = "LibraNode"
PREFIX = "libra plugin: "


class OrthancLogHandler(logging.Handler):
    """Python logging into Orthanc's log, at the matching level."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if record.levelno >= logging.ERROR:
                orthanc.LogError(line)
            elif record.levelno >= logging.WARNING:
                orthanc.LogWarning(line)
            else:
                orthanc.LogInfo(line)
        except Exception:  # a log line is never worth an exception in Orthanc
            pass


class InProcessOrthanc:
    """Orthanc's REST API called in process (no network), and its global properties."""

    def __init__(self, resource_gone: type[Exception]) -> None:
        self.resource_gone = resource_gone

    def get_json(self, path: str) -> Any:
        try:
            return json.loads(orthanc.RestApiGet(path))
        except orthanc.OrthancException as exc:
            if exc.args and exc.args[0] == orthanc.ErrorCode.UNKNOWN_RESOURCE:
                raise self.resource_gone(path) from None
            raise

    def load_cursor(self) -> str | None:
        value = orthanc.GetGlobalProperty(CURSOR_PROPERTY, "")
        return value or None

    def save_cursor(self, value: str) -> None:
        orthanc.SetGlobalProperty(CURSOR_PROPERTY, value)


class LibraPlugin:
    """Orthanc's change callback: wake the loop, start it with Orthanc, stop it before Orthanc."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop

    def on_change(self, change_type: int, level: int, resource_id: str) -> None:
        try:
            if change_type == orthanc.ChangeType.STABLE_STUDY:
                self.loop.wake(resource_id)
            elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
                self.loop.start()
                orthanc.LogWarning(PREFIX + "following Orthanc's stable studies")
            elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
                self.loop.stop()
        except Exception as exc:  # the callback runs on Orthanc's thread: never raise
            orthanc.LogError(PREFIX + f"change callback failed ({type(exc).__name__})")


def _plugin_options() -> dict[str, Any]:
    section = json.loads(orthanc.GetConfiguration()).get(CONFIG_SECTION, {})
    return section if isinstance(section, dict) else {}


def _route_logs(level: str, fmt: str) -> None:
    from libra_node.logs import OWN_LOGGERS, JsonFormatter, TextFormatter

    handler = OrthancLogHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries stay at WARNING: several log patient data below it.
    root.setLevel(logging.WARNING)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level.upper())


def _build() -> LibraPlugin:
    from libra_feeder import ResourceGone, assemble
    from libra_node.config import load_settings

    settings = load_settings()
    _route_logs(settings.node.log_level, settings.node.log_format)
    if settings.pacs.transport not in ("orthanc", "dicomweb"):
        orthanc.LogWarning(
            PREFIX + f'pacs.transport is "{settings.pacs.transport}": the io workers must '
            'reach this Orthanc ("orthanc" or "dicomweb") to read the images'
        )
    scan = bool(_plugin_options().get("FirstStartScan", True))
    return LibraPlugin(assemble(InProcessOrthanc(ResourceGone), settings, scan_on_first_start=scan))


def _why(exc: Exception) -> str:
    """The reason in plain words; at start-up no patient data has been read, so it may be quoted."""
    if isinstance(exc, ImportError):
        return (
            f"cannot import the node's packages ({exc}); point PYTHONPATH in Orthanc's "
            "environment at the node environment's site-packages"
        )
    return f"cannot start ({type(exc).__name__}: {exc})"


def install() -> None:
    try:
        plugin = _build()
    except Exception as exc:
        orthanc.LogError(PREFIX + "disabled: " + _why(exc))
        return
    orthanc.RegisterOnChangeCallback(plugin.on_change)


install()
