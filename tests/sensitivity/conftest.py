"""The breakages, one fixture each. Each patches the library with ``monkeypatch`` for one test only, so the check
that guards the claim can be run on the broken code; nothing outlives the test.

- ``mixer_output_zeroed``: the Green's-function mixer adds nothing (no token mixing at all).
- ``cache_dropped``: every forward ignores the cache it is given, so decoding restarts from the new token.
- ``scan_first_position``: the scan computes every position as if it were the first (no hopping, no carried state).
- ``semiseparable_removed``, ``semiseparable_decay_removed``, ``birman_schwinger_removed``, ``prime_bump_removed``,
  ``act_removed``: that option's contribution is gone while its parameters and config stay.
- ``segmentation_head_constant``, ``detection_head_constant``: the heads see zeros instead of the features, so their
  output is the same for every image (still trainable: the best constant they can learn).
- ``onnx_optimiser_copies``: ``optimize_onnx_model`` copies the input file.
- ``auroc_given_logits``: the classifier hands its metrics the logits instead of probabilities.
- ``upload_drops_keys``: the checkpoint-to-safetensors conversion of an upload drops the second layer's weights.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

SCAN_MODULE = "hubtrain.models.resnet_bk.green_scan"  # the module; the package's `green_scan` is the function


@pytest.fixture
def mixer_output_zeroed(monkeypatch):
    from hubtrain.models.resnet_bk.modeling_resnet_bk import ResNetBKGreenMixer

    forward, step = ResNetBKGreenMixer.forward, ResNetBKGreenMixer.step

    def zeroed_forward(self, *args, **kwargs):
        out, phase, state = forward(self, *args, **kwargs)
        return out * 0.0, phase, state

    def zeroed_step(self, *args, **kwargs):
        out, phase = step(self, *args, **kwargs)
        return out * 0.0, phase

    monkeypatch.setattr(ResNetBKGreenMixer, "forward", zeroed_forward)
    monkeypatch.setattr(ResNetBKGreenMixer, "step", zeroed_step)


@pytest.fixture
def cache_dropped(monkeypatch):
    from hubtrain.models.resnet_bk import modeling_resnet_bk

    take_cache = modeling_resnet_bk.take_cache
    monkeypatch.setattr(modeling_resnet_bk, "take_cache", lambda cache, past, kwargs: take_cache(None, None, kwargs))


@pytest.fixture
def scan_first_position(monkeypatch):
    import hubtrain.models.resnet_bk as package
    from hubtrain.models.resnet_bk import modeling_resnet_bk

    scan_module = sys.modules[SCAN_MODULE]
    green_scan = scan_module.green_scan

    def first_position_scan(a, hop, z_re, z_im, u_re, u_im=None, chunk_size=None, *, initial=None, hop_in=None):
        # no coupling to the neighbours and nothing carried in: each position sees only itself
        return green_scan(a, torch.zeros_like(hop), z_re, z_im, u_re, u_im, chunk_size)

    for owner in (scan_module, package, modeling_resnet_bk):
        monkeypatch.setattr(owner, "green_scan", first_position_scan)


@pytest.fixture
def semiseparable_removed(monkeypatch):
    from hubtrain.models.resnet_bk import modeling_resnet_bk

    scan = modeling_resnet_bk.semiseparable_scan

    def nothing(q, k, v, state=None, chunk_size=64, log_decay=None):
        out, new_state = scan(q, k, v, state, chunk_size, log_decay)
        return torch.zeros_like(out), new_state

    monkeypatch.setattr(modeling_resnet_bk, "semiseparable_scan", nothing)


@pytest.fixture
def semiseparable_decay_removed(monkeypatch):
    """The semiseparable term runs undecayed: values written as they are, nothing forgotten."""
    from hubtrain.models.resnet_bk.modeling_resnet_bk import ResNetBKGreenMixer

    monkeypatch.setattr(ResNetBKGreenMixer, "semiseparable_decay", lambda self, x, v, mask: (v, None))


@pytest.fixture
def birman_schwinger_removed(monkeypatch):
    """The mixer runs as if use_birman_schwinger were off (no sqrt|V| sandwich, no Schatten scale)."""
    import copy

    from hubtrain.models.resnet_bk.modeling_resnet_bk import ResNetBKGreenMixer

    forward = ResNetBKGreenMixer.forward

    def without(self, *args, **kwargs):
        config = self.config
        self.config = copy.copy(config)
        self.config.use_birman_schwinger = False
        try:
            return forward(self, *args, **kwargs)
        finally:
            self.config = config

    monkeypatch.setattr(ResNetBKGreenMixer, "forward", without)


@pytest.fixture
def prime_bump_removed(monkeypatch):
    from hubtrain.models.resnet_bk import modeling_resnet_bk

    bump = modeling_resnet_bk.prime_bump_potential
    monkeypatch.setattr(modeling_resnet_bk, "prime_bump_potential", lambda positions, k_max: bump(positions, k_max) * 0)


@pytest.fixture
def act_removed(monkeypatch):
    """Halting is computed but never applied: every token is updated by every layer."""
    from hubtrain.models.resnet_bk.modeling_resnet_bk import _AdaptiveHalting

    update = _AdaptiveHalting.update

    def never_halts(self, i, h, new_h, halt_p):
        update(self, i, h, new_h, halt_p)  # keeps the statistics
        return new_h

    monkeypatch.setattr(_AdaptiveHalting, "update", never_halts)


def _constant_head(monkeypatch, cls):
    forward = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, features: forward(self, [torch.zeros_like(f) for f in features]))


@pytest.fixture
def segmentation_head_constant(monkeypatch):
    from hubtrain.tasks.heads.segmentation import DeepLabV3PlusHead, FCNHead

    _constant_head(monkeypatch, DeepLabV3PlusHead)
    _constant_head(monkeypatch, FCNHead)


@pytest.fixture
def detection_head_constant(monkeypatch):
    from hubtrain.tasks.heads.fcos import FCOSHead

    _constant_head(monkeypatch, FCOSHead)


@pytest.fixture
def onnx_optimiser_copies(monkeypatch):
    import hubtrain.export as export
    from hubtrain.export import onnx_export

    def copy(model_path, output_path=None, level="extended", **kwargs):
        output_path = Path(output_path)
        shutil.copyfile(model_path, output_path)
        return output_path

    monkeypatch.setattr(onnx_export, "optimize_onnx_model", copy)
    monkeypatch.setattr(export, "optimize_onnx_model", copy)


@pytest.fixture
def auroc_given_logits(monkeypatch):
    from hubtrain.tasks.classification import ImageClassifier

    monkeypatch.setattr(ImageClassifier, "probabilities", lambda self, logits: logits)


@pytest.fixture
def upload_drops_keys(monkeypatch):
    import hubtrain.artifacts as artifacts

    load = artifacts.load

    def load_dropping_keys(*args, **kwargs):
        model = load(*args, **kwargs)
        state_dict = type(model).state_dict

        def partial_state_dict(*a, **k):
            return {key: v for key, v in state_dict(model, *a, **k).items() if "layers.1." not in key}

        model.state_dict = partial_state_dict
        return model

    monkeypatch.setattr(artifacts, "load", load_dropping_keys)
