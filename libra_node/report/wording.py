"""The sentences both renditions (SR and PDF) show, so that they say the same."""

from __future__ import annotations

import datetime as dt

from libra_node.draft import ModelIdentity

AI_DRAFT_BANNER = "AI DRAFT - NOT VERIFIED"
AI_DRAFT_EXPLANATION = (
    "This report was written automatically by a machine-learning model and "
    "has not been reviewed by a radiologist. It must not be used for "
    "diagnosis until a radiologist has verified it."
)
AI_DRAFT_NOTICE = f"{AI_DRAFT_BANNER}. {AI_DRAFT_EXPLANATION}"
DEMO_BANNER = "DEMO MODEL - UNTRAINED"
DEMO_EXPLANATION = (
    "The model that wrote this text has random, untrained weights: the text "
    "is meaningless and is not a medical assessment."
)
DEMO_NOTICE = f"{DEMO_BANNER}. {DEMO_EXPLANATION}"
NO_PRIOR = "No prior study was available for comparison."


def notices(model: ModelIdentity) -> list[str]:
    """The warnings that head every rendition, most important first."""
    return [AI_DRAFT_NOTICE, DEMO_NOTICE] if model.is_demo else [AI_DRAFT_NOTICE]


def comparison(prior_study_date: dt.date | None) -> str:
    """What the draft was compared with, naming the prior's date."""
    if prior_study_date is None:
        return NO_PRIOR
    return f"Compared with the prior chest radiograph of {prior_study_date:%Y-%m-%d}."


def model_description(model: ModelIdentity) -> str:
    """The model's identity in one line, as people read it."""
    text = (
        f"{model.name} (variant {model.variant}, weights {model.revision}), "
        f"libra-node {model.node_version}"
    )
    return f"{text}, untrained demo model" if model.is_demo else text


def document_title(model: ModelIdentity) -> str:
    """The PDF's title, in its DICOM header and its own metadata."""
    title = f"{AI_DRAFT_BANNER}: chest radiograph report"
    return f"{title} ({DEMO_BANNER})" if model.is_demo else title


def series_description(configured: str, model: ModelIdentity) -> str:
    """The configured series description, marked when the model is a demo.

    The mark is added only where it fits the 64 characters a series
    description may hold; the content always carries the demo notice.
    """
    marked = f"{configured} ({DEMO_BANNER})"
    return marked if model.is_demo and len(marked) <= 64 else configured
