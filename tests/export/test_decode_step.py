"""The flat decode step (``DecodeStep``: token + state tensors in, logits + state out) compiled with torch.compile,
as the speed benchmark's "ResNet-BK compiled" row runs it: it generates what the uncached greedy loop generates."""
from __future__ import annotations

import torch

from checks import assert_context_dependent, assert_generates_like_reference, greedy_reference
from hubtrain.export.decode import DecodeStep


@torch.no_grad()
def test_compiled_decode_step_generates_like_the_uncached_reference(tiny_resnet_bk):
    from torch._dynamo.testing import CompileCounterWithBackend

    assert_context_dependent(tiny_resnet_bk, 64)
    step = DecodeStep(tiny_resnet_bk)
    counter = CompileCounterWithBackend("inductor")  # inductor, counting the frames it compiled
    compiled = torch.compile(step, backend=counter, dynamic=False)
    prompt = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    state, tokens = step.zero_state(2), [prompt]
    for i in range(prompt.shape[1] + 19):  # the prompt through the same step from the zero state, then 20 new tokens
        token = prompt[:, i : i + 1] if i < prompt.shape[1] else tokens[-1]
        logits, *state = compiled(token, *state)
        if i >= prompt.shape[1] - 1:
            tokens.append(logits.argmax(-1, keepdim=True))
    assert counter.frame_count >= 1 and counter.op_count > 0, "the step did not go through the compiler"
    generated = torch.cat(tokens, dim=1)
    assert_generates_like_reference(generated, greedy_reference(tiny_resnet_bk, prompt, 20), 6, min_distinct=6)
