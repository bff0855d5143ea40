"""Libra configuration: a Llama configuration plus the multimodal (mm_*) keys.

The released checkpoints (X-iZhang/libra-v1.0-7b and -3b) store exactly these
keys in their config.json with model_type "libra". Two keys are this node's own
additions and absent from the released files: ``conversation_template`` (tiny
checkpoints name their template; released ones are recognised by their
tokenizer family) and ``untrained_demo_model`` (set only by the tiny
checkpoint writer).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import Dinov2Config, LlamaConfig

# RAD-DINO (microsoft/rad-dino): a DINOv2 ViT-B/14 at 518 px. Used when a
# model is built without its vision folder at hand (layout checks, benchmarks).
RAD_DINO_CONFIG: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "mlp_ratio": 4,
    "image_size": 518,
    "patch_size": 14,
    "num_channels": 3,
    "qkv_bias": True,
    "layerscale_value": 1.0,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu",
    "use_swiglu_ffn": False,
}

# The connector's layerwise feature extractor reduces exactly this many
# encoder layers (RAD-DINO's depth) to one.
VISION_LAYERS = 12


@strict
class LibraConfig(LlamaConfig):
    model_type = "libra"

    mm_vision_tower: str = "microsoft/rad-dino"
    mm_hidden_size: int = 768
    mm_projector_type: str = "TAC"
    mm_vision_select_layer: str | int = "all"
    mm_vision_select_feature: str = "patch"
    image_aspect_ratio: str = "pad"
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    conversation_template: str | None = None
    untrained_demo_model: bool = False


def rad_dino_config(**overrides: Any) -> Dinov2Config:
    """The RAD-DINO vision configuration, optionally changed (tiny models)."""
    return Dinov2Config(**{**RAD_DINO_CONFIG, **overrides})


def libra_7b_config(**overrides: Any) -> LibraConfig:
    """X-iZhang/libra-v1.0-7b: Meditron-7B (Llama-2 7B shapes) + TAC."""
    values: dict[str, Any] = {
        "architectures": ["LibraLlamaForCausalLM"],
        "vocab_size": 32017,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
    }
    return LibraConfig(**{**values, **overrides})


def libra_3b_config(**overrides: Any) -> LibraConfig:
    """X-iZhang/libra-v1.0-3b: Llama-3.2-3B-Instruct + TAC."""
    values: dict[str, Any] = {
        "architectures": ["LibraLlamaForCausalLM"],
        "vocab_size": 128256,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
        },
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        # Llama-3.2-3B shares its input and output embeddings.
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    }
    return LibraConfig(**{**values, **overrides})


__all__ = [
    "LibraConfig",
    "RAD_DINO_CONFIG",
    "VISION_LAYERS",
    "libra_3b_config",
    "libra_7b_config",
    "rad_dino_config",
]
