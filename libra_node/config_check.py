"""`libra-node config check`: what is wrong with the settings, in plain words.

Each check returns None when all is well or one sentence saying what is
wrong and what to do; connections (ledger, PACS, broker, model folder) are
actually tried, not just parsed.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from libra_node.config import Settings

class Note(str):
    """Worth saying, but not a problem: the configuration works as it is."""


Check = Callable[[Settings], str | None]


def check_state_dir(settings: Settings) -> str | None:
    directory = settings.node.state_dir
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        return f"state folder {directory} cannot be created: {exc.strerror}"
    if not os.access(directory, os.W_OK):
        return f"state folder {directory} is not writable by this user"
    return None


def check_spool_space(settings: Settings) -> str | None:
    spool = settings.spool_dir
    existing = next((p for p in [spool, *spool.parents] if p.exists()), None)
    if existing is None:
        return f"no existing parent folder for the spool {spool}"
    free = shutil.disk_usage(existing).free
    if free < settings.listener.min_free_bytes:
        return (
            f"only {free // 2**20} MiB free under {existing}, below listener.min_free_bytes "
            f"({settings.listener.min_free_bytes // 2**20} MiB): the listener would refuse every instance"
        )
    return None


def check_listener_port(settings: Settings) -> str | None:
    listener = settings.listener
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listener.host, listener.port))
        except OSError as exc:
            return (
                f"cannot listen on {listener.host}:{listener.port} ({exc.strerror}); "
                "is another node or PACS already using it?"
            )
    return None


def check_tls_files(settings: Settings) -> str | None:
    listener = settings.listener
    if listener.tls_cert is None or listener.tls_key is None:
        return None
    for label, path in (("tls_cert", listener.tls_cert), ("tls_key", listener.tls_key),
                        ("tls_ca", listener.tls_ca)):
        if path is not None and not Path(path).is_file():
            return f"listener.{label} {path} does not exist"
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(listener.tls_cert), str(listener.tls_key))
        if listener.tls_ca is not None:
            context.load_verify_locations(str(listener.tls_ca))
    except (ssl.SSLError, OSError) as exc:
        return f"TLS certificate, key or CA cannot be loaded: {exc}"
    return None


def check_ledger(settings: Settings) -> str | None:
    from libra_node.ledger import Ledger

    try:
        ledger = Ledger(settings.ledger_url)
        ledger.count_by_state()
        ledger.close()
    except Exception as exc:  # any driver error: report it, do not crash the check
        return f"ledger {_safe_url(settings.ledger_url)} cannot be opened: {type(exc).__name__}: {exc}"
    return None


def check_pacs(settings: Settings) -> str | None:
    """C-ECHO (DIMSE) or a QIDO-RS request (DICOMweb) to the configured PACS."""
    if settings.pacs.transport == "none":
        return None
    from libra_node.pacs import PacsError, open_pacs

    try:
        with open_pacs(settings) as pacs:
            pacs.echo()
    except PacsError as exc:
        return str(exc)
    return None


def check_broker(settings: Settings) -> str | None:
    from workers.app import create_app, queue_depths

    if not settings.broker.url:
        return None  # the embedded broker is a folder under state_dir, checked above
    depths = queue_depths(create_app(settings))
    if any(depth is None for depth in depths.values()):
        return f"broker {_safe_url(settings.broker.url)} does not answer"
    return None


def check_model_folder(settings: Settings) -> str | None:
    """The checkpoint folder's configuration, weights and RAD-DINO, without loading them."""
    if settings.model.path is None:
        return Note("model.path is not set: the node receives and queues studies but drafts no report")
    from libra_node.model.loading import (
        CheckpointError,
        read_libra_config,
        read_raw_config,
        read_vision_config,
        resolve_vision_path,
        weight_files,
    )

    try:
        read_raw_config(settings.model.path)
        config = read_libra_config(settings.model.path)
        weight_files(settings.model.path)
        read_vision_config(resolve_vision_path(settings.model.path, settings.model.vision_path, config), config)
    except CheckpointError as exc:
        return str(exc)
    return None


def _safe_url(url: str) -> str:
    """A URL without its password, fit to print."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


CHECKS: list[tuple[str, Check]] = [
    ("state folder", check_state_dir),
    ("spool free space", check_spool_space),
    ("listener port", check_listener_port),
    ("listener TLS", check_tls_files),
    ("ledger", check_ledger),
    ("PACS", check_pacs),
    ("broker", check_broker),
    ("model folder", check_model_folder),
]


def check_configuration(settings: Settings, print_line: Callable[[str], None] = print) -> list[str]:
    """Run every check, print one line each, return the problems found."""
    problems = []
    for name, check in CHECKS:
        problem = check(settings)
        if problem is None:
            print_line(f"ok       {name}")
        elif isinstance(problem, Note):
            print_line(f"note     {name}: {problem}")
        else:
            print_line(f"PROBLEM  {name}: {problem}")
            problems.append(problem)
    print_line("configuration is usable" if not problems else f"{len(problems)} problem(s) found")
    return problems
