"""ResNet-BK as a native transformers model: Auto classes, save/load (also as remote code without hubtrain),
generation with the recurrent cache, padding, causality, training utilities and the Trainer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import hubtrain.models.resnet_bk  # noqa: F401  (registers with the Auto classes)
from checks import BLOCK_HUBTRAIN, GENERATION_TINY, assert_cached_generation_matches, context_lm, random_option_weights
from hubtrain.compat import output_cache
from hubtrain.models.resnet_bk import ResNetBKConfig, ResNetBKForCausalLM, ResNetBKModel
from hubtrain.models.resnet_bk.modeling_resnet_bk import ResNetBKCache
from learning import (
    CONTEXT_BATCH,
    CONTEXT_LR,
    CONTEXT_STEPS,
    assert_solves_context_task,
    context_task_model,
    periodic_sequences,
    score_context_task,
)

TINY = GENERATION_TINY
ALL_OPTIONS = dict(
    use_birman_schwinger=True, schatten_threshold=3.0, use_mourre=True, use_prime_bump=True, prime_bump_scale=0.5,
    use_semiseparable=True, low_rank=4, use_act=True, act_halt_threshold=0.5, use_scattering_router=True,
    num_experts=3, top_k=2, key_dim=2, feature_norm="ward", conv_width=3,
)
# every option the one-token decoding step covers (adaptive computation time takes the general path)
STEP_OPTIONS = {k: v for k, v in ALL_OPTIONS.items() if not k.startswith("act") and k != "use_act"}
# the clean chain with a lead excludes the options on the potential and on E; it has its own start state and keys
LEAD_OPTIONS = dict(chain="lead", key_dim=2, lead_eta_min=1e-3, use_semiseparable=True, low_rank=4, num_experts=3,
                    top_k=2, conv_width=3)
# absorption per token excludes the Birman-Schwinger sandwich and the ward read-out; everything else goes with it,
# and the semiseparable term here is the decayed one
TOKEN_ETA_OPTIONS = dict(absorption="token", use_mourre=True, use_prime_bump=True, prime_bump_scale=0.5,
                         use_semiseparable=True, low_rank=4, semiseparable_decay_heads=2, use_scattering_router=True,
                         num_experts=3, top_k=2, key_dim=2, conv_width=3)
# the semiseparable term with more values than its rank and a decay per value channel (Mamba's form; 32 heads, so
# the mixer scans it in chunks of 32 tokens and the 40-token checks cross a chunk end), its inputs convolved
WIDE_DECAY_OPTIONS = dict(use_semiseparable=True, low_rank=4, semiseparable_value_dim=32, semiseparable_decay_heads=32,
                          semiseparable_conv_width=4, key_dim=2, conv_width=3)
# the same with its decays convolved with q, k and v and set by relu, which holds a head's sum exactly (docs 7.12)
HOLD_OPTIONS = {**WIDE_DECAY_OPTIONS, "semiseparable_decay_conv": True, "semiseparable_decay_activation": "relu"}


def tiny_model(seed=0, **options) -> ResNetBKForCausalLM:
    torch.manual_seed(seed)
    return random_option_weights(ResNetBKForCausalLM(ResNetBKConfig(**{**TINY, **options})).eval())


context_model = context_lm  # (**options): tiny_model(initializer_range=0.2), checked to use its context


@pytest.mark.parametrize("options", [{}, ALL_OPTIONS, LEAD_OPTIONS, TOKEN_ETA_OPTIONS, WIDE_DECAY_OPTIONS, HOLD_OPTIONS], ids=["default", "all-options", "lead", "token-eta", "wide-decay", "hold"])
def test_causal_changing_later_tokens_leaves_earlier_logits_unchanged(options):
    model = tiny_model(**options)
    ids = torch.randint(0, 64, (2, 40))
    for i in (0, 13, 38):
        other = ids.clone()
        other[:, i + 1 :] = torch.randint(0, 64, other[:, i + 1 :].shape)
        with torch.no_grad():
            diff = (model(ids).logits[:, : i + 1] - model(other).logits[:, : i + 1]).abs().max()
        assert diff <= 1e-6


def test_any_length_runs_beyond_n_seq():
    model = tiny_model()
    with torch.no_grad():
        out = model(torch.randint(0, 64, (1, 5 * model.config.n_seq + 3)))
    assert out.logits.shape == (1, 83, 64) and torch.isfinite(out.logits).all()


def test_labels_loss_is_shifted_cross_entropy_ignoring_minus_100():
    model = tiny_model()
    ids = torch.randint(0, 64, (2, 12))
    labels = ids.clone()
    labels[0, :4] = -100
    out = model(ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 64), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.lm_loss, expected, atol=1e-6)
    assert torch.allclose(out.loss, out.lm_loss + model.config.router_aux_loss_coef * out.aux_loss)


def test_hidden_states_and_inputs_embeds():
    model = tiny_model()
    ids = torch.randint(0, 64, (2, 9))
    out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.n_layers + 1
    assert torch.equal(out.hidden_states[-1], model.model(ids).last_hidden_state)
    embeds = model.get_input_embeddings()(ids)
    assert torch.allclose(model(inputs_embeds=embeds).logits, out.logits, atol=1e-6)
    with pytest.raises(ValueError, match="input_ids or inputs_embeds"):
        model(ids, inputs_embeds=embeds)


def test_resize_token_embeddings_keeps_the_tie():
    model = tiny_model()
    model.resize_token_embeddings(80)
    assert model.config.vocab_size == 80
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model(torch.tensor([[79, 3, 5]])).logits.shape == (1, 3, 80)


@pytest.mark.parametrize("options", [{}, ALL_OPTIONS, LEAD_OPTIONS, TOKEN_ETA_OPTIONS, WIDE_DECAY_OPTIONS, HOLD_OPTIONS], ids=["default", "all-options", "lead", "token-eta", "wide-decay", "hold"])
def test_activation_checkpointing_recomputes_each_block_with_the_same_loss_and_gradients(options):
    ids = torch.randint(0, 64, (2, 20))
    results = []
    for checkpointing in (False, True):
        model = tiny_model(seed=1, **options).train()
        if checkpointing:
            # transformers >= 5.2x calls it activation_checkpointing_enable; earlier 5.x gradient_checkpointing_enable
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
            assert all(block.gradient_checkpointing for block in model.model.layers)  # transformers' own layer flag
        calls = []
        hooks = [block.mixer.register_forward_hook(lambda *_: calls.append(1)) for block in model.model.layers]
        loss = model(ids, labels=ids).loss
        forward_calls = len(calls)
        loss.backward()
        for h in hooks:
            h.remove()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((loss.detach(), grads, forward_calls, len(calls)))
    (loss0, grads0, fwd0, total0), (loss1, grads1, fwd1, total1) = results
    n = len(model.model.layers)
    assert (fwd0, total0) == (n, n)  # plain training: each block once
    assert (fwd1, total1) == (n, 2 * n)  # checkpointed: each block again in the backward pass
    assert torch.allclose(loss0, loss1, atol=1e-6, rtol=0)
    assert grads0.shape == grads1.shape and torch.allclose(grads0, grads1, atol=1e-6, rtol=0)


def test_shift_labels_and_num_items_in_batch_reach_transformers_loss():
    """Pre-shifted targets (sequence / context parallelism) are used as they are, and num_items_in_batch turns the
    mean into a sum over that count, as transformers' ForCausalLM loss defines."""
    model = tiny_model()
    ids = torch.randint(0, 64, (2, 12))
    targets = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        logits = model(ids).logits
        shifted = model(ids, shift_labels=targets)
        plain = model(ids, labels=targets)
        summed = model(ids, labels=targets, num_items_in_batch=torch.tensor(5))
    expected_shifted = F.cross_entropy(logits.reshape(-1, 64), targets.reshape(-1))
    expected_plain = F.cross_entropy(logits[:, :-1].reshape(-1, 64), targets[:, 1:].reshape(-1))
    assert torch.allclose(shifted.lm_loss, expected_shifted, atol=1e-6)
    assert torch.allclose(plain.lm_loss, expected_plain, atol=1e-6)
    assert not torch.allclose(shifted.lm_loss, plain.lm_loss)  # the two definitions differ on this input
    expected_summed = F.cross_entropy(logits[:, :-1].reshape(-1, 64), targets[:, 1:].reshape(-1), reduction="sum") / 5
    assert torch.allclose(summed.lm_loss, expected_summed, atol=1e-5)


def test_cache_is_taken_under_either_name_and_foreign_names_are_errors():
    model = tiny_model()
    ids = torch.randint(0, 64, (1, 6))
    more = torch.randint(0, 64, (1, 3))
    with torch.no_grad():
        whole = model(torch.cat([ids, more], 1)).logits[:, -3:]
        for name in ("cache", "past_key_values"):
            cache = output_cache(model(ids, use_cache=True))
            assert isinstance(cache, ResNetBKCache)
            assert (model(more, **{name: cache}).logits - whole).abs().max() < 1e-5, name
        cache = output_cache(model(ids, use_cache=True))
        with pytest.raises(ValueError, match="cache_params"):
            model(more, cache_params=cache)
        with pytest.raises(ValueError, match="both `cache` and `past_key_values`"):
            model(more, cache=cache, past_key_values=output_cache(model(ids, use_cache=True)))
        from transformers import DynamicCache

        with pytest.raises(ValueError, match="must be a ResNetBKCache"):
            model(more, cache=DynamicCache())
        out = model(ids, use_cache=True)
    assert out.cache is output_cache(out)  # `out.cache` on every transformers 5.x, before and after the rename


def test_save_pretrained_and_auto_classes_restore_identical_outputs(tmp_path):
    model = tiny_model(use_prime_bump=True, use_semiseparable=True, low_rank=4)
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "configuration_resnet_bk.py", "modeling_resnet_bk.py", "green_scan.py"} <= files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "resnet_bk"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_resnet_bk.ResNetBKForCausalLM"
    assert config["auto_map"]["AutoConfig"] == "configuration_resnet_bk.ResNetBKConfig"
    assert config["auto_map"]["AutoModel"] == "modeling_resnet_bk.ResNetBKModel"
    assert "top_k" not in config  # stored as num_experts_per_tok, so generate never reads it as sampling top-k

    ids = torch.randint(0, 64, (2, 15))
    expected = model(ids).logits
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ResNetBKConfig)
    for loader in (ResNetBKForCausalLM, AutoModelForCausalLM):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is ResNetBKForCausalLM
        assert torch.equal(loaded(ids).logits, expected)
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is ResNetBKModel
    assert torch.equal(base(ids).last_hidden_state, model.model(ids).last_hidden_state)


REMOTE_SCRIPT = BLOCK_HUBTRAIN + """
import torch
from transformers import AutoModel, AutoModelForCausalLM
from safetensors.torch import save_file
folder, out = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
ids = torch.arange(20).view(2, 10) % 64
gen = model.generate(ids, max_new_tokens=5, do_sample=False)
base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
assert type(base).__name__ == "ResNetBKModel" and type(base).__module__.startswith("transformers_modules")
save_file({"logits": model(ids).logits.contiguous(), "gen": gen.contiguous(),
           "hidden": base(ids).last_hidden_state.contiguous()}, out)
"""


def test_remote_code_loads_without_hubtrain(tmp_path):
    model = tiny_model(use_birman_schwinger=True, use_prime_bump=True)
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "out.safetensors")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors.torch import load_file

    got = load_file(tmp_path / "out.safetensors")
    ids = torch.arange(20).view(2, 10) % 64
    assert torch.equal(got["logits"], model(ids).logits)
    assert torch.equal(got["gen"], model.generate(ids, max_new_tokens=5, do_sample=False))
    assert torch.equal(got["hidden"], model.model(ids).last_hidden_state)


@pytest.mark.parametrize("options", [{}, STEP_OPTIONS, ALL_OPTIONS, LEAD_OPTIONS, TOKEN_ETA_OPTIONS, WIDE_DECAY_OPTIONS, HOLD_OPTIONS], ids=["default", "step-options", "all-options", "lead", "token-eta", "wide-decay", "hold"])
def test_generate_with_cache_equals_generation_without_cache(options):
    model = context_model(**options)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(2))
    # greedy: against an independent loop that reruns the whole sequence for every token
    assert_cached_generation_matches(model, ids, 12)
    for kwargs in (dict(do_sample=False), dict(num_beams=3, do_sample=False), dict(do_sample=True, top_k=20)):
        torch.manual_seed(5)
        cached = model.generate(ids, max_new_tokens=6, **kwargs)
        torch.manual_seed(5)
        recomputed = model.generate(ids, max_new_tokens=6, use_cache=False, **kwargs)
        assert cached.shape == (2, 13)
        assert torch.equal(cached, recomputed), kwargs


@pytest.mark.parametrize("options", [{}, STEP_OPTIONS, ALL_OPTIONS, LEAD_OPTIONS, TOKEN_ETA_OPTIONS, WIDE_DECAY_OPTIONS, HOLD_OPTIONS], ids=["default", "step-options", "all-options", "lead", "token-eta", "wide-decay", "hold"])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(options):
    model = context_model(pad_token_id=0, **options)
    prompts = [torch.randint(1, 64, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 8, 5)]
    width = max(len(p) for p in prompts)
    batch = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for row, p in enumerate(prompts):
        batch[row, width - len(p) :] = p
        mask[row, width - len(p) :] = 1
        batch[row, : width - len(p)] = 7 + row  # arbitrary pad ids: only the mask may matter
    together = assert_cached_generation_matches(model, batch, 6, attention_mask=mask)
    with torch.no_grad():
        logits = model(batch, attention_mask=mask).logits
    for row, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=6, do_sample=False)
        assert torch.equal(together[row, width:], alone[0, len(p) :])
        with torch.no_grad():
            assert (logits[row, width - len(p) :] - model(p[None]).logits[0]).abs().max() < 1e-5


def test_cache_state_is_constant_size_and_continues_the_sequence():
    model = tiny_model(use_semiseparable=True, low_rank=4, use_birman_schwinger=True, schatten_threshold=2.0)
    sizes = []
    for n in (4, 120):
        ids = torch.randint(0, 64, (1, n))
        with torch.no_grad():
            out = model(ids, use_cache=True)
        cache = output_cache(out)
        assert isinstance(cache, ResNetBKCache) and cache.get_seq_length() == n
        sizes.append(sum(t.numel() for st in cache.layers for t in st.values()))
        # feeding more tokens through the cache == running the whole sequence at once
        more = torch.randint(0, 64, (1, 5))
        with torch.no_grad():
            cont = model(more, cache=cache).logits
            whole = model(torch.cat([ids, more], 1)).logits[:, -5:]
        assert (cont - whole).abs().max() < 1e-5
    assert sizes[0] == sizes[1]


def test_trainer_learns_a_task_only_context_solves(tmp_path, one_thread):
    """transformers' Trainer trains ResNet-BK on the context task (see tests/learning.py) to the same bar as the plain
    loop: 2 nats below the bigram baseline. Measured here: loss 0.03 nats, accuracy 1.00, about 6 s on one core."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    train = periodic_sequences(CONTEXT_STEPS * CONTEXT_BATCH, seed=0)
    data = Dataset.from_dict({"input_ids": train.tolist(), "labels": train.tolist()})
    model = context_task_model()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=CONTEXT_STEPS, per_device_train_batch_size=CONTEXT_BATCH,
        learning_rate=CONTEXT_LR, lr_scheduler_type="constant", weight_decay=0.0, logging_steps=10, report_to=[],
        use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == CONTEXT_STEPS // 10 and losses[-1] < losses[0]
    assert_solves_context_task(score_context_task(model, train))


def test_huge_activations_give_the_float64_outputs_and_gradients():
    """No clamp anywhere: with embeddings scaled to 1e6 and 3000 tokens, float32 logits and gradients are those of the
    same model in float64 (measured: 2e-7 and 1e-6 of their scale), not merely finite."""
    import copy

    model = tiny_model(use_birman_schwinger=True, schatten_threshold=1.0, use_semiseparable=True, low_rank=4).train()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(1e6)
    exact = copy.deepcopy(model).double()
    ids = torch.randint(0, 64, (1, 3000), generator=torch.Generator().manual_seed(0))
    out, ref = model(ids, labels=ids), exact(ids, labels=ids)
    out.loss.backward()
    ref.loss.backward()
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    assert (out.logits.double() - ref.logits).abs().max() <= 1e-4 * ref.logits.abs().max()
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), exact.parameters()):
        if q.grad is not None:
            assert (p.grad.double() - q.grad).abs().max() <= 1e-4 * q.grad.abs().max(), name


@pytest.mark.parametrize("options", [{}, STEP_OPTIONS, LEAD_OPTIONS, TOKEN_ETA_OPTIONS, WIDE_DECAY_OPTIONS, HOLD_OPTIONS], ids=["default", "step-options", "lead", "token-eta", "wide-decay", "hold"])
def test_the_one_token_step_equals_the_general_path(options):
    """Decoding takes the fused step (no gradient, one token); with gradients on, the same call takes the general
    path: both give the same logits and the same next state."""
    model = context_model(**options)
    ids = torch.randint(0, 64, (3, 9), generator=torch.Generator().manual_seed(4))
    nxt = torch.randint(0, 64, (3, 1), generator=torch.Generator().manual_seed(5))
    results = []
    for grad in (False, True):
        with torch.no_grad():
            cache = output_cache(model(ids, use_cache=True))
        with torch.set_grad_enabled(grad):
            out = model(nxt, cache=cache, use_cache=True)
        flat = output_cache(out).to_tensors()
        results.append((out.logits.detach(), {k: v.detach() for k, v in flat.items()}))
    (fast, fast_state), (general, general_state) = results
    assert (fast - general).abs().max() <= 1e-5 * max(1.0, general.abs().max())
    assert fast_state.keys() == general_state.keys()
    assert all(torch.allclose(fast_state[k].float(), general_state[k].float(), atol=1e-5) for k in fast_state)
