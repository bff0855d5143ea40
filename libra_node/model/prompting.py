"""Prompt text and prompt tokens, as the released Libra checkpoints expect them.

The user turn is the image placeholder, a newline and the query; the query is
the fixed findings instruction plus, when anything is known, a clinical
context sentence. Each checkpoint has its own conversation template
(libra_v1 for the 7B, libra_llama_3 for the 3B), chosen from its config.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.dataset import Dataset

from libra_node.draft import ClinicalContext

IMAGE_TOKEN = "<image>"
# Stands for the image in token id lists until the image embeddings replace it.
IMAGE_TOKEN_INDEX = -200
DEFAULT_QUERY = "Provide a detailed description of the findings in the radiology image."

LIBRA_SYSTEM = (
    "The assistant specialized in comparing Chest X-ray images, identifying differences, "
    "and noting temporal changes."
)
LLAVA_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using "
    "natural language."
)

# Longest text taken from one clinical field: the 7B has about 600 positions
# left for prompt and report, and some DICOM text fields hold pages.
MAX_FIELD_CHARS = 200


@dataclass(frozen=True)
class ConversationTemplate:
    """A single-turn conversation: prefix + user message + suffix, then the model answers."""

    name: str
    prefix: str
    suffix: str
    stop_string: str

    def render(self, query: str) -> str:
        return f"{self.prefix}{IMAGE_TOKEN}\n{query}{self.suffix}"


LIBRA_V1 = ConversationTemplate(
    name="libra_v1",
    prefix=f"{LIBRA_SYSTEM} USER: ",
    suffix=" ASSISTANT:",
    stop_string="</s>",
)

# The reference renders the assistant header with the role name "ASSISTANT"
# and strips the trailing blank line; the 3B was trained on exactly this.
LIBRA_LLAMA_3 = ConversationTemplate(
    name="libra_llama_3",
    prefix=(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        f"{LLAVA_SYSTEM}{LIBRA_SYSTEM}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
    ),
    suffix="<|eot_id|>\n<|start_header_id|>ASSISTANT<|end_header_id|>",
    stop_string="<|eot_id|>",
)

TEMPLATES: dict[str, ConversationTemplate] = {t.name: t for t in (LIBRA_V1, LIBRA_LLAMA_3)}

# The Llama-3 tokenizer's <|begin_of_text|>.
LLAMA_3_BOS_ID = 128000


class PromptTokenizer(Protocol):
    bos_token_id: int | None

    def __call__(self, text: str) -> Any: ...


def template_for_config(config: Any) -> ConversationTemplate:
    """The template a checkpoint was trained with, from its config (never its folder name).

    An explicit ``conversation_template`` key wins; otherwise the Llama-3
    family (its BOS id or its rope type) means libra_llama_3, else libra_v1.
    """
    name = getattr(config, "conversation_template", None)
    if name is None:
        rope = getattr(config, "rope_parameters", None) or {}
        llama_3 = (
            getattr(config, "bos_token_id", None) == LLAMA_3_BOS_ID
            or rope.get("rope_type") == "llama3"
        )
        name = LIBRA_LLAMA_3.name if llama_3 else LIBRA_V1.name
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"unknown conversation template {name!r}; known: {', '.join(sorted(TEMPLATES))}"
        ) from None


def clean_field(value: str) -> str:
    """One clinical field as prompt text: one line, no control tokens, bounded length."""
    text = re.sub(r"<\|[^|>]*\|>|</?s>|<unk>", " ", value.replace(IMAGE_TOKEN, " "))
    text = " ".join(text.split())[:MAX_FIELD_CHARS]
    return text.strip(" .,;:")


def clinical_context_sentence(context: ClinicalContext) -> str:
    """' Following clinical context: Indication: ..., History: ...' for the known fields."""
    fields = (
        ("Indication", context.indication),
        ("History", context.history),
        ("Comparison", context.comparison),
        ("Technique", context.technique),
    )
    parts = [f"{label}: {cleaned}" for label, value in fields if (cleaned := clean_field(value))]
    if not parts:
        return ""
    return " Following clinical context: " + ", ".join(parts) + "."


def build_query(context: ClinicalContext | None = None, query: str = DEFAULT_QUERY) -> str:
    return query + clinical_context_sentence(context or ClinicalContext())


def build_prompt(context: ClinicalContext | None, template: ConversationTemplate) -> str:
    """The whole prompt text, with the "<image>" placeholder."""
    return template.render(build_query(context))


def tokenize_prompt(prompt: str, tokenizer: PromptTokenizer) -> list[int]:
    """Token ids with IMAGE_TOKEN_INDEX where "<image>" stood.

    Each piece around the placeholder is tokenised on its own; when the
    tokenizer starts pieces with BOS, only the first piece keeps it (the
    reference's rule). Literal special tokens in the text (the Llama-3
    headers, and its leading <|begin_of_text|>) are kept as they are, so the
    3B prompt starts with two BOS ids, as in the reference.
    """
    pieces = [tokenizer(piece).input_ids for piece in prompt.split(IMAGE_TOKEN)]
    drop_leading = bool(pieces[0]) and pieces[0][0] == tokenizer.bos_token_id
    ids = list(pieces[0])
    for piece in pieces[1:]:
        ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(piece[1:] if drop_leading else piece)
    return ids


def finish_text(text: str, template: ConversationTemplate) -> str:
    """Generated text as findings: trimmed, without a trailing stop string."""
    text = text.strip()
    if text.endswith(template.stop_string):
        text = text[: -len(template.stop_string)]
    return text.strip()


def _study_date(dataset: Dataset) -> str:
    """DICOM DA (YYYYMMDD) as YYYY-MM-DD; anything else as given."""
    value = str(dataset.get("StudyDate", "") or "").strip()
    if re.fullmatch(r"\d{8}", value):
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def _reason_for_request(dataset: Dataset) -> str:
    reason = str(dataset.get("ReasonForTheRequestedProcedure", "") or "")
    if not reason:
        for item in dataset.get("RequestAttributesSequence", None) or []:
            reason = str(item.get("ReasonForTheRequestedProcedure", "") or "")
            if reason:
                break
    return reason


def clinical_context_from_datasets(
    current: Dataset, prior: Dataset | None = None
) -> ClinicalContext:
    """What the DICOM headers say: indication, history, the prior's date, the view."""
    view = str(current.get("ViewPosition", "") or "").strip()
    indication = _reason_for_request(current) or str(current.get("StudyDescription", "") or "")
    return ClinicalContext(
        indication=indication.strip(),
        history=str(current.get("AdditionalPatientHistory", "") or "").strip(),
        comparison=_study_date(prior) if prior is not None else "",
        technique=f"{view} view" if view else "",
    )


def prompt_token_ids(
    contexts: Sequence[ClinicalContext], template: ConversationTemplate, tokenizer: PromptTokenizer
) -> list[list[int]]:
    return [tokenize_prompt(build_prompt(context, template), tokenizer) for context in contexts]


__all__ = [
    "ConversationTemplate",
    "DEFAULT_QUERY",
    "IMAGE_TOKEN",
    "IMAGE_TOKEN_INDEX",
    "LIBRA_LLAMA_3",
    "LIBRA_V1",
    "TEMPLATES",
    "build_prompt",
    "build_query",
    "clean_field",
    "clinical_context_from_datasets",
    "clinical_context_sentence",
    "finish_text",
    "prompt_token_ids",
    "template_for_config",
    "tokenize_prompt",
]
