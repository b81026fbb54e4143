"""CausalLMTask with AutoTrainer: it learns, resumes, ships a folder the Auto classes load, and scales out."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig

from checks import assert_context_dependent, assert_generates_like_reference, greedy_reference
from hubtrain.data.text import TextDataModule
from hubtrain.tasks.causal_lm import CausalLMTask, _warmup_cosine
from hubtrain.training import AutoTrainer
from hubtrain.training.strategies import fsdp_strategy
from learning import (
    PYTHON_BLOCK,
    PYTHON_VOCAB,
    RESNET_BK_PYTHON,
    assert_beats_bigram_on_python,
    python_sources_data,
    train_resnet_bk_on_python,
)

VOCAB = PYTHON_VOCAB
BLOCK = PYTHON_BLOCK


def tiny_gpt2() -> GPT2Config:
    return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=BLOCK, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def tiny_llama(**kwargs) -> LlamaConfig:
    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       **kwargs)


RESNET_BK_TINY = RESNET_BK_PYTHON


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models on a shared 2-core machine: one intra-op thread is several times faster than two fighting.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dm(tmp_path_factory) -> TextDataModule:
    cache = tmp_path_factory.mktemp("tok")
    return python_sources_data(cache)


class StepRecorder(pl.Callback):
    """Records the global step at every training batch and how many micro-batches ran."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append(trainer.global_step)


def trainer(tmp_path: Path, **kwargs) -> AutoTrainer:
    kwargs = {"max_epochs": None, "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": tmp_path / "runs", **kwargs}
    return AutoTrainer(**kwargs)


def test_resnet_bk_training_beats_the_bigram_baseline(dm, tmp_path):
    """Judged against the count models of the same split: the bigram of the training blocks scores 3.81 nats/token on
    the validation blocks, the unigram 4.97. Measured here: 5.95 -> 3.59 in 300 steps (307k tokens, about 20 s on one
    core); with the mixer's output zeroed (a model of the current token alone) the same run ends at 3.93."""
    task, t, before = train_resnet_bk_on_python(dm, tmp_path)
    assert task.model.config.vocab_size == VOCAB and task.model.config.d_model == 64
    # An untrained model predicts roughly uniformly: loss near ln(vocab).
    assert abs(before - math.log(VOCAB)) < 0.5
    after = task.val_metrics
    assert_beats_bigram_on_python(task, dm)
    assert after["val/perplexity"] == pytest.approx(math.exp(after["val/loss"]), rel=1e-4)
    assert after["val/bits_per_byte"] == pytest.approx(after["val/loss"] / math.log(2) / dm.bytes_per_token["val"], rel=1e-4)
    logged = t.callback_metrics
    assert logged["train/tokens_per_s"] > 0 and logged["val/tokens_per_s"] > 0
    # Warmup then cosine: at the last step the LR has decayed to about lr * min_lr_ratio.
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(5e-3 * 0.1, rel=0.05)
    # The run directory holds the metrics and a checkpoint named after the real validation loss.
    assert (t.run_dir / "metrics.csv").is_file()
    ckpts = list((t.run_dir / "checkpoints").glob("*.ckpt"))
    assert ckpts and any(f"{after['val/loss']:.4f}"[:4] in p.name for p in ckpts), ckpts


def test_checkpoint_resume_continues_at_the_right_step(dm, tmp_path):
    pl.seed_everything(0)
    task = CausalLMTask(tiny_gpt2(), tokenizer=dm.tokenizer)
    t1 = trainer(tmp_path, max_steps=6, val_check_interval=3, limit_val_batches=2, limit_train_batches=20)
    t1.fit(task, datamodule=dm)
    ckpt = tmp_path / "step6.ckpt"
    t1.save_checkpoint(ckpt)

    # The checkpoint rebuilds the task from JSON-friendly hparams alone, with weights_only loading.
    hp = torch.load(ckpt, weights_only=True, map_location="cpu")["hyper_parameters"]
    json.dumps(hp)
    restored = CausalLMTask.load_from_checkpoint(ckpt, weights_only=True)
    ids = dm.datasets["val"][0]["input_ids"][None]
    task.eval(), restored.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(ids).logits, task(ids).logits, rtol=0, atol=0)

    rec = StepRecorder()
    t2 = trainer(tmp_path, max_steps=10, val_check_interval=3, limit_val_batches=2, limit_train_batches=20, callbacks=[rec])
    fresh = CausalLMTask(tiny_gpt2(), tokenizer=dm.tokenizer)
    t2.fit(fresh, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    assert rec.steps[0] == 6 and rec.steps[-1] == 9 and t2.global_step == 10
    # The LR schedule resumed too (it is stepped once per optimizer step).
    assert t2.lr_scheduler_configs[0].scheduler.last_epoch == 10


# a wider init than the default, whose random model predicts from the last token alone: the continuation of these
# depends on the context, so a generator that lost it is caught
@pytest.mark.parametrize("model", [tiny_llama(initializer_range=0.2), "resnet_bk:1M"], ids=["llama", "resnet_bk"])
def test_save_pretrained_loads_with_auto_classes_and_generates(dm, tmp_path, model):
    pl.seed_everything(0)
    model_kwargs = {**RESNET_BK_TINY, "initializer_range": 0.2} if model == "resnet_bk:1M" else None
    task = CausalLMTask(model, tokenizer=dm.tokenizer, model_kwargs=model_kwargs)
    t = trainer(tmp_path, max_steps=4, val_check_interval=2, limit_val_batches=2)
    t.fit(task, datamodule=dm)
    folder = task.save_pretrained(tmp_path / "hub")
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert (folder / "training_curves.png").stat().st_size > 1000

    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card and "type: perplexity" in card
    assert f"| val/perplexity | {task.val_metrics['val/perplexity']:.4f} |" in card

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.eos_token_id == tok.eos_token_id == dm.tokenizer.eos_token_id
    prompt = tok("def main(", return_tensors="pt").input_ids
    task.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(prompt).logits, task.model(prompt).logits, rtol=0, atol=0)
        out = model.generate(prompt, max_new_tokens=12, do_sample=False)
    # the reloaded model's cached generation is the greedy loop without a cache
    assert_context_dependent(model, VOCAB)
    assert_generates_like_reference(out, greedy_reference(model, prompt, out.shape[1] - prompt.shape[1]), prompt.shape[1])
    assert tok.decode(out[0]).startswith("def main(")
    # The task itself reloads from the folder too.
    again = CausalLMTask.from_pretrained(folder)
    assert again.tokenizer.eos_token_id == tok.eos_token_id


def test_accumulation_and_bf16_mixed(dm, tmp_path):
    rec = StepRecorder()
    task = CausalLMTask(tiny_gpt2(), tokenizer=dm.tokenizer)
    dtypes = []  # what the first attention projection computed in, per forward
    task.model.transformer.h[0].attn.c_attn.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    t = trainer(tmp_path, max_steps=3, accumulate_grad_batches=2, precision="bf16-mixed", limit_val_batches=1, callbacks=[rec])
    t.fit(task, datamodule=dm)
    # bf16 autocast ran the matrix products (training and validation alike); the weights stayed float32
    assert dtypes and set(dtypes) == {torch.bfloat16}, dtypes
    assert task.model.transformer.h[0].attn.c_attn.weight.dtype == torch.float32
    # 3 optimizer steps took 6 micro-batches; the step counter moved once per pair.
    assert rec.steps == [0, 0, 1, 1, 2, 2] and t.global_step == 3
    assert math.isfinite(float(t.callback_metrics["train/loss"]))
    # No weight decay on norms, biases and embeddings; decay on every other matrix.
    decay, no_decay = t.optimizers[0].param_groups
    names = {id(p): n for n, p in task.model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all("ln_" not in names[id(p)] and not names[id(p)].endswith(".bias") and "wte" not in names[id(p)] for p in decay["params"])
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def test_model_forms_optimizer_groups_and_errors(dm, tmp_path):
    task = CausalLMTask(tiny_gpt2(), tokenizer=dm.tokenizer)
    assert task.model.config.vocab_size == len(dm.tokenizer)  # fresh vocabularies follow the tokenizer
    assert task.monitor == ("val/loss", "min")
    # The same architecture from the stored config dict and from a saved folder.
    same = CausalLMTask(task.hparams["model"], tokenizer=dm.tokenizer)
    assert same.model.config.n_embd == 64 and same.model.num_parameters() == task.model.num_parameters()
    task.model.save_pretrained(tmp_path / "m")
    loaded = CausalLMTask(str(tmp_path / "m"))
    assert torch.equal(loaded.model.transformer.wte.weight, task.model.transformer.wte.weight)

    factor = _warmup_cosine(warmup=5, total=100, min_ratio=0.1)
    assert factor(0) == pytest.approx(1 / 5) and factor(4) == 1.0 and factor(99) == pytest.approx(0.1, abs=1e-3)
    assert factor(52) == pytest.approx(0.55, abs=0.02)  # halfway through the cosine: the midpoint of 1 and 0.1

    with pytest.raises(ValueError, match="tokenizer has 384 tokens but the model's vocab_size is 100"):
        small = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=100, n_embd=16, n_layer=1, n_head=2))
        CausalLMTask(small, tokenizer=dm.tokenizer)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        CausalLMTask(str(tmp_path))
    with pytest.raises(TypeError, match="is not a PretrainedConfig"):
        CausalLMTask(42)
    with pytest.raises(ValueError, match="warmup_steps=-1"):
        CausalLMTask(tiny_gpt2(), warmup_steps=-1)


def test_fsdp_strategy_wraps_the_no_split_blocks(dm):
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    task = CausalLMTask(tiny_gpt2(), tokenizer=dm.tokenizer)
    strategy = fsdp_strategy(task)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {GPT2Block}


DDP_SCRIPT = """
import json, sys, torch
from transformers import GPT2Config
from hubtrain.data.text import TextDataModule
from hubtrain.tasks.causal_lm import CausalLMTask
from hubtrain.training import AutoTrainer

torch.set_num_threads(1)
out = sys.argv[1]
dm = TextDataModule(max_bytes=150_000, vocab_size=300, block_size=32, batch_size=8, val_fraction=0.2, test_fraction=0.0,
                    tokenizer_cache_dir=out + "/tok")
task = CausalLMTask(GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=32), lr=3e-3)
t = AutoTrainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=None, max_steps=6, val_check_interval=3,
                limit_val_batches=4, enable_progress_bar=False, enable_model_summary=False, default_root_dir=out + "/runs")
t.fit(task, datamodule=dm)
w = task.model.transformer.h[0].attn.c_attn.weight
json.dump({"step": t.global_step, "val": task.val_metrics, "checksum": float(w.double().sum()),
           "world": t.world_size}, open(f"{out}/rank{t.global_rank}.json", "w"))
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    # Lightning refuses FSDP without a GPU, so the multi-process path is proven with DDP on gloo; Lightning's
    # launcher re-executes this script for rank 1, as torchrun or SLURM would.
    script = tmp_path / "train_ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["step"] == r1["step"] == 6
    # Gradients were all-reduced: both replicas hold the same weights; the validation loss is the global one.
    assert r0["checksum"] == r1["checksum"]
    assert r0["val"]["val/loss"] == r1["val"]["val/loss"] < math.log(300)
