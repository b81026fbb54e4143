"""The CLI fed a table of bad inputs (paths, files, flags, configs), each as a user would type it, in a subprocess:
every one must exit non-zero with one error line that names the bad value, print no traceback, and leave nothing
behind in the working folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

HUBTRAIN = str(Path(sys.executable).parent / "hubtrain")


@pytest.fixture(scope="module")
def material(tmp_path_factory, classifier, resnet_bk) -> Path:
    """Files the cases point at: good folders to misuse, and broken ones."""
    root = tmp_path_factory.mktemp("material")
    classifier.save_pretrained(root / "vision")
    resnet_bk.save_pretrained(root / "lm-no-tokenizer")
    (root / "empty-dir").mkdir()
    (root / "bad-json").mkdir()
    (root / "bad-json" / "config.json").write_text("{not json")
    truncated = root / "truncated"
    classifier.save_pretrained(truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    unknown = root / "unknown-task"
    classifier.save_pretrained(unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "hubtrain_task": "TimeMachine"}))
    pickled = root / "pickled"
    classifier.save_pretrained(pickled)
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")
    (root / "notes.txt").write_text("not a model")
    (root / "corrupt.pt").write_bytes(b"PK\x03\x04 this is no checkpoint")
    torch.save({"w": torch.zeros(3)}, root / "anonymous.pt")
    (root / "bad.yaml").write_text("model: [unclosed\n")
    (root / "zero-batch.yaml").write_text("model:\n  class_path: hubtrain.ImageClassifier\n  init_args:\n    backbone: test_resnet\n"
                                         "    num_classes: 10\n    pretrained: false\ndata:\n  class_path: hubtrain.ImageDataModule\n"
                                         "  init_args:\n    dataset_name: digits\n    batch_size: 0\n")
    (root / "unknown-class.yaml").write_text("model:\n  class_path: hubtrain.NoSuchTask\n")
    (root / "empty-corpus").mkdir()
    return root


# (case id, arguments with {m} for the material folder, what the error line must name)
CASES = [
    ("quickstart image-size 0", "quickstart --image-size 0", "'0'"),
    ("quickstart image-size text", "quickstart --image-size abc", "'abc'"),
    ("quickstart epochs 0", "quickstart --max-epochs 0", "'0'"),
    ("quickstart batch negative", "quickstart --batch-size -3", "'-3'"),
    ("quickstart lr 0", "quickstart --lr 0", "'0'"),
    ("quickstart lr nan", "quickstart --lr nan", "'nan'"),
    ("quickstart unknown backbone", "quickstart --backbone no_such_net_42 --max-epochs 1", "no_such_net_42"),
    ("quickstart unknown kind", "quickstart vision", "'vision'"),
    ("lm steps 0", "quickstart lm --max-steps 0", "'0'"),
    ("lm block text", "quickstart lm --block-size x", "'x'"),
    ("lm vocab negative", "quickstart lm --vocab-size -1", "'-1'"),
    ("lm missing data", "quickstart lm --data /no/such/corpus.txt --fast", "/no/such/corpus.txt"),
    ("lm empty data", "quickstart lm --data {m}/empty-corpus --fast", "empty-corpus"),
    ("export missing", "export /no/such/model", "/no/such/model"),
    ("export empty folder", "export {m}/empty-dir", "empty-dir"),
    ("export bad json", "export {m}/bad-json", "bad-json/config.json"),
    ("export truncated weights", "export {m}/truncated", "truncated/model.safetensors"),
    ("export unknown task", "export {m}/unknown-task", "TimeMachine"),
    ("export text file", "export {m}/notes.txt", "notes.txt"),
    ("export corrupt checkpoint", "export {m}/corrupt.pt", "corrupt.pt"),
    ("export anonymous weights", "export {m}/anonymous.pt", "anonymous.pt"),
    ("export unknown preset", "export {m}/anonymous.pt --model-size 7Q", "'7Q'"),
    ("export batch 0", "export {m}/vision --max-batch-size 0", "'0'"),
    ("export format", "export {m}/vision --format bogus", "'bogus'"),
    ("export tolerance", "export {m}/vision --tolerance -1", "'-1'"),
    ("export optimize", "export {m}/vision --optimize turbo", "'turbo'"),
    ("export seq len", "export {m}/vision --seq-lens 0", "'0'"),
    ("generate missing", "generate /no/such/lm", "/no/such/lm"),
    ("generate vision folder", "generate {m}/vision", "ImageClassifier"),
    ("generate no tokenizer", "generate {m}/lm-no-tokenizer", "lm-no-tokenizer"),
    ("generate temperature", "generate {m}/lm-no-tokenizer --temperature -1", "'-1'"),
    ("generate top-p", "generate {m}/lm-no-tokenizer --top-p 5", "'5'"),
    ("generate top-k", "generate {m}/lm-no-tokenizer --top-k 0", "'0'"),
    ("generate tokens", "generate {m}/lm-no-tokenizer --max-new-tokens 0", "'0'"),
    ("push nothing", "push", "--repo-id"),
    ("push bad repo id", "push {m}/vision --repo-id not_a_repo", "not_a_repo"),
    ("push missing folder", "push /no/such/folder --repo-id alice/x", "/no/such/folder"),
    ("push pickled", "push {m}/pickled --repo-id alice/x", "pytorch_model.bin"),
    ("push batch no dir", "push --batch --repo-prefix alice/x", "--checkpoint-dir"),
    ("push batch missing dir", "push --batch --checkpoint-dir /no/such/ckpts --repo-prefix alice/x", "/no/such/ckpts"),
    ("fit missing config", "fit --config /no/such/config.yaml", "/no/such/config.yaml"),
    ("fit malformed yaml", "fit --config {m}/bad.yaml", "bad.yaml"),
    ("fit zero batch", "fit --config {m}/zero-batch.yaml", "batch_size=0"),
    ("fit unknown class", "fit --config {m}/unknown-class.yaml", "NoSuchTask"),
    ("fit epochs text", "fit --trainer.max_epochs abc", "abc"),
    ("unknown command", "teleport", "'teleport'"),
]


def _run(case: tuple[str, str, str], material: Path, root: Path) -> tuple[str, subprocess.CompletedProcess, Path, str]:
    name, args, names = case
    work = root / name.replace(" ", "-")
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf-home"), "HUBTRAIN_CACHE": str(root / "cache"),
           "HF_TOKEN": "hf_BadInputsToken0123456789abcdefgh", "HF_ENDPOINT": "http://127.0.0.1:9"}
    argv = [a.replace("{m}", str(material)) for a in args.split()]
    result = subprocess.run([HUBTRAIN, *argv], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    return name, result, work, names


def test_at_least_forty_bad_inputs_each_fail_with_one_line_naming_the_value(material, tmp_path):
    assert len(CASES) >= 40
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: _run(c, material, tmp_path), CASES))
    problems = []
    for name, result, work, names in results:
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        leftovers = sorted(p.name for p in work.iterdir())
        if result.returncode == 0:
            problems.append(f"{name}: exit 0")
        elif "Traceback" in result.stderr:
            problems.append(f"{name}: traceback: {result.stderr[-600:]}")
        elif len(errors) != 1:
            problems.append(f"{name}: {len(errors)} error lines: {result.stderr[-600:]}")
        elif names not in errors[0]:
            problems.append(f"{name}: the error does not name {names!r}: {errors[0]}")
        elif leftovers:
            problems.append(f"{name}: left {leftovers} behind")
    assert not problems, "\n".join(problems)
