"""Libra: RAD-DINO vision encoder + Temporal Alignment Connector + Llama.

Module and parameter names follow the released checkpoints exactly
(``model.mm_projector.LFE.0.fc1.weight``, ``model.mm_projector.cros_attention.
in_proj_weight``, ...), so their weights load without renaming.

Data flow for one sample (current image, prior image):

    pixels [2, 3, 518, 518]
      -> RAD-DINO, output of each of the 12 blocks, CLS dropped  [2, 12, 1369, 768]
      -> LFE (12 layers -> 1), shared by both images             [2, 1369, 768]
      -> TFM (current attends to prior)                          [1369, hidden]
      -> spliced into the prompt embeddings where "<image>" stood
      -> Llama
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Dinov2Config,
    Dinov2Model,
    LlamaForCausalLM,
    LlamaModel,
)
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from libra_node.model.configuration_libra import VISION_LAYERS, LibraConfig, rad_dino_config

TAC_DROPOUT = 0.1


class SqueezeExcitation(nn.Module):
    """Channel gating: average pool, 1x1 conv down, GELU, 1x1 conv up, sigmoid.

    Same layout and parameter names (fc1, fc2) as torchvision's block, which
    the reference uses; torchvision itself is not needed.
    """

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, kernel_size=1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)
        scale = torch.sigmoid(self.fc2(F.gelu(self.fc1(scale))))
        return x * scale


def layerwise_feature_extractor(layers: int = VISION_LAYERS) -> nn.Sequential:
    """LFE: the encoder layers are channels of a patches x features map; 12 -> 6 -> 3 -> 1."""
    return nn.Sequential(
        SqueezeExcitation(layers, layers // 2),
        nn.Conv2d(layers, layers // 2, kernel_size=1, bias=False),
        SqueezeExcitation(layers // 2, layers // 4),
        nn.Conv2d(layers // 2, layers // 4, kernel_size=1, bias=False),
        SqueezeExcitation(layers // 4, 1),
        nn.Conv2d(layers // 4, 1, kernel_size=1, bias=False),
    )


def temporal_similarity(current: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Per-sample similarity of two feature maps in [0, 1], shape [B, 1, 1].

    Cosine of the flattened, L2-normalised maps, mapped to [0, 1] and raised
    to the 8th power so that only near-identical images score high.

    Computed in float64 whatever the features' dtype: the squared sum of
    1369 x 768 values overflows fp16, and fp32 sums of a million terms are
    off by up to 0.2 %, so identical images would not score exactly 1.
    """
    current_flat = current.flatten(1).double()
    prior_flat = prior.flatten(1).double()
    current_flat = current_flat / current_flat.norm(dim=-1, keepdim=True)
    prior_flat = prior_flat / prior_flat.norm(dim=-1, keepdim=True)
    cosine = F.cosine_similarity(current_flat, prior_flat, dim=-1, eps=1e-6)
    return ((cosine + 1) / 2).pow(8).to(current.dtype).view(-1, 1, 1)


class TemporalAlignmentConnector(nn.Module):
    """TAC: LFE on each image, then the Temporal Fusion Module (TFM).

    Attribute names (including the spelling ``cros_attention``) are those of
    the released checkpoints.
    """

    def __init__(self, config: LibraConfig) -> None:
        super().__init__()
        width = config.mm_hidden_size
        hidden = config.hidden_size
        heads = config.num_attention_heads

        self.LFE = layerwise_feature_extractor(VISION_LAYERS)
        # beta: how much the prior is shifted by its similarity to the current image.
        self.LFE_prior_bias = nn.Parameter(torch.tensor(0.0))

        def attention() -> nn.MultiheadAttention:
            return nn.MultiheadAttention(width, heads, batch_first=True, add_bias_kv=True)

        self.cur_self_attention = attention()
        self.prior_self_attention = attention()
        self.cros_attention = attention()
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.norm3 = nn.LayerNorm(width)
        self.norm4 = nn.LayerNorm(width)
        self.mlp_attn = nn.Sequential(
            nn.Linear(width, width),
            nn.GELU(),
            nn.Dropout(TAC_DROPOUT),
            nn.Linear(width, width),
            nn.Dropout(TAC_DROPOUT),
        )
        self.mlp_final = nn.Sequential(
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
        )
        self.dropout1 = nn.Dropout(TAC_DROPOUT)
        self.dropout2 = nn.Dropout(TAC_DROPOUT)
        self.dropout3 = nn.Dropout(TAC_DROPOUT)

    def forward(self, current: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """[B, 12, patches, width] twice -> [B, patches, hidden]."""
        return self.fuse(self.extract(current), self.extract(prior))

    def extract(self, layers: torch.Tensor) -> torch.Tensor:
        """LFE: [B, 12, patches, width] -> [B, patches, width]."""
        return self.LFE(layers).squeeze(1)

    def fuse(self, current: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """TFM: align the prior to the current image and project to the LLM width."""
        similarity = temporal_similarity(current, prior)
        shifted_prior = prior + similarity * self.LFE_prior_bias

        def attend(attention: nn.MultiheadAttention, query: torch.Tensor, memory: torch.Tensor):
            return attention(query, memory, memory, need_weights=False)[0]

        cur = self.norm1(current + self.dropout1(attend(self.cur_self_attention, current, current)))
        pri = self.norm2(
            shifted_prior
            + self.dropout2(attend(self.prior_self_attention, shifted_prior, shifted_prior))
        )
        combined = self.norm3(cur + self.dropout3(attend(self.cros_attention, cur, pri)))
        # The residual is the LFE output itself, not the self-attended one.
        fused = self.norm4(current + self.mlp_attn(combined))
        return self.mlp_final(fused)


class LibraVisionTower(nn.Module):
    """RAD-DINO, returning every block's output (before the final layernorm), CLS dropped."""

    def __init__(self, vision_config: Dinov2Config) -> None:
        super().__init__()
        self.vision_tower = Dinov2Model(vision_config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, layers, patches, width]."""
        weights = self.vision_tower.embeddings.patch_embeddings.projection.weight
        outputs = self.vision_tower(
            pixel_values.to(device=weights.device, dtype=weights.dtype), output_hidden_states=True
        )
        # hidden_states[0] is the embedding output; [1:] are the blocks.
        blocks = outputs.hidden_states[1:]
        return torch.stack([block[:, 1:] for block in blocks], dim=1)


class LibraLlamaModel(LlamaModel):
    config_class = LibraConfig

    def __init__(self, config: LibraConfig, vision_config: Dinov2Config | None = None) -> None:
        super().__init__(config)
        self.vision_tower = LibraVisionTower(vision_config or rad_dino_config())
        self.mm_projector = TemporalAlignmentConnector(config)
        self.post_init()


class LibraLlamaForCausalLM(LlamaForCausalLM):
    """Libra's causal LM. Generation runs on prompt embeddings with the image spliced in."""

    config_class = LibraConfig

    def __init__(self, config: LibraConfig, vision_config: Dinov2Config | None = None) -> None:
        LlamaPreTrainedModel.__init__(self, config)
        self.model = LibraLlamaModel(config, vision_config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @property
    def vision_tower(self) -> LibraVisionTower:
        return self.model.vision_tower

    @property
    def connector(self) -> TemporalAlignmentConnector:
        return self.model.mm_projector

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encoder features of each image: [N, 3, H, W] -> [N, 12, patches, width]."""
        return self.vision_tower(pixel_values)

    @torch.no_grad()
    def connect(self, current: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """Image embeddings for the LLM: [B, patches, hidden] in the LLM's dtype.

        The connector runs in its own dtype (fp32 unless the whole model is
        bf16), whatever the encoder's dtype.
        """
        connector_dtype = self.connector.LFE_prior_bias.dtype
        features = self.connector(current.to(connector_dtype), prior.to(connector_dtype))
        return features.to(self.model.embed_tokens.weight.dtype)

    @torch.no_grad()
    def splice_image_embeddings(
        self,
        token_ids: Sequence[Sequence[int]],
        image_embeds: torch.Tensor,
        image_token_id: int,
        placeholder_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded prompt embeddings with each sample's image where its placeholder was.

        Returns (inputs_embeds [B, L, hidden], attention_mask [B, L],
        ids [B, L]). ``ids`` mirrors the embeddings position by position for
        generate()'s bookkeeping (n-gram blocking and the output prefix):
        text positions hold their token, image and padding positions hold
        ``placeholder_id``.
        """
        embed = self.model.embed_tokens
        device = embed.weight.device
        rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        for sample, ids in enumerate(token_ids):
            ids_tensor = torch.tensor(list(ids), dtype=torch.long, device=device)
            where = (ids_tensor == image_token_id).nonzero().flatten()
            if where.numel() != 1:
                raise ValueError(
                    f"prompt {sample} has {where.numel()} image placeholders, expected 1"
                )
            at = int(where[0])
            before, after = ids_tensor[:at], ids_tensor[at + 1 :]
            image = image_embeds[sample]
            row_embeds = torch.cat([embed(before), image, embed(after)])
            image_ids = torch.full(
                (image.shape[0],), placeholder_id, dtype=torch.long, device=device
            )
            rows.append((row_embeds, torch.cat([before, image_ids, after])))

        length = max(row_embeds.shape[0] for row_embeds, _ in rows)
        batch = len(rows)
        inputs_embeds = torch.zeros(
            batch, length, embed.weight.shape[1], dtype=embed.weight.dtype, device=device
        )
        attention_mask = torch.zeros(batch, length, dtype=torch.long, device=device)
        ids_out = torch.full((batch, length), placeholder_id, dtype=torch.long, device=device)
        for sample, (row_embeds, row_ids) in enumerate(rows):
            start = length - row_embeds.shape[0]
            inputs_embeds[sample, start:] = row_embeds
            attention_mask[sample, start:] = 1
            ids_out[sample, start:] = row_ids
        return inputs_embeds, attention_mask, ids_out


AutoConfig.register(LibraConfig.model_type, LibraConfig, exist_ok=True)
AutoModelForCausalLM.register(LibraConfig, LibraLlamaForCausalLM, exist_ok=True)

__all__ = [
    "LibraLlamaForCausalLM",
    "LibraLlamaModel",
    "LibraVisionTower",
    "SqueezeExcitation",
    "TemporalAlignmentConnector",
    "layerwise_feature_extractor",
    "temporal_similarity",
]
