"""Run the Python blocks of a Markdown document as tests: extract them, substitute, execute them like a notebook.

Shared by ``tests/compat/test_seed_examples.py`` (the seed document) and ``tests/docs/test_docs_blocks.py``
(README.md and docs/). Importable from any test as ``from doc_blocks import ...`` (``tests/conftest.py`` puts this
folder on ``sys.path``).

- :func:`python_blocks` reads the ```` ```python ```` blocks of a document, in order, when the test runs.
- :func:`substitute` applies a test's substitutions to a block; each one must still match, so a document edit that
  invalidates a substitution fails loudly instead of silently running something else.
- :func:`run_block` executes a block in a namespace shared by the document's blocks; tracebacks show the block's
  own lines under the name ``<document block N>``.
"""
from __future__ import annotations

import linecache
import re
from pathlib import Path
from typing import Any, Sequence

PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", flags=re.S)

#: ``(old, new)`` or ``(old, new, reason)``: ``old`` is a string (every occurrence is replaced), a compiled
#: pattern (every match), or ``""`` to put ``new`` in front of the block.
Substitution = Sequence[Any]


def python_blocks(document: str | Path) -> list[str]:
    """The code of every ```` ```python ```` block of ``document`` (a path), in order."""
    return PYTHON_BLOCK.findall(Path(document).read_text(encoding="utf-8"))


def substitute(code: str, substitutions: Sequence[Substitution], where: str = "the document's code") -> str:
    """``code`` with ``substitutions`` applied in order; an ``old`` that no longer matches is an AssertionError."""
    for old, new, *_reason in substitutions:
        if old == "":
            code = new + code
        elif isinstance(old, re.Pattern):
            code, n = old.subn(new, code)
            assert n, f"substitution {old.pattern!r} no longer matches {where}; update the test"
        else:
            assert old in code, f"substitution {old!r} no longer matches {where}; update the test"
            code = code.replace(old, new)
    return code


def run_block(code: str, namespace: dict[str, Any], filename: str) -> dict[str, Any]:
    """Execute ``code`` in ``namespace`` (shared by a document's blocks) and return the namespace.

    ``filename`` (e.g. ``"<docs/hub.md block 0>"``) names the block in tracebacks, which show its lines.
    """
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    exec(compile(code, filename, "exec"), namespace)
    return namespace
