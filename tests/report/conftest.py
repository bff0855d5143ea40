"""Fixtures for the report tests: drafts made from synthetic studies, and the
real validators (dicom3tools dciodvfy, dcmtk dsrdump and dsr2html)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import subprocess
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom.base
import highdicom.base_content
import highdicom.sr.sop
import pydicom
import pytest
from pydicom.dataset import Dataset

from libra_node.config import ReportSettings
from libra_node.draft import ClinicalContext, ImageReference, ModelIdentity
from libra_node.report import DraftReport
from libra_node.synthetic import SyntheticPatient, SyntheticStudy, make_chest_image

CREATED_AT = dt.datetime(2026, 12, 1, 10, 30, 5)
PRIOR_DATE = dt.date(2025, 6, 14)
TRAINED_MODEL = ModelIdentity(
    name="libra-v1.0-7b", variant="7b", revision="a1b2c3d", node_version="0.1.0"
)
DEMO_MODEL = dataclasses.replace(TRAINED_MODEL, name="libra-tiny", variant="tiny", is_demo=True)
CONTEXT = ClinicalContext(
    indication="Cough and fever for three days.",
    history="Smoker, 40 pack-years.",
    technique="PA and lateral views.",
    comparison="Prior radiograph from June.",
)
FINDINGS = "The heart is normal in size.\nThe lungs are clear. No pleural effusion."


def reference(image: Dataset) -> ImageReference:
    return ImageReference(
        study_instance_uid=str(image.StudyInstanceUID),
        series_instance_uid=str(image.SeriesInstanceUID),
        sop_instance_uid=str(image.SOPInstanceUID),
        sop_class_uid=str(image.SOPClassUID),
    )


def _encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def encode() -> Callable[[Dataset], bytes]:
    """The dataset as the bytes of a DICOM file."""
    return _encode


@pytest.fixture
def demo_model() -> ModelIdentity:
    return DEMO_MODEL


@dataclass
class Studies:
    """A current image written to disk and read back as the pipeline does, and a prior."""

    current: Dataset
    current_header: Dataset
    prior: Dataset


@pytest.fixture
def make_studies(tmp_path: Path) -> Callable[..., Studies]:
    def factory(name: str = "Doe^Jane", character_set: str | list[str] = "ISO_IR 100") -> Studies:
        patient = SyntheticPatient(name=name)
        current = make_chest_image(SyntheticStudy(patient=patient), "PA")
        # Set here, not through SyntheticPatient: a list stands for the
        # multi-valued form such as ['', 'ISO 2022 IR 87'].
        current.SpecificCharacterSet = character_set
        path = tmp_path / f"{current.SOPInstanceUID}.dcm"
        current.save_as(path, enforce_file_format=True)
        header = pydicom.dcmread(path, stop_before_pixels=True)
        prior = make_chest_image(SyntheticStudy(patient=patient, study_date=PRIOR_DATE), "PA")
        return Studies(current=current, current_header=header, prior=prior)

    return factory


@pytest.fixture
def studies(make_studies: Callable[..., Studies]) -> Studies:
    return make_studies()


@pytest.fixture
def make_draft(studies: Studies) -> Callable[..., DraftReport]:
    """A draft of the default studies; keyword arguments replace its fields.

    ``with_prior=False`` drops the prior image and date; ``studies=`` uses
    other studies (for other patient names and character sets).
    """

    def factory(with_prior: bool = True, studies: Studies = studies, **fields: Any) -> DraftReport:
        values: dict[str, Any] = {
            "current_header": studies.current_header,
            "current_images": [reference(studies.current)],
            "prior_images": [reference(studies.prior)] if with_prior else [],
            "prior_study_date": PRIOR_DATE if with_prior else None,
            "findings": FINDINGS,
            "impression": "No acute cardiopulmonary process.",
            "context": CONTEXT,
            "model": TRAINED_MODEL,
            "created_at": CREATED_AT,
        }
        values.update(fields)
        return DraftReport(**values)

    return factory


class _LaterDatetime(dt.datetime):
    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> _LaterDatetime:
        return cls(2031, 5, 6, 7, 8, 9, 123456, tzinfo=tz)


@pytest.fixture
def move_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make highdicom's clock read years later from the call on, so that a
    retry is not identical merely because it ran within the same second."""

    def mover() -> None:
        later = types.SimpleNamespace(
            datetime=_LaterDatetime, date=dt.date, time=dt.time, timedelta=dt.timedelta
        )
        for module in (highdicom.base, highdicom.base_content, highdicom.sr.sop):
            monkeypatch.setattr(module, "datetime", later)
        assert highdicom.base.datetime.datetime.now().year == 2031

    return mover


@pytest.fixture
def settings() -> ReportSettings:
    return ReportSettings()


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=60)


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dicom3tools' validator prints (warnings are allowed)."""
    result = _run(["dciodvfy", str(path)])
    return [
        line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")
    ]


@dataclass
class CheckedFile:
    path: Path
    dump: str = ""
    html: str = ""


@pytest.fixture
def check_dicom(tmp_path: Path) -> Callable[[Dataset], CheckedFile]:
    """Write the dataset to a file and fail with dciodvfy's output on any error."""
    counter = iter(range(1_000_000))

    def checker(dataset: Dataset) -> CheckedFile:
        path = tmp_path / f"checked-{next(counter)}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        errors = dciodvfy_errors(path)
        assert not errors, "dciodvfy found errors:\n" + "\n".join(errors)
        return CheckedFile(path=path)

    return checker


@pytest.fixture
def check_sr(check_dicom: Callable[[Dataset], CheckedFile]) -> Callable[[Dataset], CheckedFile]:
    """dciodvfy, then dcmtk's dsrdump and dsr2html must read the SR."""

    def checker(dataset: Dataset) -> CheckedFile:
        checked = check_dicom(dataset)
        dump = _run(["dsrdump", str(checked.path)])
        assert dump.returncode == 0 and "Error" not in dump.stderr, (
            f"dsrdump failed:\n{dump.stderr}"
        )
        html = _run(["dsr2html", str(checked.path)])
        assert html.returncode == 0 and "<html" in html.stdout.lower(), (
            f"dsr2html failed:\n{html.stderr}"
        )
        checked.dump, checked.html = dump.stdout, html.stdout
        return checked

    return checker
