"""Why did the classifier say that? Saliency maps from captum: Grad-CAM on the backbone's last feature map and
integrated gradients on the input pixels, drawn over the image exactly as the model saw it.

``hubtrain explain FOLDER IMAGE`` writes one overlay PNG per method and prints the predicted class.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

EXPLAIN_EXTRA = "pip install 'hubtrain[explain]'"
METHODS = ("gradcam", "integrated_gradients")


def require_captum() -> Any:
    try:
        import captum.attr
    except ImportError:
        raise ImportError(f"hubtrain explain needs captum: {EXPLAIN_EXTRA}") from None
    return captum.attr


def last_feature_layer(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """The backbone's module that last outputs a spatial map ``(B, C, H, W)`` (H, W > 1) during a forward pass:
    Grad-CAM's usual layer (the last convolutional stage, before global pooling)."""
    found: list[nn.Module] = []
    backbone = getattr(model, "backbone", model)
    def record(module: nn.Module, _inputs: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == 4 and min(out.shape[-2:]) > 1:  # not a pooled (B, C, 1, 1)
            found.append(module)

    hooks = [m.register_forward_hook(record) for m in backbone.modules() if m is not backbone]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    if not found:
        raise ValueError(f"{type(backbone).__name__} gives no spatial feature map, so Grad-CAM has no layer to use; "
                         "use --methods integrated_gradients")
    return found[-1]


def attributions(model: nn.Module, images: torch.Tensor, target: int | Sequence[int], *,
                 methods: Sequence[str] = METHODS, layer: nn.Module | None = None, steps: int = 32) -> dict[str, torch.Tensor]:
    """``{method: (B, H, W) saliency}`` at the input's resolution, non-negative, for class ``target``.

    Grad-CAM: captum's ``LayerGradCam`` on ``layer`` (default :func:`last_feature_layer`), ReLU'd and upsampled
    bilinearly; integrated gradients: captum's ``IntegratedGradients`` from the all-zero input (the normalisation
    mean: a flat grey image), summed over channels, positive part (the pixels that speak for ``target``).
    """
    attr = require_captum()
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown explanation method(s) {unknown}; use {list(METHODS)}")
    model = model.eval()
    out: dict[str, torch.Tensor] = {}
    if "gradcam" in methods:
        layer = layer or last_feature_layer(model, images)
        cam = attr.LayerGradCam(model, layer).attribute(images, target=target, relu_attributions=True)
        out["gradcam"] = attr.LayerAttribution.interpolate(cam, tuple(images.shape[-2:]), interpolate_mode="bilinear")[:, 0].clamp_min(0).detach()
    if "integrated_gradients" in methods:
        ig = attr.IntegratedGradients(model).attribute(images, baselines=torch.zeros_like(images), target=target, n_steps=steps)
        out["integrated_gradients"] = ig.sum(dim=1).clamp_min(0).detach()  # evidence for the class, like Grad-CAM's ReLU
    return out


def overlay(pixels: torch.Tensor, saliency: torch.Tensor, alpha: float = 0.5) -> Any:
    """A PIL image: ``pixels`` (3, H, W) in [0, 1] with the saliency (H, W) drawn over it in matplotlib's inferno."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    s = saliency.float()
    s = (s - s.min()) / (s.max() - s.min()).clamp_min(1e-12)
    heat = colormaps["inferno"](s.cpu().numpy())[..., :3]
    base = pixels.permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    return Image.fromarray(((1 - alpha) * base + alpha * heat).clip(0, 1).__mul__(255).astype(np.uint8))


def explain_image(model: Any, image: Any, out_dir: str | os.PathLike, *, methods: Sequence[str] = METHODS,
                  target: int | None = None, steps: int = 32, stem: str = "image") -> dict[str, Any]:
    """Explain one PIL image: the predicted (or ``target``) class, and one overlay PNG per method in ``out_dir``."""
    from hubtrain.inference import save_png

    if getattr(model, "pipeline_tag", None) != "image-classification":
        raise ValueError(f"hubtrain explain works on image classifiers; this is a {type(model).__name__}")
    images = model.eval_transform()(image.convert("RGB")).unsqueeze(0).to(model.device)
    model = model.float().eval()
    images = images.contiguous()
    with torch.no_grad():
        probs = model.probabilities(model(images))[0]
    cls = int(probs.argmax()) if target is None else int(target)
    if not 0 <= cls < len(probs):
        raise ValueError(f"--target {target} is not a class index of this model (0..{len(probs) - 1})")
    maps = attributions(model, images.requires_grad_(False), cls, methods=methods, steps=steps)
    prep = model.preprocessing or model.backbone.data_config
    mean = torch.tensor(prep["mean"]).view(-1, 1, 1)
    std = torch.tensor(prep["std"]).view(-1, 1, 1)
    seen = images[0].detach().cpu() * std + mean  # what the model saw, back in [0, 1]
    files = {name: str(save_png(overlay(seen, m[0]), Path(out_dir) / f"{stem}.{name}.png")) for name, m in maps.items()}
    return {"label": model.class_names[cls], "class": cls, "score": round(float(probs[cls]), 6), "files": files}


def quadrant_shares(saliency: torch.Tensor) -> torch.Tensor:
    """The share of the total saliency in each quadrant of an (H, W) map: top-left, top-right, bottom-left,
    bottom-right (sums to 1)."""
    h, w = saliency.shape[-2] // 2, saliency.shape[-1] // 2
    s = saliency.float().clamp_min(0)
    quads = torch.stack([s[..., :h, :w].sum(), s[..., :h, w:].sum(), s[..., h:, :w].sum(), s[..., h:, w:].sum()])
    return quads / quads.sum().clamp_min(1e-12)


__all__ = ["attributions", "explain_image", "last_feature_layer", "overlay", "quadrant_shares"]
