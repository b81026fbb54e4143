"""Print a pip constraints file that pins the Hugging Face and Lightning stack to the lowest versions pyproject.toml
declares, so CI tests the declared lower bounds (a range that was never tested is a bug).

    python .ci/lower_bounds.py > constraints.txt && pip install -e ".[dev]" -c constraints.txt
"""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

STACK = ("transformers", "timm", "huggingface_hub", "pytorch-lightning", "torchmetrics", "safetensors", "tokenizers")


def lower_bounds(pyproject: Path) -> dict[str, str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    found = {}
    for dep in deps:
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*(.*)", dep)
        name, spec = m.group(1), m.group(2)
        norm = name.lower().replace("_", "-")
        for wanted in STACK:
            if norm == wanted.replace("_", "-"):
                low = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", spec)
                if not low:
                    sys.exit(f"{name} in pyproject.toml has no '>=' lower bound: declare one")
                found[wanted] = low.group(1)
    missing = set(STACK) - set(found)
    if missing:
        sys.exit(f"pyproject.toml does not declare {sorted(missing)}")
    return found


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    for name, version in lower_bounds(root / "pyproject.toml").items():
        print(f"{name}=={version}")
