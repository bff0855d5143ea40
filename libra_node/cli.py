"""The ``libra-node`` command.

Each sub-command is a small function that loads the settings, calls the
stage that does the work and turns its outcome into an exit status. Heavy
imports (torch, celery) happen inside the commands that need them, so that
``libra-node --help`` and ``config check`` stay fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from libra_node import __version__
from libra_node.config import ConfigError, Settings, load_settings
from libra_node.logs import configure_logging

Handler = Callable[[argparse.Namespace], int]


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(getattr(args, "config", None))
    configure_logging(settings.node.log_level, settings.node.log_format)
    return settings


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML settings file (default: the file named by LIBRA_CONFIG, else built-in defaults)",
    )


# --- serve -------------------------------------------------------------------


def _run_serve(args: argparse.Namespace) -> int:
    from libra_node.node import serve_until_signalled

    return serve_until_signalled(_settings(args))


def _add_serve(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the DICOM listener and the pipeline until SIGTERM",
        description="Receive studies by C-STORE, store them durably, decide when each "
        "study is complete and drive it through the pipeline. Stops cleanly on "
        "SIGTERM or SIGINT.",
    )
    _add_config_option(parser)
    parser.set_defaults(handler=_run_serve)


# --- config check ------------------------------------------------------------


def _run_config_check(args: argparse.Namespace) -> int:
    from libra_node.config_check import check_configuration

    settings = load_settings(args.config)
    problems = check_configuration(settings, print_line=print)
    return 1 if problems else 0


def _add_config(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="inspect the configuration")
    config_sub = parser.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check",
        help="say what is wrong with the settings and test each connection",
    )
    _add_config_option(check)
    check.set_defaults(handler=_run_config_check)


# --- show --------------------------------------------------------------------


def _run_show(args: argparse.Namespace) -> int:
    from libra_node.report.show import NotAStructuredReportError, read_sr, render_sr_text

    try:
        text = render_sr_text(read_sr(args.file))
    except NotAStructuredReportError as exc:
        print(f"libra-node: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


def _add_show(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "show",
        help="print a Structured Report as readable text",
        description="Print an SR document (the node's draft reports or any other "
        "TID 2000 style report): patient, study, status flags, author, then the "
        "content tree.",
    )
    parser.add_argument("file", metavar="SR.dcm", help="the SR file to show")
    parser.set_defaults(handler=_run_show)


# --- demo --------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    from libra_node.demo import run_demo

    configure_logging("WARNING", "text")
    return run_demo(keep=args.keep)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the whole flow on this machine with a made-up patient",
        description="Start a node in a temporary folder, send a synthetic prior and "
        "current chest study by C-STORE and follow the current study through the node.",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary state folder")
    parser.set_defaults(handler=_run_demo)


# --- wiring ------------------------------------------------------------------

_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_serve,
    _add_config,
    _add_show,
    _add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="libra-node",
        description="DICOM node that drafts chest X-ray reports with Libra and writes "
        "them back to the PACS as an unverified AI draft SR.",
    )
    parser.add_argument("--version", action="version", version=f"libra-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in _COMMANDS:
        add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"libra-node: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
