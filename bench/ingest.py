"""Ingest throughput: libra-node's listener against dcmtk storescp and Orthanc.

The same chest-radiograph-sized instances (7-15 MB) are sent with dcmtk's
storescu over 1 and 4 parallel associations to each receiver, all on
loopback in this run, and the script prints instances/s, MB/s and the ratio
to storescp. libra-node fsyncs every instance and its ledger row before it
acknowledges; storescp does not fsync at all, Orthanc leaves it to the OS.
A last row writes the same files to the same disk with fsync and no network
at all: the most any receiver that acknowledges only what is on disk can
reach over one association here.

    .venv/bin/python bench/ingest.py [--instances 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from libra_node.local_orthanc import LocalOrthanc, free_port
from libra_node.synthetic import SyntheticStudy, make_chest_image

ENV = dict(os.environ, TCP_NODELAY="1")  # dcmtk stalls ~40 ms per instance without it


@dataclass(frozen=True)
class Receiver:
    name: str
    port: int
    ae_title: str


def make_instances(folder: Path, count: int) -> list[Path]:
    """Half real CR radiographs (7 MB), half large synthetic DX images (13.5 MB)."""
    folder.mkdir(parents=True, exist_ok=True)
    rg1 = dcmread(get_testdata_file("RG1_UNCR.dcm"))
    study = SyntheticStudy(views=("PA",), rows=2600, columns=2600)
    paths = []
    for index in range(count):
        if index % 2 == 0:
            ds = rg1
            ds.StudyInstanceUID = generate_uid()
            ds.SeriesInstanceUID = generate_uid()
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        else:
            ds = make_chest_image(study, "PA", index)
        path = folder / f"{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send(receiver: Receiver, files: list[Path], associations: int) -> float:
    """Seconds to send all files over `associations` parallel storescu processes."""
    shares = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            ["storescu", "-aec", receiver.ae_title, "-aet", "BENCH", "127.0.0.1",
             str(receiver.port), *map(str, share)],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for share in shares
    ]
    for process in processes:
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"storescu to {receiver.name} failed: {stderr.decode()[-500:]}")
    return time.perf_counter() - started


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextmanager
def storescp(workdir: Path) -> Iterator[Receiver]:
    port = free_port()
    out = workdir / "storescp"
    out.mkdir()
    process = subprocess.Popen(
        ["storescp", "--fork", "-aet", "STORESCP", "-od", str(out), str(port)],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield Receiver("dcmtk storescp", port, "STORESCP")
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def libra_node(workdir: Path) -> Iterator[Receiver]:
    port = free_port()
    config = workdir / "libra.toml"
    config.write_text(
        f'[node]\nstate_dir = "{workdir / "libra-state"}"\nlog_level = "WARNING"\n'
        f"[listener]\nport = {port}\nmin_free_bytes = 0\nquiet_seconds = 60\nstable_seconds = 120\n"
    )
    env = {k: v for k, v in ENV.items() if not k.startswith("LIBRA_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "libra_node", "serve", "--config", str(config)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield Receiver("libra-node (fsync)", port, "LIBRA")
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def orthanc(workdir: Path) -> Iterator[Receiver]:
    server = LocalOrthanc(workdir / "orthanc", extra_config={"DicomAlwaysAllowStore": True})
    server.start()
    try:
        yield Receiver("Orthanc", server.dicom_port, server.ae_title)
    finally:
        server.stop()


def measure(
    start: Callable[[Path], "contextmanager[Receiver]"], files: list[Path], associations: int,
    rounds: int, workdir: Path,
) -> tuple[str, float]:
    """Best of `rounds` runs, each against a freshly started, empty receiver."""
    best = float("inf")
    name = ""
    for round_number in range(rounds):
        folder = workdir / f"{start.__name__}-{associations}-{round_number}"
        folder.mkdir()
        with start(folder) as receiver:
            name = receiver.name
            best = min(best, send(receiver, files, associations))
        shutil.rmtree(folder, ignore_errors=True)
    return name, best


def durable_write_seconds(files: list[Path], folder: Path, rounds: int) -> float:
    """Best time to write every file, fsync it and its folder, one after another."""
    best = float("inf")
    contents = [f.read_bytes() for f in files]
    for round_number in range(rounds):
        target = folder / f"durable-{round_number}"
        target.mkdir()
        started = time.perf_counter()
        directory = os.open(target, os.O_RDONLY)
        try:
            for index, content in enumerate(contents):
                with open(target / f"{index:03d}.dcm", "wb") as out:
                    out.write(content)
                    out.flush()
                    os.fsync(out.fileno())
                os.fsync(directory)
        finally:
            os.close(directory)
        best = min(best, time.perf_counter() - started)
        shutil.rmtree(target, ignore_errors=True)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="libra-bench-", dir=os.environ.get("BENCH_TMP")) as tmp:
        workdir = Path(tmp)
        files = make_instances(workdir / "instances", args.instances)
        total_mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"{len(files)} instances, {total_mb:.0f} MB in all "
              f"({min(f.stat().st_size for f in files) / 1e6:.1f}-"
              f"{max(f.stat().st_size for f in files) / 1e6:.1f} MB each), best of {args.rounds}")
        print(f"{'receiver':<22} {'assoc':>5} {'inst/s':>8} {'MB/s':>8} {'vs storescp':>12}")
        for associations in (1, 4):
            results = [measure(start, files, associations, args.rounds, workdir)
                       for start in (storescp, libra_node, orthanc)]
            reference = results[0][1]
            if associations == 1:
                results.append(("disk write+fsync only", durable_write_seconds(files, workdir, args.rounds)))
            for name, seconds in results:
                print(f"{name:<22} {associations:>5} {len(files) / seconds:>8.2f} "
                      f"{total_mb / seconds:>8.1f} {reference / seconds:>12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
