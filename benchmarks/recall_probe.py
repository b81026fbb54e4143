"""The MQAR probes behind docs/resnet_bk.md section 7: which change to ResNet-BK's mixer lets it learn recall?

One MQAR point (vocabulary 128, 4 key-value pairs, length 64, d_model 64, 2 layers, 600 steps of batch 64, lr 3e-3),
trained and scored with ``hubtrain.evaluation.recall`` like the benchmark. Config options are passed as JSON; the
changes that are not options (they were measured, did not help, and so were not added) are applied to the mixer
here by the flags below, so every figure in the table can be made again::

    python benchmarks/recall_probe.py '{}'                                   # the default mixer
    python benchmarks/recall_probe.py '{"key_dim": 8, "feature_norm": "ward", "epsilon": 0.001}' --eta-low 0.0012
    python benchmarks/recall_probe.py '{"use_semiseparable": true, "low_rank": 16}'
    python benchmarks/recall_probe.py '{"key_dim": 8}' --conv 4             # a short causal convolution first
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn


class ConvThenLinear(nn.Module):
    """A depthwise causal convolution (Mamba's, width k) and SiLU in front of the mixer's input projection."""

    def __init__(self, linear: nn.Linear, d: int, k: int) -> None:
        super().__init__()
        self.linear, self.conv = linear, nn.Conv1d(d, d, k, groups=d, padding=k - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.silu(self.conv(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("options", help="ResNetBKConfig fields as JSON")
    p.add_argument("--conv", type=int, default=0, help="causal depthwise convolution of this width before the projection")
    p.add_argument("--raw-keys", choices=["both", "queries"], help="do not normalise keys and queries (or only queries)")
    p.add_argument("--eta-low", type=float, help="initialise eta log-spaced from this value to 1 (default ~0.06)")
    p.add_argument("--energy", type=float, nargs=2, help="initialise E spread over this range (default -1 1)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args()
    torch.set_num_threads(1)
    import hubtrain.models.resnet_bk.modeling_resnet_bk as modeling
    from hubtrain.evaluation.recall import MQAR, evaluate, train
    from hubtrain.models.resnet_bk import ResNetBKConfig

    Mixer = modeling.ResNetBKGreenMixer
    if args.conv:
        init = Mixer.__init__

        def with_conv(self, config, layer_idx):
            init(self, config, layer_idx)
            self.in_proj = ConvThenLinear(self.in_proj, config.d_model, args.conv)
        Mixer.__init__ = with_conv
    if args.raw_keys:
        def scanned_values(self, v, kq):
            H, P, K = self.num_channels, self.channel_dim, self.key_dim
            v = v.unflatten(-1, (H, P))
            k, q = kq.unflatten(-1, (2, H, K)).unbind(-3)
            k = k * K**-0.5 if args.raw_keys == "both" else F.normalize(k, dim=-1)
            return (k.unsqueeze(-1) * v.unsqueeze(-2)).flatten(-2), q
        Mixer.scanned_values = scanned_values
    if args.eta_low or args.energy:
        def initial_channel_parameters(self):
            c, H = self.config, self.num_channels
            energy = torch.linspace(*(args.energy or (-1.0, 1.0)), H)
            eta0 = torch.logspace(math.log10(args.eta_low or max(0.06, 1.2 * c.epsilon)), 0.0, H)
            return energy, torch.log(torch.expm1(eta0 - c.epsilon))
        Mixer.initial_channel_parameters = initial_channel_parameters
    task = MQAR(vocab=128, num_pairs=4)
    config = ResNetBKConfig(vocab_size=128, d_model=64, n_layers=2, num_channels=4, channel_dim=16, num_experts=2,
                            ffn_dim=128, **json.loads(args.options))
    t0 = time.time()
    lm = train(config, task, 64, steps=args.steps, batch_size=64, lr=args.lr)
    result = evaluate(lm.model, task, 64, examples=256)
    print(json.dumps({"options": json.loads(args.options), "conv": args.conv, "raw_keys": args.raw_keys,
                      "eta_low": args.eta_low, "energy": args.energy, "accuracy": round(result["accuracy"], 3),
                      "chance": result["chance"], "non_embedding": lm.model.num_parameters(exclude_embeddings=True),
                      "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
