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

``model`` is anything :func:`hubtrain.models.build_causal_lm` takes: a ``PretrainedConfig`` (fresh weights), a
``PreTrainedModel``, a preset of one of hubtrain's models (``"<model>:<size>"``; its vocabulary is sized to the
tokenizer), a config dict (what checkpoints store), or a local folder / Hub repo id (the cache first). Checkpoints
hold only JSON-friendly hyperparameters (the model's config dict, the tokenizer's folder), so the task is rebuilt from
a checkpoint without unpickling code, without remote code and without downloading anything, then its weights loaded.

Saved folders are in the transformers layout (``hub_layout = "transformers"``): ``AutoModelForCausalLM`` and
``AutoTokenizer`` load them directly.

Scaling out
-----------
Data parallel: ``AutoTrainer(strategy="ddp", devices=N)``; the logged tokens/s is the global rate.

Sharded (FSDP): :func:`hubtrain.training.strategies.fsdp_strategy` turns the model's ``_no_split_modules``
into Lightning's ``FSDPStrategy(auto_wrap_policy={Block})``, so parameters, gradients and optimiser state are
sharded block by block (each block is gathered only while it runs)::

    trainer = AutoTrainer(strategy=fsdp_strategy(task), devices=8, precision="bf16-mixed")

Gradient clipping by norm goes through FSDP's own ``clip_grad_norm_`` (the plain one is wrong for sharded gradients).

Multi-node: Lightning launches itself. With torchrun,
``torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint host:29500 train.py`` and
``AutoTrainer(num_nodes=2, devices=8, strategy=...)`` in ``train.py``; under SLURM, ``srun python train.py`` with
``#SBATCH --nodes=2 --ntasks-per-node=8`` and the same trainer arguments (Lightning detects the SLURM environment).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from hubtrain.models import build_causal_lm, is_preset
from hubtrain.tasks.base import BaseTask


class CausalLMTask(BaseTask):
    """Next-token prediction for any ``transformers`` causal LM.

    Args:
        model: config / model / preset / config dict / folder or repo id (see module docstring).
        tokenizer: a tokenizer or its folder. Sizes fresh vocabularies, sets the model's bos/eos/pad ids, and is
            saved with the model. If omitted, the datamodule's ``tokenizer`` is adopted at ``setup``.
        model_kwargs: config overrides for fresh models (e.g. ``{"d_model": 128, "n_layers": 4}``), or
            ``from_pretrained`` arguments for a folder or repo id.
        lr, weight_decay, betas: AdamW. Norms, biases and embeddings get no weight decay.
        warmup_steps: linear warmup length in optimizer steps; a float in (0, 1) is a fraction of all steps.
        min_lr_ratio: the cosine decays from ``lr`` to ``lr * min_lr_ratio`` at the last step.
        grad_clip: max gradient norm, used unless the trainer sets ``gradient_clip_val``; ``None`` or 0 disables.
    """

    pipeline_tag = "text-generation"
    hub_layout = "transformers"

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
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0) and not (0 <= warmup_steps < 1):
            raise ValueError(f"warmup_steps={warmup_steps} must be an int >= 0 or a fraction in [0, 1).")
        super().__init__(lr=lr, weight_decay=weight_decay, optimizer="adamw", scheduler="cosine",
                         optimizer_kwargs={"betas": tuple(betas)})
        self.tokenizer = None
        if tokenizer is not None:
            from hubtrain.data.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(tokenizer)
        vocab = len(self.tokenizer) if self.tokenizer is not None else None
        self.model = build_causal_lm(model, vocab_size=vocab, **(model_kwargs or {}))
        # Fresh weights may still be resized to a tokenizer adopted from the datamodule at setup; trained ones not.
        self._fresh = isinstance(model, (dict, PretrainedConfig)) or is_preset(model)
        self._check_vocab()
        self._sync_special_tokens()
        self.grad_clip = grad_clip
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

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, *, trust_remote_code: bool = False, **kwargs: Any) -> "CausalLMTask":
        """A task around a saved transformers model folder and its tokenizer (when the folder has one)."""
        folder = Path(folder)
        has_tok = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        kwargs.setdefault("tokenizer", str(folder) if has_tok else None)
        if trust_remote_code:
            kwargs["model_kwargs"] = {**(kwargs.get("model_kwargs") or {}), "trust_remote_code": True}
        return cls(str(folder), **kwargs)

    @classmethod
    def checkpoint_args(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint may only describe the model as data: a config dict, never a folder, repo id or remote code."""
        if not isinstance(hparams.get("model"), dict):
            raise ValueError(
                f"the checkpoint names its model as {type(hparams.get('model')).__name__} {hparams.get('model')!r:.80}; "
                "a CausalLMTask checkpoint must carry the model's config dict (hubtrain never loads or downloads a "
                "model a checkpoint names)"
            )
        if hparams.get("model_kwargs"):
            raise ValueError(f"the checkpoint sets model_kwargs={hparams['model_kwargs']!r:.80}; checkpoints are data and "
                             "may not pass arguments to model loading (such as trust_remote_code)")
        tokenizer = hparams.get("tokenizer")
        if tokenizer is not None and not Path(str(tokenizer)).is_dir():
            # a folder on the machine that trained, or a repo id: never fetched on a checkpoint's word
            from pytorch_lightning.utilities import rank_zero_warn

            rank_zero_warn(f"the checkpoint's tokenizer {tokenizer!r} is not a local folder; rebuilt without it "
                           "(pass tokenizer=... to load_from_checkpoint to attach one)")
            hparams = {**hparams, "tokenizer": None}
        return hparams

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

    # -- text for people (generate, predict, serve) -----------------------------------------------------------------
    def generation_kwargs(self, *, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int | None = None,
                          top_p: float | None = None) -> dict[str, Any]:
        """``generate`` arguments: greedy unless ``temperature`` > 0, then sampling with ``top_k`` / ``top_p``."""
        tok = self.tokenizer
        kwargs: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "do_sample": temperature > 0,
                                  "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
        if temperature > 0:
            kwargs |= {k: v for k, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)) if v}
        return kwargs

    def encode_prompt(self, prompt: str) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            raise ValueError("this language model has no tokenizer; save one next to the model (tokenizer.save_pretrained)")
        text = prompt or (self.tokenizer.bos_token or "")
        if not text:
            raise ValueError("empty prompt and the tokenizer has no BOS token; give a prompt")
        return {k: v.to(self.device) for k, v in self.tokenizer(text, return_tensors="pt").items()}

    @torch.no_grad()
    def predict_texts(self, prompts: list[str], **generation: Any) -> list[dict[str, Any]]:
        """``{"generated": continuation}`` per prompt. Prompts of equal token length run as one batch (no padding,
        so a prompt's text never depends on its neighbours)."""
        encoded = [self.encode_prompt(p) for p in prompts]
        kwargs = self.generation_kwargs(**generation)
        out: list[dict[str, Any] | None] = [None] * len(prompts)
        groups: dict[int, list[int]] = {}
        for i, enc in enumerate(encoded):
            groups.setdefault(enc["input_ids"].shape[1], []).append(i)
        for length, members in groups.items():
            ids = torch.cat([encoded[i]["input_ids"] for i in members])
            generated = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
            for i, row in zip(members, generated):
                out[i] = {"generated": self.tokenizer.decode(row[length:], skip_special_tokens=True)}
        return out  # type: ignore[return-value]

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

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        labels = batch.get("labels", batch["input_ids"])
        if stage != "train":
            return self._eval_step(stage, batch, labels)
        # The model's own loss: cross-entropy plus any auxiliary terms it defines (MoE balance, ponder cost).
        out = self.model(input_ids=batch["input_ids"], labels=labels)
        n = self._count("train", batch)
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        if getattr(out, "lm_loss", None) is not None:  # models with auxiliary losses report the bare cross-entropy
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

    def _eval_step(self, stage: str, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=batch["input_ids"]).logits
        loss = self.next_token_loss(logits, labels)
        # Sum over predicted tokens, so the epoch's loss is the exact per-token mean however batches fall.
        n = (labels[:, 1:] != -100).sum()
        total = torch.stack([loss.detach().double() * n, n.double()])
        self._loss_sum[stage] = self._loss_sum.get(stage, 0) + total
        self._count(stage, batch)
        return loss

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

    def known_metrics(self) -> dict[str, float]:
        return dict(self.val_metrics) or super().known_metrics()

    # -- optimisation ---------------------------------------------------------------------------------------------
    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Per optimizer step: a linear warmup whose first step already trains at lr / warmup, then a cosine down to
        lr * min_lr_ratio (the usual language-model schedule; BaseTask's warmup starts from lr * 1e-3)."""
        total = self._total_steps()
        warmup_steps = self.hparams.warmup_steps
        warmup = warmup_steps if isinstance(warmup_steps, int) else int(warmup_steps * total)
        warmup = min(warmup, total - 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(warmup, total, self.hparams.min_lr_ratio))
        return {"scheduler": schedule, "interval": "step", "frequency": 1}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        clip = gradient_clip_val if gradient_clip_val is not None else self.grad_clip
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
