"""``hubtrain quickstart lm``: the language half of the main job, on text every machine has.

Trains a small ResNet-BK on the Python standard library sources of the running interpreter (a byte-level BPE is
trained on the training files first and cached), with Lightning's progress bar; reports the validation perplexity;
writes a Hub-ready folder (``model.safetensors``, config, tokenizer, model card with the loss curve); then reloads
that folder through ``AutoModelForCausalLM`` / ``AutoTokenizer``, exactly as a user of the Hub would, and prints a
short generated sample from it.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hubtrain.cli.args import positive_float, positive_int

# Sizes of the default run (a few minutes on 2 CPU cores) and of the fast mode used by the tests (seconds).
DEFAULT_MODEL = {"d_model": 128, "n_layers": 4, "num_experts": 2, "num_channels": 8, "channel_dim": 16, "ffn_dim": 352}
FAST_MODEL = {"d_model": 48, "n_layers": 2, "num_experts": 2, "num_channels": 3, "channel_dim": 16, "ffn_dim": 96}
DEFAULT_PROMPT = "def "


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-steps", type=positive_int, default=400, help="optimizer steps (default 400: a few minutes on 2 CPU cores)")
    parser.add_argument("--block-size", type=positive_int, default=128, help="tokens per training example")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--vocab-size", type=positive_int, default=2048, help="size of the byte-level BPE trained on the corpus")
    parser.add_argument("--lr", type=positive_float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="a text file, folder or glob instead of the built-in stdlib corpus")
    parser.add_argument("--root-dir", default="runs", help="runs go to <root-dir>/quickstart-lm/version_k/")
    parser.add_argument("--output-dir", default="hubtrain-quickstart-lm", help="the Hub-ready folder")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="start of the generated sample")
    parser.add_argument("--fast", action="store_true", help="a tiny model, corpus and run (seconds; for smoke tests)")


def run_quickstart_lm(
    output_dir: str | Path = "hubtrain-quickstart-lm",
    max_steps: int = 400,
    seed: int = 0,
    block_size: int = 128,
    batch_size: int = 16,
    vocab_size: int = 2048,
    lr: float = 3e-3,
    data_files: str | None = None,
    root_dir: str | Path = "runs",
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 60,
    fast: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    tokenizer_cache_dir: str | Path | None = None,
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Train, validate, save, reload and sample; return the metrics, the sample, where everything went, and the task
    and data module themselves (``"task"``, ``"data"``).

    ``fast=True`` shrinks everything (a tiny model on the first 30 stdlib files, 384-token vocabulary, blocks of 64,
    at most 30 steps) so the whole path runs in seconds.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubtrain.data.text import TextDataModule
    from hubtrain.tasks.causal_lm import CausalLMTask
    from hubtrain.training import AutoTrainer

    if max_steps < 1:
        raise ValueError(f"max_steps={max_steps} must be at least 1.")
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)  # before the model: its initial weights come from the seed too
    data_kwargs: dict[str, Any] = {}
    if fast:
        max_steps = min(max_steps, 30)
        block_size, vocab_size, batch_size = min(block_size, 64), min(vocab_size, 384), min(batch_size, 8)
        data_kwargs = {"max_files": 30, "val_fraction": 0.1, "test_fraction": 0.0}
    data = TextDataModule(
        data_files=data_files, vocab_size=vocab_size, block_size=block_size, batch_size=batch_size, seed=seed,
        tokenizer_cache_dir=tokenizer_cache_dir, **data_kwargs,
    )
    data.setup("fit")
    arch = {**(FAST_MODEL if fast else DEFAULT_MODEL), "n_seq": block_size, **(model_kwargs or {})}
    task = CausalLMTask("resnet_bk:1M", tokenizer=data.tokenizer, model_kwargs=arch, lr=lr, warmup_steps=0.05)
    checks = max(1, max_steps // 4)
    trainer_kwargs = {
        "max_epochs": None,
        "max_steps": max_steps,
        "val_check_interval": min(checks, len(data.train_dataloader())),
        "check_val_every_n_epoch": None,
        "limit_val_batches": 25,
        "gradient_clip_val": 1.0,
        "log_every_n_steps": max(1, min(10, max_steps // 10)),
        **trainer_kwargs,
    }
    trainer = AutoTrainer(default_root_dir=str(root_dir), run_name="quickstart-lm", seed=seed, **trainer_kwargs)
    trainer.fit(task, datamodule=data)
    # The reported numbers belong to the final weights, which are the ones shipped in the folder.
    metrics = trainer.validate(task, datamodule=data, verbose=False)[0]
    out = task.save_pretrained(output_dir, run_dir=trainer.run_dir)

    # Reload as a Hub user would: Auto classes on the folder (importing hubtrain registered ResNet-BK).
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    torch.manual_seed(seed)
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_k=50)
    sample = tokenizer.decode(generated[0], skip_special_tokens=True)
    return {
        "val_loss": float(metrics["val/loss"]),
        "val_perplexity": float(metrics["val/perplexity"]),
        "val_bits_per_byte": float(metrics["val/bits_per_byte"]) if "val/bits_per_byte" in metrics else None,
        "steps": trainer.global_step,
        "train_tokens": trainer.global_step * batch_size * block_size * trainer.accumulate_grad_batches,
        "parameters": task.model.num_parameters(),
        "non_embedding_parameters": task.model.num_parameters(exclude_embeddings=True),
        "run_dir": str(trainer.run_dir),
        "best_checkpoint": trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None,
        "output_dir": str(Path(out).resolve()),
        "sample": sample,
        "task": task,
        "data": data,
    }


def run(args: argparse.Namespace) -> int:
    result = run_quickstart_lm(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        seed=args.seed,
        block_size=args.block_size,
        batch_size=args.batch_size,
        vocab_size=args.vocab_size,
        lr=args.lr,
        data_files=args.data,
        root_dir=args.root_dir,
        prompt=args.prompt,
        fast=args.fast,
    )
    from rich.console import Console
    from rich.panel import Panel

    console = Console()
    bpb = f", {result['val_bits_per_byte']:.3f} bits/byte" if result["val_bits_per_byte"] is not None else ""
    console.print(
        f"[bold green]validation perplexity {result['val_perplexity']:.2f}[/] "
        f"(loss {result['val_loss']:.3f} nats/token{bpb}) after {result['steps']} steps, "
        f"{result['train_tokens']:,} training tokens; ResNet-BK with {result['non_embedding_parameters']:,} "
        f"non-embedding parameters"
    )
    # paths on one line each, never wrapped at the terminal width, so they can be copied whole
    console.print(f"run directory:    {result['run_dir']}", markup=False, soft_wrap=True)
    console.print(f"best checkpoint:  {result['best_checkpoint']}", markup=False, soft_wrap=True)
    console.print(f"Hub-ready folder: {result['output_dir']}  (model, tokenizer, README.md, metrics.csv, training_curves.png)", markup=False, soft_wrap=True)
    console.print(Panel(result["sample"], title="sample from the saved folder (AutoModelForCausalLM)", expand=False))
    return 0
