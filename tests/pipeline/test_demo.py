"""`libra-node demo`, what `make demo` runs: both set-ups end with a valid SR on disk."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydicom import dcmread

from dicom_tools import dciodvfy_errors


@pytest.mark.parametrize("pacs", ["none", "orthanc"])
def test_demo_ends_with_a_printed_and_valid_sr(tmp_path, pacs):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LIBRA_")}
    out = tmp_path / "demo-output"

    result = subprocess.run(
        [sys.executable, "-m", "libra_node", "demo", "--pacs", pacs, "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=environment, cwd=tmp_path,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "UNTRAINED DEMO checkpoint" in result.stdout
    assert "current study DELIVERED" in result.stdout
    assert "most recent earlier chest radiograph (2026-06-02)" in result.stdout
    assert "AI DRAFT - NOT VERIFIED" in result.stdout
    [sr_path] = list(out.glob("*.dcm"))
    assert f"SR written to {sr_path}" in result.stdout
    assert dciodvfy_errors(sr_path) == []
    sr = dcmread(sr_path)
    assert sr.PatientID == "DEMO-0001" and sr.VerificationFlag == "UNVERIFIED"
    assert "DEMO MODEL - UNTRAINED" in sr.SeriesDescription
    # It cleans up after itself: no temporary state left behind.
    assert "state kept" not in result.stdout
