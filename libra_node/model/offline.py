"""One study from files, without the pipeline: what `libra-node report` runs.

DICOM inputs also give the clinical context (reason for the request, history,
the prior's date, the view); PNG/JPEG inputs give none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from libra_node.draft import ClinicalContext
from libra_node.model.image_processing import PadColor, prepare_pixels, read_image_source
from libra_node.model.inference import GenerationRequest, GenerationResult, LibraGenerator
from libra_node.model.prompting import clinical_context_from_datasets


@dataclass(frozen=True)
class OfflineDraft:
    """The inputs as read (datasets for DICOM files, paths otherwise), the context and the result."""

    current: Dataset | Path
    prior: Dataset | Path | None
    context: ClinicalContext
    result: GenerationResult


def context_from_sources(current: Dataset | Path, prior: Dataset | Path | None) -> ClinicalContext:
    if not isinstance(current, Dataset):
        return ClinicalContext()
    return clinical_context_from_datasets(current, prior if isinstance(prior, Dataset) else None)


def draft_findings(
    generator: LibraGenerator,
    current_path: str | Path,
    prior_path: str | Path | None = None,
    pad_color: PadColor = "black",
) -> OfflineDraft:
    """Read the files, prepare the images and generate the findings."""
    current = read_image_source(current_path)
    prior = read_image_source(prior_path) if prior_path is not None else None
    pad = {"pad_color": pad_color, "image_mean": generator.image_mean}
    context = context_from_sources(current, prior)
    request = GenerationRequest(
        current=prepare_pixels(current, **pad),
        prior=prepare_pixels(prior, **pad) if prior is not None else None,
        context=context,
    )
    [result] = generator.generate([request])
    return OfflineDraft(current, prior, context, result)


__all__ = ["OfflineDraft", "context_from_sources", "draft_findings"]
