"""The task registry is complete in any process: a saved folder loads by its ``hubtrain_task`` name in a fresh
Python that never imported the task's class, and ``import hubtrain`` stays light."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

FRESH_LOAD = """
import sys
from hubtrain.tasks.base import BaseTask
assert "hubtrain.tasks.classification" not in sys.modules  # nobody imported the class for us
model = BaseTask.from_pretrained(sys.argv[1])
import hubtrain
again = hubtrain.load(sys.argv[1])
import torch
x = torch.ones(1, 3, 32, 32)
with torch.no_grad():
    print(type(model).__name__, type(again).__name__, float(model(x).sum()))
"""


def test_a_saved_folder_loads_in_a_fresh_process_without_importing_its_class(tmp_path):
    from hubtrain.tasks.classification import ImageClassifier

    torch.manual_seed(0)
    model = ImageClassifier("test_resnet", num_classes=3, pretrained=False).eval()
    model.save_pretrained(tmp_path / "folder")
    result = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(tmp_path / "folder")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    name, name_again, total = result.stdout.split()
    with torch.no_grad():
        expected = float(model(torch.ones(1, 3, 32, 32)).sum())
    assert (name, name_again) == ("ImageClassifier", "ImageClassifier") and float(total) == pytest.approx(expected, abs=1e-5)


def test_registry_names_every_builtin_task_and_unknown_names_are_one_line_errors():
    from hubtrain.tasks import TASKS, task_class
    from hubtrain.tasks.base import BaseTask

    for name in TASKS:
        cls = task_class(name)
        assert cls.__name__ == name and issubclass(cls, BaseTask)
    with pytest.raises(ValueError, match=r"hubtrain_task='Nope' is not a known hubtrain task; hubtrain's tasks are \["):
        task_class("Nope")


def test_a_user_task_registers_itself():
    from hubtrain.tasks import task_class
    from hubtrain.tasks.base import BaseTask

    class MyTask(BaseTask):
        pass

    assert task_class("MyTask") is MyTask


def test_import_hubtrain_stays_light():
    code = "import sys, hubtrain; heavy = [m for m in ('torch', 'timm', 'transformers', 'pytorch_lightning') if m in sys.modules]; print(heavy)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and json.loads(result.stdout.replace("'", '"')) == []
