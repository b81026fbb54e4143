"""`hubtrain export` and `hubtrain generate` end to end (in-process `main`, as the dispatcher calls `run`)."""
from __future__ import annotations

import json

import pytest
import torch

from checks import assert_context_dependent, assert_prints_like_reference, greedy_reference, save_with_char_tokenizer
from hubtrain.cli import export_cmd, generate_cmd


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    from hubtrain.tasks.classification import ImageClassifier

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cls") / "digits"
    ImageClassifier("test_resnet", num_classes=3, pretrained=False).save_pretrained(folder)
    return folder


def test_export_cli_writes_verified_artifacts(classifier_folder, tmp_path, capsys):
    out = tmp_path / "exported"
    assert export_cmd.main([str(classifier_folder), "-o", str(out), "--optimize", "basic"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "ImageClassifier"
    assert report["artifacts"]["onnx"]["verification"]["max_abs_error"] <= 1e-6
    assert (out / "model.onnx").is_file() and (out / "model.basic.onnx").is_file()
    assert "max abs error" in capsys.readouterr().out


def test_export_cli_bad_inputs_exit_non_zero_with_one_line(tmp_path, capsys):
    assert export_cmd.main([str(tmp_path / "missing"), "-o", str(tmp_path / "o1")]) == 1
    assert "model not found" in capsys.readouterr().err
    corrupt = tmp_path / "resnet_bk_1m.pt"
    corrupt.write_bytes(b"\x80\x04 not really a pickle")
    assert export_cmd.main([str(corrupt), "-o", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read checkpoint" in err and str(corrupt) in err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no CUDA GPU is present")
def test_export_cli_tensorrt_without_gpu_says_why(classifier_folder, tmp_path, capsys):
    assert export_cmd.main([str(classifier_folder), "-o", str(tmp_path / "trt"), "--format", "tensorrt"]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err and not (tmp_path / "trt").exists()


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory, tiny_resnet_bk):
    """ResNet-BK saved with a fixed character-level byte-BPE tokenizer (no training: the same ids every run)."""
    return save_with_char_tokenizer(tiny_resnet_bk, tmp_path_factory.mktemp("lm") / "rbk")


def test_generate_cli_streams_the_greedy_continuation(lm_folder, tiny_resnet_bk, capsys):
    """What the CLI streams is the greedy continuation of an independent loop without the cache, on a model whose
    continuation depends on the context."""
    from transformers import AutoTokenizer

    assert_context_dependent(tiny_resnet_bk, 64)
    assert generate_cmd.main([str(lm_folder), "--prompt", "def f(x):", "--max-new-tokens", "12"]) == 0
    streamed = capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(lm_folder)
    ids = tokenizer("def f(x):", return_tensors="pt").input_ids
    assert_prints_like_reference(streamed, greedy_reference(tiny_resnet_bk, ids, 12), tokenizer, ids.shape[1])
    assert streamed.startswith("def f(x):") and len(streamed.strip()) > len("def f(x):")


def test_generate_cli_onnx_backend_streams_the_greedy_continuation(lm_folder, tiny_resnet_bk, tmp_path, capsys):
    """--backend onnx (decode step exported and verified on the fly, run in onnxruntime) streams what the uncached
    greedy loop generates; --onnx reuses a saved graph; a missing --onnx file is a one-line error."""
    from transformers import AutoTokenizer

    assert_context_dependent(tiny_resnet_bk, 64)
    assert generate_cmd.main([str(lm_folder), "--prompt", "def f(x):", "--max-new-tokens", "12", "--backend", "onnx"]) == 0
    captured = capsys.readouterr()
    assert "exported and verified the decode step" in captured.err
    tokenizer = AutoTokenizer.from_pretrained(lm_folder)
    ids = tokenizer("def f(x):", return_tensors="pt").input_ids
    assert_prints_like_reference(captured.out, greedy_reference(tiny_resnet_bk, ids, 12), tokenizer, ids.shape[1])

    missing = tmp_path / "nope.onnx"
    assert generate_cmd.main([str(lm_folder), "--prompt", "x", "--backend", "onnx", "--onnx", str(missing)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' weight-loading progress bar
    assert error.startswith("hubtrain generate: error: --onnx") and str(missing) in error and "hubtrain export" in error


def test_onnx_generator_samples_reproducibly_within_top_k(tiny_resnet_bk, tmp_path):
    """Sampling in the ONNX generator: the same seed gives the same tokens, another seed other tokens, and with
    top_k=1 it is greedy decoding."""
    from hubtrain.export import OnnxGenerator, export_decode_step_to_onnx

    path, _ = export_decode_step_to_onnx(tiny_resnet_bk, tmp_path / "decode_step.onnx", verify=False)
    gen, prompt = OnnxGenerator(path), torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0)).numpy()
    hot = dict(temperature=1.5, top_p=0.95)
    a, b = (gen.generate(prompt, 24, seed=s, **hot) for s in (1, 1))
    assert (a == b).all() and not (a == gen.generate(prompt, 24, seed=2, **hot)).all()
    assert (gen.generate(prompt, 12, temperature=1.0, top_k=1, seed=3) == gen.generate(prompt, 12)).all()


def test_generate_cli_refuses_non_lm_and_missing_tokenizer(classifier_folder, tmp_path, tiny_resnet_bk, capsys):
    assert generate_cmd.main([str(classifier_folder), "--prompt", "x"]) == 1
    assert "not a causal language model" in capsys.readouterr().err
    bare = tmp_path / "bare"
    tiny_resnet_bk.save_pretrained(bare)
    assert generate_cmd.main([str(bare), "--prompt", "x"]) == 1
    assert "no tokenizer files" in capsys.readouterr().err
