"""The ResNet-BK usage examples of the seed report (seeds/resnet_bk_hf_integration_report.txt), run as tests.

Each test is the seed's code block with our module names; network downloads are replaced by local stand-ins that
exercise the same code path: a folder written by ``save_pretrained`` (with a byte-level BPE tokenizer trained here
with ``tokenizers``) instead of the "resnet-bk/resnet-bk-1b" and "gpt2" Hub repos, and a Hugging Face cache laid out
by the test (offline mode) instead of the Hub download behind ``torch.hub.load(..., pretrained=True)``.
The ONNX export example belongs to the export tests.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import hubtrain.models.resnet_bk  # noqa: F401  (registers ResNet-BK with the transformers Auto classes)
from checks import assert_context_dependent, assert_generates_like_reference, greedy_reference
from hubtrain.models.resnet_bk import ResNetBKForCausalLM, create_resnet_bk_for_hf

REPO = Path(__file__).resolve().parents[2]
PROMPT = "The future of AI is"
CORPUS = [
    "The future of AI is open, measured and reproducible.",
    "Language models learn the statistics of text; the future of language models is long context.",
    "A Green's function is the resolvent of a Hamiltonian; its diagonal is bounded by one over eta.",
    "Scans over sequences run in linear time, and recurrent states make decoding cheap.",
] * 20


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer trained here, saved as a transformers tokenizer (what "gpt2" would give)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    folder = tmp_path_factory.mktemp("resnet-bk-1m")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_folder(tokenizer_folder) -> Path:
    """Stands in for the Hub repo "resnet-bk/resnet-bk-1b": a preset ResNet-BK saved next to its tokenizer.

    A wider init than the default, whose random model predicts from the last token alone: here the continuation
    depends on the context, as a trained model's does, so the cached generation is checked for using it."""
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_folder))
    torch.manual_seed(0)
    create_resnet_bk_for_hf("1M", vocab_size=vocab, initializer_range=0.2).save_pretrained(tokenizer_folder)
    return tokenizer_folder


def test_seed_example_1_transformers_loading_and_generation(model_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Load model
    model = AutoModelForCausalLM.from_pretrained(model_folder)
    tokenizer = AutoTokenizer.from_pretrained(model_folder)

    # Generate text
    inputs = tokenizer(PROMPT, return_tensors="pt")
    outputs = model.generate(**inputs, max_length=50)
    text = tokenizer.decode(outputs[0])

    assert isinstance(model, ResNetBKForCausalLM)
    assert (model_folder / "model.safetensors").is_file()
    prompt_len = inputs["input_ids"].shape[1]
    assert torch.equal(outputs[0, :prompt_len], inputs["input_ids"][0])
    # max_length=50 counts the prompt; the untrained model may only stop early by emitting the EOS token.
    assert outputs.shape[1] == 50 or outputs[0, -1].item() == tokenizer.eos_token_id
    assert text.startswith(PROMPT)
    # The cached generation is the greedy loop a user would write, rerunning the model on the whole prefix.
    assert_context_dependent(model, len(tokenizer))
    reference = greedy_reference(model, inputs["input_ids"], outputs.shape[1] - prompt_len)
    assert_generates_like_reference(outputs, reference, prompt_len)


def test_seed_example_2_pytorch_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    # The Hub repo behind resnet_bk_1b, served from a local cache: a small model stands in for the 1B weights.
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    repo = tmp_path / "hub" / "models--hubtrain--resnet-bk-1b"
    torch.manual_seed(0)
    published = create_resnet_bk_for_hf("1M", vocab_size=50257, d_model=16, n_layers=2).eval()
    published.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    # Load pre-trained model
    model = torch.hub.load(str(REPO), "resnet_bk_1b", source="local", pretrained=True)

    # Use for inference
    input_ids = torch.randint(0, 50000, (1, 128))
    logits = model(input_ids)

    assert logits.logits.shape == (1, 128, 50257)
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids).logits, published(input_ids).logits)


def test_seed_example_3_custom_model_creation():
    # Create custom model
    model = torch.hub.load(str(REPO), "resnet_bk_custom", source="local",
                           d_model=512, n_layers=12, use_birman_schwinger=True)

    assert model.config.d_model == 512 and model.config.n_layers == 12
    assert model.config.use_birman_schwinger is True
    assert len(model.model.layers) == 12
    with torch.no_grad():
        logits = model(torch.randint(0, model.config.vocab_size, (1, 16))).logits
    assert logits.shape == (1, 16, model.config.vocab_size) and torch.isfinite(logits).all()
