"""The Temporal Alignment Connector on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from libra_node.model.configuration_libra import LibraConfig
from libra_node.model.modeling_libra import (
    SqueezeExcitation,
    TemporalAlignmentConnector,
    layerwise_feature_extractor,
    temporal_similarity,
)

PATCHES, WIDTH = 20, 16


@pytest.fixture()
def connector() -> TemporalAlignmentConnector:
    torch.manual_seed(0)
    config = LibraConfig(
        hidden_size=24, num_attention_heads=4, intermediate_size=32, mm_hidden_size=WIDTH
    )
    return TemporalAlignmentConnector(config).eval()


def test_identical_images_have_similarity_exactly_one() -> None:
    features = torch.randn(3, PATCHES, WIDTH)
    assert torch.equal(temporal_similarity(features, features.clone()), torch.ones(3, 1, 1))


def test_similarity_is_scale_free_and_maps_cosine_to_its_eighth_power() -> None:
    current = torch.zeros(4, 2, 2)
    prior = torch.zeros(4, 2, 2)
    current[:, 0, 0] = 1.0
    prior[0, 0, 0] = 5.0  # same direction, other scale: cosine 1
    prior[1, 1, 1] = 1.0  # orthogonal: cosine 0
    prior[2, 0, 0] = -2.0  # opposite: cosine -1
    prior[3, 0, 0], prior[3, 0, 1] = 1.0, 1.0  # 45 degrees
    expected = torch.tensor([1.0, 0.5**8, 0.0, ((math.sqrt(0.5) + 1) / 2) ** 8]).view(4, 1, 1)
    torch.testing.assert_close(temporal_similarity(current, prior), expected)


def test_similarity_of_radiograph_sized_maps_does_not_overflow_in_fp32() -> None:
    # 1369 x 768 values of magnitude 300: the squared sum is far beyond fp16's range.
    big = torch.full((1, 1369, 768), 300.0)
    assert torch.isinf(big.half().float().pow(2).sum().half())
    assert torch.equal(temporal_similarity(big, big), torch.ones(1, 1, 1))


def test_squeeze_excitation_gates_each_channel_by_its_pooled_value() -> None:
    torch.manual_seed(1)
    block = SqueezeExcitation(4, 2)
    x = torch.randn(2, 4, 5, 3)
    pooled = x.mean(dim=(2, 3))
    hidden = F.gelu(pooled @ block.fc1.weight.view(2, 4).T + block.fc1.bias)
    gate = torch.sigmoid(hidden @ block.fc2.weight.view(4, 2).T + block.fc2.bias)
    torch.testing.assert_close(block(x), x * gate[:, :, None, None])


def test_layerwise_extractor_reduces_twelve_layers_to_one_map() -> None:
    lfe = layerwise_feature_extractor(12)
    assert lfe(torch.randn(2, 12, PATCHES, WIDTH)).shape == (2, 1, PATCHES, WIDTH)
    assert [type(m).__name__ for m in lfe] == ["SqueezeExcitation", "Conv2d"] * 3
    assert all(lfe[i].bias is None for i in (1, 3, 5))


def test_fusion_follows_the_published_order(connector: TemporalAlignmentConnector) -> None:
    """norm1(Ec + SA(Ec)), norm2(Ep' + SA(Ep')), norm3(C + CA(C, P)), norm4(Ec + MLP(X)), mlp_final."""
    with torch.no_grad():
        connector.LFE_prior_bias.fill_(0.75)
    ec = torch.randn(2, PATCHES, WIDTH)
    ep = torch.randn(2, PATCHES, WIDTH)

    def attention(module, q, kv):
        return module(q, kv, kv)[0]

    with torch.no_grad():
        shifted = ep + temporal_similarity(ec, ep) * 0.75
        c = connector.norm1(ec + attention(connector.cur_self_attention, ec, ec))
        p = connector.norm2(shifted + attention(connector.prior_self_attention, shifted, shifted))
        x = connector.norm3(c + attention(connector.cros_attention, c, p))
        y = connector.norm4(ec + connector.mlp_attn(x))
        expected = connector.mlp_final(y)
        actual = connector.fuse(ec, ep)
    assert actual.shape == (2, PATCHES, 24)
    torch.testing.assert_close(actual, expected)


def test_prior_is_shifted_by_similarity_times_beta(connector: TemporalAlignmentConnector) -> None:
    seen = {}
    connector.prior_self_attention.register_forward_hook(
        lambda m, args, out: seen.setdefault("query", args[0])
    )
    with torch.no_grad():
        connector.LFE_prior_bias.fill_(2.0)
        features = torch.randn(1, PATCHES, WIDTH)
        connector.fuse(features, features.clone())
    # Identical images: similarity 1, so the prior moves by exactly beta.
    torch.testing.assert_close(seen["query"], features + 2.0)


def test_connector_runs_lfe_on_both_images_then_fuses(
    connector: TemporalAlignmentConnector,
) -> None:
    current = torch.randn(2, 12, PATCHES, WIDTH)
    prior = torch.randn(2, 12, PATCHES, WIDTH)
    with torch.no_grad():
        expected = connector.fuse(
            connector.LFE(current).squeeze(1), connector.LFE(prior).squeeze(1)
        )
        torch.testing.assert_close(connector(current, prior), expected)
        assert not torch.allclose(connector(current, prior), connector(current, current))


def test_dropout_is_inactive_at_inference(connector: TemporalAlignmentConnector) -> None:
    current = torch.randn(1, 12, PATCHES, WIDTH)
    with torch.no_grad():
        assert torch.equal(connector(current, current), connector(current, current))
