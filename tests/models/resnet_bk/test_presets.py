"""Named sizes: the name is the non-embedding parameter count (within 10%), counted on the meta device."""
from __future__ import annotations

import pytest
import torch

from hubtrain.models.resnet_bk import RESNET_BK_PRESETS, ResNetBKForCausalLM, create_resnet_bk_for_hf
from hubtrain.models.resnet_bk.presets import count_non_embedding_parameters

TARGETS = {"1M": 1e6, "10M": 1e7, "100M": 1e8, "1B": 1e9, "10B": 1e10}


@pytest.mark.parametrize("size", list(TARGETS))
def test_preset_name_is_the_non_embedding_parameter_count(size):
    with torch.device("meta"):
        model = create_resnet_bk_for_hf(size)
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing allocated
    n = count_non_embedding_parameters(model)
    assert abs(n - TARGETS[size]) <= 0.1 * TARGETS[size], f"{size}: {n:,}"
    # independent count: everything minus the (tied) token embedding
    total = sum(p.numel() for p in model.parameters())
    assert n == total - model.config.vocab_size * model.config.d_model


def test_presets_are_plain_data_and_overrides_apply():
    assert set(RESNET_BK_PRESETS) == set(TARGETS)
    assert RESNET_BK_PRESETS["10M"]["d_model"] == 256
    model = create_resnet_bk_for_hf("1M", vocab_size=100, use_birman_schwinger=True, device="meta")
    assert isinstance(model, ResNetBKForCausalLM)
    assert model.config.vocab_size == 100 and model.config.use_birman_schwinger
    assert model.config.d_model == RESNET_BK_PRESETS["1M"]["d_model"]


def test_unknown_size_names_itself_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"'3M'.*1M.*10M.*100M.*1B.*10B"):
        create_resnet_bk_for_hf("3M")
