"""Check functions shared by the tests and by ``tests/sensitivity`` (which proves that each one can fail).

Importable from any test as ``from checks import ...`` (``tests/conftest.py`` puts this folder on ``sys.path``).
Each check raises ``AssertionError`` with a message that says what was wrong.
"""
from __future__ import annotations

import contextlib
import copy
import re
from typing import Any, Iterator

import torch

# a small Lightning metrics.csv (three epochs, train and validation rows) for card and curve tests
METRICS_CSV = """epoch,step,train/loss,val/loss,val/accuracy
0,9,1.05,,
0,9,,0.91,0.62
1,19,0.72,,
1,19,,0.55,0.81
2,29,0.41,,
2,29,,0.38,0.93
"""


def front_matter(readme: str) -> dict:
    """The YAML metadata block of a model card, parsed."""
    import yaml

    return yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", readme, re.S).group(1))


@torch.no_grad()
def greedy_reference(model: Any, input_ids: torch.Tensor, max_new_tokens: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy decoding by running the whole sequence again for every token: no cache, no ``generate``.

    Returns the prompt followed by the new tokens, like ``generate``. With ``attention_mask`` (left padding), the
    new tokens count as real.
    """
    ids = input_ids
    mask = attention_mask
    for _ in range(max_new_tokens):
        kwargs = {"use_cache": False}
        if mask is not None:
            kwargs["attention_mask"] = mask
        logits = model(input_ids=ids, **kwargs).logits[:, -1]
        nxt = logits.argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    return ids


@torch.no_grad()
def assert_context_dependent(model: Any, vocab_size: int, *, prompts: int = 16, prefix_len: int = 6,
                             last_token: int = 5, min_distinct: int = 3, seed: int = 1) -> None:
    """The model's greedy next token depends on more than the last token.

    ``prompts`` prompts share their last token and differ before it; their argmax next tokens must take at least
    ``min_distinct`` values. A model that ignores its context (a freshly initialised LM, or a generator that drops
    the cache) predicts the same token for all of them, and a cache-vs-no-cache comparison on it proves nothing.
    """
    gen = torch.Generator().manual_seed(seed)
    prefixes = torch.randint(0, vocab_size, (prompts, prefix_len), generator=gen)
    ids = torch.cat([prefixes, torch.full((prompts, 1), last_token)], dim=1)
    nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1)
    distinct = len(set(nxt.tolist()))
    assert distinct >= min_distinct, (
        f"degenerate reference: {prompts} prompts ending in token {last_token} give {distinct} distinct next "
        f"token(s) (need >= {min_distinct}); the model's continuation does not depend on its context"
    )


def assert_varied_continuation(reference: Any, prompt_len: int, min_distinct: int = 3) -> None:
    """The reference's continuation is not one repeated token (a comparison with it would prove little)."""
    new = torch.as_tensor(reference)[:, prompt_len:]
    distinct = len(set(new.flatten().tolist()))
    assert distinct >= min_distinct, f"degenerate reference continuation: only {distinct} distinct token(s)"


def assert_generates_like_reference(generated: Any, reference: Any, prompt_len: int, *, min_distinct: int = 3) -> None:
    """``generated`` (tokens, any array-like) equals the independent ``reference``, and the reference's
    continuation is not one repeated token."""
    generated, reference = torch.as_tensor(generated), torch.as_tensor(reference)
    assert_varied_continuation(reference, prompt_len, min_distinct)
    assert generated.shape == reference.shape, f"shape {tuple(generated.shape)} != reference {tuple(reference.shape)}"
    bad = (generated != reference).any(dim=1).nonzero().flatten().tolist()
    assert not bad, f"rows {bad} differ from the uncached greedy reference: {generated[bad[0]].tolist()} vs {reference[bad[0]].tolist()}"


def assert_prints_like_reference(printed: str, reference: Any, tokenizer: Any, prompt_len: int, *, min_distinct: int = 3) -> None:
    """Text a command printed is the decoded (one-row) ``reference``, whose continuation is not one repeated token."""
    assert_varied_continuation(reference, prompt_len, min_distinct)
    expected = tokenizer.decode(torch.as_tensor(reference)[0], skip_special_tokens=True).strip()
    assert printed.strip() == expected, f"printed {printed.strip()!r}; the uncached greedy reference is {expected!r}"


def save_with_char_tokenizer(model: Any, folder: Any) -> Any:
    """Save ``model`` (vocabulary >= 64) with a fixed character-level byte-BPE tokenizer: id 0 is ``<eos>``, then
    byte-level space and newline, lower-case letters, digits and punctuation, one token each (the same ids every
    run, nothing trained). Returns the folder."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["Ġ", "Ċ", *string.ascii_lowercase, *string.digits, *"():,.*+-=_[]{}<>"]  # Ġ, Ċ: byte-level space, newline
    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(chars[:63])}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(folder)
    return folder


# ResNet-BK's optional terms: the options that turn each on (tiny models, see assert_option_contributes), and the
# config fields that remove only its contribution from a copy with the same parameters
OPTION_CONTRIBUTIONS = {
    "semiseparable": (dict(use_semiseparable=True, low_rank=4), dict(use_semiseparable=False)),
    "semiseparable_decay": (dict(use_semiseparable=True, low_rank=4, semiseparable_decay_heads=2),
                            dict(semiseparable_decay_heads=0)),
    "birman_schwinger": (dict(use_birman_schwinger=True, schatten_threshold=0.5), dict(use_birman_schwinger=False)),
    "prime_bump": (dict(use_prime_bump=True, prime_bump_scale=0.5), dict(use_prime_bump=False)),
    # 3 layers, halting after about two: the halted tokens keep their state for the last layer
    "act": (dict(use_act=True, n_layers=3, act_halt_threshold=0.88), dict(use_act=False)),
}


@torch.no_grad()
def assert_option_contributes(model: Any, off: dict, input_ids: torch.Tensor, min_change: float = 1e-4) -> None:
    """Removing only an option's contribution moves the logits by at least ``min_change`` of their scale.

    The comparison is a copy of ``model`` with the same parameters and ``off`` set in its config: a model built
    without the option would differ anyway, through the random init of the parameters the option adds.
    """
    without = copy.deepcopy(model)
    for name, value in off.items():
        setattr(without.config, name, value)
    logits = model(input_ids).logits
    change = ((logits - without(input_ids).logits).abs().max() / logits.abs().max()).item()
    assert change >= min_change, (
        f"setting {off} on the same model changes its logits by {change:.1e} of their scale (< {min_change:.0e}): "
        "the option contributes nothing"
    )


def adversarial_scan_inputs(n: int = 16384) -> tuple[torch.Tensor, ...]:
    """Float32 inputs (a, hop, z_re, z_im, u_re) of ``green_scan`` at the limits: potentials of 1e4 and exactly 0
    (resonance at E = 0), hoppings saturated at 0 and 1, eta from 1e-3 to 1, values of 1e3, ``n`` tokens."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1, n, 4, generator=gen) * 1e4
    a[:, ::7] = 0.0
    hop = torch.sigmoid(torch.randn(1, n, 4, generator=gen) * 50)
    z_re, z_im = torch.tensor([0.0, 0.5, -1.9, 1.0]), torch.tensor([1e-3, 0.05, 0.2, 1.0])
    return a, hop, z_re, z_im, torch.randn(1, n, 4, 2, generator=gen) * 1e3


def assert_matches_scan_reference(inputs: tuple[torch.Tensor, ...], outputs: tuple[torch.Tensor, ...], rtol: float = 1e-5) -> None:
    """``outputs`` (g_re, g_im, y_re, y_im) of a scan over ``inputs`` (real values) equal the sequential reference
    recurrence run in float64, within ``rtol`` of each channel's largest value."""
    from hubtrain.models.resnet_bk import green_scan_reference

    reference = green_scan_reference(*(x.double() for x in inputs), None)
    for name, out, ref in zip(("g_re", "g_im", "y_re", "y_im"), outputs, reference):
        scale = ref.abs().amax(dim=(0, 1)).clamp_min(1e-30)
        error = ((out.double() - ref).abs().amax(dim=(0, 1)) / scale).max().item()
        assert error <= rtol, f"{name} differs from the float64 reference scan by {error:.1e} of its scale (> {rtol:.0e})"


@contextlib.contextmanager
def recording_inputs(metric: Any) -> Iterator[list[torch.Tensor]]:
    """Inside the block, every ``metric.update(preds, target)`` also appends ``preds`` to the list it yields."""
    seen: list[torch.Tensor] = []
    update = metric.update  # torchmetrics' wrapped update, an instance attribute

    def recording(preds: torch.Tensor, target: torch.Tensor) -> None:
        seen.append(preds.detach().clone())
        update(preds, target)

    metric.update = recording
    try:
        yield seen
    finally:
        metric.update = update


def validate_recording_metric_inputs(model: Any, data: Any, name: str, tmp_path: Any) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Validate ``model`` on ``data`` and record what the metric logged as ``name`` (``"val/auroc"``) received.

    Returns (the logged metrics, the predictions the metric got, the model's logits for the same images).
    """
    import pytorch_lightning as pl

    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    with recording_inputs(model.metrics.metrics(name.split("/")[0])[name]) as seen:
        logged = trainer.validate(model, datamodule=data, verbose=False)[0]
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(images) for images, _ in data.val_dataloader()])
    return logged, torch.cat(seen), logits


def assert_probabilities_of(preds: torch.Tensor, logits: torch.Tensor, *, multi_label: bool = False) -> None:
    """``preds`` are the softmax (sigmoid for multi-label) of ``logits``: probabilities, not the logits themselves."""
    expected = logits.float().sigmoid() if multi_label else logits.float().softmax(-1)
    assert preds.shape == expected.shape, f"predictions {tuple(preds.shape)} for logits {tuple(expected.shape)}"
    error = (preds.float() - expected).abs().max().item()
    assert error <= 1e-5, (
        f"the predictions are not the {'sigmoid' if multi_label else 'softmax'} of the logits (max difference "
        f"{error:.2e}; values in [{preds.min().item():.3f}, {preds.max().item():.3f}])"
    )


def redundant_onnx_graph(path: Any) -> Any:
    """Write an ONNX graph with something for every optimisation level: Conv -> BatchNormalization -> Relu ->
    Identity -> + (constant + constant), on (batch, 8, 16, 16) float inputs named ``x``. Returns the path."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shapes = {"w": (16, 8, 3, 3), "b": (16,), "scale": (16,), "bias": (16,), "mean": (16,), "k1": (16, 1, 1), "k2": (16, 1, 1)}
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in shapes.items()]
    inits.append(numpy_helper.from_array(rng.uniform(0.5, 2.0, 16).astype(np.float32), "var"))
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("Identity", ["r"], ["i"]),
        helper.make_node("Add", ["k1", "k2"], ["k"]),
        helper.make_node("Add", ["i", "k"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "redundant", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def assert_onnx_optimized(original: Any, optimized: Any, level: str) -> None:
    """``optimized`` holds the graph of ``original`` (``redundant_onnx_graph``) rewritten at ``level``: fewer nodes,
    BatchNormalization folded into the Conv, Identity and the constant-only Add gone; from ``extended`` on, Conv and
    Relu fused into onnxruntime's FusedConv; at ``all``, the NCHWc layout kernels. Outputs agree."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    def ops(path: Any) -> list[tuple[str, str]]:
        return [(node.domain, node.op_type) for node in onnx.load(str(path)).graph.node]

    before, after = ops(original), ops(optimized)
    assert len(after) < len(before), f"the {level} graph was not rewritten: {after}"
    assert not {("", "BatchNormalization"), ("", "Identity")} & set(after), f"nothing folded at {level}: {after}"
    if level in ("extended", "all"):
        fused = "com.microsoft.nchwc" if level == "all" else "com.microsoft"
        assert any(domain == fused for domain, _ in after), f"no {fused} kernels at {level}: {after}"
    x = np.random.default_rng(1).standard_normal((3, 8, 16, 16)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run each graph as saved
    plain, opt = (ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
                  for p in (original, optimized))
    assert np.abs(plain - opt).max() <= 1e-4 * max(1.0, np.abs(plain).max())


def assert_same_weights(got: dict, expected: dict, *, tied: dict | None = None, what: str = "weights") -> None:
    """``got`` holds exactly ``expected``'s tensors: the same key set first (a comparison over the keys both have
    passes when every key was dropped), then equal values. ``tied`` maps a key that may be left out to the key it is
    tied to (``lm_head.weight`` -> ``model.embed_tokens.weight``), which must then be there."""
    tied = {k: v for k, v in (tied or {}).items() if k not in got and k in expected}
    wanted = expected.keys() - tied.keys()
    missing, extra = sorted(wanted - got.keys()), sorted(got.keys() - expected.keys())
    assert not missing and not extra, f"{what}: {len(missing)} key(s) missing {missing[:5]}, {len(extra)} unexpected {extra[:5]}"
    assert all(source in got for source in tied.values()), f"{what}: tied keys {tied} lost their source"
    differ = [k for k in sorted(wanted) if got[k].shape != expected[k].shape or not torch.equal(got[k].cpu(), expected[k].cpu())]
    assert not differ, f"{what}: {len(differ)} tensor(s) differ, e.g. {differ[:5]}"


def assert_uploaded_weights(folder: Any, model: Any) -> None:
    """The ``model.safetensors`` in ``folder`` (a downloaded upload) holds ``model``'s weights, every one of them
    (tied output embeddings may be left out, as ``save_pretrained`` does)."""
    from pathlib import Path

    from safetensors.torch import load_file

    tied = getattr(model, "_tied_weights_keys", None) if getattr(model.config, "tie_word_embeddings", False) else None
    if isinstance(tied, (list, tuple)):  # older transformers list the tied keys only
        tied = {k: "model.embed_tokens.weight" for k in tied}
    assert_same_weights(load_file(str(Path(folder) / "model.safetensors")), model.state_dict(), tied=tied,
                        what=f"uploaded {Path(folder).name}")


def assert_cached_generation_matches(model: Any, input_ids: torch.Tensor, max_new_tokens: int,
                                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``model.generate`` (greedy, with its cache) gives the tokens of the independent uncached loop
    ``greedy_reference``, whose continuation is not one repeated token. Returns the generated tokens."""
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    generated = model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    reference = greedy_reference(model, input_ids, max_new_tokens, attention_mask=attention_mask)
    assert_generates_like_reference(generated, reference, input_ids.shape[1])
    return generated


# the tiny float64 ResNet-BK of the option tests (tests/models/resnet_bk/test_options.py)
OPTION_TINY = dict(vocab_size=64, d_model=32, n_layers=2, num_channels=3, channel_dim=4, num_experts=2, top_k=1)


def option_model(seed: int = 0, dtype: torch.dtype = torch.float64, **options: Any) -> Any:
    from hubtrain.models.resnet_bk import ResNetBKConfig, ResNetBKForCausalLM

    torch.manual_seed(seed)
    return ResNetBKForCausalLM(ResNetBKConfig(**{**OPTION_TINY, **options})).to(dtype).eval()


def check_option_contributes(option: str) -> None:
    """``OPTION_CONTRIBUTIONS[option]`` on the tiny option model: removing only its contribution changes the logits."""
    on, off = OPTION_CONTRIBUTIONS[option]
    ids = torch.randint(0, OPTION_TINY["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(0))
    assert_option_contributes(option_model(**on), off, ids)


def check_auroc_receives_probabilities(root: Any, tmp_path: Any) -> tuple[dict, torch.Tensor, Any]:
    """Validate a 3-class image classifier (``test_resnet``, untrained) with an AUROC metric on the image folder
    ``root`` and assert that the metric received the softmax of the logits. Returns (logged, predictions, data)."""
    from hubtrain import BackboneConfig, ImageClassifier, ImageDataModule, MetricConfig

    data = ImageDataModule(data_dir=root, image_size=16, batch_size=6)
    metrics = [
        MetricConfig("auroc", metric_class="AUROC", params={"task": "multiclass", "num_classes": 3}, stages=["val"]),
        MetricConfig("accuracy", metric_class="Accuracy", params={"task": "multiclass", "num_classes": 3}),
    ]
    torch.manual_seed(0)
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, metrics=metrics)
    logged, seen, logits = validate_recording_metric_inputs(model, data, "val/auroc", tmp_path)
    assert_probabilities_of(seen, logits)
    return logged, seen, data


# the tiny ResNet-BK of the generation tests (tests/models/resnet_bk/test_hf.py)
GENERATION_TINY = dict(vocab_size=64, d_model=32, n_layers=2, num_channels=4, channel_dim=4, num_experts=2, top_k=1,
                       n_seq=16)


def random_option_weights(model: Any, std: float = 0.5) -> Any:
    """Draw at random, as training leaves them, the weights of options that start out doing nothing, where a check
    of them could not fail: the taps of every causal convolution (conv_width > 1; they start as the identity, so
    the positions before would not matter), the token's term of the absorption (absorption="token"; it starts
    near zero, so every token would have its channel's eta) and of the semiseparable term's decay (likewise)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Conv1d) or name.endswith(("absorb_proj", "ss_decay")):
                module.weight.normal_(0.0, std)
    return model


def context_lm(seed: int = 0, **options: Any) -> Any:
    """A tiny ResNet-BK whose greedy continuation depends on its context (checked): a wider init than the default,
    whose random model predicts from the last token alone. Eval mode."""
    from hubtrain.models.resnet_bk import ResNetBKConfig, ResNetBKForCausalLM

    torch.manual_seed(seed)
    config = ResNetBKConfig(**{**GENERATION_TINY, "initializer_range": 0.2, **options})
    model = random_option_weights(ResNetBKForCausalLM(config).eval())
    assert_context_dependent(model, GENERATION_TINY["vocab_size"])
    return model

# A Python in which `import hubtrain` fails: what a user who never installed hubtrain has.
BLOCK_HUBTRAIN = """
import importlib.abc, sys
class _BlockHubtrain(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hubtrain" or name.startswith("hubtrain."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, _BlockHubtrain())
try:
    import hubtrain
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("hubtrain is importable: the test would prove nothing")
"""


def run_without_hubtrain(code: str, *args: Any, env: dict[str, str] | None = None, timeout: float = 300) -> Any:
    """Run ``code`` (with ``sys.argv[1:] = args``) in a fresh Python that cannot import hubtrain; return the
    completed process after asserting that it exited 0."""
    import os
    import subprocess
    import sys

    # one thread, as in the tests (`one_thread`): the same kernels on the same weights give identical outputs
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run([sys.executable, "-c", BLOCK_HUBTRAIN + code, *map(str, args)], capture_output=True,
                            text=True, env=full_env, timeout=timeout)
    assert result.returncode == 0, f"the script without hubtrain failed:\n{result.stderr[-3000:]}"
    return result
