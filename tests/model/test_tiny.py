"""The tiny untrained checkpoint: layout, size, tokenizers, determinism, speed."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from safetensors import safe_open
from transformers import AutoTokenizer, LlamaTokenizer

from libra_node.model.inference import GenerationRequest, LibraGenerator
from libra_node.model.tiny import corpus_words, write_tiny_checkpoint

MB = 1 << 20


@pytest.mark.parametrize(
    ("name", "template"), [("tiny_7b_dir", "libra_v1"), ("tiny_3b_dir", "libra_llama_3")]
)
def test_layout_of_the_released_checkpoints_and_a_few_mb(
    request: pytest.FixtureRequest, name: str, template: str
) -> None:
    folder: Path = request.getfixturevalue(name)
    for file in (
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "rad-dino/config.json",
        "rad-dino/model.safetensors",
        "rad-dino/preprocessor_config.json",
        "tokenizer_config.json",
    ):
        assert (folder / file).is_file(), file
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("libra", ["LibraLlamaForCausalLM"])
    assert (config["untrained_demo_model"], config["conversation_template"]) == (True, template)
    assert (
        config["mm_projector_type"] == "TAC" and config["mm_vision_tower"] == "microsoft/rad-dino"
    )
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 5 * MB
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        keys = set(weights.keys())
    assert "model.mm_projector.cros_attention.in_proj_weight" in keys and "lm_head.weight" in keys
    assert not any(key.startswith("model.vision_tower.") for key in keys)


def test_7b_layout_ships_a_sentencepiece_model_for_the_slow_tokenizer(tiny_7b_dir: Path) -> None:
    assert (tiny_7b_dir / "tokenizer.model").is_file() and not (
        tiny_7b_dir / "tokenizer.json"
    ).exists()
    tokenizer = LlamaTokenizer.from_pretrained(tiny_7b_dir)
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<s>", "</s>")
    ids = tokenizer("The lungs are clear.").input_ids
    assert (
        ids[0] == tokenizer.bos_token_id
        and tokenizer.decode(ids, skip_special_tokens=True) == "The lungs are clear."
    )


def test_3b_layout_ships_a_llama_3_style_tokenizer(tiny_3b_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_3b_dir)
    for token in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
        assert len(tokenizer(token, add_special_tokens=False).input_ids) == 1
    assert tokenizer("No effusion.").input_ids[0] == tokenizer.convert_tokens_to_ids(
        "<|begin_of_text|>"
    )
    assert tokenizer.eos_token == "<|eot_id|>"


def test_same_seed_same_files_other_seed_other_weights(tmp_path: Path) -> None:
    first = write_tiny_checkpoint(tmp_path / "a", seed=3)
    second = write_tiny_checkpoint(tmp_path / "b", seed=3)
    third = write_tiny_checkpoint(tmp_path / "c", seed=4)
    for file in ("model.safetensors", "tokenizer.model", "rad-dino/model.safetensors"):
        assert (first / file).read_bytes() == (second / file).read_bytes(), file
    assert (first / "model.safetensors").read_bytes() != (third / "model.safetensors").read_bytes()


def test_untrained_text_is_made_of_radiology_words(
    tiny_7b_dir: Path, tiny_3b_dir: Path, rg1_pixels
) -> None:
    words = corpus_words()
    for folder in (tiny_7b_dir, tiny_3b_dir):
        text = (
            LibraGenerator.load(folder, max_new_tokens=48)
            .generate([GenerationRequest(rg1_pixels)])[0]
            .text
        )
        written = re.findall(r"[^\s.,]+", text)
        assert len(written) >= 40
        assert [word for word in written if word.lower() not in words] == []


def test_a_few_dozen_tokens_take_well_under_a_second(generator_7b, rg1_pixels) -> None:
    generator = LibraGenerator(generator_7b.checkpoint, max_new_tokens=32)
    generator.generate([GenerationRequest(rg1_pixels)])  # warm up
    # CPU time of this process: other processes on a shared machine do not count.
    started = time.process_time()
    [result] = generator.generate([GenerationRequest(rg1_pixels)])
    assert result.new_tokens == 32
    assert time.process_time() - started < 1.0


def test_unknown_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="variant must be one of 7b, 3b"):
        write_tiny_checkpoint(tmp_path / "x", variant="13b")
