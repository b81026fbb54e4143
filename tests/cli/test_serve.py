"""``hubtrain serve``: the demo page in a real headless Chromium shows what ``hubtrain predict`` computes, for a
classifier and a language model; it binds to 127.0.0.1, never shares by itself, and exports a Space."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from browser import chromium, classify_in_page, generate_in_page, served
from hubtrain.cli import main


def _predict(folder, tmp_path, *inputs: str, extra: tuple[str, ...] = ()) -> list[dict]:
    out = tmp_path / "predict.jsonl"
    assert main(["predict", str(folder), *inputs, "--output", str(out), "--no-progress", *extra]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_classifier_page_shows_the_top_5_that_predict_computes(digits_folder, tmp_path):
    from hubtrain.data.digits import load_digits_images

    images, _ = load_digits_images()
    image = tmp_path / "digit.png"
    images[7].save(image)
    (expected,) = _predict(digits_folder, tmp_path, str(image))
    with chromium() as driver, served(digits_folder) as url:
        assert url.startswith("http://127.0.0.1:")
        shown = classify_in_page(driver, url, image)
        driver.save_screenshot(str(tmp_path / "classifier-page.png"))
    assert [label for label, _ in shown] == [x["label"] for x in expected["labels"]]
    assert [score for _, score in shown] == pytest.approx([x["score"] for x in expected["labels"]], abs=1e-5)


def test_language_model_page_streams_what_predict_generates(lm_folder, tmp_path):
    (expected,) = _predict(lm_folder, tmp_path, "def main(", extra=("--max-new-tokens", "12"))
    with chromium() as driver, served(lm_folder) as url:
        shown = generate_in_page(driver, url, "def main(", max_tokens=12)
    assert shown == expected["generated"] and shown


def test_share_is_off_and_the_default_host_is_local(monkeypatch):
    from hubtrain.cli import build_parser

    args = build_parser().parse_args(["serve", "folder"])
    assert args.host == "127.0.0.1" and args.share is False
    calls = {}

    class Demo:
        def queue(self):
            pass

        def launch(self, **kwargs):
            calls.update(kwargs)
            return None, "http://127.0.0.1:7860/", None

    from hubtrain.serve import launch

    assert launch(Demo(), block=False) == "http://127.0.0.1:7860/"
    assert calls["share"] is False and calls["server_name"] == "127.0.0.1"


def test_export_space_writes_an_app_that_builds_the_same_page(digits_folder, tmp_path):
    pytest.importorskip("gradio")
    space = tmp_path / "space"
    assert main(["serve", str(digits_folder), "--export-space", str(space)]) == 0
    assert {"app.py", "requirements.txt", "README.md", "model"} <= {p.name for p in space.iterdir()}
    assert "hubtrain[serve]" in (space / "requirements.txt").read_text()
    code = "import app, gradio; assert isinstance(app.demo, gradio.Blocks); print(app.demo.title)"
    result = subprocess.run([sys.executable, "-c", code], cwd=space, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert digits_folder.name in result.stdout


EXTRAS = [("serve", "gradio", "serve"), ("explain", "captum", "explain"), ("export", "onnx", "onnx")]


def _argv(command: str, folder, tmp_path) -> list[str]:
    return {"serve": ["serve", str(folder)], "explain": ["explain", str(folder), str(tmp_path / "x.png")],
            "export": ["export", str(folder), "--format", "onnx", "--quantize", "int8", "--output-dir",
                       str(tmp_path / "export")]}[command]


@pytest.mark.parametrize("command, module, extra", EXTRAS)
def test_missing_extra_is_one_line_naming_it(command, module, extra, digits_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # `import gradio` / `import captum` / `import onnx` now fails
    if module == "captum":
        monkeypatch.setitem(sys.modules, "captum.attr", None)
    assert main(_argv(command, digits_folder, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"pip install 'hubtrain[{extra}]'" in err, err


@pytest.mark.parametrize("command, module, extra", EXTRAS)
def test_missing_extra_in_a_python_without_it(command, module, extra, digits_folder, tmp_path):
    """As a user who installed hubtrain without the extra sees it: the console script in a fresh Python in which
    importing the extra's package fails as an absent one does (a module of that name, first on PYTHONPATH, that
    raises ModuleNotFoundError); exit status 2 and one line on stderr, nothing else."""
    import os

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / f"{module}.py").write_text(f"raise ModuleNotFoundError(\"No module named '{module}'\", name={module!r})\n")
    hubtrain = str(Path(sys.executable).parent / "hubtrain")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(blocked)}
    result = subprocess.run([hubtrain, *_argv(command, digits_folder, tmp_path)], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'hubtrain[{extra}]'" in lines[0], result.stderr[-2000:]
