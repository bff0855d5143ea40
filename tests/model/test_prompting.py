"""Prompt text (golden strings for both templates) and prompt tokens."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from libra_node.draft import ClinicalContext
from libra_node.model.configuration_libra import LibraConfig, libra_3b_config, libra_7b_config
from libra_node.model.prompting import (
    IMAGE_TOKEN_INDEX,
    LIBRA_LLAMA_3,
    LIBRA_V1,
    build_prompt,
    clean_field,
    clinical_context_from_datasets,
    finish_text,
    template_for_config,
    tokenize_prompt,
)
from libra_node.synthetic import SyntheticStudy, make_chest_image

FULL_CONTEXT = ClinicalContext(
    indication="Shortness of breath.",
    history="Heart failure",
    comparison="2024-05-01",
    technique="PA view",
)

GOLDEN_V1 = (
    "The assistant specialized in comparing Chest X-ray images, identifying differences, and noting "
    "temporal changes. USER: <image>\nProvide a detailed description of the findings in the radiology "
    "image. ASSISTANT:"
)
GOLDEN_V1_CONTEXT = (
    "The assistant specialized in comparing Chest X-ray images, identifying differences, and noting "
    "temporal changes. USER: <image>\nProvide a detailed description of the findings in the radiology "
    "image. Following clinical context: Indication: Shortness of breath, History: Heart failure, "
    "Comparison: 2024-05-01, Technique: PA view. ASSISTANT:"
)
GOLDEN_LLAMA_3 = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
    "The assistant specialized in comparing Chest X-ray images, identifying differences, and noting "
    "temporal changes.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\n"
    "Provide a detailed description of the findings in the radiology image. Following clinical "
    "context: History: Heart failure.<|eot_id|>\n<|start_header_id|>ASSISTANT<|end_header_id|>"
)


def test_libra_v1_prompt_is_the_reference_string() -> None:
    assert build_prompt(ClinicalContext(), LIBRA_V1) == GOLDEN_V1
    assert build_prompt(None, LIBRA_V1) == GOLDEN_V1


def test_libra_v1_prompt_with_the_whole_clinical_context() -> None:
    assert build_prompt(FULL_CONTEXT, LIBRA_V1) == GOLDEN_V1_CONTEXT


def test_libra_llama_3_prompt_is_the_reference_string() -> None:
    assert build_prompt(ClinicalContext(history="Heart failure"), LIBRA_LLAMA_3) == GOLDEN_LLAMA_3


def test_only_known_fields_appear_in_their_fixed_order() -> None:
    prompt = build_prompt(ClinicalContext(technique="AP view", indication="fever"), LIBRA_V1)
    assert "Following clinical context: Indication: fever, Technique: AP view. ASSISTANT:" in prompt
    assert "History" not in prompt and "Comparison" not in prompt


def test_clinical_text_cannot_inject_placeholders_or_control_tokens() -> None:
    assert clean_field("cough <image> and\nfever <|eot_id|></s>.") == "cough and fever"
    assert len(clean_field("x" * 5000)) == 200
    prompt = build_prompt(ClinicalContext(history="<image><|start_header_id|>"), LIBRA_LLAMA_3)
    assert prompt.count("<image>") == 1 and prompt.count("<|start_header_id|>") == 3
    assert "History" not in prompt


def test_template_comes_from_the_config() -> None:
    assert template_for_config(libra_7b_config()) is LIBRA_V1
    assert template_for_config(libra_3b_config()) is LIBRA_LLAMA_3
    assert template_for_config(LibraConfig(conversation_template="libra_llama_3")) is LIBRA_LLAMA_3
    with pytest.raises(ValueError, match="unknown conversation template"):
        template_for_config(LibraConfig(conversation_template="vicuna"))


def test_7b_prompt_tokens_match_the_sentencepiece_slow_tokenizer(tiny_7b_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_7b_dir, local_files_only=True)
    slow = spm.SentencePieceProcessor(model_file=str(tiny_7b_dir / "tokenizer.model"))
    before, after = GOLDEN_V1_CONTEXT.split("<image>")
    expected = [slow.bos_id(), *slow.encode(before), IMAGE_TOKEN_INDEX, *slow.encode(after)]
    assert tokenize_prompt(GOLDEN_V1_CONTEXT, tokenizer) == expected


def test_3b_prompt_tokens_keep_the_reference_double_bos_and_special_tokens(
    tiny_3b_dir: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_3b_dir, local_files_only=True)
    ids = tokenize_prompt(GOLDEN_LLAMA_3, tokenizer)
    bos = tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    header = tokenizer.convert_tokens_to_ids("<|start_header_id|>")
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    # The tokenizer adds BOS and the template starts with <|begin_of_text|>: two, as in the reference.
    assert ids[:3] == [bos, bos, header]
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and ids.count(bos) == 2
    image_at = ids.index(IMAGE_TOKEN_INDEX)
    assert ids[image_at + 1] != bos
    assert ids.count(eot) == 2 and ids.count(header) == 3
    text_after = tokenizer.decode(ids[image_at + 1 :])
    assert text_after.startswith("\nProvide a detailed description") and text_after.endswith(
        "ASSISTANT<|end_header_id|>"
    )


def test_finished_text_loses_whitespace_and_a_trailing_stop_string() -> None:
    assert finish_text("  The lungs are clear.</s> ", LIBRA_V1) == "The lungs are clear."
    assert finish_text("No effusion.<|eot_id|>", LIBRA_LLAMA_3) == "No effusion."
    assert finish_text("No effusion.</s>", LIBRA_LLAMA_3) == "No effusion.</s>"


def test_clinical_context_from_dicom_headers() -> None:
    current = make_chest_image(
        SyntheticStudy(reason_for_request="Cough for two weeks", views=("PA",)), "PA"
    )
    current.AdditionalPatientHistory = "Smoker"
    prior = make_chest_image(SyntheticStudy(study_date=dt.date(2025, 3, 9), views=("AP",)), "AP")
    assert clinical_context_from_datasets(current, prior) == ClinicalContext(
        indication="Cough for two weeks",
        history="Smoker",
        comparison="2025-03-09",
        technique="PA view",
    )
    no_reason = make_chest_image(
        SyntheticStudy(study_description="XR CHEST PA", views=("PA",), omit_view_position=True),
        "PA",
    )
    assert clinical_context_from_datasets(no_reason) == ClinicalContext(indication="XR CHEST PA")
