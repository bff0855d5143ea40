"""Checkpoint loading: every weight from a file, every problem a clear error."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from libra_node.model.inference import GenerationRequest, LibraGenerator
from libra_node.model.loading import CheckpointError, load_checkpoint, resolve_device, resolve_dtype

State = dict[str, torch.Tensor]


def copy_of(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_weights(
    folder: Path, change: Callable[[State], State], name: str = "model.safetensors"
) -> None:
    path = folder / name
    save_file(change(load_file(path)), str(path))


def edit_config(folder: Path, **values) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def texts(model_dir: Path, image: np.ndarray, **load) -> list[str]:
    generator = LibraGenerator.load(model_dir, max_new_tokens=8, **load)
    return [result.text for result in generator.generate([GenerationRequest(image)])]


def test_every_weight_comes_from_the_files(tiny_7b_dir: Path) -> None:
    checkpoint = load_checkpoint(tiny_7b_dir)
    model_state = checkpoint.model.state_dict()
    stored = load_file(tiny_7b_dir / "model.safetensors")
    assert stored and all(torch.equal(model_state[name], tensor) for name, tensor in stored.items())
    vision = load_file(tiny_7b_dir / "rad-dino" / "model.safetensors")
    prefix = "model.vision_tower.vision_tower."
    assert torch.equal(
        model_state[prefix + "encoder.layer.3.attention.q_proj.weight"],
        vision["encoder.layer.3.attention.attention.query.weight"],
    )
    assert torch.equal(
        model_state[prefix + "embeddings.position_embeddings"],
        vision["embeddings.position_embeddings"],
    )
    assert not any(t.is_meta for t in (*checkpoint.model.parameters(), *checkpoint.model.buffers()))


@pytest.mark.parametrize("layout", ["safetensors shards", "bin"])
def test_save_and_load_round_trip_gives_identical_outputs(
    tiny_7b_dir: Path, tmp_path: Path, rg1_pixels: np.ndarray, layout: str
) -> None:
    checkpoint = load_checkpoint(tiny_7b_dir)
    state = {
        k: v.clone()
        for k, v in checkpoint.model.state_dict().items()
        if not k.startswith("model.vision_tower.")
    }
    target = copy_of(tiny_7b_dir, tmp_path / "resaved")
    (target / "model.safetensors").unlink()
    if layout == "bin":
        torch.save(state, target / "pytorch_model.bin")
    else:
        names = sorted(state)
        shards = {
            "model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2],
        }
        for shard, keys in shards.items():
            save_file({k: state[k].contiguous() for k in keys}, str(target / shard))
        weight_map = {key: shard for shard, keys in shards.items() for key in keys}
        (target / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map})
        )

    reloaded = load_checkpoint(target).model.state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in checkpoint.model.state_dict().items())
    assert texts(target, rg1_pixels) == texts(tiny_7b_dir, rg1_pixels)


def test_missing_weight_files_are_named(tiny_7b_dir: Path, tmp_path: Path) -> None:
    target = copy_of(tiny_7b_dir, tmp_path / "ckpt")
    (target / "model.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match=r"no weights in .*model\.safetensors.*pytorch_model\.bin"
    ):
        load_checkpoint(target)


def test_a_shard_named_in_the_index_must_exist(tiny_7b_dir: Path, tmp_path: Path) -> None:
    target = copy_of(tiny_7b_dir, tmp_path / "ckpt")
    index = {
        "weight_map": {
            "lm_head.weight": "model-00002-of-00002.safetensors",
            "model.norm.weight": "model.safetensors",
        }
    }
    (target / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match="lacks weight shards.*model-00002-of-00002.safetensors"
    ):
        load_checkpoint(target)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: {k: v for k, v in s.items() if k != "model.mm_projector.norm1.weight"},
            r"lacks 1 weight.*norm1\.weight",
        ),
        (
            lambda s: {**s, "model.extra_head.weight": torch.zeros(2)},
            r"has 1 weight.*does not know.*extra_head",
        ),
        (
            lambda s: {**s, "model.norm.weight": torch.ones(3)},
            r"wrongly shaped.*model\.norm\.weight \(3,\) \(expected \(64,\)\)",
        ),
        (
            lambda s: {k: v for k, v in s.items() if not k.startswith("model.layers.1.")},
            r"lacks 9 weight",
        ),
    ],
)
def test_missing_unexpected_or_misshapen_weights_are_errors(
    tiny_7b_dir: Path, tmp_path: Path, change, message
) -> None:
    target = copy_of(tiny_7b_dir, tmp_path / "ckpt")
    edit_weights(target, change)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(target)


def test_connector_can_come_from_the_stage_one_file(
    tiny_7b_dir: Path, tmp_path: Path, rg1_pixels: np.ndarray
) -> None:
    target = copy_of(tiny_7b_dir, tmp_path / "ckpt")
    state = load_file(target / "model.safetensors")
    connector = {k: v for k, v in state.items() if k.startswith("model.mm_projector.")}
    save_file(
        {k: v for k, v in state.items() if k not in connector}, str(target / "model.safetensors")
    )
    with pytest.raises(CheckpointError, match="lacks .*model.mm_projector"):
        load_checkpoint(target)
    torch.save(connector, target / "mm_tac_projector.bin")
    assert texts(target, rg1_pixels) == texts(tiny_7b_dir, rg1_pixels)


def test_a_pickle_that_is_not_plain_tensors_is_refused(tiny_7b_dir: Path, tmp_path: Path) -> None:
    target = copy_of(tiny_7b_dir, tmp_path / "ckpt")
    edit_weights(
        target, lambda s: {k: v for k, v in s.items() if not k.startswith("model.mm_projector.")}
    )
    torch.save(
        {"model.mm_projector.LFE_prior_bias": torch.zeros(()), "code": GenerationRequest},
        target / "mm_tac_projector.bin",
    )
    with pytest.raises(CheckpointError, match="cannot read weight file .*mm_tac_projector.bin"):
        load_checkpoint(target)


def test_stored_vision_tower_and_rotary_tables_are_ignored(
    tiny_7b_dir: Path, tmp_path: Path, rg1_pixels: np.ndarray
) -> None:
    target = copy_of(tiny_7b_dir, tmp_path / "ckpt")
    edit_weights(
        target,
        lambda s: {
            **s,
            "model.vision_tower.vision_tower.encoder.layer.0.attention.attention.query.weight": torch.zeros(
                32, 32
            ),
            "model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(8),
        },
    )
    assert texts(target, rg1_pixels) == texts(tiny_7b_dir, rg1_pixels)


def test_tied_embeddings_share_the_input_matrix(tiny_3b_dir: Path, tmp_path: Path) -> None:
    target = copy_of(tiny_3b_dir, tmp_path / "tied")
    edit_config(target, tie_word_embeddings=True)
    edit_weights(target, lambda s: {k: v for k, v in s.items() if k != "lm_head.weight"})
    model = load_checkpoint(target).model
    assert model.lm_head.weight is model.model.embed_tokens.weight

    edit_weights(
        target, lambda s: {**s, "lm_head.weight": torch.ones_like(s["model.embed_tokens.weight"])}
    )
    with pytest.raises(CheckpointError, match="ties lm_head"):
        load_checkpoint(target)


def test_rad_dino_must_be_found_locally(tiny_7b_dir: Path, tmp_path: Path) -> None:
    target = copy_of(tiny_7b_dir, tmp_path / "ckpt")
    shutil.move(target / "rad-dino", tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="no local RAD-DINO folder.*microsoft/rad-dino"):
        load_checkpoint(target)
    assert load_checkpoint(target, vision_path=tmp_path / "elsewhere").model is not None
    with pytest.raises(CheckpointError, match="RAD-DINO folder .* does not exist"):
        load_checkpoint(target, vision_path=tmp_path / "nowhere")


def test_rad_dino_weights_are_checked_too(tiny_7b_dir: Path, tmp_path: Path) -> None:
    target = copy_of(tiny_7b_dir, tmp_path / "ckpt")
    key = "encoder.layer.5.mlp.fc1.weight"
    edit_weights(target / "rad-dino", lambda s: {k: v for k, v in s.items() if k != key})
    with pytest.raises(
        CheckpointError, match=r"RAD-DINO .* lacks 1 weight.*layer\.5\.mlp\.fc1\.weight"
    ):
        load_checkpoint(target)


def test_rad_dino_must_fit_the_connector(tiny_7b_dir: Path, tmp_path: Path) -> None:
    target = copy_of(tiny_7b_dir, tmp_path / "ckpt")
    edit_config(target, mm_hidden_size=768)
    with pytest.raises(CheckpointError, match="width 32.*mm_hidden_size 768"):
        load_checkpoint(target)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / "config.json").unlink(), "has no config.json"),
        (lambda d: edit_config(d, model_type="llama"), "not a Libra checkpoint"),
        (
            lambda d: edit_config(d, mm_projector_type="mlp2x_gelu"),
            "mm_projector_type is 'mlp2x_gelu'",
        ),
        (lambda d: (d / "tokenizer.model").unlink(), "cannot load the tokenizer"),
        (
            lambda d: [(f / "preprocessor_config.json").unlink() for f in (d, d / "rad-dino")],
            "no preprocessor_config.json",
        ),
    ],
)
def test_broken_folders_give_one_clear_error(
    tiny_7b_dir: Path, tmp_path: Path, breakage, message: str
) -> None:
    target = copy_of(tiny_7b_dir, tmp_path / "ckpt")
    breakage(target)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(target)


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "no-such-model")


def test_demo_identity_and_template_come_from_the_config_not_the_folder_name(
    tiny_7b_dir: Path, tmp_path: Path
) -> None:
    misleading = copy_of(tiny_7b_dir, tmp_path / "libra-v1.0-3b")
    checkpoint = load_checkpoint(misleading)
    assert checkpoint.template.name == "libra_v1"
    identity = checkpoint.identity
    assert (identity.name, identity.variant, identity.is_demo) == (
        "libra-tiny-7b-untrained-demo",
        "tiny",
        True,
    )


def test_identity_of_a_real_checkpoint_records_the_weights(
    tiny_3b_dir: Path, tmp_path: Path
) -> None:
    target = copy_of(tiny_3b_dir, tmp_path / "my-libra")
    edit_config(target, untrained_demo_model=False)
    first = load_checkpoint(target).identity
    assert (first.name, first.variant, first.is_demo) == ("my-libra", "3b", False)
    edit_weights(target, lambda s: {**s, "model.norm.weight": s["model.norm.weight"] * 2})
    assert load_checkpoint(target).identity.revision != first.revision

    (target / "libra-node-fetch.json").write_text(
        json.dumps({"repo_id": "X-iZhang/libra-v1.0-3b", "revision": "abc123"})
    )
    fetched = load_checkpoint(target).identity
    assert (fetched.name, fetched.revision) == ("libra-v1.0-3b", "abc123")


def test_fp16_keeps_the_connector_in_fp32(tiny_7b_dir: Path) -> None:
    model = load_checkpoint(tiny_7b_dir, dtype="float16").model
    assert model.model.embed_tokens.weight.dtype == torch.float16
    assert model.model.vision_tower.vision_tower.embeddings.cls_token.dtype == torch.float16
    assert {p.dtype for p in model.model.mm_projector.parameters()} == {torch.float32}
    features = torch.randn(1, 12, 1369, 32, dtype=torch.float16) * 100
    assert torch.isfinite(model.connect(features, features)).all()


def test_bf16_runs_everything_in_bf16(tiny_7b_dir: Path) -> None:
    model = load_checkpoint(tiny_7b_dir, dtype="bfloat16").model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_device_and_dtype_defaults() -> None:
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(CheckpointError, match="dtype must be"):
        resolve_dtype("int8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="no usable CUDA GPU"):
            resolve_device("cuda")
