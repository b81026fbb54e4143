"""Tiny models exported once per module: exports cost seconds each on a shared 2-core machine."""
from __future__ import annotations

import pytest
import timm
import torch


@pytest.fixture(scope="session")
def resnet18_32():
    """A resnet18 whose own pretrained_cfg says 32 px, so exporters infer inputs from the model alone."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10, pretrained_cfg_overlay={"input_size": (3, 32, 32)})
    return model.eval()


@pytest.fixture(scope="session")
def resnet18_onnx(resnet18_32, tmp_path_factory):
    from hubtrain.export import export_to_onnx

    return export_to_onnx(resnet18_32, tmp_path_factory.mktemp("onnx") / "resnet18.onnx")


@pytest.fixture(scope="session")
def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="session")
def tiny_resnet_bk():
    """d_model 32, 2 layers; a wider init than the default so greedy decoding visits many tokens."""
    from hubtrain.models.resnet_bk import ResNetBKConfig, ResNetBKForCausalLM

    torch.manual_seed(0)
    config = ResNetBKConfig(vocab_size=64, d_model=32, n_layers=2, num_channels=4, channel_dim=8, ffn_dim=32,
                            num_experts=2, top_k=1, n_seq=32, initializer_range=0.2)
    return ResNetBKForCausalLM(config).eval()
