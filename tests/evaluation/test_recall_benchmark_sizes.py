"""The recall benchmark compares models at equal non-embedding parameters (the issue's MQAR target is stated at
equal parameters): every ResNet-BK variant sized to Mamba stays at or under Mamba at every width of the grid, and
GPT-2 lands near plain ResNet-BK. Counted on the meta device, so nothing is allocated."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "recall.py"


@pytest.fixture(scope="module")
def recall():
    spec = importlib.util.spec_from_file_location("recall_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def size(recall, name, d):
    config = recall.configs(name, vocab=128, d=d, layers=2, max_len=64, resnet_bk={})
    return config, recall.non_embedding(config)


@pytest.mark.parametrize("d", [64, 128])
def test_variants_sized_to_mamba_are_at_or_under_mamba_and_close_to_it(recall, d):
    _, mamba = size(recall, "mamba", d)
    for name in recall.UNDER_MAMBA:
        config, params = size(recall, name, d)
        assert params <= mamba, (name, d, params, mamba)
        # under, but not by a strawman's margin: within 2 % of Mamba
        assert params >= 0.98 * mamba, (name, d, params, mamba)
        assert config.ffn_dim >= d // 8


def test_a_shape_that_fits_is_left_as_it_is(recall):
    # width 64's shape was chosen under Mamba and its committed runs were made with it
    config, _ = size(recall, "resnet_bk_hold", 64)
    assert (config.num_channels, config.ffn_dim) == (4, 14)
    config, _ = size(recall, "resnet_bk_hold", 128)
    assert config.num_channels < 128 // 16, "width 128's per-value shape at 7d/32 experts is over Mamba and must be cut"


@pytest.mark.parametrize("d", [64, 128])
def test_gpt2_lands_within_one_percent_of_plain_resnet_bk(recall, d):
    _, target = size(recall, "resnet_bk", d)
    _, gpt2 = size(recall, "gpt2", d)
    assert abs(gpt2 - target) <= 0.01 * target


def test_an_impossible_budget_is_a_one_line_error_naming_it(recall):
    config, _ = size(recall, "resnet_bk_hold", 64)
    with pytest.raises(ValueError, match="fits 1,000 non-embedding"):
        recall.under(config, 1000)
