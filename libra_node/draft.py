"""What the stages hand each other about one draft report.

The pipeline gathers these from the ledger and the images, the model turns
the clinical context into prompt text, and the SR writer puts all of it into
the document. Plain frozen dataclasses: easy to pass through Celery as dicts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ClinicalContext:
    """What is known about why and how the study was done.

    Each field is plain text as it will appear in the prompt and the SR;
    empty means unknown.
    """

    indication: str = ""
    history: str = ""
    comparison: str = ""
    technique: str = ""

    def is_empty(self) -> bool:
        return not any((self.indication, self.history, self.comparison, self.technique))

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClinicalContext":
        return cls(**{f.name: str(data.get(f.name) or "") for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class ModelIdentity:
    """Which model wrote a draft: goes into the SR and the deterministic UIDs."""

    name: str  # e.g. "libra-v1.0-7b"
    variant: str  # "7b", "3b" or "tiny"
    revision: str  # weights revision (hub commit or a digest of the files)
    node_version: str
    is_demo: bool = False  # random, untrained weights: say so everywhere

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelIdentity":
        return cls(**data)


@dataclass(frozen=True)
class ImageReference:
    """One image the draft was made from, for SR evidence and references."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImageReference":
        return cls(**data)
