"""Latency: last image acknowledged to draft SR stored in the PACS, under a steady stream.

Each synthetic patient has a prior and a current chest study made of the real
RG1_UNCR radiograph (7 MB, new UIDs). The current studies arrive by C-STORE at
a fixed rate; the script prints p50/p99 of last image to SR stored, the same
per stage (from the ledger's timestamps), and the highest rate that ran
without a growing backlog. Two set-ups, in this one run:

- embedded: `libra-node serve` alone (embedded broker, its own workers),
  priors from its own spool, SRs into its report folder;
- redis+orthanc: serve plus an io and a gpu worker on a private Redis, a
  real Orthanc as the PACS (priors looked up in it, SRs stored into it).

The model is the tiny untrained checkpoint on the CPU: the figures measure
the node, not Libra. Target: p50 at most the quiet period + 1 s.

    .venv/bin/python bench/latency.py [--studies 12] [--rates 20,40,80]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from deployment import NodeDeployment, RedisServer  # noqa: E402
from dicom_tools import send_with_pynetdicom  # noqa: E402

from libra_node.ledger import StudyState  # noqa: E402
from libra_node.local_orthanc import LocalOrthanc, Modality  # noqa: E402
from libra_node.model.tiny import write_tiny_checkpoint  # noqa: E402

QUIET_SECONDS = 1.0
STAGES = [("complete", "RECEIVING", "COMPLETE"), ("queued", "COMPLETE", "QUEUED"),
          ("prior+inference", "QUEUED", "REPORTED"), ("delivery", "REPORTED", "DELIVERED")]


def radiograph(patient_id: str, study_uid: str, date: str, rg1: Dataset) -> Dataset:
    ds = copy.deepcopy(rg1)
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDate = date
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    return ds


def patients(count: int) -> list[tuple[Dataset, Dataset]]:
    rg1 = dcmread(get_testdata_file("RG1_UNCR.dcm"))
    return [
        (radiograph(f"LAT-{i:04d}", generate_uid(), "20260601", rg1),
         radiograph(f"LAT-{i:04d}", generate_uid(), "20261201", rg1))
        for i in range(count)
    ]


@dataclass
class Setup:
    name: str
    node: NodeDeployment
    pacs: LocalOrthanc | None

    def store_prior(self, prior: Dataset) -> None:
        if self.pacs is not None:
            send_with_pynetdicom(self.pacs.dicom_port, [prior], called=self.pacs.ae_title)
        else:
            send_with_pynetdicom(self.node.port, [prior])


@contextmanager
def embedded(workdir: Path, model: Path) -> Iterator[Setup]:
    node = NodeDeployment(workdir, model={"path": str(model), "max_new_tokens": 128},
                          listener={"quiet_seconds": QUIET_SECONDS}, node={"log_level": "WARNING"})
    node.start_node()
    try:
        yield Setup("embedded", node, None)
    finally:
        node.stop_all()


@contextmanager
def redis_orthanc(workdir: Path, model: Path) -> Iterator[Setup]:
    redis = RedisServer(workdir / "redis")
    redis.start()
    node = NodeDeployment(workdir / "node", model={"path": str(model), "max_new_tokens": 128},
                          listener={"quiet_seconds": QUIET_SECONDS}, node={"log_level": "WARNING"},
                          broker={"url": redis.url})
    orthanc = LocalOrthanc(workdir / "orthanc", modalities=[Modality("LIBRA", "LIBRA", "127.0.0.1", node.port)])
    orthanc.start()
    node.configure(pacs={"transport": "dimse", "host": "127.0.0.1", "port": orthanc.dicom_port,
                         "ae_title": orthanc.ae_title})
    node.start_node()
    node.start_worker("io")
    node.start_worker("gpu")
    try:
        yield Setup("redis+orthanc", node, orthanc)
    finally:
        node.stop_all()
        orthanc.stop()
        redis.stop()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def wait_for_done(node: NodeDeployment, study_uids: list[str]) -> None:
    ledger = node.ledger()
    deadline = time.monotonic() + 120 + len(study_uids) * 10
    while time.monotonic() < deadline:
        studies = [ledger.get_study(uid) for uid in study_uids]
        if all(s is not None and s.state in (StudyState.DELIVERED, StudyState.FAILED) for s in studies):
            break
        time.sleep(0.2)
    ledger.close()


def run_rate(setup: Setup, cases: list[tuple[Dataset, Dataset]], per_minute: float) -> dict[str, object]:
    """Send the current studies at ``per_minute``; wait for all; collect latencies."""
    for prior, _ in cases:
        setup.store_prior(prior)
    time.sleep(QUIET_SECONDS + 2)
    if setup.pacs is None:
        # Priors sent to the node are chest studies too: let their own reports
        # finish so that they do not compete with the measured stream.
        wait_for_done(setup.node, [str(prior.StudyInstanceUID) for prior, _ in cases])
    interval = 60.0 / per_minute
    sent: dict[str, float] = {}
    started = time.monotonic()
    for index, (_, current) in enumerate(cases):
        time.sleep(max(0.0, started + index * interval - time.monotonic()))
        send_with_pynetdicom(setup.node.port, [current])
        sent[str(current.StudyInstanceUID)] = time.time()
    wait_for_done(setup.node, list(sent))
    ledger = setup.node.ledger()
    latencies, stages = [], {name: [] for name, _, _ in STAGES}
    for uid, acked in sent.items():
        study = ledger.get_study(uid)
        if study is None or study.state != StudyState.DELIVERED:
            continue
        latencies.append(study.delivered_at - acked)
        times = {state: at for _, state, _, at in ledger.events_of(uid)}
        times["RECEIVING"] = study.last_instance_at
        for name, start, end in STAGES:
            stages[name].append(times[end] - times[start])
    ledger.close()
    first, last = latencies[: len(latencies) // 3], latencies[-(len(latencies) // 3):]
    return {
        "rate": per_minute,
        "delivered": len(latencies),
        "sent": len(sent),
        "latencies": latencies,
        "stages": stages,
        # A backlog shows as late studies waiting ever longer than early ones.
        "backlog_growing": len(latencies) < len(sent)
        or (bool(first) and statistics.median(last) > 2 * statistics.median(first) + 1.0),
    }


def report(setup_name: str, result: dict[str, object]) -> None:
    latencies = result["latencies"]
    if not latencies:
        print(f"{setup_name:<14} {result['rate']:>5.0f}/min  nothing delivered")
        return
    line = (f"{setup_name:<14} {result['rate']:>5.0f}/min  {result['delivered']}/{result['sent']} delivered"
            f"  last image -> SR stored p50 {percentile(latencies, 0.5):5.2f} s"
            f"  p99 {percentile(latencies, 0.99):5.2f} s")
    print(line + ("  BACKLOG GROWING" if result["backlog_growing"] else ""))
    for name, values in result["stages"].items():
        if values:
            print(f"{'':<22}{name:<18} p50 {percentile(values, 0.5):5.2f} s  p99 {percentile(values, 0.99):5.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=12, help="current studies per rate")
    parser.add_argument("--rates", default="20,40,80", help="studies per minute, comma-separated")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    print(f"quiet period {QUIET_SECONDS} s (target p50 <= {QUIET_SECONDS + 1:.1f} s); "
          f"{args.studies} current studies per rate, RG1_UNCR (7 MB) images, tiny model on CPU")
    with tempfile.TemporaryDirectory(prefix="libra-latency-") as tmp:
        workdir = Path(tmp)
        model = workdir / "model"
        write_tiny_checkpoint(model)
        for start in (embedded, redis_orthanc):
            held = 0.0
            with start(workdir / start.__name__, model) as setup:
                time.sleep(5)  # workers load the model
                for rate in rates:
                    result = run_rate(setup, patients(args.studies), rate)
                    report(setup.name, result)
                    if not result["backlog_growing"]:
                        held = max(held, rate)
            print(f"{setup.name}: highest rate held without backlog growth: {held:.0f} studies/min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
