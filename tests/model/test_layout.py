"""The 7B and 3B models, built on the meta device, have the released checkpoints' layout.

The expected layout is written out here from the published facts (LIBRA.md),
independently of the modeling code, so a renamed or reshaped parameter fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from libra_node.model.configuration_libra import LibraConfig, libra_3b_config, libra_7b_config
from libra_node.model.modeling_libra import LibraLlamaForCausalLM
from libra_node.model.prompting import template_for_config

VISION_WIDTH = 768


def llama_layout(
    vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int
) -> dict:
    head_dim = hidden // heads
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for n in range(layers):
        prefix = f"model.layers.{n}."
        shapes |= {
            prefix + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            prefix + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            prefix + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            prefix + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            prefix + "mlp.gate_proj.weight": (intermediate, hidden),
            prefix + "mlp.up_proj.weight": (intermediate, hidden),
            prefix + "mlp.down_proj.weight": (hidden, intermediate),
            prefix + "input_layernorm.weight": (hidden,),
            prefix + "post_attention_layernorm.weight": (hidden,),
        }
    return shapes


def connector_layout(hidden: int) -> dict:
    p = "model.mm_projector."
    v = VISION_WIDTH
    shapes = {p + "LFE_prior_bias": ()}
    # Squeeze-excitation blocks 12->6->12, 6->3->6, 3->1->3 and the 1x1 convolutions between them.
    for index, (channels, squeeze) in zip((0, 2, 4), ((12, 6), (6, 3), (3, 1))):
        shapes |= {
            f"{p}LFE.{index}.fc1.weight": (squeeze, channels, 1, 1),
            f"{p}LFE.{index}.fc1.bias": (squeeze,),
            f"{p}LFE.{index}.fc2.weight": (channels, squeeze, 1, 1),
            f"{p}LFE.{index}.fc2.bias": (channels,),
        }
    for index, (inputs, outputs) in zip((1, 3, 5), ((12, 6), (6, 3), (3, 1))):
        shapes[f"{p}LFE.{index}.weight"] = (outputs, inputs, 1, 1)
    for attention in ("cur_self_attention", "prior_self_attention", "cros_attention"):
        shapes |= {
            f"{p}{attention}.in_proj_weight": (3 * v, v),
            f"{p}{attention}.in_proj_bias": (3 * v,),
            f"{p}{attention}.bias_k": (1, 1, v),
            f"{p}{attention}.bias_v": (1, 1, v),
            f"{p}{attention}.out_proj.weight": (v, v),
            f"{p}{attention}.out_proj.bias": (v,),
        }
    for norm in ("norm1", "norm2", "norm3", "norm4"):
        shapes |= {f"{p}{norm}.weight": (v,), f"{p}{norm}.bias": (v,)}
    shapes |= {
        f"{p}mlp_attn.0.weight": (v, v),
        f"{p}mlp_attn.0.bias": (v,),
        f"{p}mlp_attn.3.weight": (v, v),
        f"{p}mlp_attn.3.bias": (v,),
        f"{p}mlp_final.0.weight": (hidden, v),
        f"{p}mlp_final.0.bias": (hidden,),
    }
    for index in (2, 4, 6):
        shapes |= {
            f"{p}mlp_final.{index}.weight": (hidden, hidden),
            f"{p}mlp_final.{index}.bias": (hidden,),
        }
    return shapes


RELEASED = {
    "7b": (
        libra_7b_config,
        dict(vocab=32017, hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008),
        61.8,
    ),
    "3b": (
        libra_3b_config,
        dict(vocab=128256, hidden=3072, layers=28, heads=24, kv_heads=8, intermediate=8192),
        39.0,
    ),
}


@pytest.fixture(scope="module", params=sorted(RELEASED))
def released(request: pytest.FixtureRequest):
    make_config, sizes, connector_millions = RELEASED[request.param]
    with torch.device("meta"):
        model = LibraLlamaForCausalLM(make_config())
    return model, sizes, connector_millions


def test_language_model_and_connector_keys_and_shapes_match_the_released_layout(released) -> None:
    model, sizes, _ = released
    actual = {
        name: tuple(tensor.shape)
        for name, tensor in model.state_dict().items()
        if not name.startswith("model.vision_tower.")
    }
    expected = llama_layout(**sizes) | connector_layout(sizes["hidden"])
    assert sorted(set(actual) - set(expected)) == []
    assert sorted(set(expected) - set(actual)) == []
    assert {name: shape for name, shape in actual.items() if expected[name] != shape} == {}


def test_connector_has_the_published_parameter_count(released) -> None:
    model, _, connector_millions = released
    count = sum(p.numel() for p in model.model.mm_projector.parameters())
    assert round(count / 1e6, 1) == connector_millions


def test_vision_tower_is_rad_dino_sized_under_the_checkpoint_prefix(released) -> None:
    model, _, _ = released
    vision = {
        name: t
        for name, t in model.state_dict().items()
        if name.startswith("model.vision_tower.vision_tower.")
    }
    assert round(sum(t.numel() for t in vision.values()) / 1e6, 1) == 86.6
    assert vision["model.vision_tower.vision_tower.embeddings.position_embeddings"].shape == (
        1,
        37 * 37 + 1,
        768,
    )
    assert vision[
        "model.vision_tower.vision_tower.embeddings.patch_embeddings.projection.weight"
    ].shape == (768, 3, 14, 14)
    layers = {
        name.split(".encoder.layer.")[1].split(".")[0]
        for name in vision
        if ".encoder.layer." in name
    }
    assert layers == {str(n) for n in range(12)}


def test_attention_heads_follow_the_llm() -> None:
    with torch.device("meta"):
        model_7b = LibraLlamaForCausalLM(libra_7b_config())
        model_3b = LibraLlamaForCausalLM(libra_3b_config())
    assert model_7b.model.mm_projector.cros_attention.num_heads == 32
    assert model_3b.model.mm_projector.cros_attention.num_heads == 24
    assert model_3b.config.num_key_value_heads == 8


def test_released_configs_carry_the_multimodal_keys() -> None:
    config = libra_7b_config().to_dict()
    assert config["model_type"] == "libra"
    assert config["architectures"] == ["LibraLlamaForCausalLM"]
    assert {k: config[k] for k in ("mm_vision_tower", "mm_hidden_size", "mm_projector_type")} == {
        "mm_vision_tower": "microsoft/rad-dino",
        "mm_hidden_size": 768,
        "mm_projector_type": "TAC",
    }
    assert (config["mm_vision_select_layer"], config["mm_vision_select_feature"]) == (
        "all",
        "patch",
    )
    assert (
        config["image_aspect_ratio"],
        config["mm_use_im_start_end"],
        config["mm_use_im_patch_token"],
    ) == (
        "pad",
        False,
        False,
    )
    assert config["tie_word_embeddings"] is False and config["max_position_embeddings"] == 2048


# config.json as the released 7B writes it: Llama-2 keys, the mm_* keys and training leftovers.
RELEASED_7B_CONFIG_JSON = {
    "_name_or_path": "checkpoints/libra-v1.0-7b",
    "architectures": ["LibraLlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "freeze_mm_mlp_adapter": False,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "image_aspect_ratio": "pad",
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 2048,
    "mm_hidden_size": 768,
    "mm_patch_merge_type": "flat",
    "mm_projector_lr": None,
    "mm_projector_type": "TAC",
    "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False,
    "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": "all",
    "mm_vision_tower": "microsoft/rad-dino",
    "model_type": "libra",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "pad_token_id": 0,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "tokenizer_model_max_length": 2048,
    "tokenizer_padding_side": "right",
    "torch_dtype": "float16",
    "transformers_version": "4.37.2",
    "tune_mm_mlp_adapter": False,
    "use_cache": True,
    "use_mm_proj": True,
    "vocab_size": 32017,
}


def test_a_released_style_config_json_builds_the_same_model(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(RELEASED_7B_CONFIG_JSON))
    config = LibraConfig.from_pretrained(tmp_path, local_files_only=True)
    assert template_for_config(config).name == "libra_v1"
    with torch.device("meta"):
        from_json = LibraLlamaForCausalLM(config).state_dict()
        preset = LibraLlamaForCausalLM(libra_7b_config()).state_dict()
    assert {k: tuple(v.shape) for k, v in from_json.items()} == {
        k: tuple(v.shape) for k, v in preset.items()
    }
