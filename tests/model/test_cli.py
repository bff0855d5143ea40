"""`libra-node model tiny`, `model fetch` and `report`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from libra_node.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_LINE = "UNTRAINED DEMO MODEL (random weights)"


@pytest.fixture()
def short_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LIBRA_CONFIG", raising=False)
    config = tmp_path / "libra.toml"
    config.write_text(
        f'[node]\nstate_dir = "{tmp_path / "state"}"\nlog_format = "text"\n[model]\nmax_new_tokens = 12\n'
    )
    return config


def test_model_tiny_writes_a_checkpoint_and_says_it_is_untrained(tmp_path: Path, capsys) -> None:
    assert main(["model", "tiny", str(tmp_path / "demo"), "--variant", "3b"]) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED DEMO" in out and "3b layout" in out
    assert (tmp_path / "demo" / "config.json").is_file() and (
        tmp_path / "demo" / "rad-dino"
    ).is_dir()


def test_report_prints_the_demo_warning_then_the_findings(
    tiny_7b_dir: Path, rg1_path: Path, short_config: Path, capsys
) -> None:
    code = main(
        ["report", str(rg1_path), "--model", str(tiny_7b_dir), "--config", str(short_config)]
    )
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0].startswith(DEMO_LINE)
    assert len(lines) == 2 and len(lines[1].split()) >= 10


def test_report_takes_png_and_a_dicom_prior(
    tiny_7b_dir: Path, rg1_path: Path, short_config: Path, tmp_path: Path, capsys
) -> None:
    current = tmp_path / "current.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 240), dtype=np.uint8)).save(
        current
    )
    vision = tiny_7b_dir / "rad-dino"
    args = [
        "report",
        str(current),
        "--prior",
        str(rg1_path),
        "--model",
        str(tiny_7b_dir),
        "--vision",
        str(vision),
    ]
    assert main([*args, "--config", str(short_config)]) == 0
    with_prior = capsys.readouterr().out
    assert (
        main(["report", str(current), "--model", str(tiny_7b_dir), "--config", str(short_config)])
        == 0
    )
    without_prior = capsys.readouterr().out
    assert DEMO_LINE in with_prior and with_prior != without_prior


def test_report_without_a_model_says_how_to_name_one(
    rg1_path: Path, short_config: Path, capsys
) -> None:
    assert main(["report", str(rg1_path), "--config", str(short_config)]) == 2
    assert "no model: pass --model DIR or set model.path" in capsys.readouterr().err


def test_report_problems_are_one_clear_line(
    tiny_7b_dir: Path, rg1_path: Path, short_config: Path, tmp_path: Path, capsys
) -> None:
    assert (
        main(
            [
                "report",
                str(tmp_path / "absent.dcm"),
                "--model",
                str(tiny_7b_dir),
                "--config",
                str(short_config),
            ]
        )
        == 1
    )
    assert "absent.dcm does not exist" in capsys.readouterr().err
    assert (
        main(["report", str(rg1_path), "--model", str(tmp_path), "--config", str(short_config)])
        == 1
    )
    assert "has no config.json" in capsys.readouterr().err


def run_fetch(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "libra_node",
            "model",
            "fetch",
            "--variant",
            "7b",
            "--to",
            str(tmp_path / "weights"),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return completed, time.monotonic() - started


def test_fetch_without_a_reachable_hub_fails_fast_and_clearly(tmp_path: Path) -> None:
    # A closed local port: unreachable on every machine, so nothing is ever downloaded here.
    completed, seconds = run_fetch(tmp_path, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="0")
    assert completed.returncode == 1
    assert "cannot reach the Hugging Face Hub to fetch X-iZhang/libra-v1.0-7b" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert seconds < 30
    assert not (tmp_path / "weights").exists()


def test_fetch_in_offline_mode_says_so(tmp_path: Path) -> None:
    completed, _ = run_fetch(tmp_path, HF_HUB_OFFLINE="1")
    assert completed.returncode == 1
    assert "offline mode is on (HF_HUB_OFFLINE)" in completed.stderr


def test_report_out_writes_a_valid_sr_referencing_current_and_prior(
    tiny_7b_dir: Path, short_config: Path, tmp_path: Path, capsys
) -> None:
    import datetime as dt

    from pydicom import dcmread

    from dicom_tools import dciodvfy_errors, evidence_uids
    from libra_node.synthetic import SyntheticPatient, SyntheticStudy, make_chest_image

    patient = SyntheticPatient(patient_id="OFFLINE-1")
    prior = make_chest_image(SyntheticStudy(patient=patient, study_date=dt.date(2026, 2, 3)), "PA")
    current = make_chest_image(SyntheticStudy(patient=patient), "PA")
    prior.save_as(tmp_path / "prior.dcm", enforce_file_format=True)
    current.save_as(tmp_path / "current.dcm", enforce_file_format=True)
    out = tmp_path / "sr.dcm"

    code = main(["report", str(tmp_path / "current.dcm"), "--prior", str(tmp_path / "prior.dcm"),
                 "--model", str(tiny_7b_dir), "--config", str(short_config), "--out", str(out)])

    assert code == 0
    assert f"SR written to {out}" in capsys.readouterr().out
    assert dciodvfy_errors(out) == []
    sr = dcmread(out)
    assert sr.StudyInstanceUID == current.StudyInstanceUID
    assert current.SOPInstanceUID in evidence_uids(sr, "CurrentRequestedProcedureEvidenceSequence")
    assert prior.SOPInstanceUID in evidence_uids(sr, "PertinentOtherEvidenceSequence")


def test_report_out_needs_a_dicom_current_image(
    tiny_7b_dir: Path, short_config: Path, tmp_path: Path, capsys
) -> None:
    current = tmp_path / "current.png"
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(current)

    code = main(["report", str(current), "--model", str(tiny_7b_dir), "--config", str(short_config),
                 "--out", str(tmp_path / "sr.dcm")])

    assert code == 2
    assert "--out needs a DICOM current image" in capsys.readouterr().err
    assert not (tmp_path / "sr.dcm").exists()
