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
from pathlib import Path
from typing import TYPE_CHECKING

from libra_node import __version__
from libra_node.config import ConfigError, Settings, load_settings
from libra_node.logs import configure_logging

if TYPE_CHECKING:
    from libra_node.draft import ModelIdentity
    from libra_node.model.offline import OfflineDraft

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


def _share_metrics_between_processes(settings: Settings) -> None:
    """One /metrics for the node and its worker children: prometheus_client's
    multiprocess folder, set before prometheus_client is first imported."""
    import os
    import shutil

    folder = settings.node.state_dir / "metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def _run_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _share_metrics_between_processes(settings)
    from libra_node.node import serve_until_signalled

    try:
        return serve_until_signalled(settings)
    except OSError as exc:  # a port in use, a folder that cannot be written
        print(f"libra-node: cannot start: {exc}", file=sys.stderr)
        return 1


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


# --- worker ------------------------------------------------------------------


def _run_worker(args: argparse.Namespace) -> int:
    import os

    from workers.launch import run_worker

    settings = _settings(args)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    if settings.metrics.port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _start_worker_metrics(settings)
    try:
        return run_worker(settings, queues)
    except ValueError as exc:
        print(f"libra-node: {exc}", file=sys.stderr)
        return 2


def _start_worker_metrics(settings: Settings) -> None:
    """A worker's own /metrics; a port already taken costs the endpoint, not the worker."""
    from libra_node.logs import get_logger
    from libra_node.ops_endpoint import OpsEndpoint, metrics_registry

    try:
        endpoint = OpsEndpoint(settings.metrics.host, settings.metrics.port, metrics_registry(), {})
    except OSError as exc:
        get_logger("libra_node.cli").warning(
            "worker.metrics_not_started", port=settings.metrics.port, error=exc.strerror
        )
        return
    endpoint.start()


def _add_worker(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "worker",
        help="run a Celery worker for the io and/or gpu queue",
        description="A Celery worker of the pipeline. --queues gpu loads the model once and "
        "batches inference; --queues io looks up priors and delivers reports. Split "
        "deployments run them on different hosts against the same Redis broker.",
    )
    parser.add_argument("--queues", default="gpu,io", help="comma-separated: gpu, io (default both)")
    _add_config_option(parser)
    parser.set_defaults(handler=_run_worker)


# --- status ------------------------------------------------------------------


def _run_status(args: argparse.Namespace) -> int:
    import json

    from libra_node.ledger import Ledger
    from libra_node.status import collect_status, render_status
    from workers.app import create_app, queue_depths

    settings = _settings(args)
    ledger = Ledger(settings.ledger_url)
    status = collect_status(ledger, queue_depths(create_app(settings)))
    ledger.close()
    print(json.dumps(status, indent=2) if args.json else render_status(status))
    return 0


def _add_status(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "status",
        help="studies per state, queue depths, recent failures",
        description="What the node is doing: studies per state with the oldest in each, "
        "messages waiting per queue, and the latest failures with their reasons. "
        "Studies are named by a short digest, never by patient data.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    _add_config_option(parser)
    parser.set_defaults(handler=_run_status)


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
    return run_demo(pacs=args.pacs, output_dir=args.out, model_path=args.model, keep=args.keep)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the whole flow on this machine with a made-up patient",
        description="Start a node in a temporary folder (embedded broker, io and gpu workers), "
        "send a synthetic prior and current chest study by C-STORE, wait for the draft SR, "
        "print it and copy it to --out. Without --model it writes an untrained demo "
        "checkpoint: the findings are meaningless.",
    )
    parser.add_argument("--pacs", choices=["none", "orthanc"], default="none",
                        help="orthanc: start a local Orthanc as the PACS (needs the Debian package)")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="where the SR is copied")
    parser.add_argument("--model", type=Path, help="a real checkpoint folder instead of the demo one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state folder")
    parser.set_defaults(handler=_run_demo)


# --- model -------------------------------------------------------------------


def _run_model_tiny(args: argparse.Namespace) -> int:
    from libra_node.model.tiny import write_tiny_checkpoint

    directory = write_tiny_checkpoint(args.directory, variant=args.variant)
    print(f"wrote an UNTRAINED DEMO Libra checkpoint ({args.variant} layout, random weights) to {directory}")
    print("its text is meaningless: it is for tests and the demo, never for patients")
    return 0


def _run_model_fetch(args: argparse.Namespace) -> int:
    from libra_node.model.fetch import FetchError, fetch_checkpoint

    try:
        directory = fetch_checkpoint(args.variant, args.to)
    except FetchError as exc:
        print(f"libra-node: {exc}", file=sys.stderr)
        return 1
    print(f"fetched libra-v1.0-{args.variant} and RAD-DINO into {directory}")
    return 0


def _add_model(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("model", help="write a demo checkpoint or download the released weights")
    model_sub = parser.add_subparsers(dest="model_command", required=True)
    tiny = model_sub.add_parser(
        "tiny",
        help="write a small UNTRAINED demo checkpoint (random weights)",
        description="Write a few-MB Libra checkpoint with random weights in the layout of the "
        "released ones (config.json, safetensors, tokenizer, preprocessor_config.json, "
        "rad-dino/). Its reports are meaningless; it exists for tests and the demo.",
    )
    tiny.add_argument("directory", metavar="DIR", help="folder to write (created if missing)")
    tiny.add_argument(
        "--variant",
        choices=("7b", "3b"),
        default="7b",
        help="layout to imitate: 7b (libra_v1 template, sentencepiece tokenizer; default) "
        "or 3b (Llama-3 template and tokenizer)",
    )
    tiny.set_defaults(handler=_run_model_tiny)
    fetch = model_sub.add_parser(
        "fetch",
        help="download libra-v1.0-7b or -3b and RAD-DINO (needs internet)",
        description="Download X-iZhang/libra-v1.0-<variant> into DIR and microsoft/rad-dino "
        "into DIR/rad-dino, recording the revisions fetched. Fails quickly when the hub "
        "cannot be reached.",
    )
    fetch.add_argument("--variant", choices=("7b", "3b"), required=True, help="which checkpoint")
    fetch.add_argument("--to", metavar="DIR", required=True, help="folder to download into")
    fetch.set_defaults(handler=_run_model_fetch)


# --- report ------------------------------------------------------------------


def _run_report(args: argparse.Namespace) -> int:
    from libra_node.model.image_processing import ImageError
    from libra_node.model.inference import LibraGenerator
    from libra_node.model.loading import CheckpointError
    from libra_node.model.offline import draft_findings

    settings = _settings(args)
    model_path = args.model or settings.model.path
    if model_path is None:
        print("libra-node: no model: pass --model DIR or set model.path", file=sys.stderr)
        return 2
    try:
        generator = LibraGenerator.load(
            model_path,
            args.vision or settings.model.vision_path,
            device=settings.model.device,
            dtype=settings.model.dtype,
            preset=settings.model.preset,
            max_new_tokens=settings.model.max_new_tokens,
        )
        draft = draft_findings(generator, args.current, args.prior, pad_color=settings.model.pad_color)
    except (CheckpointError, ImageError) as exc:
        print(f"libra-node: {exc}", file=sys.stderr)
        return 1
    if generator.is_demo:
        print("UNTRAINED DEMO MODEL (random weights): the text below is meaningless, not a report.")
    print(draft.result.text)
    if args.out is not None:
        return _write_offline_sr(draft, generator.identity, settings, args.out)
    return 0


def _write_offline_sr(draft: OfflineDraft, model: ModelIdentity, settings: Settings, out: Path) -> int:
    """The SR of an offline draft: needs DICOM inputs, for the patient and study it belongs to."""
    import datetime as dt

    from pydicom.dataset import Dataset

    from libra_node.pipeline import clean_findings, image_reference, parse_da
    from libra_node.report import DraftReport, InvalidDraftError, build_sr

    if not isinstance(draft.current, Dataset):
        print("libra-node: --out needs a DICOM current image (the SR joins its study)", file=sys.stderr)
        return 2
    prior = draft.prior if isinstance(draft.prior, Dataset) else None
    try:
        report = DraftReport(
            current_header=draft.current,
            current_images=[image_reference(draft.current)],
            prior_images=[image_reference(prior)] if prior is not None else [],
            prior_study_date=parse_da(str(prior.get("StudyDate", ""))) if prior is not None else None,
            findings=clean_findings(draft.result.text),
            context=draft.context,
            model=model,
            created_at=dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
        )
    except InvalidDraftError as exc:
        print(f"libra-node: cannot write the SR: {exc}", file=sys.stderr)
        return 1
    build_sr(report, settings.report).save_as(out, enforce_file_format=True)
    print(f"SR written to {out}")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "report",
        help="draft the findings for one study offline",
        description="Run Libra on a current image (DICOM, PNG or JPEG) and, if given, the prior "
        "image, and print the findings text. Without a prior the current image stands in for it.",
    )
    parser.add_argument("current", metavar="CURRENT", help="the current image (CURRENT.dcm, PNG or JPEG)")
    parser.add_argument("--prior", metavar="PRIOR", help="the prior image of the same patient")
    parser.add_argument("--model", metavar="DIR", type=Path, help="checkpoint folder (default: model.path)")
    parser.add_argument(
        "--vision", metavar="DIR", type=Path, help="RAD-DINO folder (default: model.vision_path, else DIR/rad-dino)"
    )
    parser.add_argument("--out", metavar="SR.dcm", type=Path, help="also write the draft as a DICOM SR")
    _add_config_option(parser)
    parser.set_defaults(handler=_run_report)


# --- wiring ------------------------------------------------------------------

_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_serve,
    _add_worker,
    _add_status,
    _add_config,
    _add_show,
    _add_demo,
    _add_model,
    _add_report,
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
