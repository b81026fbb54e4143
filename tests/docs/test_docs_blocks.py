"""Every Python block of README.md and docs/**/*.md runs, read from the file when the test runs.

Each document is run top to bottom like a notebook: its blocks share one namespace and one working folder, so a
later block uses what an earlier one defined or wrote (README's "Shipping" block exports the model its previous
block loaded and pushes the folder its first block saved). Running one block alone (``-k``) runs the blocks before
it first.

``TABLE`` lists every block by ``<file>#<index>`` with what the test changes and why:

- ``subs``: ``(old, new, reason)`` substitutions, each of which must still match the block (tiny sizes for CPU,
  a few steps instead of hundreds, a local path for a placeholder);
- ``given``: what the reader is assumed to have already (a trained model, a run's ``metrics.csv``, checkpoints),
  built by the test in the document's folder;
- ``online``: the block pushes to the Hub; ``huggingface_hub`` then talks to a local test Hub
  (``tests/hub/hub_server.py``) on which the token in ``HF_TOKEN`` belongs to the user ``you``, so repo ids such
  as ``"you/digits-resnet18"`` run unchanged;
- ``tensorrt_from``: the block's part from this line on needs a CUDA GPU and the ``tensorrt`` package; elsewhere
  the test checks that it fails with that reason, then reports the test as skipped with it (visible in pytest's
  summary) after the rest of the block ran and passed its checks;
- ``check``: what the block says it does, verified where that is cheap.

Models the blocks download come from a Hugging Face cache laid out by this module under the blocks' own repo ids
(``timm/resnet18.a1_in1k`` with timm's real resnet18 architecture, randomly initialised; ``gpt2``'s place taken by
a small byte-level BPE; a 2-layer ViT as ``google/vit-base-patch16-224``; a tiny ResNet-BK as
``hubtrain/resnet-bk-1b``). Everything else runs with ``HF_HUB_OFFLINE=1``.

A new block fails ``test_every_block_is_in_the_table`` (and its own test) until it gets an entry here.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from checks import METRICS_CSV
from doc_blocks import python_blocks, run_block, substitute
from hfcache import HFCache

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "hub"))
from hub_server import LocalHubServer, patch_client_endpoint  # noqa: E402

# On the test Hub this token belongs to "you", the namespace the documents push to.
HUB_TOKEN = "hf_DocsTestTokenOfYou0123456789abcdef"


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def block_ids() -> list[str]:
    """``"<file relative to the repository>#<block index>"`` for every Python block, read from the files now."""
    return [f"{doc.relative_to(REPO).as_posix()}#{i}" for doc in documents() for i in range(len(python_blocks(doc)))]


@dataclass(frozen=True)
class Spec:
    check: Callable[["Notebook"], None]
    subs: tuple = ()
    given: Callable[[Path], dict[str, Any]] | None = None
    online: bool = False
    tensorrt_from: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# what the blocks say they do


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def check_readme_tour(nb: "Notebook") -> None:
    run_dir = nb.workdir / "runs" / "imageclassifier" / "version_0"
    assert {"checkpoints", "metrics.csv", "training_curves.png", "lr_finder.png"} <= _files(run_dir)
    assert list((run_dir / "checkpoints").glob("*.ckpt"))
    assert {"model.safetensors", "config.json", "README.md"} <= _files(nb.workdir / "digits-resnet18")
    trainer, model = nb.ns["trainer"], nb.ns["model"]
    assert "val/accuracy" in trainer.callback_metrics  # the MetricConfig of the block, logged per stage
    # the LR finder ran (its plot is above); with 2 steps it has no suggestion and keeps the block's lr=1e-3
    assert trainer.lr_finder is not None and model.lr == trainer.tuning_results.get("lr", 1e-3)


def check_readme_lm(nb: "Notebook") -> None:
    folder = nb.workdir / "resnet-bk-stdlib"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= _files(folder)
    task, data = nb.ns["task"], nb.ns["data"]
    assert task.trainer.global_step == 2
    assert task.model.config.vocab_size == len(data.tokenizer)  # the task adopted the datamodule's BPE


def check_readme_generate(nb: "Notebook") -> None:
    from hubtrain.models.resnet_bk import ResNetBKForCausalLM

    assert isinstance(nb.ns["model"], ResNetBKForCausalLM)
    out, input_ids = nb.ns["out"], nb.ns["input_ids"]
    assert out.shape[1] > input_ids.shape[1] and torch.equal(out[:, : input_ids.shape[1]], input_ids)
    assert nb.stdout.startswith("def main(")


def check_readme_shipping(nb: "Notebook") -> None:
    import onnxruntime as ort
    from safetensors.torch import load, load_file

    session = ort.InferenceSession(str(nb.workdir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids"]
    pushed = load(nb.hub.file_bytes("you/digits-resnet18", "model.safetensors"))
    local = load_file(nb.workdir / "digits-resnet18" / "model.safetensors")
    assert pushed.keys() == local.keys() and all(torch.equal(pushed[k], local[k]) for k in local)
    assert nb.hub.file_bytes("you/digits-resnet18", "README.md").startswith(b"---\n")  # the model card


def check_export_one_liner(nb: "Notebook") -> None:
    from hubtrain.export import onnx_op_types

    assert "Scan" in onnx_op_types(nb.workdir / "resnet_bk_100m.onnx")  # one graph for every length
    assert (nb.workdir / "resnet_bk_100m.extended.onnx").is_file()
    from hubtrain.export.tensorrt import tensorrt_unavailable_reason

    if tensorrt_unavailable_reason() is None:  # the TensorRT line ran too
        assert (nb.workdir / "resnet_bk_100m.trt").is_file()


def check_export_decode(nb: "Notebook") -> None:
    assert nb.ns["check"]["ok"] and (nb.workdir / nb.ns["path"]).is_file()
    prompt = torch.tensor(nb.ns["prompt_ids"])
    with torch.no_grad():
        expected = nb.ns["model"].generate(prompt, max_new_tokens=20, do_sample=False)
    assert nb.ns["tokens"].tolist() == expected.tolist()  # onnxruntime decodes as PyTorch's generate does


def check_export_deployment(nb: "Notebook") -> None:
    from hubtrain.export.tensorrt import tensorrt_unavailable_reason

    deploy = nb.workdir / "deploy"
    expected = {"model.onnx", "model.extended.onnx", "decode_step.onnx", "model.torchscript.pt", "report.json"}
    assert expected <= _files(deploy)
    report = json.loads((deploy / "report.json").read_text())
    reason = tensorrt_unavailable_reason()
    if reason:
        assert report["artifacts"]["tensorrt"] == {"skipped": reason}
    else:
        assert (deploy / "model.engine").is_file()
    assert {row["backend"] for row in report["benchmark"]["rows"]} >= {"eager", "onnxruntime"}
    # the TorchScript archive runs at a length the export never saw
    scripted = torch.jit.load(str(deploy / "model.torchscript.pt"))
    ids = torch.randint(0, nb.ns["model"].config.vocab_size, (1, 23))
    with torch.no_grad():
        assert torch.allclose(scripted(ids), nb.ns["model"](ids).logits, atol=1e-4)


def check_hub_publishing(nb: "Notebook") -> None:
    hub = nb.hub
    assert nb.stdout.startswith("uploaded 3, failed 1\n"), nb.stdout
    assert "FAILED checkpoints/resnet_bk_broken.pt -> you/resnet-bk-broken: cannot read checkpoint" in nb.stdout
    # the first push carried the run's metrics into the card's model-index; the second pushed the folder
    first, second = hub.history("you/digits-resnet")[1:]
    card = hub.state.objects[first.files["README.md"].data_sha256].decode()
    assert "model-index" in card and "0.93" in card and "training_curves.png" in first.files
    assert "model.safetensors" in second.files
    for repo in ("you/resnet-bk-1b", "you/resnet-bk-1m", "you/resnet-bk-tiny"):
        assert "model.safetensors" in hub.history(repo)[-1].files, repo
    assert ("model", "you/resnet-bk-broken") not in hub.state.repos


def check_hub_local_server(nb: "Notebook") -> None:
    folder = Path(nb.ns["folder"])
    assert {"model.safetensors", "config.json", "README.md"} <= _files(folder)
    assert nb.ns["hub"].file_bytes("alice/test", "model.safetensors")


def check_training_five_lines(nb: "Notebook") -> None:
    from hubtrain import ImageClassifier

    assert {"model.safetensors", "config.json", "README.md"} <= _files(nb.workdir / "digits-resnet18")
    assert nb.ns["trainer"].global_step == 2
    # "ImageClassifier.from_pretrained("digits-resnet18") rebuilds the model offline"
    reloaded = ImageClassifier.from_pretrained(nb.workdir / "digits-resnet18").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), nb.ns["model"].eval()(x), atol=1e-5)


def check_training_metrics(nb: "Notebook") -> None:
    from hubtrain import MetricManager

    manager = MetricManager(nb.ns["metrics"], num_classes=10)
    assert [c.name for c in manager.configs_for("val")] == ["accuracy", "auroc"]
    assert [c.name for c in manager.configs_for("train")] == ["accuracy"]


def check_resnet_bk_presets(nb: "Notebook") -> None:
    assert nb.stdout.split() == ["10035218432", "10138144768"]  # the 10B row of the presets table
    assert nb.ns["model"].device.type == "meta"


def check_resnet_bk_auto_classes(nb: "Notebook") -> None:
    from hubtrain.models.resnet_bk import ResNetBKForCausalLM

    folder = nb.workdir / "my-resnet-bk"
    assert {"model.safetensors", "config.json", "tokenizer.json", "modeling_resnet_bk.py"} <= _files(folder)
    assert "auto_map" in json.loads((folder / "config.json").read_text())
    assert isinstance(nb.ns["model"], ResNetBKForCausalLM) and nb.ns["model"].config.vocab_size == len(nb.ns["tokenizer"])


def check_resnet_bk_generation(nb: "Notebook") -> None:
    inputs, outputs, model = nb.ns["inputs"], nb.ns["outputs"], nb.ns["model"]
    assert outputs.shape[1] > inputs["input_ids"].shape[1]
    assert nb.stdout.startswith("The future of AI is")
    # the hand-written cached step predicts what the model says for the whole prefix
    prefix = torch.cat([inputs["input_ids"], nb.ns["token"]], dim=1)
    with torch.no_grad():
        full = model(input_ids=prefix).logits[:, -1]
    assert torch.allclose(nb.ns["out"].logits[:, -1], full, atol=1e-4)


def check_resnet_bk_torch_hub(nb: "Notebook") -> None:
    ns = nb.ns
    published = nb.cache_models["hubtrain/resnet-bk-1b"]
    loaded = ns["model"].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in published.state_dict().items())  # the cached weights
    assert ns["big"].device.type == "meta" and ns["big"].config.d_model == 2048


def check_hf_auto(nb: "Notebook") -> None:
    model, data = nb.ns["model"], nb.ns["data"]
    assert nb.ns["trainer"].global_step == 2
    assert type(model.backbone.model).__name__ == "ViTModel"
    # preprocessing from the repo's preprocessor_config.json (32 px, mean 0.5)
    assert tuple(data.transform_config["input_size"]) == (3, 32, 32)
    assert list(data.transform_config["mean"]) == pytest.approx([0.5, 0.5, 0.5])


def check_hf_direct(nb: "Notebook") -> None:
    assert nb.ns["trainer"].global_step == 2
    assert nb.ns["model"].backbone.num_features == 192
    assert tuple(nb.ns["data"].transform_config["input_size"]) == (3, 32, 32)  # "32 px, ViT's mean/std"


def check_hf_hub_timm(nb: "Notebook") -> None:
    trainer = nb.ns["trainer"]
    assert trainer.global_step == 2 and "test/accuracy" in trainer.callback_metrics
    assert tuple(nb.ns["data"].transform_config["input_size"]) == (3, 64, 64)
    assert {"model.safetensors", "config.json", "README.md"} <= _files(nb.workdir / "digits-resnet18")
    # trained from the cached weights: after two small steps the first convolution is still close to them
    published = nb.cache_models["timm/resnet18.a1_in1k"].conv1.weight
    trained = nb.ns["model"].backbone.model.conv1.weight.detach()
    assert not torch.equal(trained, published) and torch.allclose(trained, published, atol=0.05)


def check_hf_hub_timm_dense(nb: "Notebook") -> None:
    segmentor, detector = nb.ns["segmentor"].eval(), nb.ns["detector"]
    with torch.no_grad():
        assert segmentor(torch.randn(1, 3, 64, 64)).shape == (1, 4, 64, 64)
    assert detector.num_classes == 3


# ---------------------------------------------------------------------------------------------------------------
# what the reader already has




def given_trained_models(workdir: Path) -> dict[str, Any]:
    """docs/hub.md publishes the reader's work: a trained ``model``, its run's ``metrics.csv``, the folder
    ``hubtrain quickstart`` wrote, and a ``checkpoints/`` folder (3 good checkpoints, one broken file)."""
    from hubtrain import ImageClassifier
    from hubtrain.models.resnet_bk import create_resnet_bk_for_hf

    torch.manual_seed(0)
    model = ImageClassifier(backbone="test_resnet", pretrained=False, num_classes=10)
    run = workdir / "runs" / "digits" / "version_0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text(METRICS_CSV)
    model.save_pretrained(workdir / "hubtrain-quickstart")
    checkpoints = workdir / "checkpoints"
    checkpoints.mkdir()
    tiny = dict(vocab_size=64, d_model=32, n_layers=2, num_channels=4, channel_dim=8, ffn_dim=32, num_experts=2)
    # a stand-in for a 1B run's checkpoint: it carries its own (tiny) config, which takes precedence over the preset
    stand_in = create_resnet_bk_for_hf("1M", **tiny)
    torch.save({"config": stand_in.config.to_dict(), "state_dict": stand_in.state_dict()}, checkpoints / "resnet_bk_1b.pt")
    torch.save(create_resnet_bk_for_hf("1M", vocab_size=64).state_dict(), checkpoints / "resnet_bk_1m.pt")  # by name
    create_resnet_bk_for_hf("1M", **tiny).save_pretrained(checkpoints / "resnet_bk_tiny")
    (checkpoints / "resnet_bk_broken.pt").write_bytes(b"not a checkpoint at all")
    return {"model": model}


# ---------------------------------------------------------------------------------------------------------------
# the table: every Python block of the documentation

FEW_STEPS = "a few steps of one epoch: the block's behaviour, not its accuracy, is under test on a 2-core CPU"
EXPORT_DEPTH = ("one block instead of the preset's depth: ONNX export time grows with the number of layers "
                "(tens of seconds each on CPU)")

TABLE: dict[str, Spec] = {
    "README.md#0": Spec(
        subs=(
            ("batch_size=64)", "batch_size=8)",
             "bf16 autocast on a CPU without bf16 units runs about 5x slower than float32: an eighth of the batch"),
            ("max_epochs=5,", "max_epochs=1, limit_train_batches=2, limit_val_batches=2,",
             FEW_STEPS + "; the LR finder then has 2 steps too, too few for a suggestion, and keeps lr with a warning"),
        ),
        check=check_readme_tour,
    ),
    "README.md#1": Spec(
        subs=(
            ('TextDataModule(dataset_name="python_stdlib", block_size=256)',
             'TextDataModule(dataset_name="python_stdlib", block_size=256, max_files=40, vocab_size=512)',
             "the BPE is trained on 40 stdlib files with 512 tokens, not the whole library with 4096"),
            ('CausalLMTask("resnet_bk:1M", tokenizer=data.tokenizer)',
             'CausalLMTask("resnet_bk:1M", tokenizer=data.tokenizer, model_kwargs={"n_layers": 1})', EXPORT_DEPTH
             + " (README's shipping block exports this model)"),
            ("AutoTrainer(max_steps=300)", "AutoTrainer(max_steps=2, limit_val_batches=2)", FEW_STEPS),
        ),
        check=check_readme_lm,
    ),
    "README.md#2": Spec(check=check_readme_generate),
    "README.md#3": Spec(online=True, check=check_readme_shipping),
    "docs/approaches/hf_auto.md#0": Spec(
        subs=(("AutoTrainer(max_epochs=1)", "AutoTrainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2)",
               FEW_STEPS),),
        check=check_hf_auto,
    ),
    "docs/approaches/hf_direct.md#0": Spec(
        subs=(("AutoTrainer(max_epochs=3)", "AutoTrainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2)",
               FEW_STEPS),),
        check=check_hf_direct,
    ),
    "docs/approaches/hf_hub_timm.md#0": Spec(
        subs=(("AutoTrainer(max_epochs=3)",
               "AutoTrainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2, limit_test_batches=2)",
               FEW_STEPS),),
        check=check_hf_hub_timm,
    ),
    "docs/approaches/hf_hub_timm.md#1": Spec(check=check_hf_hub_timm_dense),
    "docs/export.md#0": Spec(
        subs=(('create_resnet_bk_for_hf("100M")', 'create_resnet_bk_for_hf("1M", n_layers=1)',
               "a one-block 1M model instead of 126M parameters (500 MB of weights to export and verify on CPU); "
               + EXPORT_DEPTH),),
        tensorrt_from="export_to_tensorrt(",
        check=check_export_one_liner,
    ),
    "docs/export.md#1": Spec(check=check_export_decode),
    "docs/export.md#2": Spec(
        subs=(("num_threads=2)", "num_threads=2, iters=2, seq_lens=(16,))",
               "the latency table from 2 timed runs at one short length, not 20 at the default lengths"),),
        check=check_export_deployment,
    ),
    "docs/hub.md#0": Spec(given=given_trained_models, online=True, check=check_hub_publishing),
    "docs/hub.md#1": Spec(
        subs=(('sys.path.insert(0, "tests/hub")', f"sys.path.insert(0, {str(REPO / 'tests' / 'hub')!r})",
               "the path is relative to the repository root; the test runs in its own folder"),),
        check=check_hub_local_server,
    ),
    "docs/resnet_bk.md#0": Spec(check=check_resnet_bk_presets),
    "docs/resnet_bk.md#1": Spec(check=check_resnet_bk_auto_classes),
    "docs/resnet_bk.md#2": Spec(check=check_resnet_bk_generation),
    "docs/resnet_bk.md#3": Spec(
        subs=(('"/path/to/hubtrain"', repr(str(REPO)), "the placeholder for a clone: this repository"),),
        check=check_resnet_bk_torch_hub,
    ),
    "docs/training.md#0": Spec(
        subs=(("AutoTrainer(max_epochs=6)", "AutoTrainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2)",
               FEW_STEPS),),
        check=check_training_five_lines,
    ),
    "docs/training.md#1": Spec(check=check_training_metrics),
}


# ---------------------------------------------------------------------------------------------------------------
# running the documents


class _Tee(io.StringIO):
    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        return super().write(text)


class Notebook:
    """One document's namespace and folder; ``run(i)`` runs block ``i`` (and any earlier block not yet run)."""

    def __init__(self, doc: str, env: "DocsEnv") -> None:
        self.doc, self.env = doc, env
        self.blocks = python_blocks(REPO / doc)
        self.workdir = env.root / "work" / doc.replace("/", "_")
        self.workdir.mkdir(parents=True)
        self.ns: dict[str, Any] = {"__name__": f"docs:{doc}"}
        self.done = 0
        self.stdout = ""
        self.hub, self.cache_models = env.hub, env.cache_models

    def run(self, index: int) -> str | None:
        """Run block ``index``; returns why part of it could not run here (the TensorRT part), else None."""
        for earlier in range(self.done, index):
            try:
                self._run(earlier)
            except Exception as err:
                raise AssertionError(f"{self.doc}#{earlier}, run before block {index}, failed: {err!r}") from err
        return self._run(index)

    def _run(self, index: int) -> str | None:
        block_id = f"{self.doc}#{index}"
        spec = TABLE.get(block_id)
        assert spec is not None, f"{block_id} has no entry in TABLE; add one (substitutions with reasons, a check)"
        code = substitute(self.blocks[index], spec.subs, where=f"{block_id}")
        tail, skipped = "", None
        if spec.tensorrt_from:
            at = re.search(rf"^{re.escape(spec.tensorrt_from)}", code, flags=re.M)
            assert at, f"{block_id}: no line starts with {spec.tensorrt_from!r}; update the table"
            code, tail = code[: at.start()], code[at.start():]
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(_Tee(sys.stdout)) as out:
            mp.chdir(self.workdir)
            if spec.given:
                self.ns.update(spec.given(self.workdir))
            with patch_client_endpoint(self.hub.endpoint) if spec.online else contextlib.nullcontext():
                run_block(code, self.ns, f"<{block_id}>")
                if tail:
                    from hubtrain.export.tensorrt import tensorrt_unavailable_reason

                    skipped = tensorrt_unavailable_reason()
                    if skipped:
                        with pytest.raises(RuntimeError, match=re.escape(skipped)):
                            run_block(tail, self.ns, f"<{block_id}, TensorRT part>")
                    else:
                        run_block(tail, self.ns, f"<{block_id}, TensorRT part>")
        self.stdout = out.getvalue()
        self.done = index + 1
        return skipped


@dataclass
class DocsEnv:
    root: Path
    hub: LocalHubServer
    cache_models: dict[str, torch.nn.Module]
    notebooks: dict[str, Notebook]

    def notebook(self, doc: str) -> Notebook:
        if doc not in self.notebooks:
            self.notebooks[doc] = Notebook(doc, self)
        return self.notebooks[doc]


def _publish_models(cache: HFCache, work: Path) -> dict[str, torch.nn.Module]:
    """The repos the documents download, under their own ids, in the module's Hugging Face cache."""
    import timm
    from timm.models import save_for_hf
    from transformers import GPT2Config, ViTConfig, ViTImageProcessor, ViTModel

    from hubtrain.data.tokenizer import get_bpe_tokenizer
    from hubtrain.models.resnet_bk import create_resnet_bk_for_hf

    torch.manual_seed(0)
    models: dict[str, torch.nn.Module] = {}
    # "resnet18" (pretrained) and "hf-hub:timm/resnet18.a1_in1k": timm's own architecture, random weights
    resnet18 = timm.create_model("resnet18", pretrained=False)
    assert resnet18.pretrained_cfg["hf_hub_id"] == "timm/resnet18.a1_in1k"  # what timm resolves "resnet18" to
    save_for_hf(resnet18, work / "resnet18", safe_serialization=True)
    cache.add_folder("timm/resnet18.a1_in1k", work / "resnet18")
    models["timm/resnet18.a1_in1k"] = resnet18
    # "hf:google/vit-base-patch16-224": a 2-layer ViT at 32 px with its image processor
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8), add_pooling_layer=False)
    vit.save_pretrained(work / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(work / "vit")
    cache.add_folder("google/vit-base-patch16-224", work / "vit")
    # "gpt2"'s tokenizer: a byte-level BPE of 320 tokens trained here
    corpus = ["The future of AI is open, measured and reproducible.", "def main():\n    return 0\n"] * 20
    tokenizer = get_bpe_tokenizer(corpus, 320, work / "bpe")
    tokenizer.save_pretrained(work / "gpt2")
    GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=8, n_head=1).to_json_file(work / "gpt2" / "config.json")
    cache.add_folder("gpt2", work / "gpt2")
    # torch.hub's resnet_bk_1b(pretrained=True): a small ResNet-BK stands in for the 1B weights
    rbk = create_resnet_bk_for_hf("1M", d_model=16, n_layers=2).eval()
    rbk.save_pretrained(work / "resnet-bk-1b")
    cache.add_folder("hubtrain/resnet-bk-1b", work / "resnet-bk-1b")
    models["hubtrain/resnet-bk-1b"] = rbk
    return models


@pytest.fixture(scope="module")
def docs_env(tmp_path_factory) -> DocsEnv:
    root = tmp_path_factory.mktemp("docs")
    mp = pytest.MonkeyPatch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models on a shared 2-core machine: one thread is faster than fighting for two
    try:
        cache = HFCache(root / "hf-home", mp)  # offline, private; blocks that push go online to the test Hub only
        mp.setenv("HUBTRAIN_CACHE", str(root / "hubtrain-cache"))  # tokenizers trained by TextDataModule
        mp.setenv("HF_TOKEN", HUB_TOKEN)
        mp.delenv("HF_ENDPOINT", raising=False)
        models = _publish_models(cache, root / "published")
        with LocalHubServer(tokens={HUB_TOKEN: "you"}, max_lifetime_s=3600) as hub:
            yield DocsEnv(root, hub, models, {})
    finally:
        mp.undo()
        torch.set_num_threads(threads)
        shutil.rmtree(root, ignore_errors=True)  # ~1.4 GB of checkpoints and exports: free it for the next module


def test_every_block_is_in_the_table():
    collected, listed = block_ids(), set(TABLE)
    missing = [b for b in collected if b not in listed]
    stale = sorted(listed - set(collected))
    assert not missing and not stale, (
        f"Python blocks without an entry in TABLE: {missing}; entries for blocks that no longer exist: {stale} "
        "(a block added, removed or moved: update TABLE)"
    )
    for block_id, spec in TABLE.items():
        for sub in spec.subs:
            assert len(sub) == 3 and sub[2], f"{block_id}: substitution {sub[0]!r} needs a reason"


@pytest.mark.parametrize("block_id", block_ids())
def test_doc_block(block_id: str, docs_env: DocsEnv) -> None:
    doc, index = block_id.rsplit("#", 1)
    notebook = docs_env.notebook(doc)
    skipped = notebook.run(int(index))
    TABLE[block_id].check(notebook)
    if skipped:
        pytest.skip(f"{block_id}: the part from `{TABLE[block_id].tensorrt_from}` on was not run: {skipped} "
                    "(it raised that error, as the block's comment says; the rest of the block ran and passed)")
