r"""The MQAR probes behind docs/resnet_bk.md section 7: which change to ResNet-BK's mixer lets it learn recall?

One MQAR point (vocabulary 128, 4 key-value pairs, length 64, d_model 64, 2 layers, 600 steps of batch 64, lr 3e-3),
or another task of the suite (``--task``), trained and scored with ``hubtrain.evaluation.recall`` like the
benchmark. Config options are passed as JSON; the changes that are not options (measured and not added, or, for the
band edge with a lead, measured here before it became the option ``chain="lead"``) are applied to the mixer by the
flags below, so every figure in the table can be made again::

    python benchmarks/recall_probe.py '{}'                                   # the default mixer
    python benchmarks/recall_probe.py '{"key_dim": 8, "feature_norm": "ward", "epsilon": 0.001}' --eta-low 0.0012
    python benchmarks/recall_probe.py '{"use_semiseparable": true, "low_rank": 16}'
    python benchmarks/recall_probe.py '{"key_dim": 8}' --conv 4             # a short causal convolution first
    python benchmarks/recall_probe.py '{"key_dim": 8}' --strip-phase        # |G[i, j]| instead of G[i, j]
    python benchmarks/recall_probe.py '{"use_semiseparable": true, "low_rank": 16, "epsilon": 0.001}' \
        --eta-low 0.0012 --decay-semiseparable 0 --seed 1                   # q.k weighted by channel 0's transmission
    python benchmarks/recall_probe.py '{"key_dim": 8, "epsilon": 0.001}' --eta-low 0.0012 --report-transmission
    python benchmarks/recall_probe.py '{"key_dim": 8}' --selective-absorption  # eta per token, read out / sqrt(Im g)
    python benchmarks/recall_probe.py '{"absorption": "token"}'              # the same eta per token, as the option
    python benchmarks/recall_probe.py '{"key_dim": 8, "epsilon": 1e-7}' --eta-low 1e-6 --energy 1 1 \
        --clean-chain both --lead 0.5 --raw-keys both --freeze-channels --unit-feature-scale  # band edge + lead: recalls
    python benchmarks/recall_probe.py '{"chain": "lead", "key_dim": 8}'      # the same, as the shipped option
    python benchmarks/recall_probe.py '{"use_semiseparable": true, "low_rank": 16, "semiseparable_decay_heads": 4}' \
        --eval-lengths 64 256 1024 4096                                     # the decayed term, scored at 64x too
    python benchmarks/recall_probe.py '{}' --peer mamba --eval-lengths 64 256 1024 4096  # Mamba, the same way
    python benchmarks/recall_probe.py '{"use_semiseparable": true, "low_rank": 16, "semiseparable_decay_heads": 4}' \
        --ss-conv 4 --ss-conv-identity --ss-norm --seed 1                   # the term's q, k, v convolved, read normalised
    python benchmarks/recall_probe.py '{"use_semiseparable": true, "low_rank": 16, "semiseparable_decay_heads": 4}' \
        --ss-wide 128 128 --ss-chunk 8 --lr 1e-2                            # 128 values, a decay per value channel
    python benchmarks/recall_probe.py '{"use_semiseparable": true, "low_rank": 16, "semiseparable_decay_heads": 4}' \
        --no-chain                                                          # the term alone: the chain's features off
    python benchmarks/recall_probe.py '{"use_semiseparable": true, "low_rank": 16, "semiseparable_value_dim": 128, \
        "semiseparable_decay_heads": 128, "semiseparable_conv_width": 4, "ffn_dim": 14}' --task induction_heads \
        --batch 32 --steps 3000 --lr 1e-2 --eval-lengths 64 256 1024 4096  # induction heads, scored at 64x
    python benchmarks/recall_probe.py '{"use_semiseparable": true, "low_rank": 16, "semiseparable_value_dim": 128, \
        "semiseparable_decay_heads": 128, "semiseparable_conv_width": 4, "semiseparable_decay_activation": "relu", \
        "ffn_dim": 14}' --task induction_heads --batch 32 --steps 3000 --lr 1e-2 --eval-lengths 64 256 1024 4096 \
        --seed 2                                                            # the same with decays that can hold
    python benchmarks/recall_probe.py '{"use_semiseparable": true, "low_rank": 16, "semiseparable_value_dim": 128, \
        "semiseparable_decay_heads": 128, "semiseparable_conv_width": 4, "semiseparable_decay_activation": "relu", \
        "ffn_dim": 14}' --task passkey --length 256 --batch 8 --steps 3000 --lr 1e-2 \
        --eval-lengths 256 1024 4096 16384 --eval-examples 64              # passkey, exact per depth, to 64x
    python benchmarks/recall_probe.py '{"use_semiseparable": true, "low_rank": 16, "semiseparable_value_dim": 128, \
        "semiseparable_decay_heads": 128, "semiseparable_conv_width": 4, "semiseparable_decay_activation": "relu", \
        "ffn_dim": 14}' --task passkey --length 1024 --batch 4 --steps 3000 --lr 1e-2 --log-gap 0.5 \
        --eval-lengths 1024 4096 16384 32768 --eval-examples 64            # half the keys near the question
    python benchmarks/recall_probe.py '{"use_semiseparable": true, "low_rank": 16, "semiseparable_value_dim": 128, \
        "semiseparable_decay_heads": 128, "semiseparable_conv_width": 4, "semiseparable_decay_activation": "relu", \
        "ffn_dim": 14}' --task selective_copying --length 256 --batch 8 --steps 3000 --lr 1e-2 --log-window 0.5 \
        --eval-lengths 256 1024 4096 16384                                  # half the rows packed, half spread
    python benchmarks/recall_probe.py '<the same shape>' --task selective_copying --length 256 --log-window 0.5 \
        --eval-lengths 256 --load DIR --per-answer   # a run saved with --save DIR, scored per answer and spacing
    python benchmarks/recall_probe.py '<the same shape>' --task selective_copying --length 256 --batch 8 --steps 3000 \
        --lr 1e-2 --log-window 0.5 --eval-lengths 256 1024 4096 16384 --curriculum 4 8 16  # 4, then 8, then 16 tokens

The transmission flags (--strip-phase, --decay-semiseparable, --smooth-transmission) rebuild the scan's output
from G[i, j] = g_j prod_{j<l<=i} (-t_{l-1} g_l) as a dense (N x N) kernel: fine at length 64, for probing only.
"""
from __future__ import annotations

import argparse
import dataclasses
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


class LinearThenConv(nn.Module):
    """The semiseparable term's projection followed by a depthwise causal convolution (width k) of its q, k and v, as
    Mamba convolves x, B and C and GLA / DeltaNet convolve q, k and v: a key and the value next to it meet in one
    position before the term writes them."""

    def __init__(self, linear: nn.Linear, k: int, silu: bool, identity: bool, only_keys: bool) -> None:
        super().__init__()
        c = linear.out_features
        self.linear, self.conv, self.silu = linear, nn.Conv1d(c, c, k, groups=c, padding=k - 1), silu
        self.identity = identity
        self.only_keys = only_keys  # convolve the keys k (the middle third) and leave q and v as projected

    @torch.no_grad()
    def initialise(self) -> None:
        """Called after the model's own initialisation (which would draw the taps with std 0.02): the identity (last
        tap 1, the others 0; the term starts as without the convolution, as conv_width does), or PyTorch's default."""
        if self.identity:
            self.conv.weight.zero_()
            self.conv.weight[..., -1] = 1.0
            self.conv.bias.zero_()
        else:
            self.conv.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        out = self.conv(z.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)
        out = F.silu(out) if self.silu else out
        if self.only_keys:
            r = z.shape[-1] // 3
            out = torch.cat([z[..., :r], out[..., r: 2 * r], z[..., 2 * r:]], -1)
        return out


class CleanChain(nn.Module):
    """The mixer's input projection with the potential (and the hopping) taken off the tokens: a_raw = 0, so a = 0
    (and t_raw = 0, so t = 1/2), a chain without disorder."""

    def __init__(self, linear: nn.Linear, num_channels: int, hopping: bool) -> None:
        super().__init__()
        self.linear, self.fixed = linear, num_channels * (2 if hopping else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return torch.cat([torch.zeros_like(out[..., : self.fixed]), out[..., self.fixed:]], -1)


class ScaledHopping(nn.Module):
    """The mixer's input projection with the hopping scaled into (0, s): t = s * sigmoid(W_t x), written back as the
    logit the mixer's sigmoid turns into it. With s = 1/2 and E = 1 = 2 max t every token sits at or above the band's
    top edge, where -t g > 0: the chain carries a value without a phase and the hopping gates how much it keeps."""

    def __init__(self, linear: nn.Linear, num_channels: int, scale: float) -> None:
        super().__init__()
        self.linear, self.num_channels, self.scale = linear, num_channels, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        H = self.num_channels
        t = self.scale * torch.sigmoid(out[..., H: 2 * H])
        return torch.cat([out[..., :H], torch.log(t) - torch.log1p(-t), out[..., 2 * H:]], -1)


def report_transmission(modeling, config, task) -> None:
    """|G[i, 0]| per layer, channel and distance i, over 16 MQAR rows, with the potential and hopping the untrained
    model computes from them: how much of a value the scan still carries, and how much that depends on the content."""
    from hubtrain.models.resnet_bk import ResNetBKForCausalLM

    torch.manual_seed(0)
    model = ResNetBKForCausalLM(config).eval()
    scan, calls = modeling.green_scan, []

    def spy(a, hop, z_re, z_im, u, *rest, **kwargs):
        calls.append((a, hop, z_re, z_im))
        return scan(a, hop, z_re, z_im, u, *rest, **kwargs)
    modeling.green_scan = spy
    with torch.no_grad():
        model(input_ids=task.sample(16, 64, 0)[0])
        for layer, (a, hop, z_re, z_im) in enumerate(calls):
            impulse = torch.zeros(*a.shape, 1)
            impulse[:, 0] = 1.0
            _, _, y_re, y_im = scan(a, hop, z_re, z_im, impulse)
            weight = torch.sqrt(y_re**2 + y_im**2)[..., 0]  # (rows, i, channel)
            for h, eta in enumerate(z_im.tolist()):
                cells = [f"{d}: {weight[:, d, h].min():.3g} / {weight[:, d, h].median():.3g} / {weight[:, d, h].max():.3g}"
                         for d in (1, 8, 32, 63)]
                print(f"layer {layer} channel {h} (eta {eta:.3g}) |G[i, 0]| min / median / max at i = " + ", ".join(cells))


def per_answer(model: nn.Module, task, n: int, examples: int) -> dict[str, list[float]]:
    """Selective copying at length ``n``: the accuracy of each answer (the 1st .. ``num_tokens``-th data token), with
    the data packed into the last ``w`` positions before the separator, for ``w`` of 1, 2, 4 and 8 x ``num_tokens``,
    and spread over the whole row ("all"): where in the order, and at which spacing, a model loses the copy."""
    from hubtrain.evaluation.recall import predict

    M, out = task.num_tokens, {}
    for w in (M, 2 * M, 4 * M, 8 * M, None):
        ids, labels = dataclasses.replace(task, window=w, log_window=0.0).sample(examples, n, seed=10_000)
        pred = predict(model, ids)
        # pred[:, j] predicts token j + 1: the a-th answer sits at a - M in labels and is predicted at a - M in pred
        out[str(w or "all")] = [round(float((pred[:, a - M] == labels[:, a - M]).float().mean()), 2) for a in range(M)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("options", help="ResNetBKConfig fields as JSON")
    p.add_argument("--conv", type=int, default=0, help="causal depthwise convolution of this width before the projection")
    p.add_argument("--raw-keys", choices=["both", "queries"], help="do not normalise keys and queries (or only queries)")
    p.add_argument("--eta-low", type=float, help="initialise eta log-spaced from this value to 1 (default ~0.06)")
    p.add_argument("--energy", type=float, nargs=2, help="initialise E spread over this range (default -1 1)")
    p.add_argument("--strip-phase", action="store_true",
                   help="apply |G[i, j]| exp(i arg g_j) instead of G[i, j] to the values: the resolvent's decay without "
                        "the phase it gathers on the way from j to i")
    p.add_argument("--decay-semiseparable", type=int, metavar="CHANNEL",
                   help="weight the semiseparable term's scores q_i.k_j by the transmission prod_{j<l<=i} |t_{l-1} g_l| "
                        "of this Green's-function channel of the same layer (implies --strip-phase)")
    p.add_argument("--smooth-transmission", action="store_true",
                   help="replace each factor |t_{l-1} g_l| of the transmission by its mean over the sequence: the same "
                        "average decay without the token-to-token fluctuation; the mean looks ahead, so this is a diagnostic, "
                        "not a causal model (implies --strip-phase)")
    p.add_argument("--report-transmission", action="store_true",
                   help="print |G[i, 0]| of every layer's channels at initialisation on 16 MQAR rows (the weight a value "
                        "at the first position has at position i: min, median and max over the rows), then exit")
    p.add_argument("--clean-chain", choices=["potential", "both"],
                   help="take the potential (a = 0) or both potential and hopping (a = 0, t = 1/2) off the tokens")
    p.add_argument("--hop-scale", type=float, help="hopping t = HOP_SCALE * sigmoid(W_t x) instead of sigmoid(W_t x)")
    p.add_argument("--hop-bias", type=float, help="initialise the bias of W_t x to this value (default 0: t = scale / 2)")
    p.add_argument("--unit-feature-scale", action="store_true",
                   help="feed y to the output projection unscaled (no eta or ward factor; unbounded as eta -> 0)")
    p.add_argument("--selective-absorption", action="store_true",
                   help="absorption per token and channel, eta_ih = epsilon + softplus(rho_h + w_h.x_i) (Mamba's Delta in "
                        "the resolvent's terms), values written with sqrt(eta_j) and y read out divided by sqrt(Im g_i): "
                        "sum_j eta_j |G[i, j]|^2 = Im g_i (Ward identity with Z = E + i diag(eta)), so the read-out is "
                        "bounded by the value norm and normalised by the length actually remembered; sequential scan")
    p.add_argument("--lead", type=float, metavar="T",
                   help="attach a clean semi-infinite chain (hopping T, no potential) to the left of position 1: "
                        "the scan starts from its surface Green's function g* = (-z + sqrt(z^2 - 4 t^2)) / (2 t^2) "
                        "(Im g* > 0) instead of from nothing, so the first positions are not a boundary; sequential scan")
    p.add_argument("--freeze-channels", action="store_true",
                   help="keep every channel's energy E and absorption eta at their initial values (not trained)")
    p.add_argument("--ss-conv", type=int, default=0, metavar="W",
                   help="causal depthwise convolution of width W over the semiseparable term's q, k and v")
    p.add_argument("--ss-conv-silu", action="store_true", help="SiLU after --ss-conv, as Mamba's")
    p.add_argument("--ss-conv-identity", action="store_true", help="start --ss-conv as the identity (last tap 1)")
    p.add_argument("--ss-conv-keys", action="store_true", help="--ss-conv on the keys only")
    p.add_argument("--ss-norm", action="store_true",
                   help="divide every decay head's output of the semiseparable term by its RMS (Mamba-2's and RetNet's "
                        "normalised read-out): the term's scale no longer depends on how much a head writes")
    p.add_argument("--ss-mass-norm", action="store_true",
                   help="divide every decay head's read by the weight it has written so far, 1 - prod_j gamma_j (the "
                        "sum's weights then add to 1 from the first token, as Adam corrects its averages): a head that "
                        "forgets slowly reads at the same scale at position 64 as at 4,096")
    p.add_argument("--ss-dt", type=float, nargs=2, metavar=("LO", "HI"),
                   help="initialise the decay heads' delta log-spaced over [LO, HI] (default 0.001 0.1)")
    p.add_argument("--ss-write-one", type=float, metavar="DMIN",
                   help="write k v^T with weight 1 instead of 1 - gamma, with delta = DMIN + softplus(.), so every sum "
                        "stays below max |k v^T| / (1 - exp(-DMIN))")
    p.add_argument("--ss-wide", type=int, nargs=2, metavar=("S", "H"),
                   help="the decayed term with S value dims (instead of low_rank) and H decay heads: H = S decays per "
                        "value channel, Mamba's form (state low_rank x S)")
    p.add_argument("--ss-chunk", type=int, default=64, metavar="L",
                   help="chunk length of --ss-wide's scan (the same sums; 8 is ~6x faster at 128 heads)")
    p.add_argument("--no-chain", action="store_true",
                   help="the Green chain's features zeroed and frozen: the semiseparable term alone (a diagnosis)")
    p.add_argument("--pairs", type=int, default=4, help="key-value pairs per row (another point of recall.py's grid)")
    p.add_argument("--length", type=int, default=64, help="training length (another point of recall.py's grid)")
    p.add_argument("--eval-lengths", type=int, nargs="+", metavar="N",
                   help="score the trained model at these sequence lengths (trained at --length; longer rows put the same "
                        "pairs first and spread the queries over more filler, so they test how long the pairs are kept)")
    p.add_argument("--peer", choices=["mamba", "gpt2"],
                   help="train this peer instead, sized as benchmarks/recall.py sizes it (OPTIONS then sets nothing)")
    p.add_argument("--task", choices=["mqar", "induction_heads", "selective_copying", "passkey"], default="mqar",
                   help="the suite's task to train and score (--pairs sets MQAR only; the others at their defaults)")
    p.add_argument("--batch", type=int, default=64, help="training batch size")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, metavar="NORM",
                   help="clip the gradient's norm to NORM (default: CausalLMTask's grad_clip, 1.0; 0 turns it off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the training examples")
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.5, 1.0],
                   help="passkey: score the exact 5-digit accuracy at these depths too (trained at random depths)")
    p.add_argument("--log-gap", type=float, default=0.0, metavar="SHARE",
                   help="passkey and induction heads: train with this share of keys (first triggers) at a log-uniform "
                        "distance from the question (Passkey.log_gap, InductionHeads.log_gap)")
    p.add_argument("--log-window", type=float, default=0.0, metavar="SHARE",
                   help="selective copying: train with this share of rows packed into a log-uniform window "
                        "(SelectiveCopying.log_window): data both tight and spread wide at one length")
    p.add_argument("--eval-window", type=int, metavar="W",
                   help="selective copying: also score every length with the data in the last W positions before the "
                        "separator (SelectiveCopying.window): as dense as at the training length, behind long filler")
    p.add_argument("--eval-examples", type=int, default=256, help="held-out examples per scored length (and depth)")
    p.add_argument("--save", metavar="DIR", help="save the trained model here (save_pretrained) before scoring it, to "
                   "score it again later; reloads as trained only without the flags that patch the mixer")
    p.add_argument("--load", metavar="DIR", help="score a model saved with --save instead of training one")
    p.add_argument("--curriculum", type=int, nargs="+", metavar="M",
                   help="selective copying: train on M1, M2, ... data tokens in turn, --steps split evenly between the "
                        "stages (each its own warmup and cosine); the last M is the task scored")
    p.add_argument("--length-curriculum", type=int, nargs="+", metavar="N",
                   help="train at lengths N1, N2, ... in turn, the last one --length, --steps split evenly between "
                        "the stages (each its own warmup and cosine); e.g. --length 256 --length-curriculum 64 256")
    p.add_argument("--per-answer", action="store_true",
                   help="selective copying: also report the accuracy of each answer (1st .. num_tokens-th) at the "
                        "training length, with the data packed into windows of 1, 2, 4 and 8 x num_tokens and spread")
    args = p.parse_args()
    scans = [name for name in ("selective_absorption", "lead", "strip_phase", "decay_semiseparable", "smooth_transmission")
             if getattr(args, name) not in (None, False)]
    if ("selective_absorption" in scans or "lead" in scans) and len(scans) > 1:
        p.error(f"--{' and --'.join(n.replace('_', '-') for n in scans)} each replace the scan: use one at a time")
    if args.curriculum and (args.task != "selective_copying" or args.load):
        p.error(f"--curriculum {' '.join(map(str, args.curriculum))} trains selective copying in stages: give "
                "--task selective_copying, without --load")
    if args.length_curriculum and (args.curriculum or args.load or args.length_curriculum[-1] != args.length):
        p.error(f"--length-curriculum {' '.join(map(str, args.length_curriculum))} trains in stages ending at --length "
                f"{args.length}: end it with {args.length}, without --curriculum or --load")
    if args.load and args.peer:
        p.error(f"--load {args.load} reloads a ResNet-BK saved with --save; drop --peer {args.peer} to score it")
    torch.set_num_threads(1)
    import hubtrain.models.resnet_bk.modeling_resnet_bk as modeling
    from hubtrain.evaluation.recall import TASKS, Passkey, SelectiveCopying, evaluate, train
    from hubtrain.models.resnet_bk import ResNetBKConfig

    Mixer = modeling.ResNetBKGreenMixer
    channel_energy_eta = Mixer.energy_eta  # E and eta per channel, before any flag patches it

    def after_init(extra):
        """Run extra(mixer, config) at the end of every mixer's __init__ (the flags below stack their changes)."""
        init = Mixer.__init__

        def patched(self, config, layer_idx):
            init(self, config, layer_idx)
            extra(self, config)
        Mixer.__init__ = patched

    def after_init_weights(extra):
        """Run extra(mixer) after the model's own initialisation of every mixer (its children are initialised
        before it; transformers skips modules without parameters of their own, so changes go through the mixer)."""
        init_weights = modeling.ResNetBKPreTrainedModel._init_weights

        def patched(self, module):
            init_weights(self, module)
            if isinstance(module, Mixer):
                extra(module)
        modeling.ResNetBKPreTrainedModel._init_weights = patched

    def sequential_scan(a, hop, z_re, z_im_at, u, state, hop_in):
        """green_scan_step over the positions, from ``state`` (None: nothing before position 1) coupled in by
        ``hop_in``, with z_im_at(i) the absorption at position i: the per-token and lead scans of the flags."""
        outs = []
        for i in range(a.shape[1]):
            hop_prev = hop[:, i - 1] if i > 0 else hop_in
            state = modeling.green_scan_step(a[:, i], hop_prev, z_re, z_im_at(i), u[:, i], None, state)
            outs.append(state)
        return tuple(torch.stack([o[k] for o in outs], dim=1) for k in range(4))
    if args.conv:
        after_init(lambda m, config: setattr(m, "in_proj", ConvThenLinear(m.in_proj, config.d_model, args.conv)))
    if args.clean_chain:
        after_init(lambda m, config: setattr(m, "in_proj", CleanChain(m.in_proj, m.num_channels, args.clean_chain == "both")))
    if args.hop_scale:
        after_init(lambda m, config: setattr(m, "in_proj", ScaledHopping(m.in_proj, m.num_channels, args.hop_scale)))
    if args.unit_feature_scale:
        Mixer.value_scale = lambda self, eta, g_im: torch.ones_like(g_im)
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
    if args.selective_absorption:
        def selective(self, config):
            self.eta_proj = nn.Linear(config.d_model, self.num_channels)
            nn.init.zeros_(self.eta_proj.bias)
        after_init(selective)
        channel_eta = Mixer.energy_eta

        def token_eta(self, x=None):  # the mixer's forward passes its tokens x
            energy, eta = channel_eta(self)
            c = self.config
            return energy, eta if x is None else c.epsilon + F.softplus(self.rho + self.eta_proj(x))  # (B, N, H)
        Mixer.energy_eta = token_eta
        Mixer.value_scale = lambda self, eta, g_im: torch.rsqrt(g_im)

        def token_scan(a, hop, z_re, z_im, u, u_im=None, chunk_size=None):
            u = u * torch.sqrt(z_im).unsqueeze(-1)
            return sequential_scan(a, hop, z_re, lambda i: z_im[:, i], u, None, torch.zeros_like(a[:, 0]))
        modeling.green_scan = token_scan
    if args.hop_bias is not None:  # the model's _init_weights calls this after initialising the mixer's children
        channel_parameters = Mixer.initial_channel_parameters

        def with_hop_bias(self):
            linear = self.in_proj
            while not isinstance(linear, nn.Linear):  # under the --conv / --clean-chain / --hop-scale wrappers
                linear = linear.linear
            with torch.no_grad():
                linear.bias[self.num_channels: 2 * self.num_channels] = args.hop_bias
            return channel_parameters(self)
        Mixer.initial_channel_parameters = with_hop_bias
    if args.lead:
        def lead_scan(a, hop, z_re, z_im, u, u_im=None, chunk_size=None):
            t_lead = args.lead
            z = torch.complex(z_re, z_im.expand_as(z_re)).to(torch.complex128)
            root = torch.sqrt(z * z - 4 * t_lead**2)
            g = torch.stack([(-z + root), (-z - root)]) / (2 * t_lead**2)
            g = torch.where(g[0].imag > 0, g[0], g[1]).to(torch.complex64)  # the retarded root: Im g* > 0
            B, H, P = a.shape[0], a.shape[-1], u.shape[-1]
            state = (g.real.expand(B, H), g.imag.expand(B, H), u.new_zeros(B, H, P), u.new_zeros(B, H, P))
            return sequential_scan(a, hop, z_re, lambda i: z_im, u, state, torch.full_like(a[:, 0], t_lead))
        modeling.green_scan = lead_scan
    if args.freeze_channels:
        after_init(lambda m, config: (m.energy.requires_grad_(False), m.rho.requires_grad_(False)))
    args.strip_phase = args.strip_phase or args.decay_semiseparable is not None or args.smooth_transmission
    transmission = {}
    if args.strip_phase:
        scan = modeling.green_scan

        def stripped_scan(a, hop, z_re, z_im, u, u_im=None, chunk_size=None):
            g_re, g_im, _, _ = scan(a, hop, z_re, z_im, u, u_im, chunk_size)
            t = F.pad(hop[:, :-1], (0, 0, 1, 0))  # coupling into each position
            start = t == 0  # no coupling into a position: nothing before it reaches it (masked in the kernel)
            log_a = torch.log(torch.where(start, 1.0, t * torch.sqrt(g_re**2 + g_im**2)))
            if args.smooth_transmission:
                inside = (~start).to(log_a.dtype)
                mean = (log_a * inside).sum(1, keepdim=True) / inside.sum(1, keepdim=True).clamp_min(1.0)
                log_a = mean.expand_as(log_a)
            log_a = log_a.masked_fill(start, -1e4)
            s = torch.cumsum(log_a, 1).transpose(1, 2)  # (B, H, N)
            n = a.shape[1]
            causal = torch.ones(n, n, dtype=torch.bool, device=a.device).tril()
            kernel = torch.exp((s.unsqueeze(-1) - s.unsqueeze(-2)).masked_fill(~causal, -math.inf))  # (B, H, i, j)
            transmission["kernel"] = kernel
            ut = u.permute(0, 2, 1, 3)
            y_re = (kernel @ (g_re.transpose(1, 2).unsqueeze(-1) * ut)).permute(0, 2, 1, 3)
            y_im = (kernel @ (g_im.transpose(1, 2).unsqueeze(-1) * ut)).permute(0, 2, 1, 3)
            return g_re, g_im, y_re, y_im
        modeling.green_scan = stripped_scan
    if args.decay_semiseparable is not None:
        def decayed_semiseparable(q, k, v, state=None, chunk_size=64):
            scores = (q @ k.transpose(-1, -2)) * transmission["kernel"][:, args.decay_semiseparable]
            return scores @ v, torch.zeros(q.shape[0], q.shape[-1], v.shape[-1])  # (kernel is causal)
        modeling.semiseparable_scan = decayed_semiseparable
    if args.ss_conv:
        after_init(lambda m, config: setattr(m, "ss_proj", LinearThenConv(
            m.ss_proj, args.ss_conv, args.ss_conv_silu, args.ss_conv_identity, args.ss_conv_keys)))
        after_init_weights(lambda m: m.ss_proj.initialise())
    if args.ss_write_one is not None:
        def write_one(self, logits, v, mask):
            delta = args.ss_write_one + F.softplus(logits)
            if mask is not None:
                delta = delta * mask
            return v, -delta
        Mixer.semiseparable_decay = write_one
    if args.ss_norm:
        ss_scan = modeling.semiseparable_scan

        def normed_scan(q, k, v, state=None, *args, log_decay=None, **kwargs):
            out, new = ss_scan(q, k, v, state, *args, log_decay=log_decay, **kwargs)
            heads = out.unflatten(-1, (log_decay.shape[-1] if log_decay is not None else 1, -1))
            return F.rms_norm(heads, heads.shape[-1:], eps=1e-6).flatten(-2), new
        modeling.semiseparable_scan = normed_scan
    if args.ss_mass_norm:
        mass_scan = modeling.semiseparable_scan

        def mass_normed_scan(q, k, v, state=None, *args, log_decay=None, **kwargs):
            out, new = mass_scan(q, k, v, state, *args, log_decay=log_decay, **kwargs)
            mass = -torch.expm1(log_decay.cumsum(1))  # (B, N, h): full sequences from no state, as the probe runs
            heads = out.unflatten(-1, (log_decay.shape[-1], -1))
            return (heads / (mass.unsqueeze(-1) + 1e-6)).flatten(-2), new
        modeling.semiseparable_scan = mass_normed_scan
    if args.ss_dt:
        @torch.no_grad()
        def ss_dt_init(mixer):
            if hasattr(mixer, "ss_decay"):
                delta = torch.logspace(math.log10(args.ss_dt[0]), math.log10(args.ss_dt[1]), mixer.ss_decay.out_features)
                mixer.ss_decay.bias.copy_(delta + torch.log(-torch.expm1(-delta)))  # softplus^-1
        after_init_weights(ss_dt_init)
    if args.ss_wide:
        s, h = args.ss_wide

        def wide(self, config):
            r, d = config.low_rank, config.d_model
            self.ss_proj = nn.Linear(d, 2 * r + s, bias=False)
            self.ss_out = nn.Linear(s, d, bias=False)
            self.ss_decay = nn.Linear(d, h)  # the model's _init_weights spreads its initial decays over the h heads
        after_init(wide)
        forward = Mixer.forward

        def wide_forward(self, x, mask, mask_prev, positions, state=None, return_state=False):
            """The chain as the mixer computes it, then the wide term added before the output gate (training and
            scoring run full sequences from no state, which is all the probe needs)."""
            c, r = self.config, self.config.low_rank
            c.use_semiseparable = False
            try:
                out, phase, _ = forward(self, x, mask, mask_prev, positions)
            finally:
                c.use_semiseparable = True
            gate = self.in_proj(x)[..., -x.shape[-1]:]
            q, k, vv = self.ss_proj(x).split([r, r, s], dim=-1)
            vv, log_decay = self.semiseparable_decay(self.ss_decay(x), vv, mask.unsqueeze(-1))
            ss, _ = modeling.semiseparable_scan(q * r**-0.5, k * mask.unsqueeze(-1), vv, None, args.ss_chunk,
                                                log_decay=log_decay)
            return out + self.ss_out(ss) * F.silu(gate), phase, None
        Mixer.forward = wide_forward
    if args.no_chain:
        @torch.no_grad()
        def no_chain(mixer):
            mixer.out_proj.weight.zero_(), mixer.out_proj.bias.zero_()
            mixer.out_proj.requires_grad_(False)
        after_init_weights(no_chain)
    options = {"mqar": dict(vocab=128, num_pairs=args.pairs), "passkey": dict(log_gap=args.log_gap),
               "induction_heads": dict(log_gap=args.log_gap), "selective_copying": dict(log_window=args.log_window)}
    task = TASKS[args.task](**options.get(args.task, {}))
    n = args.length
    stages = [(dataclasses.replace(task, num_tokens=m), n) for m in args.curriculum or []] or [
        (task, m) for m in args.length_curriculum or [n]]
    task = stages[-1][0]
    if args.length_curriculum and (short := min(args.length_curriculum)) < task.min_length():
        p.error(f"--length-curriculum {short} is shorter than {args.task} needs ({task.min_length()}): give longer stages")
    args.eval_lengths = args.eval_lengths or [n]
    shape = dict(vocab_size=task.vocab_size, d_model=64, n_layers=2, num_channels=4, channel_dim=16, num_experts=2,
                 ffn_dim=128)
    config = ResNetBKConfig(**{**shape, **json.loads(args.options)})
    if args.report_transmission:
        report_transmission(modeling, config, task)
        return
    if args.peer:
        from recall import configs  # benchmarks/recall.py, beside this script

        config = configs(args.peer, vocab=task.vocab_size, d=64, layers=2, max_len=n, resnet_bk={})
    t0 = time.time()
    if args.load:
        model = modeling.ResNetBKForCausalLM.from_pretrained(args.load)
    else:
        model = config  # the first stage builds it from the config with --seed, as a run without --curriculum does
        for i, (stage, length) in enumerate(stages):
            model = train(model, stage, length, steps=args.steps // len(stages), batch_size=args.batch, lr=args.lr,
                          seed=args.seed + i,
                          trainer_kwargs=None if args.clip is None else {"gradient_clip_val": args.clip}).model
    if args.save:
        model.save_pretrained(args.save)
    k = args.eval_examples
    result = evaluate(model, task, n, examples=k)
    # None where the model cannot run (GPT-2 past its n_positions): not applicable, not zero
    runs = [m for m in args.eval_lengths if args.peer != "gpt2" or m <= config.n_positions]
    at_length = {m: round((result if m == n else evaluate(model, task, m, examples=k))["accuracy"], 3)
                 if m in runs else None for m in args.eval_lengths}
    if args.task == "passkey":  # as recall.py reports it: exact 5-digit accuracy per depth and length
        at_length = {"accuracy": at_length, "exact_by_depth": {d: {m: round(evaluate(
            model, Passkey(depth=d), m, examples=k, batch_size=4)["exact"], 3) if m in runs else None
            for m in args.eval_lengths} for d in args.depths}}
    if args.eval_window:
        dense = SelectiveCopying(window=args.eval_window)
        at_length = {"accuracy": at_length, f"window {args.eval_window}": {
            m: round(evaluate(model, dense, m, examples=k)["accuracy"], 3) for m in args.eval_lengths}}
    if args.per_answer and args.task == "selective_copying":
        at_length = {"accuracy": at_length, "per_answer": per_answer(model, task, n, k)}
    flags = {k: v for k, v in vars(args).items() if k not in ("options", "report_transmission", "steps", "lr")}
    mixers = [m for m in model.modules() if isinstance(m, Mixer)]
    trained = {f"layer {i}": {"E": [round(x, 3) for x in energy.tolist()], "eta": [float(f"{x:.3g}") for x in eta.tolist()]}
               for i, (energy, eta) in enumerate(channel_energy_eta(m) for m in mixers)}
    print(json.dumps({"options": json.loads(args.options), **flags, "trained_channels": trained,
                      "accuracy": round(result["accuracy"], 3), "accuracy_at_length": at_length,
                      "chance": result["chance"], "non_embedding": model.num_parameters(exclude_embeddings=True),
                      "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
