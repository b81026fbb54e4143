"""The recall suite's data: answers are where each task says, a perfect reader scores 1.0, a reader that ignores the
context scores at chance, and the suite trains and scores a model through hubtrain's own task and trainer."""
from __future__ import annotations

import math

import pytest
import torch

from hubtrain.evaluation.recall import (
    IGNORE,
    MQAR,
    InductionHeads,
    Passkey,
    SelectiveCopying,
    evaluate,
    predict,
    score_predictions,
    state_bytes_per_layer,
    train,
)

TASKS = [MQAR(vocab=64, num_pairs=6), SelectiveCopying(vocab=16, num_tokens=8), InductionHeads(vocab=16), Passkey()]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_every_answer_was_written_earlier_in_its_sequence_and_the_oracle_scores_one(task):
    ids, labels = task.sample(64, 96, seed=3)
    assert ids.shape == labels.shape == (64, 96) and ids.max() < task.vocab_size and ids.min() >= 0
    scored = labels != IGNORE
    assert scored.any(1).all() and not scored[:, 0].any()
    assert torch.equal(ids[scored], labels[scored])  # a label is the token at its position (transformers' convention)
    for row in range(64):
        for pos in scored[row].nonzero().flatten().tolist():
            assert (ids[row, :pos - 1] == ids[row, pos]).any(), (task.name, row, pos)  # the answer appeared before
    assert score_predictions(task.oracle(ids, labels), labels) == {"accuracy": 1.0, "exact": 1.0, "scored": int(scored.sum())}
    again, again_labels = task.sample(64, 96, seed=3)
    assert torch.equal(again, ids) and torch.equal(again_labels, labels)  # seeded
    assert not torch.equal(task.sample(64, 96, seed=4)[0], ids)


def test_task_specific_layouts():
    ids, labels = MQAR(vocab=64, num_pairs=4).sample(8, 40, seed=0)
    keys, values = ids[:, 0:8:2], ids[:, 1:8:2]
    assert (keys < 32).all() and (keys >= 1).all() and (values >= 32).all()
    for row in range(8):  # every key is asked once, answered by its own value
        asked = ids[row][(labels[row] != IGNORE).roll(-1)]
        assert sorted(asked.tolist()) == sorted(keys[row].tolist())
    ids, labels = SelectiveCopying(vocab=16, num_tokens=8).sample(4, 64, seed=0)
    data_in_region = [r[:55][r[:55] > 0].tolist() for r in ids]
    assert data_in_region == [r[56:].tolist() for r in ids]  # copied in order after the separator
    ids, _ = SelectiveCopying(vocab=16, num_tokens=8, window=20).sample(4, 200, seed=0)
    assert (ids[:, :171] == 0).all() and ((ids[:, 171:191] > 0).sum(1) == 8).all()  # data in the last 20 before it
    ids, labels = Passkey(depth=0.5).sample(4, 200, seed=0)
    key_at = (ids == 11).nonzero()[:, 1]
    assert ((key_at - 94).abs() <= 2).all()  # the key sits at half depth
    with pytest.raises(ValueError, match="shorter than the task needs"):
        MQAR(num_pairs=16).sample(1, 32, seed=0)


def test_passkey_log_gap_draws_keys_near_the_question_as_often_as_far_ones():
    L, n = 1024, 6
    room = L - 2 * n
    for log_gap, near_share in ((0.0, (0.0, 0.02)), (1.0, (0.25, 0.40))):
        ids, labels = Passkey(log_gap=log_gap).sample(2000, L, seed=0)
        key_at = (ids == 11).nonzero()[:, 1]
        assert key_at.shape == (2000,) and (key_at >= 0).all() and (key_at <= room - 1).all()
        assert ((ids == 12).nonzero()[:, 1] == L - n).all()
        digits = ids[torch.arange(2000)[:, None], key_at[:, None] + torch.arange(1, n)]
        assert torch.equal(digits, labels[:, L - n + 1:])  # the answer is the key that was hidden
        gap = room - key_at  # 1 at depth 1, room at depth 0
        low, high = near_share
        assert low <= float((gap <= 8).float().mean()) <= high  # log-uniform: ln 9 / ln 1013 = 0.32 of rows
        if log_gap:
            assert 0.40 <= float((gap <= math.sqrt(room)).float().mean()) <= 0.60  # the median gap is ~sqrt(room)
            assert (gap == 1).any() and (gap > room - 100).any()  # both ends are drawn
    with pytest.raises(ValueError, match="log_gap=1.5 is outside"):
        Passkey(log_gap=1.5)


def test_selective_copying_log_window_packs_some_rows_tight_and_spreads_others_wide():
    L, M = 1024, 16
    region = L - M - 1
    for log_window, tight_share in ((0.0, (0.0, 0.0)), (1.0, (0.25, 0.42))):
        ids, labels = SelectiveCopying(num_tokens=M, log_window=log_window).sample(1000, L, seed=0)
        data = ids[:, :region] > 0
        assert (data.sum(1) == M).all() and (ids[:, region] == 17).all()
        first = data.float().argmax(1)
        spread = region - first  # the data lie in the last `spread` positions before the separator
        copied = [r[:region][r[:region] > 0] for r in ids]
        assert all(torch.equal(c, lab[region + 1:]) for c, lab in zip(copied, labels))  # copied in order
        low, high = tight_share
        assert low <= float((spread <= 4 * M).float().mean()) <= high  # log-uniform: ln 4 / ln(1008 / 16) = 0.33
        if log_window:
            assert (spread == M).any() and (spread > region - 50).any()  # both ends are drawn
    with pytest.raises(ValueError, match="log_window=2 is outside"):
        SelectiveCopying(log_window=2)


def test_induction_heads_log_gap_puts_some_triggers_just_behind_the_question_and_others_far():
    L, trigger = 1024, 17
    for log_gap, near_share in ((0.0, (0.0, 0.03)), (1.0, (0.25, 0.40))):
        ids, labels = InductionHeads(log_gap=log_gap).sample(2000, L, seed=0)
        assert ((ids[:, :-2] == trigger).sum(1) == 1).all() and (ids[:, L - 2] == trigger).all()
        first = (ids[:, :-2] == trigger).float().argmax(1)
        assert torch.equal(ids[torch.arange(2000), first + 1], labels[:, L - 1])  # the answer followed the trigger
        gap = L - 3 - first  # 1 when the pair sits just before the final trigger
        assert (gap >= 1).all() and (gap <= L - 3).all()
        low, high = near_share
        assert low <= float((gap <= 8).float().mean()) <= high  # log-uniform: ln 9 / ln 1022 = 0.32 of rows
        if log_gap:
            assert (gap == 1).any() and (gap > L - 100).any()  # both ends are drawn
    with pytest.raises(ValueError, match="log_gap=-0.1 is outside"):
        InductionHeads(log_gap=-0.1)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_a_reader_that_ignores_the_context_scores_at_chance(task):
    """The best context-free predictor, a bigram table fit on 2,000 training sequences, evaluated on others."""
    ids, labels = task.sample(2000, 96, seed=0)
    table = torch.zeros(task.vocab_size, task.vocab_size)
    scored = labels[:, 1:] != IGNORE
    table.index_put_((ids[:, :-1][scored], labels[:, 1:][scored]), torch.ones(int(scored.sum())), accumulate=True)
    test_ids, test_labels = task.sample(2000, 96, seed=1)
    pred = table[test_ids[:, :-1]].argmax(-1)
    accuracy = score_predictions(pred, test_labels)["accuracy"]
    assert accuracy < 2.5 * task.chance, (task.name, accuracy, task.chance)


def test_the_suite_trains_through_causal_lm_task_and_scores_held_out_examples(one_thread):
    from hubtrain.models.resnet_bk import ResNetBKConfig

    task = MQAR(vocab=32, num_pairs=2)
    config = ResNetBKConfig(vocab_size=32, d_model=32, n_layers=1, num_channels=2, channel_dim=8, num_experts=1)
    lm = train(config, task, 16, steps=3, batch_size=8)
    result = evaluate(lm.model, task, 16, examples=16, batch_size=8)
    assert set(result) >= {"accuracy", "exact", "chance", "seq_len"} and 0 <= result["accuracy"] <= 1
    assert result["chance"] == pytest.approx(1 / 16) and result["scored"] == 32
    assert state_bytes_per_layer(lm.model) == 4 * 2 * (2 + 2 * 8)  # g and y of 2 channels, float32


def test_predict_runs_long_rows_a_few_at_a_time_with_the_same_answers_and_restores_training_mode(one_thread):
    """Rows of 1,200 tokens with batch_size 1 go through one at a time (1 * 512 // 1200 rounds up to 1 row); the
    predictions equal one forward pass over all rows, and are not all one token (a context-blind model would pass)."""
    from hubtrain.models.resnet_bk import ResNetBKConfig, ResNetBKForCausalLM

    torch.manual_seed(0)
    config = ResNetBKConfig(vocab_size=32, d_model=32, n_layers=1, num_channels=2, channel_dim=8, num_experts=1)
    model = ResNetBKForCausalLM(config).train()
    ids = torch.randint(0, 32, (3, 1200))
    pred = predict(model, ids, batch_size=1)
    assert model.training, "predict must hand the model back in the mode it got it"
    model.eval()
    with torch.no_grad():
        whole = model(input_ids=ids).logits[:, :-1].argmax(-1)
    assert pred.shape == (3, 1199) and torch.equal(pred, whole)
    assert pred.unique().numel() > 1


def test_state_size_is_none_for_attention_and_conv_plus_ssm_for_mamba(one_thread):
    """GPT-2's cache grows with the context (None, not a number); Mamba's is its conv and SSM state per layer."""
    from transformers import GPT2Config, GPT2LMHeadModel, MambaConfig, MambaForCausalLM

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_embd=16, n_layer=1, n_head=2, n_positions=32)).eval()
    assert state_bytes_per_layer(gpt2) is None
    cfg = MambaConfig(vocab_size=16, hidden_size=16, num_hidden_layers=2, state_size=4, expand=2, conv_kernel=4,
                      use_mambapy=True)
    mamba = MambaForCausalLM(cfg).eval()
    assert state_bytes_per_layer(mamba) == 4 * (32 * 4 + 32 * 4)  # d_inner x conv_kernel + d_inner x state_size
