"""Decoding presets: how the findings text is searched for.

clinical  greedy with 3-gram blocking: deterministic, the node's default.
paper     10 beams, length penalty 2: the setting of the published results.
sample    temperature 0.9, top-p 0.8: the reference demo; varies run to run.

Any GenerationConfig field can be overridden (``max_new_tokens=120``).
"""

from __future__ import annotations

from typing import Any

from transformers import GenerationConfig

DEFAULT_MAX_NEW_TOKENS = 256

PRESETS: dict[str, dict[str, Any]] = {
    "clinical": {"do_sample": False, "num_beams": 1, "no_repeat_ngram_size": 3},
    "paper": {
        "do_sample": False,
        "num_beams": 10,
        "length_penalty": 2.0,
        "no_repeat_ngram_size": 3,
    },
    "sample": {"do_sample": True, "num_beams": 1, "temperature": 0.9, "top_p": 0.8},
}


def generation_config(
    preset: str, eos_token_ids: list[int], pad_token_id: int, **overrides: Any
) -> GenerationConfig:
    """The GenerationConfig of a preset, with overrides applied and checked."""
    if preset not in PRESETS:
        raise ValueError(f"unknown generation preset {preset!r}; known: {', '.join(PRESETS)}")
    known = set(GenerationConfig().to_dict())
    unknown = sorted(key for key in overrides if key not in known)
    if unknown:
        raise ValueError(f"unknown generation settings: {', '.join(unknown)}")
    values = {
        "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
        **PRESETS[preset],
        **{key: value for key, value in overrides.items() if value is not None},
        "eos_token_id": eos_token_ids,
        "pad_token_id": pad_token_id,
        "num_return_sequences": 1,
    }
    config = GenerationConfig(**values)
    config.validate(strict=True)
    return config


__all__ = ["DEFAULT_MAX_NEW_TOKENS", "PRESETS", "generation_config"]
