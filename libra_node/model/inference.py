"""The inference API: load once per worker process, then generate findings in batches.

    generator = LibraGenerator.load("/models/libra-v1.0-7b")
    pixels = prepare_pixels("current.dcm")          # on the io side
    [result] = generator.generate([GenerationRequest(pixels, None, ClinicalContext())])
    print(result.text)

A batch runs the vision encoder on every distinct image once, the connector on
each (current, prior) pair, then one left-padded generate() call. With greedy
decoding a batch gives exactly the texts that one-by-one generation gives.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig

from libra_node.config import ModelSettings
from libra_node.draft import ClinicalContext, ModelIdentity
from libra_node.logs import get_logger
from libra_node.model.loading import CheckpointError, LibraCheckpoint, load_checkpoint
from libra_node.model.presets import generation_config
from libra_node.model.prompting import IMAGE_TOKEN_INDEX, finish_text, prompt_token_ids

log = get_logger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    """One study: current image, prior image (None: the current one stands in), context.

    Images are the 518 x 518 ``uint8`` arrays from ``prepare_pixels``.
    """

    current: np.ndarray
    prior: np.ndarray | None = None
    context: ClinicalContext = field(default_factory=ClinicalContext)


@dataclass(frozen=True)
class GenerationResult:
    """Findings text and what it took. Timings are those of the whole batch, in seconds."""

    text: str
    prompt_tokens: int  # positions the LLM read: text tokens plus the image's patch tokens
    new_tokens: int  # generated tokens, the end-of-text token included
    stopped: bool  # True: the model ended the text; False: cut at max_new_tokens
    encode_seconds: float  # vision encoder and connector
    generate_seconds: float  # prompt prefill and decoding
    total_seconds: float
    batch_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LibraGenerator:
    """A loaded Libra model with its tokenizer, image normaliser and decoding settings."""

    def __init__(
        self,
        checkpoint: LibraCheckpoint,
        preset: str = "clinical",
        max_batch: int | None = None,
        **generation_overrides: Any,
    ) -> None:
        self.checkpoint = checkpoint
        self.max_batch = max_batch
        tokenizer = checkpoint.tokenizer
        self.eos_token_ids = _stop_token_ids(checkpoint)
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        )
        # Image and padding positions are BOS in generate()'s id bookkeeping:
        # a token that is never generated, so n-gram blocking ignores them.
        self.placeholder_id = (
            tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.pad_token_id
        )
        self.generation_config = generation_config(
            preset, self.eos_token_ids, self.pad_token_id, **generation_overrides
        )
        self.preset = preset

    @classmethod
    def load(
        cls,
        model_path: str | Path,
        vision_path: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        preset: str = "clinical",
        max_batch: int | None = None,
        **generation_overrides: Any,
    ) -> LibraGenerator:
        checkpoint = load_checkpoint(model_path, vision_path, device=device, dtype=dtype)
        return cls(checkpoint, preset=preset, max_batch=max_batch, **generation_overrides)

    @classmethod
    def from_settings(cls, settings: ModelSettings, **generation_overrides: Any) -> LibraGenerator:
        """The model described by the [model] settings section."""
        if settings.path is None:
            raise CheckpointError(
                "no model configured: set model.path (LIBRA_MODEL__PATH) to a checkpoint folder"
            )
        overrides = {"max_new_tokens": settings.max_new_tokens, **generation_overrides}
        return cls.load(
            settings.path,
            settings.vision_path,
            device=settings.device,
            dtype=settings.dtype,
            preset=settings.preset,
            max_batch=settings.max_batch,
            **overrides,
        )

    @property
    def identity(self) -> ModelIdentity:
        return self.checkpoint.identity

    @property
    def is_demo(self) -> bool:
        return self.checkpoint.identity.is_demo

    @property
    def device(self) -> torch.device:
        return self.checkpoint.device

    @property
    def dtype(self) -> torch.dtype:
        return self.checkpoint.dtype

    @property
    def image_mean(self) -> float:
        """The grey level behind the "mean" pad colour, for prepare_pixels."""
        return self.checkpoint.normalizer.pad_mean

    def generate(self, items: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Findings for each request, in order; batches of at most ``max_batch``."""
        size = self.max_batch or max(len(items), 1)
        results: list[GenerationResult] = []
        for start in range(0, len(items), size):
            results.extend(self._generate_batch(items[start : start + size]))
        return results

    @torch.inference_mode()
    def _generate_batch(self, items: Sequence[GenerationRequest]) -> list[GenerationResult]:
        model = self.checkpoint.model
        started = time.perf_counter()
        image_embeds = self._image_embeddings(items)
        self._synchronize()
        encoded = time.perf_counter()

        token_ids = prompt_token_ids(
            [item.context for item in items], self.checkpoint.template, self.checkpoint.tokenizer
        )
        inputs_embeds, attention_mask, ids = model.splice_image_embeddings(
            token_ids, image_embeds, IMAGE_TOKEN_INDEX, self.placeholder_id
        )
        output = model.generate(
            input_ids=ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            generation_config=self._config_for(ids.shape[1]),
        )
        self._synchronize()
        finished = time.perf_counter()

        new_ids = output[:, ids.shape[1] :].tolist()
        prompt_lengths = attention_mask.sum(dim=1).tolist()
        results = [
            self._result(row, int(length), encoded - started, finished - encoded, len(items))
            for row, length in zip(new_ids, prompt_lengths)
        ]
        log.info(
            "model.generated",
            batch=len(items),
            new_tokens=sum(result.new_tokens for result in results),
            encode_seconds=round(encoded - started, 4),
            generate_seconds=round(finished - encoded, 4),
            demo=self.is_demo,
        )
        return results

    def _image_embeddings(self, items: Sequence[GenerationRequest]) -> torch.Tensor:
        """Connector output per request; each distinct image goes through the encoder once."""
        model = self.checkpoint.model
        images = [item.current for item in items]
        prior_index = []
        for position, item in enumerate(items):
            if item.prior is None:
                prior_index.append(position)  # no prior: the current image stands in
            else:
                prior_index.append(len(images))
                images.append(item.prior)
        pixels = torch.from_numpy(self.checkpoint.normalizer(images)).to(self.device)
        features = model.encode_images(pixels)
        current = features[: len(items)]
        prior = features[torch.tensor(prior_index, device=features.device)]
        return model.connect(current, prior)

    def _config_for(self, prompt_length: int) -> GenerationConfig:
        """The decoding settings, with max_new_tokens cut to the positions the model has left."""
        config = self.generation_config
        room = self.checkpoint.model.config.max_position_embeddings - prompt_length
        if room < 1:
            raise ValueError(
                f"the prompt takes {prompt_length} positions, the model has only {room + prompt_length}"
            )
        if config.max_new_tokens > room:
            log.warning("model.max_new_tokens_cut", asked=config.max_new_tokens, allowed=room)
            config = GenerationConfig(**{**config.to_dict(), "max_new_tokens": room})
            if config.min_new_tokens is not None:
                config.min_new_tokens = min(config.min_new_tokens, room)
        return config

    def _result(
        self,
        new_ids: list[int],
        prompt_tokens: int,
        encode_seconds: float,
        generate_seconds: float,
        batch: int,
    ) -> GenerationResult:
        stop_at = next((i for i, token in enumerate(new_ids) if token in self.eos_token_ids), None)
        text_ids = new_ids if stop_at is None else new_ids[:stop_at]
        text = self.checkpoint.tokenizer.decode(text_ids, skip_special_tokens=True)
        return GenerationResult(
            text=finish_text(text, self.checkpoint.template),
            prompt_tokens=prompt_tokens,
            new_tokens=len(new_ids) if stop_at is None else stop_at + 1,
            stopped=stop_at is not None,
            encode_seconds=encode_seconds,
            generate_seconds=generate_seconds,
            total_seconds=encode_seconds + generate_seconds,
            batch_size=batch,
        )

    def _synchronize(self) -> None:
        """Make timings honest on a GPU, where kernels run asynchronously."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _stop_token_ids(checkpoint: LibraCheckpoint) -> list[int]:
    """End-of-text ids: the config's, the tokenizer's and the template's stop token."""
    tokenizer = checkpoint.tokenizer
    config_eos = checkpoint.model.config.eos_token_id
    candidates = list(config_eos) if isinstance(config_eos, (list, tuple)) else [config_eos]
    candidates += [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids(checkpoint.template.stop_string),
    ]
    unknown = tokenizer.unk_token_id
    ids: list[int] = []
    for token_id in candidates:
        if token_id is not None and token_id != unknown and token_id not in ids:
            ids.append(int(token_id))
    if not ids:
        raise CheckpointError("the checkpoint defines no end-of-text token")
    return ids


__all__ = ["GenerationRequest", "GenerationResult", "LibraGenerator"]
