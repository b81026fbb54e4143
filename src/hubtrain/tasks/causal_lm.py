"""``CausalLMTask``: any ``transformers`` causal language model as a LightningModule.

The task owns what is specific to language modelling (next-token loss, perplexity, tokens/s, AdamW with warmup and
a cosine decay, gradient clipping, the Hugging Face folder it ships as); ``AutoTrainer`` owns the loop::

    from hubtrain.data.text import TextDataModule
    from hubtrain.tasks.causal_lm import CausalLMTask
    from hubtrain.training import AutoTrainer

    dm = TextDataModule(block_size=256, vocab_size=4096)        # built-in corpus: the Python standard library
    dm.setup()
    task = CausalLMTask("resnet_bk:10M", tokenizer=dm.tokenizer)  # or a config, a model, a folder, "gpt2"...
    trainer = AutoTrainer(max_steps=2000, precision="bf16-mixed", gradient_clip_val=1.0)
    trainer.fit(task, datamodule=dm)
    task.save_pretrained("my-lm")   # AutoModelForCausalLM / AutoTokenizer load this folder directly

``model`` may be a ``PretrainedConfig`` (fresh weights), a ``PreTrainedModel``, a ResNet-BK preset
``"resnet_bk:<size>"`` (any size of ``create_resnet_bk_for_hf``; its vocabulary is sized to the tokenizer), a
config dict (what checkpoints store), or a local folder / cached Hub repo id. Checkpoints hold only JSON-friendly
hyperparameters (the model's config dict, the tokenizer's folder), so ``CausalLMTask.load_from_checkpoint`` rebuilds
the architecture without unpickling code and then loads the weights.

Scaling out
-----------
Data parallel: ``AutoTrainer(strategy="ddp", devices=N)``; the logged tokens/s is the global rate.

Sharded (FSDP): ResNet-BK declares its blocks in ``_no_split_modules``; :func:`fsdp_strategy` turns that into
Lightning's ``FSDPStrategy(auto_wrap_policy={ResNetBKBlock})``, so parameters, gradients and optimiser state are
sharded block by block (each block is gathered only while it runs)::

    trainer = AutoTrainer(strategy=fsdp_strategy(task), devices=8, precision="bf16-mixed")

It works for any ``transformers`` model that sets ``_no_split_modules`` (GPT-2, Llama, ...). Gradient clipping
by norm goes through FSDP's own ``clip_grad_norm_`` (the plain one is wrong for sharded gradients).

Multi-node: Lightning launches itself. With torchrun,
``torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint host:29500 train.py`` and
``AutoTrainer(num_nodes=2, devices=8, strategy=...)`` in ``train.py``; under SLURM, ``srun python train.py`` with
``#SBATCH --nodes=2 --ntasks-per-node=8`` and the same trainer arguments (Lightning detects the SLURM environment).
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from hubtrain.errors import OfflineModelError
from hubtrain.utils import atomic_dir

RESNET_BK_PREFIX = "resnet_bk:"


# ---------------------------------------------------------------------------------------------------------------
# Building the model
# ---------------------------------------------------------------------------------------------------------------
def _register_resnet_bk() -> None:
    # Importing the package registers ResNet-BK with AutoConfig / AutoModelForCausalLM.
    import hubtrain.models.resnet_bk  # noqa: F401


def _config_from_dict(d: dict[str, Any]) -> PretrainedConfig:
    if "model_type" not in d:
        raise ValueError(f"model config dict has no 'model_type' (keys: {sorted(d)[:8]}...); pass config.to_dict().")
    if d["model_type"] == "resnet_bk":
        _register_resnet_bk()
    d = dict(d)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def _from_pretrained(name_or_path: str, **kwargs: Any) -> PreTrainedModel:
    """A folder or repo id, never waiting on an unreachable Hub: local files first, the network only if allowed."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise FileNotFoundError(f"{path} has no config.json; give a folder written by save_pretrained.")
        if json.loads(cfg.read_text()).get("model_type") == "resnet_bk":
            _register_resnet_bk()
        return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, local_files_only=True, **kwargs)
    except OSError:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise OfflineModelError(
                f"model {name_or_path!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                "download it once with network access, or pass a local folder or a config (fresh weights)."
            ) from None
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        raise OfflineModelError(
            f"model {name_or_path!r} is neither a local folder nor cached, and the Hub did not serve it ({err}); "
            "populate the cache (huggingface-cli download) or pass a config for fresh weights."
        ) from None


def build_causal_lm(
    model: str | os.PathLike | dict | PretrainedConfig | PreTrainedModel,
    vocab_size: int | None = None,
    **config_overrides: Any,
) -> PreTrainedModel:
    """Resolve every accepted form of ``model`` to a ``PreTrainedModel`` (see :class:`CausalLMTask`).

    ``vocab_size`` (from the tokenizer) sizes fresh models; a pretrained model whose vocabulary is smaller than the
    tokenizer's is an error, since resizing would silently add untrained rows.
    """
    if isinstance(model, PreTrainedModel):
        if config_overrides:
            raise ValueError(f"model_kwargs {sorted(config_overrides)} cannot change an instantiated model; pass a config.")
        return model
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if isinstance(model, str) and model.startswith(RESNET_BK_PREFIX):
        _register_resnet_bk()
        from hubtrain.models.resnet_bk import create_resnet_bk_for_hf

        if vocab_size is not None:
            config_overrides.setdefault("vocab_size", vocab_size)
        return create_resnet_bk_for_hf(model[len(RESNET_BK_PREFIX) :], **config_overrides)
    if isinstance(model, str):
        return _from_pretrained(model, **config_overrides)
    if isinstance(model, dict):
        model = _config_from_dict(model)
    if isinstance(model, PretrainedConfig):
        config = model.__class__.from_dict({**model.to_dict(), **config_overrides})
        if vocab_size is not None and "vocab_size" not in config_overrides and config.vocab_size != vocab_size:
            config.vocab_size = vocab_size
        return AutoModelForCausalLM.from_config(config)
    raise TypeError(
        f"model={model!r} is not a PretrainedConfig, PreTrainedModel, config dict, 'resnet_bk:<size>' preset, "
        "folder or repo id."
    )


def fsdp_strategy(model: CausalLMTask | PreTrainedModel, **kwargs: Any) -> pl.strategies.FSDPStrategy:
    """Lightning's ``FSDPStrategy`` wrapping each of the model's ``_no_split_modules`` blocks as one FSDP unit."""
    hf_model = model.model if isinstance(model, CausalLMTask) else model
    names = set(getattr(hf_model, "_no_split_modules", None) or [])
    block_classes = {type(m) for m in hf_model.modules() if type(m).__name__ in names}
    if not block_classes:
        raise ValueError(
            f"{type(hf_model).__name__} declares no _no_split_modules found in the model; pass "
            "auto_wrap_policy={YourBlockClass} to FSDPStrategy yourself."
        )
    kwargs.setdefault("auto_wrap_policy", block_classes)
    return pl.strategies.FSDPStrategy(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------------------------
class CausalLMTask(pl.LightningModule):
    """Next-token prediction for any ``transformers`` causal LM.

    Args:
        model: config / model / ``"resnet_bk:<size>"`` / config dict / folder or repo id (see module docstring).
        tokenizer: a tokenizer or its folder. Sizes fresh vocabularies, sets the model's bos/eos/pad ids, and is
            saved with the model. If omitted, the datamodule's ``tokenizer`` is adopted at ``setup``.
        model_kwargs: config overrides for fresh models (e.g. ``{"d_model": 128, "n_layers": 4}``).
        lr, weight_decay, betas: AdamW. Norms, biases and embeddings get no weight decay.
        warmup_steps: linear warmup length in optimizer steps; a float in (0, 1) is a fraction of all steps.
        min_lr_ratio: the cosine decays from ``lr`` to ``lr * min_lr_ratio`` at the last step.
        grad_clip: max gradient norm, used unless the trainer sets ``gradient_clip_val``; ``None`` or 0 disables.
    """

    def __init__(
        self,
        model: str | os.PathLike | dict | PretrainedConfig | PreTrainedModel,
        tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None,
        model_kwargs: dict[str, Any] | None = None,
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int | float = 0.05,
        min_lr_ratio: float = 0.1,
        grad_clip: float | None = 1.0,
    ):
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr={lr} must be positive.")
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0) and not (0 <= warmup_steps < 1):
            raise ValueError(f"warmup_steps={warmup_steps} must be an int >= 0 or a fraction in [0, 1).")
        self.tokenizer = None
        if tokenizer is not None:
            from hubtrain.data.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(tokenizer)
        vocab = len(self.tokenizer) if self.tokenizer is not None else None
        self.model = build_causal_lm(model, vocab_size=vocab, **(model_kwargs or {}))
        # Fresh weights may still be resized to a tokenizer adopted from the datamodule at setup; trained ones not.
        self._fresh = isinstance(model, (dict, PretrainedConfig)) or (
            isinstance(model, str) and model.startswith(RESNET_BK_PREFIX)
        )
        self._check_vocab()
        self._sync_special_tokens()
        # JSON-friendly hyperparameters: the architecture travels as its config dict, the tokenizer as its folder.
        self.save_hyperparameters(
            {
                "model": self.model.config.to_dict(),
                "tokenizer": _tokenizer_folder(self.tokenizer),
                "model_kwargs": None,
                "lr": lr,
                "weight_decay": weight_decay,
                "betas": list(betas),
                "warmup_steps": warmup_steps,
                "min_lr_ratio": min_lr_ratio,
                "grad_clip": grad_clip,
            }
        )
        self.val_metrics: dict[str, float] = {}
        self._clock: dict[str, float] = {}
        self._tokens: dict[str, int] = {}
        self._loss_sum: dict[str, torch.Tensor] = {}

    @property
    def monitor(self) -> tuple[str, str]:
        return "val/loss", "min"

    @classmethod
    def from_pretrained(cls, folder_or_repo: str | os.PathLike, **kwargs: Any) -> CausalLMTask:
        """A task around a saved model folder (and its tokenizer, when the folder has one)."""
        folder = Path(folder_or_repo)
        has_tok = folder.is_dir() and any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        kwargs.setdefault("tokenizer", str(folder) if has_tok else None)
        return cls(str(folder_or_repo), **kwargs)

    # -- tokenizer bookkeeping ------------------------------------------------------------------------------------
    def _check_vocab(self) -> None:
        if self.tokenizer is not None and len(self.tokenizer) > self.model.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the model's vocab_size is "
                f"{self.model.config.vocab_size}; use a matching tokenizer, or build the model from a config so "
                "its vocabulary is sized to the tokenizer."
            )

    def _sync_special_tokens(self) -> None:
        # generate() stops at eos and pads with pad: tell the model (and its generation config) which ids those are.
        if self.tokenizer is None:
            return
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self.tokenizer, name)
            if value is not None:
                setattr(self.model.config, name, value)
                if getattr(self.model, "generation_config", None) is not None:
                    setattr(self.model.generation_config, name, value)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if self.tokenizer is None and getattr(dm, "tokenizer", None) is not None:
            self.tokenizer = dm.tokenizer
            self.hparams["tokenizer"] = _tokenizer_folder(self.tokenizer)
            if self._fresh and len(self.tokenizer) != self.model.config.vocab_size:
                # Untrained weights: size the vocabulary to the tokenizer now (before DDP wraps or the optimiser
                # sees the parameters), and record the new config so checkpoints rebuild the same shapes.
                self.model.resize_token_embeddings(len(self.tokenizer))
                self.hparams["model"] = self.model.config.to_dict()
            self._check_vocab()
            self._sync_special_tokens()

    # -- steps ----------------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, **kwargs: Any):
        return self.model(input_ids=input_ids, **kwargs)

    @staticmethod
    def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of predicting token i+1 from positions <= i (nats/token), in float32."""
        return F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
        )

    def _count(self, stage: str, batch: dict[str, torch.Tensor]) -> int:
        n = batch["input_ids"].numel()
        self._tokens[stage] = self._tokens.get(stage, 0) + n
        return n

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        labels = batch.get("labels", batch["input_ids"])
        # The model's own loss: cross-entropy plus any auxiliary terms it defines (MoE balance, ponder cost).
        out = self.model(input_ids=batch["input_ids"], labels=labels)
        n = self._count("train", batch)
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        if getattr(out, "lm_loss", None) is not None:  # ResNet-BK reports the bare cross-entropy separately
            self.log("train/lm_loss", out.lm_loss, on_step=True, on_epoch=False, batch_size=n)
        return out.loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._clock.setdefault("train", time.perf_counter())

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        elapsed = now - self._clock["train"]
        if elapsed > 0:
            rate = self._tokens.pop("train", 0) * self.trainer.world_size / elapsed
            self.log("train/tokens_per_s", rate, on_step=True, on_epoch=False, batch_size=1)
        self._clock["train"] = now

    def _eval_step(self, stage: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch.get("labels", batch["input_ids"])
        logits = self.model(input_ids=batch["input_ids"]).logits
        loss = self.next_token_loss(logits, labels)
        # Sum over predicted tokens, so the epoch's loss is the exact per-token mean however batches fall.
        n = (labels[:, 1:] != -100).sum()
        total = torch.stack([loss.detach().double() * n, n.double()])
        self._loss_sum[stage] = self._loss_sum.get(stage, 0) + total
        self._count(stage, batch)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step("val", batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step("test", batch)

    def on_validation_epoch_start(self) -> None:
        self._start_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval("test")

    def _start_eval(self, stage: str) -> None:
        self._clock[stage] = time.perf_counter()
        self._tokens[stage] = 0
        self._loss_sum.pop(stage, None)

    def on_validation_epoch_end(self) -> None:
        self.val_metrics = self._end_eval("val")

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    def _end_eval(self, stage: str) -> dict[str, float]:
        if stage not in self._loss_sum:
            return {}
        # Token-weighted mean over every process's share of the split.
        loss_sum, count = self.trainer.strategy.reduce(self._loss_sum.pop(stage), reduce_op="sum")
        loss = (loss_sum / count).float()
        values = {f"{stage}/loss": loss, f"{stage}/perplexity": torch.exp(loss)}
        bpt = getattr(getattr(self.trainer, "datamodule", None), "bytes_per_token", None)
        if bpt and stage in bpt:
            values[f"{stage}/bits_per_byte"] = loss / math.log(2) / bpt[stage]
        elapsed = time.perf_counter() - self._clock.get(stage, time.perf_counter())
        if elapsed > 0:
            values[f"{stage}/tokens_per_s"] = torch.tensor(self._tokens.get(stage, 0) * self.trainer.world_size / elapsed)
        self.log_dict(values, prog_bar=stage == "val", sync_dist=True)  # loss is already reduced; this averages tokens/s
        return {k: float(v) for k, v in values.items()}

    # -- optimisation ---------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        embedding_params = {id(m.weight) for m in self.model.modules() if isinstance(m, nn.Embedding)}
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or id(p) in embedding_params else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
            betas=tuple(hp.betas),
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = hp.warmup_steps if isinstance(hp.warmup_steps, int) else int(hp.warmup_steps * total)
        warmup = min(warmup, total - 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(warmup, total, hp.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        clip = gradient_clip_val if gradient_clip_val is not None else self.hparams.grad_clip
        if not clip:
            return
        root = self.trainer.strategy.model
        from torch.distributed.fsdp import FullyShardedDataParallel

        if isinstance(root, FullyShardedDataParallel):
            # Sharded gradients: only FSDP knows the global norm.
            root.clip_grad_norm_(clip)
            return
        if gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        else:
            self.clip_gradients(optimizer, clip, "norm")

    # -- shipping -------------------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike, run_dir: str | os.PathLike | None = None, **card_kwargs: Any) -> Path:
        """Model (safetensors) + tokenizer + model card in the Hugging Face layout, written atomically.

        ``AutoModelForCausalLM.from_pretrained(folder)`` and ``AutoTokenizer.from_pretrained(folder)`` load it (for
        ResNet-BK after ``import hubtrain``, or with ``trust_remote_code=True`` from the modeling files saved with
        it). ``run_dir`` (default: the trainer's log dir) supplies ``metrics.csv`` for the card's loss curve.
        """
        folder = Path(folder)
        if run_dir is None and self._trainer is not None:
            run_dir = self.trainer.log_dir
        with atomic_dir(folder) as tmp:
            self.model.save_pretrained(tmp)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            curve = plot_loss_curve(run_dir, tmp / "loss_curve.png") if run_dir else None
            (tmp / "README.md").write_text(self.model_card(folder.name, curve is not None, **card_kwargs), encoding="utf-8")
        return folder

    def model_card(self, name: str, has_loss_curve: bool = False, dataset: str = "python_stdlib", license: str = "apache-2.0") -> str:
        from huggingface_hub import EvalResult, ModelCard, ModelCardData

        cfg = self.model.config
        non_emb = self.model.num_parameters(exclude_embeddings=True)
        total = self.model.num_parameters()
        ppl = self.val_metrics.get("val/perplexity")
        data = ModelCardData(
            library_name="transformers",
            license=license,
            pipeline_tag="text-generation",
            tags=["hubtrain", "causal-lm", cfg.model_type],
            datasets=[dataset] if dataset else None,
            model_name=name,
            eval_results=(
                [EvalResult(task_type="text-generation", dataset_type=dataset, dataset_name=dataset, metric_type="perplexity", metric_value=round(ppl, 3))]
                if ppl is not None
                else None
            ),
        )
        rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in self.val_metrics.items())
        needs_import = "import hubtrain  # registers ResNet-BK with the Auto classes\n" if cfg.model_type == "resnet_bk" else ""
        body = f"""
# {name}

A `{cfg.model_type}` causal language model trained with hubtrain (`CausalLMTask` + `AutoTrainer`).
Parameters: {total:,} in total, {non_emb:,} without embeddings. Vocabulary: {cfg.vocab_size} tokens.

## Evaluation

{"| metric | value |" + chr(10) + "|---|---|" + chr(10) + rows if rows else "Not evaluated."}

{"![loss curve](loss_curve.png)" if has_loss_curve else ""}

## Usage

```python
{needs_import}from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{name}")
tokenizer = AutoTokenizer.from_pretrained("{name}")
ids = tokenizer("def fibonacci(n):", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=40, do_sample=False)[0]))
```
"""
        return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def _warmup_cosine(warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _tokenizer_folder(tokenizer: PreTrainedTokenizerBase | None) -> str | None:
    """The folder a tokenizer loads from, if it has one (checkpoints keep the path, not the object)."""
    path = getattr(tokenizer, "name_or_path", None)
    return str(Path(path).resolve()) if path and Path(path).is_dir() else None


def read_metrics_csv(run_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of the first ``metrics.csv`` under ``run_dir`` (Lightning's CSVLogger layout), or [] if none."""
    run_dir = Path(run_dir)
    files = [run_dir / "metrics.csv"] if (run_dir / "metrics.csv").is_file() else sorted(run_dir.rglob("metrics.csv"))
    if not files:
        return []
    with open(files[0], newline="") as f:
        return list(csv.DictReader(f))


def plot_loss_curve(run_dir: str | os.PathLike, out: str | os.PathLike) -> Path | None:
    """Train and validation loss against optimizer step, as a PNG; ``None`` if the run logged no loss."""
    rows = read_metrics_csv(run_dir)
    series = {}
    for key in ("train/loss", "val/loss"):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        if pts:
            series[key] = pts
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, pts in series.items():
        ax.plot(*zip(*pts), label=key, marker="o" if key == "val/loss" else None, lw=1)
    ax.set(xlabel="optimizer step", ylabel="loss (nats/token)", title="training curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
