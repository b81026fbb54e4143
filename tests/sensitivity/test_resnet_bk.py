"""ResNet-BK's core claims: each check that guards one fails on a library broken in the way it guards against."""
from __future__ import annotations

import pytest
import torch

from checks import (
    OPTION_CONTRIBUTIONS,
    adversarial_scan_inputs,
    assert_cached_generation_matches,
    assert_matches_scan_reference,
    check_option_contributes,
    context_lm,
)
from learning import (
    assert_beats_bigram_on_python,
    assert_solves_context_task,
    context_task_model,
    python_sources_data,
    train_context_task,
    train_resnet_bk_on_python,
)

def fails(check, *args, reason: str, **kwargs) -> str:
    """Run ``check``; it must raise AssertionError with a message that matches ``reason`` (the claim's own
    assertion, not an incidental one). Returns the message."""
    with pytest.raises(AssertionError, match=reason) as info:
        check(*args, **kwargs)
    print(f"{check.__name__} failed as it should: {info.value}")
    return str(info.value)


def context_task() -> None:
    assert_solves_context_task(train_context_task(context_task_model()))


@pytest.mark.parametrize("breakage", ["mixer_output_zeroed", "scan_first_position"])
def test_context_task_fails_without_token_mixing(breakage, request, one_thread):
    """tests/models/resnet_bk/test_learning.py::test_resnet_bk_solves_a_task_only_context_solves. Without mixing, or with a scan that never couples positions, the model cannot learn the period-3 task that
    only context solves (intact: 0.05 nats, accuracy 0.99; measured broken: 2.77 nats, accuracy 0.06)."""
    request.getfixturevalue(breakage)
    fails(context_task, reason="context task: loss")


def test_bigram_check_fails_without_token_mixing(mixer_output_zeroed, tmp_path, one_thread):
    """tests/tasks/test_causal_lm.py::test_resnet_bk_training_beats_the_bigram_baseline: with the mixer's output
    zeroed, ResNet-BK is a model of the current token and cannot beat the bigram of the Python sources by 0.1 nats
    (measured: 3.93 nats against the bigram's 3.81; intact 3.59)."""
    dm = python_sources_data(tmp_path / "tokenizer")
    task, _, _ = train_resnet_bk_on_python(dm, tmp_path)
    fails(assert_beats_bigram_on_python, task, dm, reason="ResNet-BK vs bigram")


@pytest.mark.parametrize("broken", [False, True], ids=["intact", "broken"])
def test_generation_check_fails_when_the_cache_is_dropped(broken, request, one_thread):
    """tests/models/resnet_bk/test_hf.py::test_generate_with_cache_equals_generation_without_cache[default]."""
    model = context_lm()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(2))
    if not broken:
        assert_cached_generation_matches(model, ids, 12)
        return
    request.getfixturevalue("cache_dropped")
    fails(assert_cached_generation_matches, model, ids, 12, reason="differ from the uncached greedy reference")


@pytest.mark.parametrize("broken", [False, True], ids=["intact", "broken"])
def test_scan_reference_check_fails_when_the_scan_is_its_first_position(broken, request):
    """tests/models/resnet_bk/test_green_scan.py::test_ward_identity_bounds_hold_for_adversarial_inputs_at_16k_tokens
    (its check, on 512 tokens of the same adversarial inputs)."""
    import hubtrain.models.resnet_bk as package

    if broken:
        request.getfixturevalue("scan_first_position")
    inputs = adversarial_scan_inputs(512)
    outputs = package.green_scan(*inputs, None)  # looked up now, as the test's module-level import would be
    if broken:
        fails(assert_matches_scan_reference, inputs, outputs, reason="differs from the float64 reference scan")
    else:
        assert_matches_scan_reference(inputs, outputs)


BREAKAGE_OF = {"semiseparable": "semiseparable_removed", "semiseparable_decay": "semiseparable_decay_removed",
               "birman_schwinger": "birman_schwinger_removed", "prime_bump": "prime_bump_removed", "act": "act_removed"}


@pytest.mark.parametrize("broken", [False, True], ids=["intact", "broken"])
@pytest.mark.parametrize("option", sorted(OPTION_CONTRIBUTIONS))
def test_option_check_fails_when_its_contribution_is_removed(option, broken, request):
    """tests/models/resnet_bk/test_options.py::test_each_option_changes_the_output_of_the_same_model[option]."""
    assert set(BREAKAGE_OF) == set(OPTION_CONTRIBUTIONS)  # one breakage per option
    if not broken:
        check_option_contributes(option)
        return
    request.getfixturevalue(BREAKAGE_OF[option])
    fails(check_option_contributes, option, reason="the option contributes nothing")
