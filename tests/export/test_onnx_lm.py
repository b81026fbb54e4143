"""Causal language models: dynamic batch and sequence, 1e-4 logits with identical argmax at unseen lengths;
ResNet-BK's scan as an ONNX Scan (no unrolled loop) and its decode step generating without PyTorch."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from checks import assert_context_dependent, assert_generates_like_reference, greedy_reference, random_option_weights
from hubtrain.export import (
    OnnxGenerator,
    export_decode_step_to_onnx,
    export_to_onnx,
    onnx_op_types,
    verify_onnx_model,
)


def _dims(path):
    (inp,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()
    return inp.shape


def test_gpt2_exports_with_dynamic_batch_and_sequence(tiny_gpt2, tmp_path):
    path = export_to_onnx(tiny_gpt2, tmp_path / "gpt2.onnx")
    batch, seq = _dims(path)
    assert isinstance(batch, str) and isinstance(seq, str)
    result = verify_onnx_model(tiny_gpt2, path)
    assert result.max_abs_error <= 1e-4 and result.argmax_match
    assert [s[0] for s in result.shapes] == [[1, 5], [3, 35]]  # the export example was (2, 16)


@pytest.fixture(scope="module")
def resnet_bk_onnx(tiny_resnet_bk, tmp_path_factory):
    return export_to_onnx(tiny_resnet_bk, tmp_path_factory.mktemp("rbk") / "resnet_bk.onnx")


def test_resnet_bk_scan_is_an_onnx_scan_not_an_unrolled_loop(tiny_resnet_bk, resnet_bk_onnx):
    assert "Scan" in onnx_op_types(resnet_bk_onnx)
    batch, seq = _dims(resnet_bk_onnx)
    assert isinstance(batch, str) and isinstance(seq, str)
    # lengths the example (16) never saw, including past the model's default context n_seq=32
    gen = torch.Generator().manual_seed(1)
    inputs = [(torch.randint(0, 64, (b, n), generator=gen),) for b, n in [(1, 1), (1, 5), (3, 37), (2, 100)]]
    result = verify_onnx_model(tiny_resnet_bk, resnet_bk_onnx, inputs)
    assert result.max_abs_error <= 1e-4 and result.argmax_match is True


def test_resnet_bk_decode_step_generates_like_pytorch(tiny_resnet_bk, tmp_path):
    assert_context_dependent(tiny_resnet_bk, 64)
    path, report = export_decode_step_to_onnx(tiny_resnet_bk, tmp_path / "decode_step.onnx")
    assert report["ok"] and report["max_abs_error"] <= 1e-4 and report["argmax_match"]
    prompt = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    reference = greedy_reference(tiny_resnet_bk, prompt, 20)  # no cache, no generate()
    with torch.no_grad():
        # an explicit all-ones mask: with a pad id, generate would treat token 0 in the prompt as padding
        cached = tiny_resnet_bk.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20,
                                         do_sample=False, pad_token_id=0)
    generated = OnnxGenerator(path).generate(prompt.numpy(), max_new_tokens=20)  # numpy + onnxruntime only
    assert_generates_like_reference(generated, reference, 6, min_distinct=6)
    assert_generates_like_reference(cached, reference, 6, min_distinct=6)


def test_decode_step_rejects_other_models(tiny_gpt2, tmp_path):
    with pytest.raises(TypeError, match="GPT2LMHeadModel has no recurrent cache that flattens to tensors"):
        export_decode_step_to_onnx(tiny_gpt2, tmp_path / "d.onnx")
    assert not (tmp_path / "d.onnx").exists()


def test_resnet_bk_torchscript_keeps_the_scan_a_loop(tiny_resnet_bk, tmp_path):
    # trace cannot record the scan's autograd Function; it traces a scripted loop instead, so the archive runs at
    # lengths the trace never saw (an unrolled loop would fail verification at lengths 5 and 35)
    from hubtrain.export import export_to_torchscript

    path = export_to_torchscript(tiny_resnet_bk, tmp_path / "resnet_bk.pt")
    scripted = torch.jit.load(str(path))
    ids = torch.randint(0, 64, (2, 100), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(scripted(ids), tiny_resnet_bk(ids).logits, atol=1e-4)


# random weights wide enough that the greedy reference continuation varies (checked below)
TOKEN_SS = dict(absorption="token", use_semiseparable=True, low_rank=4)


@pytest.mark.parametrize("options,std", [(dict(chain="lead", lead_eta_min=1e-3), 0.3), (TOKEN_SS, 1.0),
                                         ({**TOKEN_SS, "semiseparable_decay_heads": 2}, 1.0),
                                         ({**TOKEN_SS, "semiseparable_value_dim": 8, "semiseparable_decay_heads": 8,
                                           "semiseparable_conv_width": 4}, 1.0),
                                         ({**TOKEN_SS, "semiseparable_value_dim": 8, "semiseparable_decay_heads": 8,
                                           "semiseparable_conv_width": 4, "semiseparable_decay_conv": True,
                                           "semiseparable_decay_activation": "relu"}, 1.0)],
                         ids=["lead", "token-eta", "token-eta-decay", "token-eta-decay-per-value", "token-eta-hold"])
def test_resnet_bk_options_export_scan_decode_step_and_torchscript(tmp_path, options, std):
    """chain="lead" starts from the lead's g*, not from zero: the exported scan, the decode step started from the
    flat zero state, and the TorchScript loop must all carry that start to match PyTorch. absorption="token" gives
    the scan one eta per position, which every exported form must scan with the other inputs; with it the
    semiseparable term, whose k v^T sum the decode step carries as state (the shape docs 7.6 recommends), undecayed
    and decayed per token (its export scans the one-token step; its trace scripts a loop). All with keys and a
    causal convolution (random taps), whose window the decode step carries as state."""
    from hubtrain.export import export_to_torchscript
    from hubtrain.models.resnet_bk import ResNetBKConfig, ResNetBKForCausalLM

    torch.manual_seed(0)
    config = ResNetBKConfig(vocab_size=64, d_model=32, n_layers=2, num_channels=4, channel_dim=8, ffn_dim=32,
                            num_experts=2, top_k=1, n_seq=32, initializer_range=0.2, key_dim=2, conv_width=3,
                            **options)
    model = random_option_weights(ResNetBKForCausalLM(config).eval(), std=std)
    assert_context_dependent(model, 64)
    path = export_to_onnx(model, tmp_path / "lead.onnx")
    gen = torch.Generator().manual_seed(1)
    inputs = [(torch.randint(0, 64, (b, n), generator=gen),) for b, n in [(1, 1), (3, 37), (2, 100)]]
    result = verify_onnx_model(model, path, inputs)
    assert result.max_abs_error <= 1e-4 and result.argmax_match is True
    step, report = export_decode_step_to_onnx(model, tmp_path / "lead_step.onnx")
    assert report["ok"] and report["max_abs_error"] <= 1e-4
    prompt = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    reference = greedy_reference(model, prompt, 20)
    assert_generates_like_reference(OnnxGenerator(step).generate(prompt.numpy(), max_new_tokens=20), reference, 6,
                                    min_distinct=6)
    scripted = torch.jit.load(str(export_to_torchscript(model, tmp_path / "lead.pt")))
    ids = torch.randint(0, 64, (2, 100), generator=gen)
    with torch.no_grad():
        assert torch.allclose(scripted(ids), model(ids).logits, atol=1e-4)
