"""Load a Libra checkpoint from local folders, offline, with no weight left to chance.

A checkpoint folder holds config.json, the weights (safetensors or .bin, one
file or shards with an index), the tokenizer files and optionally
mm_tac_projector.bin (the stage-1 connector). RAD-DINO comes from its own
folder: the checkpoint's ``mm_vision_tower`` is a hub name, so the node looks
for ``<checkpoint>/rad-dino`` unless told where it is.

Every parameter must come from a file: the model is built on the meta device
(no memory, no random values) and a missing, unexpected or misshapen weight
is an error that names it.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoTokenizer, Dinov2Config, Dinov2Model
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.utils import logging as transformers_logging

from libra_node import __version__
from libra_node.draft import ModelIdentity
from libra_node.logs import get_logger
from libra_node.model.configuration_libra import VISION_LAYERS, LibraConfig
from libra_node.model.image_processing import PREPROCESSOR_CONFIG, ImageError, ImageNormalizer
from libra_node.model.layout import (
    BIN_INDEX,
    BIN_SINGLE,
    CONFIG,
    FETCH_RECORD,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    STAGE_ONE_CONNECTOR,
    TOKENIZER_FILES,
    VISION_FOLDER,
)
from libra_node.model.modeling_libra import LibraLlamaForCausalLM
from libra_node.model.prompting import LIBRA_V1, ConversationTemplate, template_for_config

log = get_logger(__name__)

ARCHITECTURE = "LibraLlamaForCausalLM"

CONNECTOR_PREFIX = "model.mm_projector."
VISION_PREFIX = "model.vision_tower."
# Recomputed from the config, never learned; older checkpoints stored it.
ROTARY_SUFFIX = "rotary_emb.inv_freq"
TIED_HEAD = "lm_head.weight"
EMBEDDINGS = "model.embed_tokens.weight"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded; the message names what is missing or wrong."""


@dataclass
class LibraCheckpoint:
    """Everything generation needs, loaded once per worker process."""

    model: LibraLlamaForCausalLM
    tokenizer: Any
    normalizer: ImageNormalizer
    template: ConversationTemplate
    identity: ModelIdentity
    device: torch.device
    dtype: torch.dtype


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for a setting; auto means the GPU when there is one."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise CheckpointError(f"unknown device {device!r}: {exc}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(
            f"device {device!r} was asked for but this machine has no usable CUDA GPU"
        )
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype for a setting; auto means bf16 on CUDA and fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in choices:
        raise CheckpointError(f"dtype must be auto, {', '.join(choices)}; not {dtype!r}")
    return choices[dtype]


def connector_dtype(dtype: torch.dtype) -> torch.dtype:
    """The connector's L2 norm overflows fp16: it runs in fp32 then."""
    return torch.float32 if dtype == torch.float16 else dtype


def load_checkpoint(
    model_path: str | Path,
    vision_path: str | Path | None = None,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
) -> LibraCheckpoint:
    """Load model, tokenizer, image normaliser and prompt template from local folders."""
    model_path = Path(model_path)
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    raw_config = read_raw_config(model_path)
    config = read_libra_config(model_path)
    vision_dir = resolve_vision_path(model_path, vision_path, config)
    vision_config = read_vision_config(vision_dir, config)
    files = weight_files(model_path)
    tokenizer = load_tokenizer(model_path, config)
    normalizer = load_normalizer(vision_dir, model_path)

    with torch.device("meta"):
        model = LibraLlamaForCausalLM(config, vision_config)
    assign_weights(model, checkpoint_state(model_path, files), target_device, target_dtype)
    model.model.vision_tower.vision_tower = load_vision_tower(
        vision_dir, target_device, target_dtype
    )
    model.model.rotary_emb = LlamaRotaryEmbedding(config).to(target_device)
    ensure_materialized(model)
    model.eval()

    template = template_for_config(config)
    identity = model_identity(model_path, raw_config, config, files, template)
    log.info(
        "model.loaded",
        name=identity.name,
        variant=identity.variant,
        revision=identity.revision,
        device=str(target_device),
        dtype=str(target_dtype).removeprefix("torch."),
        template=template.name,
        demo=identity.is_demo,
        note="UNTRAINED DEMO MODEL: random weights, its text means nothing"
        if identity.is_demo
        else "",
    )
    return LibraCheckpoint(
        model, tokenizer, normalizer, template, identity, target_device, target_dtype
    )


def read_raw_config(model_path: Path) -> dict[str, Any]:
    """config.json as written, checked to be a Libra (TAC) checkpoint."""
    if not model_path.is_dir():
        raise CheckpointError(f"model folder {model_path} does not exist")
    config_file = model_path / CONFIG
    if not config_file.is_file():
        raise CheckpointError(f"{model_path} has no {CONFIG}: not a model checkpoint folder")
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {config_file}: {exc}") from exc
    if raw.get("model_type") != LibraConfig.model_type:
        raise CheckpointError(
            f"{config_file} describes model_type {raw.get('model_type')!r}, not a Libra checkpoint ('libra')"
        )
    if ARCHITECTURE not in (raw.get("architectures") or [ARCHITECTURE]):
        raise CheckpointError(
            f"{config_file} names architectures {raw.get('architectures')}, expected {ARCHITECTURE}"
        )
    expected = {
        "mm_projector_type": "TAC",
        "mm_vision_select_layer": "all",
        "mm_vision_select_feature": "patch",
    }
    for key, value in expected.items():
        if raw.get(key, value) != value:
            raise CheckpointError(
                f"{config_file}: {key} is {raw.get(key)!r}; this node runs Libra with {value!r}"
            )
    return raw


def read_libra_config(model_path: Path) -> LibraConfig:
    try:
        return LibraConfig.from_pretrained(model_path, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"invalid config.json in {model_path}: {exc}") from exc


def resolve_vision_path(
    model_path: Path, vision_path: str | Path | None, config: LibraConfig
) -> Path:
    """RAD-DINO's local folder: given, else <checkpoint>/rad-dino, else a local path in the config."""
    if vision_path is not None:
        candidate = Path(vision_path)
        if not candidate.is_dir():
            raise CheckpointError(f"RAD-DINO folder {candidate} does not exist")
        return candidate
    for candidate in (model_path / VISION_FOLDER, Path(config.mm_vision_tower)):
        if candidate.is_dir():
            return candidate
    raise CheckpointError(
        f"no local RAD-DINO folder: the checkpoint names {config.mm_vision_tower!r} (a hub name) and "
        f"{model_path / VISION_FOLDER} does not exist; set model.vision_path or run "
        "`libra-node model fetch`, which puts it there"
    )


def read_vision_config(vision_dir: Path, config: LibraConfig) -> Dinov2Config:
    try:
        vision_config = Dinov2Config.from_pretrained(vision_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read the RAD-DINO configuration in {vision_dir}: {exc}"
        ) from exc
    if vision_config.hidden_size != config.mm_hidden_size:
        raise CheckpointError(
            f"RAD-DINO in {vision_dir} has width {vision_config.hidden_size}, "
            f"the checkpoint's connector expects mm_hidden_size {config.mm_hidden_size}"
        )
    if vision_config.num_hidden_layers != VISION_LAYERS:
        raise CheckpointError(
            f"RAD-DINO in {vision_dir} has {vision_config.num_hidden_layers} layers; "
            f"the connector needs {VISION_LAYERS}"
        )
    return vision_config


def weight_files(model_path: Path) -> list[Path]:
    """The weight files of a checkpoint: an index and its shards, or one file."""
    for index_name, single_name in (
        (SAFETENSORS_INDEX, SAFETENSORS_SINGLE),
        (BIN_INDEX, BIN_SINGLE),
    ):
        index = model_path / index_name
        if index.is_file():
            return _shards_of(index)
        if (model_path / single_name).is_file():
            return [model_path / single_name]
    raise CheckpointError(
        f"no weights in {model_path}: expected {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX}, "
        f"{BIN_SINGLE} or {BIN_INDEX}"
    )


def _shards_of(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read the shard index {index}: {exc}") from exc
    shards = [index.parent / name for name in sorted(set(weight_map.values()))]
    absent = [shard.name for shard in shards if not shard.is_file()]
    if absent:
        raise CheckpointError(
            f"{index.parent} lacks weight shards named in {index.name}: {', '.join(absent)}"
        )
    return shards


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """One weight file into CPU tensors (memory-mapped where the format allows)."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                return {name: handle.get_tensor(name) for name in handle.keys()}
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files from before torch 1.6 cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"cannot read weight file {path}: it holds more than tensors, and pickled code is never run"
        ) from exc
    except (OSError, SafetensorError, RuntimeError, ValueError, EOFError) as exc:
        raise CheckpointError(f"cannot read weight file {path}: {exc}") from exc


def checkpoint_state(model_path: Path, files: Iterable[Path]) -> dict[str, torch.Tensor]:
    """All checkpoint tensors by name.

    When the weight files hold no connector, it comes from the stage-1 file
    mm_tac_projector.bin (keys ``model.mm_projector.*``) if there is one.
    """
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(read_weights(path))
    stage_one = model_path / STAGE_ONE_CONNECTOR
    if stage_one.is_file() and not any(name.startswith(CONNECTOR_PREFIX) for name in state):
        connector = read_weights(stage_one)
        state.update(
            {
                name: tensor
                for name, tensor in connector.items()
                if name.startswith(CONNECTOR_PREFIX)
            }
        )
        log.info("model.connector_from_stage_one", file=STAGE_ONE_CONNECTOR)
    return state


def _rebuilt_by_model(name: str) -> bool:
    """Checkpoint tensors the model does not take from this file: RAD-DINO (own folder), rotary tables."""
    return name.startswith(VISION_PREFIX) or name.endswith(ROTARY_SUFFIX)


def assign_weights(
    model: LibraLlamaForCausalLM,
    state: dict[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """Put the checkpoint's tensors into the meta-built model; every one must fit exactly."""
    expected = {
        name: tensor for name, tensor in model.state_dict().items() if not _rebuilt_by_model(name)
    }
    tolerated: set[str] = set()
    tied = bool(model.config.tie_word_embeddings)
    if tied:
        # The head is the embedding matrix; a stored copy is accepted only if identical.
        expected.pop(TIED_HEAD, None)
        _check_tied_head(state)
        tolerated.add(TIED_HEAD)

    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(_key_problem("lacks", missing, "the model needs"))
    unexpected = sorted(
        name
        for name in state
        if name not in expected and name not in tolerated and not _rebuilt_by_model(name)
    )
    if unexpected:
        raise CheckpointError(_key_problem("has", unexpected, "this model does not know"))
    mismatched = [
        f"{name} {tuple(state[name].shape)} (expected {tuple(tensor.shape)})"
        for name, tensor in expected.items()
        if tuple(state[name].shape) != tuple(tensor.shape)
    ]
    if mismatched:
        raise CheckpointError(_key_problem("has wrongly shaped", mismatched, ""))

    for_connector = connector_dtype(dtype)
    tensors = {
        name: state[name].to(
            device=device, dtype=for_connector if name.startswith(CONNECTOR_PREFIX) else dtype
        )
        for name in expected
    }
    model.load_state_dict(tensors, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight


def _check_tied_head(state: dict[str, torch.Tensor]) -> None:
    head, embeddings = state.get(TIED_HEAD), state.get(EMBEDDINGS)
    if head is not None and embeddings is not None and not torch.equal(head, embeddings):
        raise CheckpointError(
            "config.json ties lm_head to the input embeddings, but the checkpoint's lm_head.weight "
            "differs from model.embed_tokens.weight"
        )


def _key_problem(verb: str, names: list[str], what: str) -> str:
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    tail = f" {what}" if what else ""
    return f"the checkpoint {verb} {len(names)} weight(s){tail}: {shown}"


def load_vision_tower(vision_dir: Path, device: torch.device, dtype: torch.dtype) -> Dinov2Model:
    """RAD-DINO from its folder; transformers maps its original key names."""
    try:
        with quiet_progress_bars():
            tower, info = Dinov2Model.from_pretrained(
                vision_dir, local_files_only=True, dtype=dtype, output_loading_info=True
            )
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load RAD-DINO from {vision_dir}: {exc}") from exc
    problems = {
        "lacks": sorted(info.get("missing_keys") or []),
        "has unexpected": sorted(info.get("unexpected_keys") or []),
        "has wrongly shaped": sorted(str(item) for item in info.get("mismatched_keys") or []),
    }
    for verb, names in problems.items():
        if names:
            raise CheckpointError(f"RAD-DINO in {vision_dir}: " + _key_problem(verb, names, ""))
    return tower.to(device).eval()


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """transformers' per-file progress bars say nothing useful for small local files."""
    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def ensure_materialized(model: torch.nn.Module) -> None:
    """No tensor may be left on the meta device (that would be an uninitialised weight)."""
    left = [
        name
        for name, tensor in (*model.named_parameters(), *model.named_buffers())
        if tensor.is_meta
    ]
    if left:
        raise CheckpointError(_key_problem("left unloaded", left, ""))


def load_tokenizer(model_path: Path, config: LibraConfig) -> Any:
    # Without a vocabulary file transformers would quietly build an empty tokenizer.
    if not any((model_path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(
            f"cannot load the tokenizer: {model_path} has neither {' nor '.join(TOKENIZER_FILES)}"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"cannot load the tokenizer in {model_path} (tokenizer.model or tokenizer.json with "
            f"tokenizer_config.json): {exc}"
        ) from exc
    if len(tokenizer) > config.vocab_size:
        raise CheckpointError(
            f"the tokenizer in {model_path} has {len(tokenizer)} tokens, the model only {config.vocab_size}"
        )
    return tokenizer


def load_normalizer(vision_dir: Path, model_path: Path) -> ImageNormalizer:
    """RAD-DINO's processor settings (what the reference uses), else the checkpoint's copy."""
    for folder in (vision_dir, model_path):
        if (folder / PREPROCESSOR_CONFIG).is_file():
            try:
                return ImageNormalizer.from_file(folder / PREPROCESSOR_CONFIG)
            except ImageError as exc:
                raise CheckpointError(str(exc)) from exc
    raise CheckpointError(f"no {PREPROCESSOR_CONFIG} in {vision_dir} or {model_path}")


def model_identity(
    model_path: Path,
    raw_config: dict[str, Any],
    config: LibraConfig,
    files: list[Path],
    template: ConversationTemplate,
) -> ModelIdentity:
    """Name, variant and weights revision, for the SR and the deterministic UIDs."""
    style = "7b" if template is LIBRA_V1 else "3b"
    record = read_fetch_record(model_path)
    if config.untrained_demo_model:
        name = f"libra-tiny-{style}-untrained-demo"
    elif record.get("repo_id"):
        name = str(record["repo_id"]).rsplit("/", 1)[-1]
    else:
        name = Path(str(raw_config.get("_name_or_path") or model_path.resolve().name)).name
    return ModelIdentity(
        name=name,
        variant="tiny" if config.untrained_demo_model else style,
        revision=str(record.get("revision") or weights_digest(files)),
        node_version=__version__,
        is_demo=bool(config.untrained_demo_model),
    )


def read_fetch_record(model_path: Path) -> dict[str, Any]:
    path = model_path / FETCH_RECORD
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def weights_digest(files: Iterable[Path]) -> str:
    """SHA-256 over the weight files' names and contents (16 hex digits)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:16]


__all__ = [
    "CheckpointError",
    "LibraCheckpoint",
    "connector_dtype",
    "load_checkpoint",
    "resolve_device",
    "resolve_dtype",
    "weight_files",
]
