"""Every Python block of the seed document runs, with ``autotimm`` replaced by ``hubtrain``.

The document (``seed/autotimm_hf_integration_overview.md``, a copy of the seed) is read top to bottom like a
notebook: blocks share one namespace, so a later block may use what an earlier one defined (block 11 tunes the
``model`` of block 10 on the ``datamodule`` of block 9), exactly as a reader would run them.

The code is the document's own, extracted at test time; the only changes are the substitutions listed next to each
block, each with its reason (tiny sizes for CPU CI, built-in data for CIFAR10, bf16 where the document asks for
fp16 on a CPU, and the seed's own bugs). Models the document downloads are served from a Hugging Face cache this
module lays out, under the document's repo names, with tiny stand-in architectures where the document's
models would not fit the CI budget (noted per block). Everything runs with ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from doc_blocks import python_blocks, run_block, substitute

SEED = Path(__file__).parent / "seed" / "autotimm_hf_integration_overview.md"
BLOCKS = python_blocks(SEED)
CPU_ONLY = not torch.cuda.is_available()

# The seed's ViT configs at 224 px (86M parameters) become 2-layer, width-32 ViTs on 32 px images.
TINY_VIT = "hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8"
VIT_BASE_CONFIG = re.compile(r"ViTConfig\(\s*hidden_size=768,\s*num_hidden_layers=12,[^)]*\)")
IMPORT_TORCH = ("", "import torch  # the seed's snippet uses torch.nn without importing torch\n")
# the seed's hand-written ViT classifiers (blocks 1 and 4), shrunk to the tiny ViT
TINY_VIT_CLASSIFIER = [IMPORT_TORCH, (VIT_BASE_CONFIG, f"ViTConfig({TINY_VIT})"),
                       ("torch.nn.Linear(768, num_classes)", "torch.nn.Linear(32, num_classes)")]
FP16_ON_CPU = ('precision="16-mixed"', 'precision="bf16-mixed"' if CPU_ONLY else 'precision="16-mixed"')


def _sub(code: str, substitutions: list[tuple[Any, str]]) -> str:
    code = substitute(code, substitutions, where="the seed's code")
    return re.sub(r"\bautotimm\b", "hubtrain", code)  # the module, not names such as autotimm_model


# ---------------------------------------------------------------------------------------------------------------
# the document's models, served from a local Hugging Face cache; its ./data folder


def _publish(hub: Path, repo_id: str, folder: Path) -> None:
    """Lay ``folder`` out as ``repo_id`` the way huggingface_hub caches it (snapshots/<commit> + refs/main)."""
    import hashlib

    repo = hub / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def _build_hub(hub: Path, work: Path) -> None:
    import timm
    from timm.models import save_for_hf
    from transformers import BeitConfig, BeitImageProcessor, BeitModel, ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    timm_models = {
        "timm/resnet50.a1_in1k": "resnet50",  # the real architecture
        "timm/convnext_atto.d2_in1k": "convnext_atto",  # stands in for convnext_base (substituted in the code)
    }
    for repo_id, arch in timm_models.items():
        save_for_hf(timm.create_model(arch, pretrained=False), work / repo_id, safe_serialization=True)
        _publish(hub, repo_id, work / repo_id)
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    # transformers repos under the document's names: tiny ViT / BEiT with their own image processors.
    for repo_id, model, processor in (
        ("google/vit-base-patch16-224", ViTModel(ViTConfig(**tiny)), ViTImageProcessor(size={"height": 32, "width": 32})),
        ("microsoft/beit-base-patch16-224", BeitModel(BeitConfig(**tiny)), BeitImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)),
    ):
        model.save_pretrained(work / repo_id)
        processor.save_pretrained(work / repo_id)
        _publish(hub, repo_id, work / repo_id)


def _build_data(root: Path, classes: int = 10) -> None:
    """``./data/{train,val,test}/<class>/*.png``: 10 classes, distinct colours and stripes, 16 px."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = np.full((16, 16, 3), (25 * c, 255 - 25 * c, (80 * c) % 256), dtype=np.float32)
                img[:: 2 + c % 4] *= 0.4
                img += rng.normal(0, 10, img.shape)
                Image.fromarray(img.clip(0, 255).astype("uint8")).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def doc(tmp_path_factory) -> Callable[..., dict[str, Any]]:
    """``doc(index, substitutions)`` runs block ``index`` in the document's shared namespace and returns it."""
    from huggingface_hub import constants

    root = tmp_path_factory.mktemp("seed-doc")
    hub = root / "hf-home" / "hub"
    hub.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(root / "hf-home"))
        mp.setenv("HF_HUB_CACHE", str(hub))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(constants, "HF_HOME", str(root / "hf-home"))
        mp.setattr(constants, "HF_HUB_CACHE", str(hub))
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        _build_hub(hub, root / "saved")
        workdir = root / "work"
        _build_data(workdir / "data")
        mp.chdir(workdir)
        namespace: dict[str, Any] = {"__name__": "seed_document"}

        def run(index: int, substitutions: list = (), *, code: str | None = None, extra: dict | None = None) -> dict[str, Any]:
            """Run block ``index`` (or ``code``, a part of it) after ``substitutions``; ``extra`` joins the namespace."""
            namespace.update(extra or {})
            code = _sub(BLOCKS[index] if code is None else code, list(substitutions))
            with mp.context() as inner:
                inner.setenv("HF_HUB_OFFLINE", "1")
                run_block(code, namespace, f"<seed block {index}>")
            return namespace

        run.workdir = workdir  # type: ignore[attr-defined]
        yield run
    shutil.rmtree(root, ignore_errors=True)  # ~1.3 GB of checkpoints: free it for the next module


def test_every_block_has_a_test():
    tested = {int(m) for m in re.findall(r"def test_block_(\d+)_", Path(__file__).read_text())}
    assert tested == set(range(len(BLOCKS))), f"blocks without a test: {sorted(set(range(len(BLOCKS))) - tested)}"


def test_block_0_hf_hub_timm(doc):
    ns = doc(0)
    model = ns["model"]
    assert type(model.backbone.model).__name__ == "ResNet" and model.backbone.num_features == 2048
    assert model.head[-1].out_features == 10
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_block_1_hf_direct_class(doc):
    ns = doc(1, TINY_VIT_CLASSIFIER)
    model = ns["ViTClassifier"](num_classes=10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_block_2_hf_auto_classes(doc):
    ns = doc(2)
    assert type(ns["model"]).__name__ == "ViTModel"
    assert list(ns["processor"].image_mean) == [0.5, 0.5, 0.5]
    # and the loaded model is a hubtrain backbone as it is
    from hubtrain import ImageClassifier

    clf = ImageClassifier(backbone=ns["model"], num_classes=3)
    assert clf(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_block_3_classification_and_segmentation(doc):
    # convnext_base (88M parameters) -> convnext_atto, served under its own repo name.
    ns = doc(3, [("hf-hub:timm/convnext_base.fb_in22k_ft_in1k", "hf-hub:timm/convnext_atto.d2_in1k")])
    assert ns["classifier"](torch.randn(2, 3, 32, 32)).shape == (2, 100)
    segmentor = ns["segmentor"].eval()
    with torch.no_grad():
        out = segmentor(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 19, 64, 64)  # full-resolution logits


def test_block_4_custom_vit_classifier(doc):
    ns = doc(4, TINY_VIT_CLASSIFIER)
    model = ns["CustomViTClassifier"](num_classes=10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_block_5_auto_model_loop(doc):
    ns = doc(5)
    assert type(ns["model"]).__name__ == "BeitModel"  # the loop's last model


def test_block_6_complete_usage_example(doc):
    subs = [
        ('dataset_name="CIFAR10"', 'dataset_name="digits"'),  # built-in data, no download
        ("image_size=224", "image_size=32"),
        ("ViTModel(ViTConfig(hidden_size=768))", f"ViTModel(ViTConfig({TINY_VIT}))"),
        ("torch.nn.Linear(768, 10)", "torch.nn.Linear(32, 10)"),
        ("AutoTrainer(max_epochs=10)", "AutoTrainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2)"),
    ]
    # Run up to the first fit, snapshot both models, then run the fits.
    head, fits = BLOCKS[6].split("trainer.fit(autotimm_model", 1)
    ns = doc(6, subs, code=head)
    before = {name: [p.detach().clone() for p in ns[name].parameters()] for name in ("autotimm_model", "vit_model")}
    doc(6, code="trainer.fit(autotimm_model" + fits)
    for name, params in before.items():
        changed = any(not torch.equal(p, q) for p, q in zip(params, ns[name].parameters()))
        assert changed, f"{name} did not train: the second fit on the same AutoTrainer must train too"


def test_block_7_dependency_list_is_not_code():
    with pytest.raises(SyntaxError):
        compile(BLOCKS[7], "<seed block 7>", "exec")
    # It says hubtrain needs timm + huggingface_hub for approach 1; check the claim that matters: importing
    # hubtrain and building an hf-hub backbone does not import transformers.
    import subprocess
    import sys

    code = "import sys, hubtrain; from hubtrain.backbones import create_backbone; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_block_8_specific_classes(doc):
    ns = doc(8)
    assert {"AutoModel", "AutoImageProcessor", "AutoConfig", "ViTModel", "ViTConfig", "ViTImageProcessor"} <= set(ns)


def test_block_9_autotrainer_hf_hub_timm(doc):
    ns = doc(9, [("image_size=224", "image_size=32"), ("max_epochs=100", "max_epochs=2"), FP16_ON_CPU])
    trainer = ns["trainer"]
    assert trainer.current_epoch == 2
    saved = list((doc.workdir / "checkpoints").glob("best-*.ckpt"))
    best = float(ns["checkpoint_callback"].best_model_score)
    assert saved and any(f"{best:.2f}" in p.name for p in saved), [p.name for p in saved]
    assert "test/accuracy" in trainer.callback_metrics


def test_block_10_autotrainer_hf_direct(doc):
    from hubtrain import ImageDataModule

    # The seed never defines train_loader / val_loader: the reader brings their own (digits here).
    data = ImageDataModule(dataset_name="digits", image_size=32, batch_size=32)
    ns = doc(
        10,
        [
            IMPORT_TORCH,
            (VIT_BASE_CONFIG, f"ViTConfig({TINY_VIT})"),
            ("torch.nn.Linear(768, num_classes)", "torch.nn.Linear(32, num_classes)"),
            # The seed's callbacks (from block 9) monitor val/accuracy, which its module never logs; Lightning's
            # EarlyStopping stops the run with an error without it. The reader adds a validation_step:
            (
                "    def configure_optimizers(self):",
                "    def validation_step(self, batch, batch_idx):\n"
                "        x, y = batch\n"
                '        self.log("val/accuracy", (self(x).argmax(-1) == y).float().mean())\n\n'
                "    def configure_optimizers(self):",
            ),
            ("max_epochs=100,", "max_epochs=2, limit_train_batches=2, limit_val_batches=2,"),
            ("trainer.fit(model, train_loader, val_loader)", "trainer.fit(model, data.train_dataloader(), data.val_dataloader())"),
        ],
        extra={"data": data},
    )
    assert ns["trainer"].global_step == 4
    assert "val/accuracy" in ns["trainer"].callback_metrics


def test_block_11_tuner(doc):
    # As written: block 10's ViTClassifier on block 9's 40-image ./data, 10 epochs. The batch size is scaled on the
    # datamodule; the LR finder has 10 steps at most on 40 images in 10 epochs, too few for a suggestion, and
    # block 10's module keeps its lr inside configure_optimizers: either way AutoTrainer must say why it kept it.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ns = doc(11)
    results = ns["trainer"].tuning_results
    assert results["batch_size"] == ns["datamodule"].batch_size >= 2
    assert "lr" not in results
    messages = " ".join(str(w.message) for w in caught)
    assert "no learning rate suggested" in messages or "no `lr` or `learning_rate` attribute" in messages, messages[-2000:]
    assert ns["trainer"].current_epoch == 10


def test_block_12_multiple_loggers(doc):
    subs = [("max_epochs=10,", "max_epochs=1, limit_train_batches=1, limit_val_batches=1,")]
    if importlib.util.find_spec("wandb") is None:
        from hubtrain import LoggerConfig, LoggerManager

        with pytest.raises(ImportError, match=r"hubtrain\[wandb\]"):
            LoggerManager([LoggerConfig(backend="wandb", params={"project": "my-project"})])
        # wandb is an optional extra not installed here: the same two-logger setup with MLflow's local store.
        subs.append(('LoggerConfig(backend="wandb", params={"project": "my-project"})', 'LoggerConfig(backend="mlflow", params={"experiment_name": "my-project"})'))
    ns = doc(12, subs)
    events = list((doc.workdir / "logs").rglob("events.out.tfevents.*"))
    assert events, "the tensorboard logger wrote nothing under ./logs"
    assert len(ns["trainer"].loggers) >= 2


def test_block_13_production_workflow(doc):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ns = doc(
            13,
            [
                ("hf-hub:timm/convnext_base.fb_in22k_ft_in1k", "hf-hub:timm/convnext_atto.d2_in1k"),
                ("image_size=224", "image_size=32"),
                ("max_epochs=100", "max_epochs=2"),
                FP16_ON_CPU,
            ],
        )
    trainer, model = ns["trainer"], ns["model"]
    # The LR finder ran and drew its curve. With 40 images (1 batch) and 2 epochs it has 2 steps, too few for a
    # suggestion: the learning rate is then kept, with a warning that says why (tests/compat/test_matrix.py
    # checks the suggestion path itself).
    assert (trainer.run_dir / "lr_finder.png").is_file()
    results = trainer.tuning_results
    assert model.lr == results.get("lr", 1e-3)
    assert any("no learning rate suggested" in str(w.message) for w in caught) or "lr" in results
    assert Path(ns["checkpoint"].best_model_path).is_file()
    assert {"test/accuracy", "test/top5_acc"} <= set(trainer.callback_metrics)
