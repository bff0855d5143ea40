"""The inference API: deterministic, batch equals one-by-one, dummy prior, presets, results."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from libra_node.config import ModelSettings
from libra_node.draft import ClinicalContext
from libra_node.model.image_processing import ImageError
from libra_node.model.inference import GenerationRequest, GenerationResult, LibraGenerator
from libra_node.model.loading import CheckpointError
from libra_node.model.prompting import build_prompt, tokenize_prompt

IMAGE_TOKENS = 37 * 37


def mixed_requests(
    rg1: np.ndarray, noise: tuple[np.ndarray, np.ndarray]
) -> list[GenerationRequest]:
    """Different images, priors and contexts, so prompts differ in length and content."""
    first, second = noise
    return [
        GenerationRequest(rg1),
        GenerationRequest(rg1, first, ClinicalContext(indication="cough", comparison="2024-01-05")),
        GenerationRequest(
            second, None, ClinicalContext(history="long history of heart failure and smoking")
        ),
        GenerationRequest(first, rg1, ClinicalContext(technique="AP view")),
    ]


@pytest.mark.parametrize("name", ["generator_7b", "generator_3b"])
def test_batch_gives_the_same_texts_as_one_by_one(
    request: pytest.FixtureRequest, name: str, rg1_pixels, noise_pixels
) -> None:
    generator: LibraGenerator = request.getfixturevalue(name)
    requests = mixed_requests(rg1_pixels, noise_pixels)
    batched = generator.generate(requests)
    single = [generator.generate([item])[0] for item in requests]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.new_tokens for r in batched] == [r.new_tokens for r in single]
    assert [r.prompt_tokens for r in batched] == [r.prompt_tokens for r in single]
    # The requests differ, so must the texts: a batch that mixed rows up would show here.
    assert len({r.text for r in batched}) == len(requests)


def test_greedy_generation_is_deterministic_across_loads(
    generator_7b, tiny_7b_dir: Path, rg1_pixels
) -> None:
    item = GenerationRequest(rg1_pixels, None, ClinicalContext(indication="fever"))
    first = generator_7b.generate([item])[0].text
    assert generator_7b.generate([item])[0].text == first
    fresh = LibraGenerator.load(
        tiny_7b_dir, max_new_tokens=generator_7b.generation_config.max_new_tokens
    )
    assert fresh.generate([item])[0].text == first


def test_no_prior_means_the_current_image_stands_in(generator_7b, rg1_pixels, noise_pixels) -> None:
    dummy = generator_7b.generate([GenerationRequest(rg1_pixels, None)])[0]
    copied = generator_7b.generate([GenerationRequest(rg1_pixels, rg1_pixels.copy())])[0]
    other = generator_7b.generate([GenerationRequest(rg1_pixels, noise_pixels[0])])[0]
    assert dummy.text == copied.text
    assert other.text != dummy.text


def test_the_prior_reaches_the_image_embeddings(generator_7b, rg1_pixels, noise_pixels) -> None:
    embed = generator_7b._image_embeddings
    with torch.no_grad():
        same = embed([GenerationRequest(rg1_pixels), GenerationRequest(rg1_pixels, rg1_pixels)])
        different = embed([GenerationRequest(rg1_pixels, noise_pixels[0])])
    assert same.shape == (2, IMAGE_TOKENS, 64)
    assert torch.equal(same[0], same[1])
    assert not torch.allclose(same[0], different[0])


def test_result_counts_and_timings(generator_7b, rg1_pixels) -> None:
    context = ClinicalContext(indication="cough")
    [result] = generator_7b.generate([GenerationRequest(rg1_pixels, None, context)])
    prompt_ids = tokenize_prompt(
        build_prompt(context, generator_7b.checkpoint.template), generator_7b.checkpoint.tokenizer
    )
    assert result.prompt_tokens == len(prompt_ids) - 1 + IMAGE_TOKENS
    # The demo model never scores end-of-text, so it always writes the full length.
    assert (result.new_tokens, result.stopped) == (
        generator_7b.generation_config.max_new_tokens,
        False,
    )
    assert 0 < result.encode_seconds < result.total_seconds and result.generate_seconds > 0
    assert result.batch_size == 1
    assert result.text and result.to_dict()["text"] == result.text


def test_generation_stops_at_an_end_of_text_token(generator_7b, rg1_pixels) -> None:
    item = GenerationRequest(rg1_pixels)
    first_token = generator_7b.checkpoint.tokenizer(
        generator_7b.generate([item])[0].text.split()[0]
    ).input_ids[1]
    stopping = LibraGenerator(generator_7b.checkpoint, max_new_tokens=8)
    stopping.eos_token_ids = [first_token]
    stopping.generation_config.eos_token_id = [first_token]
    [result] = stopping.generate([item])
    assert (result.text, result.new_tokens, result.stopped) == ("", 1, True)


def test_max_batch_splits_large_requests(tiny_7b_dir: Path, rg1_pixels, noise_pixels) -> None:
    generator = LibraGenerator.load(tiny_7b_dir, max_batch=2, max_new_tokens=4)
    results = generator.generate(mixed_requests(rg1_pixels, noise_pixels)[:3])
    assert [r.batch_size for r in results] == [2, 2, 1]
    assert generator.generate([]) == []


def test_presets_and_overrides(generator_7b, rg1_pixels) -> None:
    checkpoint = generator_7b.checkpoint
    clinical = LibraGenerator(checkpoint).generation_config
    assert (
        clinical.do_sample,
        clinical.num_beams,
        clinical.no_repeat_ngram_size,
        clinical.max_new_tokens,
    ) == (False, 1, 3, 256)
    paper = LibraGenerator(checkpoint, preset="paper", max_new_tokens=6)
    assert (paper.generation_config.num_beams, paper.generation_config.length_penalty) == (10, 2.0)
    sample = LibraGenerator(checkpoint, preset="sample", top_p=0.5)
    assert (sample.generation_config.temperature, sample.generation_config.top_p) == (0.9, 0.5)

    item = GenerationRequest(rg1_pixels)
    beams = paper.generate([item, item])
    assert beams[0].text == beams[1].text == paper.generate([item])[0].text
    assert beams[0].new_tokens <= 6
    assert sample.generate([replace(item)])[0].new_tokens > 0
    with pytest.raises(ValueError, match="unknown generation preset"):
        LibraGenerator(checkpoint, preset="creative")
    with pytest.raises(ValueError, match="unknown generation settings: beams"):
        LibraGenerator(checkpoint, beams=3)


def test_max_new_tokens_is_cut_to_the_positions_left(tiny_7b_dir: Path, rg1_pixels) -> None:
    generator = LibraGenerator.load(tiny_7b_dir, max_new_tokens=5000)
    [result] = generator.generate([GenerationRequest(rg1_pixels)])
    assert (
        result.prompt_tokens + result.new_tokens
        == generator.checkpoint.model.config.max_position_embeddings
    )


def test_from_settings_uses_the_model_section(tiny_3b_dir: Path, rg1_pixels) -> None:
    settings = ModelSettings(path=tiny_3b_dir, preset="clinical", max_new_tokens=3, max_batch=1)
    generator = LibraGenerator.from_settings(settings)
    assert generator.identity.variant == "tiny" and generator.is_demo
    assert (generator.device.type, generator.dtype) == ("cpu", torch.float32)
    results = generator.generate([GenerationRequest(rg1_pixels)] * 2)
    assert [r.new_tokens for r in results] == [3, 3] and all(
        isinstance(r, GenerationResult) for r in results
    )
    with pytest.raises(CheckpointError, match="no model configured"):
        LibraGenerator.from_settings(ModelSettings())


def test_requests_must_hold_prepared_images(generator_7b) -> None:
    with pytest.raises(ImageError, match="518x518 uint8"):
        generator_7b.generate([GenerationRequest(np.zeros((100, 100), np.uint8))])


def test_features_are_every_block_output_before_the_final_norm_without_cls(
    generator_7b, rg1_pixels
) -> None:
    model = generator_7b.checkpoint.model
    pixels = torch.from_numpy(generator_7b.checkpoint.normalizer([rg1_pixels]))
    with torch.no_grad():
        features = model.encode_images(pixels)
        outputs = model.model.vision_tower.vision_tower(pixels, output_hidden_states=True)
    assert features.shape == (1, 12, IMAGE_TOKENS, 32)
    for layer in range(12):
        assert torch.equal(features[0, layer], outputs.hidden_states[layer + 1][0, 1:])
    assert not torch.allclose(features[0, -1], outputs.last_hidden_state[0, 1:])


def test_image_embeddings_replace_the_placeholder_and_padding_is_on_the_left(generator_7b) -> None:
    model = generator_7b.checkpoint.model
    image = torch.randn(2, 3, 64)
    with torch.no_grad():
        embeds, mask, ids = model.splice_image_embeddings(
            [[1, 5, -200, 6, 7], [1, -200, 9]], image, image_token_id=-200, placeholder_id=1
        )
        table = model.model.embed_tokens.weight
    assert embeds.shape == (2, 7, 64)
    assert mask.tolist() == [[1] * 7, [0, 0, 1, 1, 1, 1, 1]]
    assert ids.tolist() == [[1, 5, 1, 1, 1, 6, 7], [1, 1, 1, 1, 1, 1, 9]]
    assert torch.equal(embeds[0, 2:5], image[0]) and torch.equal(embeds[1, 3:6], image[1])
    assert torch.equal(embeds[0, 1], table[5]) and torch.equal(embeds[1, 6], table[9])
    assert torch.equal(embeds[1, :2], torch.zeros(2, 64))
    with pytest.raises(ValueError, match="2 image placeholders"):
        model.splice_image_embeddings(
            [[1, -200, -200]], image[:1], image_token_id=-200, placeholder_id=1
        )
