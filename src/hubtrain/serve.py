"""A live demo page for any saved folder, built with Gradio (the convention of Hugging Face Spaces).

Classifiers show the top-5 labels as bars, segmentors a mask overlay and the pixel share per class, detectors the
image with its boxes drawn; language models stream text with temperature, top-p and max-tokens controls. The
predictions come from the same task methods as ``hubtrain predict`` (``predict_images`` / ``predict_texts``).
:func:`export_space` writes ``app.py`` + ``requirements.txt`` (and the model folder) so the same page runs as a Space.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from hubtrain.utils import atomic_dir

SERVE_EXTRA = "pip install 'hubtrain[serve]'"
DEFAULT_HOST = "127.0.0.1"


def require_gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine unless the user shares
    try:
        import gradio
    except ImportError:
        raise ImportError(f"hubtrain serve needs gradio: {SERVE_EXTRA}") from None
    return gradio


def build_demo(model_or_folder: Any, *, title: str | None = None, trust_remote_code: bool = False) -> Any:
    """The ``gradio.Blocks`` page for a task (or a folder / repo id, loaded through ``hubtrain.load``)."""
    gr = require_gradio()
    from hubtrain.inference import is_text_model, load_for_prediction

    if isinstance(model_or_folder, (str, os.PathLike)):
        title = title or Path(model_or_folder).name
        model = load_for_prediction(model_or_folder, trust_remote_code=trust_remote_code)
    else:
        model = model_or_folder
    title = title or type(model).__name__
    kind = getattr(model, "pipeline_tag", None)
    with gr.Blocks(title=f"{title} - hubtrain") as demo:
        gr.Markdown(f"# {title}\n`{type(model).__name__}` ({kind}), served by hubtrain")
        if is_text_model(model):
            _text_page(gr, model)
        else:
            _image_page(gr, model, kind)
    return demo


def _image_page(gr: Any, model: Any, kind: str | None) -> None:
    from hubtrain.inference import draw_detections, overlay_mask

    def run(image: Any) -> Any:
        if image is None:
            raise gr.Error("upload an image first")
        (record,) = model.predict_images([image.convert("RGB")], top_k=5)
        if kind == "image-segmentation":
            return overlay_mask(image, record["mask"]), record["class_share"]
        if kind == "object-detection":
            return draw_detections(image, record["detections"]), record["detections"]
        return {item["label"]: item["score"] for item in record["labels"]}

    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="image", elem_id="input-image", height=320)
            button = gr.Button("Predict", variant="primary", elem_id="predict")
        with gr.Column():
            if kind == "image-segmentation":
                outputs = [gr.Image(type="pil", label="mask overlay", elem_id="overlay"),
                           gr.Label(label="pixel share per class", elem_id="prediction")]
            elif kind == "object-detection":
                outputs = [gr.Image(type="pil", label="detections", elem_id="overlay"),
                           gr.JSON(label="boxes (x0, y0, x1, y1 in the image's pixels)", elem_id="prediction")]
            else:
                outputs = [gr.Label(num_top_classes=5, label="top-5", elem_id="prediction")]
    button.click(run, inputs=image, outputs=outputs)


def _text_page(gr: Any, model: Any) -> None:
    def run(prompt: str, temperature: float, top_p: float, max_tokens: float) -> Iterator[str]:
        yield from stream_text(model, prompt, temperature=float(temperature), top_p=float(top_p),
                               max_new_tokens=int(max_tokens))

    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="prompt", value="def ", lines=4, elem_id="prompt")
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0 = greedy)", elem_id="temperature")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p", elem_id="top-p")
            max_tokens = gr.Slider(1, 512, value=64, step=1, label="max new tokens", elem_id="max-tokens")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Column():
            output = gr.Textbox(label="generated", lines=12, elem_id="generated")
    button.click(run, inputs=[prompt, temperature, top_p, max_tokens], outputs=output)


def stream_text(model: Any, prompt: str, **generation: Any) -> Iterator[str]:
    """The continuation of ``prompt`` so far, after each new token (``transformers``' ``TextIteratorStreamer``)."""
    from threading import Thread

    import torch
    from transformers import TextIteratorStreamer

    inputs = model.encode_prompt(prompt)
    streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = model.generation_kwargs(**generation)

    def work() -> None:
        with torch.no_grad():
            model.model.generate(**inputs, streamer=streamer, **kwargs)

    thread = Thread(target=work, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    thread.join()


SPACE_APP = '''"""A Hugging Face Space for {title}: the page `hubtrain serve` shows, written by `hubtrain serve --export-space`."""
from hubtrain.serve import build_demo

demo = build_demo({source!r}, title={title!r})

if __name__ == "__main__":
    demo.launch()
'''


def export_space(folder: str | os.PathLike, out_dir: str | os.PathLike, *, model_id: str | None = None) -> Path:
    """Write a Space: ``app.py``, ``requirements.txt``, a Space README and, unless ``model_id`` names the Hub repo
    the app should load, a copy of the model folder in ``model/``. Written atomically."""
    from hubtrain import __version__
    from hubtrain.artifacts import check_folder

    folder, out_dir = Path(folder), Path(out_dir)
    check_folder(folder)
    title = (model_id or folder.resolve().name).split("/")[-1]
    with atomic_dir(out_dir) as tmp:
        if model_id is None:
            shutil.copytree(folder, tmp / "model", ignore=shutil.ignore_patterns(".*"))
        (tmp / "app.py").write_text(SPACE_APP.format(source=model_id or "model", title=title), encoding="utf-8")
        (tmp / "requirements.txt").write_text(f"hubtrain[serve]=={__version__}\n", encoding="utf-8")
        (tmp / "README.md").write_text(
            f"---\ntitle: {title}\nsdk: gradio\napp_file: app.py\n---\n\nThe demo page of `{title}`, from "
            "`hubtrain serve --export-space`. Run it locally with `python app.py`.\n", encoding="utf-8")
    return out_dir


def launch(demo: Any, *, host: str = DEFAULT_HOST, port: int | None = None, share: bool = False, block: bool = True) -> str:
    """Start the page on ``host:port`` (never shared unless ``share`` is True); return its local URL."""
    demo.queue()
    _, url, share_url = demo.launch(server_name=host, server_port=port, share=bool(share), prevent_thread_lock=True,
                            quiet=True, inbrowser=False)
    print(f"hubtrain serve: {url}{'  (shared publicly: ' + share_url + ')' if share_url else ''}", flush=True)
    if block:
        demo.block_thread()
    return url


__all__ = ["build_demo", "export_space", "launch", "stream_text"]
