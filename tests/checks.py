"""Check functions shared by the tests and by ``tests/sensitivity`` (which proves that each one can fail).

Importable from any test as ``from checks import ...`` (``tests/conftest.py`` puts this folder on ``sys.path``).
Each check raises ``AssertionError`` with a message that says what was wrong.
"""
from __future__ import annotations

import re
from typing import Any

import torch

# a small Lightning metrics.csv (three epochs, train and validation rows) for card and curve tests
METRICS_CSV = """epoch,step,train/loss,val/loss,val/accuracy
0,9,1.05,,
0,9,,0.91,0.62
1,19,0.72,,
1,19,,0.55,0.81
2,29,0.41,,
2,29,,0.38,0.93
"""


def front_matter(readme: str) -> dict:
    """The YAML metadata block of a model card, parsed."""
    import yaml

    return yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", readme, re.S).group(1))


@torch.no_grad()
def greedy_reference(model: Any, input_ids: torch.Tensor, max_new_tokens: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy decoding by running the whole sequence again for every token: no cache, no ``generate``.

    Returns the prompt followed by the new tokens, like ``generate``. With ``attention_mask`` (left padding), the
    new tokens count as real.
    """
    ids = input_ids
    mask = attention_mask
    for _ in range(max_new_tokens):
        kwargs = {"use_cache": False}
        if mask is not None:
            kwargs["attention_mask"] = mask
        logits = model(input_ids=ids, **kwargs).logits[:, -1]
        nxt = logits.argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    return ids


@torch.no_grad()
def assert_context_dependent(model: Any, vocab_size: int, *, prompts: int = 16, prefix_len: int = 6,
                             last_token: int = 5, min_distinct: int = 3, seed: int = 1) -> None:
    """The model's greedy next token depends on more than the last token.

    ``prompts`` prompts share their last token and differ before it; their argmax next tokens must take at least
    ``min_distinct`` values. A model that ignores its context (a freshly initialised LM, or a generator that drops
    the cache) predicts the same token for all of them, and a cache-vs-no-cache comparison on it proves nothing.
    """
    gen = torch.Generator().manual_seed(seed)
    prefixes = torch.randint(0, vocab_size, (prompts, prefix_len), generator=gen)
    ids = torch.cat([prefixes, torch.full((prompts, 1), last_token)], dim=1)
    nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1)
    distinct = len(set(nxt.tolist()))
    assert distinct >= min_distinct, (
        f"degenerate reference: {prompts} prompts ending in token {last_token} give {distinct} distinct next "
        f"token(s) (need >= {min_distinct}); the model's continuation does not depend on its context"
    )


def assert_generates_like_reference(generated: Any, reference: Any, prompt_len: int, *, min_distinct: int = 3) -> None:
    """``generated`` (tokens, any array-like) equals the independent ``reference``, and the reference's
    continuation is not one repeated token."""
    generated, reference = torch.as_tensor(generated), torch.as_tensor(reference)
    new = reference[:, prompt_len:]
    distinct = len(set(new.flatten().tolist()))
    assert distinct >= min_distinct, f"degenerate reference continuation: only {distinct} distinct token(s)"
    assert generated.shape == reference.shape, f"shape {tuple(generated.shape)} != reference {tuple(reference.shape)}"
    bad = (generated != reference).any(dim=1).nonzero().flatten().tolist()
    assert not bad, f"rows {bad} differ from the uncached greedy reference: {generated[bad[0]].tolist()} vs {reference[bad[0]].tolist()}"


# A Python in which `import hubtrain` fails: what a user who never installed hubtrain has.
BLOCK_HUBTRAIN = """
import importlib.abc, sys
class _BlockHubtrain(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hubtrain" or name.startswith("hubtrain."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, _BlockHubtrain())
try:
    import hubtrain
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("hubtrain is importable: the test would prove nothing")
"""


def run_without_hubtrain(code: str, *args: Any, env: dict[str, str] | None = None, timeout: float = 300) -> Any:
    """Run ``code`` (with ``sys.argv[1:] = args``) in a fresh Python that cannot import hubtrain; return the
    completed process after asserting that it exited 0."""
    import os
    import subprocess
    import sys

    # one thread, as in the tests (`one_thread`): the same kernels on the same weights give identical outputs
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run([sys.executable, "-c", BLOCK_HUBTRAIN + code, *map(str, args)], capture_output=True,
                            text=True, env=full_env, timeout=timeout)
    assert result.returncode == 0, f"the script without hubtrain failed:\n{result.stderr[-3000:]}"
    return result
