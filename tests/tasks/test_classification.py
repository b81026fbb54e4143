"""ImageClassifier: learns digits, round-trips through save_pretrained / from_pretrained / checkpoints / the Hub
cache, hands probabilities to metrics, and configures every optimiser and schedule it advertises."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from checks import assert_probabilities_of, check_auroc_receives_probabilities, recording_inputs
from hubtrain import BackboneConfig, ImageClassifier, ImageDataModule, MetricConfig

IMAGE_SIZE = 24
TARGET_VAL_ACCURACY = 0.90  # measured 0.97 after 3 epochs (seed 0); 0.90 leaves room for platform noise


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, deterministic=True,
    )
    return pl.Trainer(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """test_resnet trained 3 epochs on the built-in digits (about 15 s single-threaded); shared by the tests below."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("digits")
    pl.seed_everything(0, workers=True)
    data = ImageDataModule(dataset_name="digits", image_size=IMAGE_SIZE, batch_size=64, seed=0)
    model = ImageClassifier(
        BackboneConfig("test_resnet", pretrained=False), num_classes=data.num_classes,
        class_names=data.class_names, lr=3e-3, scheduler="cosine", scheduler_kwargs={"warmup_ratio": 0.05},
    )
    trainer = _trainer(tmp, max_epochs=3, enable_checkpointing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=data)
        fit_logged = set(trainer.logged_metrics)
        metrics = trainer.validate(model, datamodule=data, verbose=False)[0]
    metrics["fit_logged"] = fit_logged
    torch.set_num_threads(previous)
    return model, data, trainer, metrics, tmp


def test_learns_digits(trained):
    model, data, trainer, metrics, _ = trained
    assert metrics["val/accuracy"] >= TARGET_VAL_ACCURACY, metrics
    assert {"train/loss_epoch", "train/accuracy", "val/loss", "val/accuracy", "val/f1", "val/top5_accuracy"} <= metrics["fit_logged"]
    assert model.monitor == ("val/accuracy", "max")
    assert model.preprocessing["input_size"] == [3, IMAGE_SIZE, IMAGE_SIZE]  # taken from the data module at fit start


def test_save_pretrained_round_trip(trained, tmp_path):
    model, data, trainer, metrics, _ = trained
    folder = model.save_pretrained(tmp_path / "digits-clf")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["hubtrain_task"] == "ImageClassifier"
    assert config["init_args"]["backbone"]["model_name"] == "test_resnet"
    assert config["init_args"]["num_classes"] == 10 and config["class_names"] == [str(d) for d in range(10)]
    assert config["id2label"]["3"] == "3"
    assert config["preprocessing"]["input_size"] == [3, IMAGE_SIZE, IMAGE_SIZE]
    assert config["preprocessing"]["mean"] == list(data.preprocessing["mean"])  # what training actually used
    card = (folder / "README.md").read_text()
    # timm loads the folder itself (timm's Hub format), so the card names timm as its library and keeps the hubtrain tag
    assert card.startswith("---\n") and "library_name: timm" in card and "- hubtrain" in card and "| val/accuracy |" in card

    loaded = ImageClassifier.from_pretrained(folder)
    images, _ = next(iter(data.val_dataloader()))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    assert loaded.class_names == model.class_names and loaded.preprocessing == config["preprocessing"]
    assert not loaded.training


def test_from_pretrained_repo_id_via_offline_cache(trained, tmp_path, hf_cache):
    model, data, *_ = trained
    folder = model.save_pretrained(tmp_path / "to-publish")
    hf_cache.add_folder("acme/digits-classifier", folder)
    loaded = ImageClassifier.from_pretrained("acme/digits-classifier")
    images = next(iter(data.val_dataloader()))[0][:8]
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    from hubtrain.errors import OfflineModelError

    with pytest.raises(OfflineModelError, match="acme/absent"):
        ImageClassifier.from_pretrained("acme/absent")


def test_checkpoint_reloads_from_json_hparams_without_pickles(trained):
    model, data, trainer, *_ = trained
    path = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    assert path
    reloaded = ImageClassifier.load_from_checkpoint(path, weights_only=True)
    json.dumps(dict(reloaded.hparams))  # hparams are plain JSON
    ckpt = torch.load(path, weights_only=True)
    state = {k.removeprefix(""): v for k, v in ckpt["state_dict"].items()}
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, state[key])
    assert reloaded.preprocessing == model.preprocessing


def test_predict_returns_probabilities(trained):
    model, data, *_ = trained
    images = next(iter(data.val_dataloader()))[0][:5]
    probs = model.predict_step(images, 0)
    assert probs.shape == (5, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    model.eval()
    torch.testing.assert_close(probs, model(images).softmax(-1))


def test_hf_hub_backbone_from_cache_then_rebuild_without_it(hf_cache, tmp_path, monkeypatch):
    repo = hf_cache("acme/tiny-resnet", "test_resnet", seed=11)
    model = ImageClassifier(repo.hub_name, num_classes=3)
    for key, value in model.backbone.model.state_dict().items():
        assert torch.equal(value, repo.state_dict[key]), key
    assert model.hparams["backbone"]["source"] == "hf-hub:acme/tiny-resnet"
    folder = model.save_pretrained(tmp_path / "clf")
    assert "base_model: acme/tiny-resnet" in (folder / "README.md").read_text()
    # A machine without that cache entry still rebuilds the classifier from the folder.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    loaded = ImageClassifier.from_pretrained(folder)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_local_dir_backbone(timm_folder):
    folder, saved = timm_folder("test_resnet", seed=2)
    model = ImageClassifier(f"local-dir:{folder}", num_classes=4)
    for key, value in model.backbone.model.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_auroc_receives_probabilities(image_folder, tmp_path, one_thread):
    """The AUROC metric receives the softmax of the model's logits (torchmetrics would give the same AUROC from the
    logits themselves, so the value alone proves nothing), and logs scikit-learn's AUROC of those probabilities."""
    from sklearn.metrics import roc_auc_score

    root = image_folder(("a", "b", "c"), {"train": 6, "val": 6})
    logged, seen, data = check_auroc_receives_probabilities(root, tmp_path)
    labels = np.array([y for _, y in data.val_dataset.samples])
    expected = roc_auc_score(labels, seen.numpy(), multi_class="ovr", average="macro")
    assert logged["val/auroc"] == pytest.approx(expected, abs=1e-5)


def test_multi_label_uses_sigmoid_and_bce():
    """Multi-label: predictions and metric inputs are sigmoids, the loss is BCE, and the logged accuracy is that of
    the sigmoids thresholded at 0.5 (softmax probabilities of 4 labels, all below 0.5 here, would score otherwise)."""
    torch.manual_seed(0)
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=4, multi_label=True)
    images, targets = torch.randn(6, 3, 32, 32), torch.randint(0, 2, (6, 4))
    model.eval()
    with torch.no_grad():
        logits = model(images)
    torch.testing.assert_close(model.predict_step(images, 0), logits.sigmoid())
    torch.testing.assert_close(model.loss(logits, targets), torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float()))
    with recording_inputs(model.metrics.metrics("val")["val/accuracy"]) as seen, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        model.validation_step((images, targets), 0)
    assert_probabilities_of(seen[0], logits, multi_label=True)
    expected = ((logits.sigmoid() > 0.5) == targets.bool()).float().mean()
    softmax_accuracy = ((logits.softmax(-1) > 0.5) == targets.bool()).float().mean()
    assert expected != softmax_accuracy
    assert model.metrics.compute("val")["val/accuracy"].item() == pytest.approx(expected.item())


def test_freeze_backbone_trains_only_the_head(image_folder, tmp_path, one_thread):
    root = image_folder(("a", "b"), {"train": 8, "val": 2})
    data = ImageDataModule(data_dir=root, image_size=16, batch_size=4)
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=2, freeze_backbone=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _trainer(tmp_path, max_steps=2, enable_checkpointing=False).fit(model, datamodule=data)
    after = model.state_dict()
    changed = [k for k in before if k.startswith("backbone.") and not torch.equal(before[k], after[k])]
    assert not changed, changed  # BN running statistics included
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])


def _lr_curve(model: ImageClassifier, steps: int) -> list[float]:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False)
    model.trainer = trainer
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("optimizer, cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD),
                                            ("torch.optim.RMSprop", torch.optim.RMSprop),
                                            ({"class": "sgd", "params": {"momentum": 0.5}}, torch.optim.SGD)])
def test_optimizers(optimizer, cls):
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=2, optimizer=optimizer, scheduler=None, lr=0.01, weight_decay=0.1)
    config = model.configure_optimizers()
    assert set(config) == {"optimizer"}  # Lightning's dict form, as AutoTimm returns it, also without a schedule
    opt = config["optimizer"]
    assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.01
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0  # no decay on biases/norms
    if isinstance(optimizer, dict):
        assert opt.param_groups[0]["momentum"] == 0.5
    elif cls is torch.optim.SGD:
        assert opt.param_groups[0]["momentum"] == 0  # torch's (and AutoTimm's) default, none added


def test_schedules():
    def make(**kw):
        return ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=2, lr=0.1, **kw)

    cosine = _lr_curve(make(scheduler="cosine", scheduler_kwargs={"warmup_steps": 10}), 100)
    assert cosine[0] < 0.001 and max(cosine) == pytest.approx(0.1) and int(np.argmax(cosine)) == 10
    assert cosine[-1] < 0.001
    onecycle = _lr_curve(make(scheduler="onecycle"), 100)
    assert int(np.argmax(onecycle)) == pytest.approx(30, abs=1) and onecycle[0] < 0.01
    model = make(scheduler="plateau")
    model.trainer = pl.Trainer(max_epochs=1, logger=False)
    config = model.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "val/accuracy"
    assert config["lr_scheduler"]["scheduler"].mode == "max"
    model = make(scheduler="step", scheduler_kwargs={"step_size": 2, "gamma": 0.5})
    model.trainer = pl.Trainer(max_epochs=6, logger=False)
    assert model.configure_optimizers()["lr_scheduler"]["interval"] == "epoch"


def test_bad_arguments_are_one_line_errors():
    backbone = BackboneConfig("test_resnet", pretrained=False)
    with pytest.raises(ValueError, match="class_names has 2 names but num_classes=3"):
        ImageClassifier(backbone, num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="optimizer='adamx'"):
        ImageClassifier(backbone, num_classes=3, optimizer="adamx")
    with pytest.raises(ValueError, match="scheduler='linear'"):
        ImageClassifier(backbone, num_classes=3, scheduler="linear")
    with pytest.raises(ValueError, match="num_classes=1"):
        ImageClassifier(backbone, num_classes=1)
    with pytest.raises(ValueError, match="metric_class"):
        ImageClassifier(backbone, num_classes=3, metrics=[MetricConfig("x", metric_class="NoSuchMetric")])


def test_from_pretrained_rejects_other_tasks_and_missing_folders(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ImageClassifier.from_pretrained(str(tmp_path / "nope" / "deeper"))
    folder = trained[0].save_pretrained(tmp_path / "clf")
    config = json.loads((folder / "config.json").read_text())
    config["hubtrain_task"] = "NoSuchTask"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="NoSuchTask"):
        ImageClassifier.from_pretrained(folder)


def test_hparams_are_json_and_rebuild_the_task():
    import torchmetrics

    metrics = [MetricConfig("auroc", metric_class=torchmetrics.classification.MulticlassAUROC, params={"num_classes": 3}, stages=["val"])]
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False, drop_rate=0.1), num_classes=3, metrics=metrics)
    hparams = json.loads(json.dumps(dict(model.hparams)))
    assert hparams["metrics"][0]["metric_class"] == "torchmetrics.classification.auroc.MulticlassAUROC"
    assert hparams["backbone_name"] == "test_resnet"  # recorded for readers (AutoTimm's key), not an argument
    rebuilt = ImageClassifier(**ImageClassifier.init_kwargs(hparams))
    assert rebuilt.monitor == ("val/loss", "min")  # no accuracy metric -> follow the loss
    assert rebuilt.backbone.backbone_spec == model.backbone.backbone_spec


def test_compiled_forward_matches_and_keeps_parameter_names():
    graphs = []

    def recording_backend(graph_module, example_inputs):  # a torch.compile backend: keep the graph, run it as traced
        graphs.append(graph_module)
        return graph_module.forward

    torch.manual_seed(0)
    plain = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3)
    compiled = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3,
                               compile_model=True, compile_kwargs={"backend": recording_backend})
    compiled.load_state_dict(plain.state_dict())  # same names: checkpoints move between the two
    x = torch.randn(2, 3, 32, 32)
    plain.eval(), compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), plain(x))
    # the forward went through the compiler: a graph with the backbone's convolutions and the head's linear layer
    targets = [str(node.target) for graph in graphs for node in graph.graph.nodes]
    assert any("conv2d" in t for t in targets) and any("linear" in t for t in targets), targets


def test_channels_last_is_on_for_timm_backbones_and_changes_only_the_memory_layout(tmp_path):
    from transformers import ViTConfig

    torch.manual_seed(0)
    fast = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3)
    plain = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, channels_last=False)
    plain.load_state_dict(fast.state_dict())
    convs = [m.weight for m in fast.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert fast.channels_last and convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not plain.channels_last
    assert all(m.weight.is_contiguous() for m in plain.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    # the same function of the same weights: equal up to float rounding, and gradients too
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0])
    fast.train(), plain.train()
    losses = [torch.nn.functional.cross_entropy(m(x), y) for m in (fast, plain)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    # safetensors needs contiguous tensors: the round trip still restores identical outputs
    fast.eval()
    fast.save_pretrained(tmp_path / "cl")
    loaded = ImageClassifier.from_pretrained(tmp_path / "cl").eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), fast(x))
    # transformers models keep PyTorch's default layout unless asked
    vit = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64)
    assert not ImageClassifier(vit, num_classes=3).channels_last
