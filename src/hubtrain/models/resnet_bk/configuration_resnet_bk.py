"""Configuration of ResNet-BK, a causal language model whose token mixer is a Green's function.

This file imports only transformers: `save_pretrained` copies it next to the weights so that
`AutoConfig.from_pretrained(folder, trust_remote_code=True)` works without hubtrain installed.
"""
from __future__ import annotations

from typing import ClassVar

from transformers import PretrainedConfig


class ResNetBKConfig(PretrainedConfig):
    r"""
    Configuration for [`ResNetBKModel`] and [`ResNetBKForCausalLM`]. Every option has the exact meaning given in
    section 3 of `docs/resnet_bk.md`; none is accepted and ignored (options that only make sense together
    with another one raise a `ValueError` when set alone).

    Args:
        vocab_size: number of tokens.
        d_model: width of the residual stream.
        n_layers: number of blocks (Green's-function mixer, then mixture-of-experts feed-forward).
        n_seq: default training context. Not a limit: the scan runs for any length.
        num_experts, top_k: experts of the feed-forward layer and how many each token uses (`top_k` is an alias
            of the stored field `num_experts_per_tok`, so that `generate` does not mistake it for sampling top-k).
        dropout_p: dropout on embeddings and on each residual branch.
        num_channels: channels of the mixer, each with its own energy E and absorption eta (several memory lengths).
        channel_dim: value dimensions per channel (the scan's P).
        key_dim: 0 (default) scans the values themselves. K > 0 scans the outer products k_j v_j^T of a key and a
            value per token (K x channel_dim per channel: the resolvent applied to key-value pairs) and reads the
            result out with a query, out_i = q_i^T sum_j G^(i)[i, j] k_j v_j^T: a keyed, associative memory whose
            decay is the Green's function. How keys and queries are scaled is `key_norm`.
        key_norm: "unit" (default for chain="token") normalises keys and queries to unit vectors, so the Ward
            identity bounds the read-out by the value norm; "scaled" (default for chain="lead") divides keys by
            sqrt(key_dim) and leaves queries as projected, as attention scales q.k.
        feature_norm: how the scanned values y are scaled before the output projection, each bounded without
            clamps: "eta" (default for chain="token") multiplies by eta (|eta y_i| <= ||u_{1..i}||); "ward"
            multiplies by sqrt(eta / Im g_i), which normalises the weights of the past to unit energy
            (sum_j |G[i, j]|^2 <= Im g_i / eta), so long-memory channels are not scaled down by their small eta;
            "none" (default for chain="lead") reads y as it is (|y_i| <= ||u_{1..i}|| sqrt(Im g_i / eta)).
        chain: "token" (default): the potential a_i and the hopping t_i come from the tokens, every channel learns
            its E and eta, and nothing is to the left of position 1. "lead": a clean chain (a = 0, t = lead_hopping,
            padding carries no values and cuts nothing) attached on its left to a semi-infinite lead of the same
            hopping, so the scan starts from the lead's surface Green's function g* instead of from nothing; every
            channel sits at the top edge of the band, E = 2 t, with a fixed eta, log-spaced from lead_eta_min to 1.
            There g_i = g* at every position and G[i, j] = g* (-t g*)^(i - j): each channel weighs the past by
            distance alone, with |t g*| ~ 1 - sqrt(eta / 2t) (section 7.1 of docs/resnet_bk.md measures why).
            Excludes use_birman_schwinger, use_mourre and use_prime_bump, which act on the potential or on E.
        conv_width: 0 or 1 (default): each position's potential, hopping, values, keys and queries come from its own
            token. w > 1: from a depthwise causal convolution over the last w tokens' projections (Mamba's conv1d;
            the output gate stays the token's own), started as the identity; the cache keeps the last w - 1.
        absorption: "channel" (default): each channel has one absorption eta, its memory length. "token": the token
            sets it, eta_i = epsilon + softplus(rho + W_eta x_i) per channel and position (Mamba's input-dependent
            Delta, as a non-Hermitian diagonal -i eta_i of the Hamiltonian): a token with a large eta_i is written
            strongly and forgets the past, one with a small eta_i keeps it. Values are written with sqrt(eta_j) and
            y read out with sqrt(eta_i), which the Ward identity sum_j eta_j |G[i, j]|^2 = Im g_i <= 1 / eta_i bounds
            by the value norm. Needs chain="token", feature_norm="eta" and no Birman-Schwinger sandwich.
        lead_hopping: t of the lead chain, in (0, 1].
        lead_eta_min: the smallest eta of the lead chain's channels (the longest memory), in (0, 1).
        ffn_dim: hidden width of each expert (default 2 * d_model).
        epsilon: lower bound on eta (limiting absorption): eta = epsilon + softplus(rho), so Im z >= epsilon > 0.
        use_lap: if True (default) eta = epsilon + softplus(rho); if False eta = exp(log_eta) is learned freely.
        use_mourre: keep each channel's energy inside the band of the free hopping operator,
            E = 2 (1 - mourre_margin) tanh(e), where waves propagate (long memory) instead of decaying.
        mourre_margin: fraction of the band edge kept free when `use_mourre` is on.
        use_birman_schwinger: sandwich the resolvent as K = |V|^{1/2} (H - z)^{-1} V^{1/2} with V the potential.
        schatten_threshold: with the sandwich on, rescale so that the Ward-identity bound on the Hilbert-Schmidt
            norm of the causal prefix operator stays <= this value (None disables).
        use_prime_bump, prime_bump_scale, k_max: add the positional potential
            scale * sum_{p prime, k <= k_max} log(p) / p^{k/2} * exp(-(i - p^k)^2 / 2) to the diagonal.
        use_scattering_router, scattering_scale: route each token by its mean scattering phase (parameter-free)
            instead of a learned top-k router with a load-balancing loss.
        router_aux_loss_coef: weight of the load-balancing loss of the learned router in the training loss.
        use_semiseparable, low_rank: add a causal rank-`low_rank` semiseparable term tril(Q K^T) V to the mixer.
        semiseparable_decay_heads: 0 (default) keeps that term's running sum of k v^T undecayed; h > 0 splits its
            values into h heads, each forgetting its sum by gamma_i = exp(-delta_i) per token, with delta_i =
            softplus(W x_i + b) set by the token and values written with 1 - gamma_i, so that every head's sum is a
            convex combination of k v^T and the term is bounded independently of the length (Mamba-2's form).
        semiseparable_value_dim: width s of that term's values, so its state is low_rank x s (None: low_rank).
            With semiseparable_decay_heads = s every value channel has its own decay, Mamba's form.
        semiseparable_conv_width: 0 or 1 (default): that term's queries, keys and values come from their own token.
            w > 1: from a depthwise causal convolution over the last w tokens' projections, started as the identity
            (Mamba's conv1d before B, C and x; GLA's and DeltaNet's short convolution), so that a key and the value
            next to it meet at one position before the term writes them; the cache keeps the last w - 1.
        semiseparable_decay_activation: "softplus" (default) or "relu": delta = softplus(W x + b) or relu(W x + b).
            Under relu a head keeps its sum exactly (delta = 0, nothing written or forgotten) through every token
            whose projection is <= 0, so what it holds does not fade with the length of the filler between.
        semiseparable_decay_conv: take the decay heads' W x through the term's causal convolution with its q, k and
            v (needs semiseparable_conv_width > 1), as Mamba takes dt from its convolved x: a token sets how much
            to write and forget from the last w tokens, for example only right after a trigger.
        use_act, act_halt_threshold, act_ponder_weight: adaptive computation time across layers; a token stops
            being updated once its cumulative halting probability reaches 1 - act_halt_threshold, and
            act_ponder_weight times the ponder cost is added to the loss.
        scan_chunk_size: chunk length of the fast scan, or None for about sqrt(sequence length) (speed only;
            results do not depend on it).
        norm_eps: epsilon of the RMS norms.
        initializer_range: std of the normal initialisation of linear and embedding weights.
    """

    model_type: ClassVar[str] = "resnet_bk"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]
    # `top_k` is stored as `num_experts_per_tok`: a field named top_k would be read by `generate` as its
    # sampling top-k (GenerationConfig.from_model_config copies same-named fields) and silently make sampling greedy.
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "top_k": "num_experts_per_tok",
    }

    vocab_size: int = 50257
    d_model: int = 256
    n_layers: int = 4
    n_seq: int = 1024
    num_experts: int = 4
    num_experts_per_tok: int = 1
    dropout_p: float = 0.0
    num_channels: int = 8
    channel_dim: int = 16
    key_dim: int = 0
    key_norm: str | None = None
    feature_norm: str | None = None
    chain: str = "token"
    conv_width: int = 0
    absorption: str = "channel"
    lead_hopping: float = 0.5
    lead_eta_min: float = 1e-6
    ffn_dim: int | None = None
    use_birman_schwinger: bool = False
    epsilon: float = 0.05
    use_mourre: bool = False
    mourre_margin: float = 0.1
    use_lap: bool = True
    schatten_threshold: float | None = None
    use_scattering_router: bool = False
    scattering_scale: float = 0.5
    router_aux_loss_coef: float = 0.01
    use_prime_bump: bool = False
    prime_bump_scale: float = 0.02
    k_max: int = 3
    use_semiseparable: bool = False
    low_rank: int = 16
    semiseparable_decay_heads: int = 0
    semiseparable_value_dim: int | None = None
    semiseparable_conv_width: int = 0
    semiseparable_decay_activation: str = "softplus"
    semiseparable_decay_conv: bool = False
    use_act: bool = False
    act_halt_threshold: float = 0.01
    act_ponder_weight: float = 0.01
    scan_chunk_size: int | None = None
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if "top_k" in kwargs:
            self.num_experts_per_tok = kwargs.pop("top_k")
        positive_ints = ("vocab_size", "d_model", "n_layers", "n_seq", "num_experts", "top_k", "num_channels",
                         "channel_dim", "k_max", "low_rank", "scan_chunk_size")
        for name in positive_ints:
            if name == "scan_chunk_size" and self.scan_chunk_size is None:
                continue
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ResNetBKConfig: {name}={value!r} must be a positive integer")
        if isinstance(self.key_dim, bool) or not isinstance(self.key_dim, int) or self.key_dim < 0:
            raise ValueError(f"ResNetBKConfig: key_dim={self.key_dim!r} must be an integer >= 0 (0 turns keys off)")
        if isinstance(self.conv_width, bool) or not isinstance(self.conv_width, int) or self.conv_width < 0:
            raise ValueError(f"ResNetBKConfig: conv_width={self.conv_width!r} must be an integer >= 0 (0 or 1: no convolution)")
        if self.chain not in ("token", "lead"):
            raise ValueError(f"ResNetBKConfig: chain={self.chain!r} must be 'token' or 'lead'")
        lead = self.chain == "lead"
        if self.key_norm is None:
            self.key_norm = "scaled" if lead else "unit"
        if self.feature_norm is None:
            self.feature_norm = "none" if lead else "eta"
        if self.absorption not in ("channel", "token"):
            raise ValueError(f"ResNetBKConfig: absorption={self.absorption!r} must be 'channel' or 'token'")
        if self.absorption == "token":
            needs = {"chain": "token", "feature_norm": "eta", "use_birman_schwinger": False}
            clash = [f"{n}={getattr(self, n)!r}" for n, ok in needs.items() if getattr(self, n) != ok]
            if clash:
                raise ValueError(
                    f"ResNetBKConfig: absorption='token' needs chain='token', feature_norm='eta' and "
                    f"use_birman_schwinger=False (its read-out bound is the Ward identity's), got {', '.join(clash)}"
                )
        if self.key_norm not in ("unit", "scaled"):
            raise ValueError(f"ResNetBKConfig: key_norm={self.key_norm!r} must be 'unit' or 'scaled'")
        if self.feature_norm not in ("eta", "ward", "none"):
            raise ValueError(f"ResNetBKConfig: feature_norm={self.feature_norm!r} must be 'eta', 'ward' or 'none'")
        if not 0.0 < self.lead_hopping <= 1.0:
            raise ValueError(f"ResNetBKConfig: lead_hopping={self.lead_hopping!r} must be in (0, 1]")
        if not 0.0 < self.lead_eta_min < 1.0:
            raise ValueError(f"ResNetBKConfig: lead_eta_min={self.lead_eta_min!r} must be in (0, 1)")
        if lead:
            clash = [n for n in ("use_birman_schwinger", "use_mourre", "use_prime_bump") if getattr(self, n)]
            if clash:
                raise ValueError(
                    f"ResNetBKConfig: chain='lead' is a clean chain at a fixed energy, and {', '.join(clash)} acts "
                    "on the potential or on E; set them to False or use chain='token'"
                )
        width = self.semiseparable_value_dim
        if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
            raise ValueError(
                f"ResNetBKConfig: semiseparable_value_dim={width!r} must be a positive integer (None: low_rank)"
            )
        if width is not None and not self.use_semiseparable:
            raise ValueError(
                f"ResNetBKConfig: semiseparable_value_dim={width} widens the semiseparable term; set "
                "use_semiseparable=True or semiseparable_value_dim=None"
            )
        conv = self.semiseparable_conv_width
        if isinstance(conv, bool) or not isinstance(conv, int) or conv < 0:
            raise ValueError(
                f"ResNetBKConfig: semiseparable_conv_width={conv!r} must be an integer >= 0 (0 or 1: no convolution)"
            )
        if conv > 1 and not self.use_semiseparable:
            raise ValueError(
                f"ResNetBKConfig: semiseparable_conv_width={conv} convolves the semiseparable term's inputs; set "
                "use_semiseparable=True or semiseparable_conv_width=0"
            )
        heads = self.semiseparable_decay_heads
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 0:
            raise ValueError(f"ResNetBKConfig: semiseparable_decay_heads={heads!r} must be an integer >= 0 (0: undecayed)")
        if heads and not self.use_semiseparable:
            raise ValueError(
                f"ResNetBKConfig: semiseparable_decay_heads={heads} decays the semiseparable term; set "
                "use_semiseparable=True or semiseparable_decay_heads=0"
            )
        values = self.low_rank if width is None else width
        if heads and values % heads:
            named = f"low_rank={self.low_rank}" if width is None else f"semiseparable_value_dim={width}"
            raise ValueError(
                f"ResNetBKConfig: semiseparable_decay_heads={heads} must divide {named} (the heads split the term's "
                "values)"
            )
        activation = self.semiseparable_decay_activation
        if activation not in ("softplus", "relu"):
            raise ValueError(
                f"ResNetBKConfig: semiseparable_decay_activation={activation!r} must be 'softplus' or 'relu'"
            )
        if activation != "softplus" and not heads:
            raise ValueError(
                f"ResNetBKConfig: semiseparable_decay_activation={activation!r} sets the decay heads' delta; set "
                "semiseparable_decay_heads > 0 or semiseparable_decay_activation='softplus'"
            )
        if self.semiseparable_decay_conv and not (heads and conv > 1):
            raise ValueError(
                f"ResNetBKConfig: semiseparable_decay_conv=True convolves the decay heads' projection with the term's "
                f"inputs; set semiseparable_decay_heads > 0 (now {heads}) and semiseparable_conv_width > 1 (now "
                f"{conv}), or semiseparable_decay_conv=False"
            )
        if self.ffn_dim is None:
            self.ffn_dim = 2 * self.d_model
        elif isinstance(self.ffn_dim, bool) or not isinstance(self.ffn_dim, int) or self.ffn_dim < 1:
            raise ValueError(f"ResNetBKConfig: ffn_dim={self.ffn_dim!r} must be a positive integer or None")
        if self.top_k > self.num_experts:
            raise ValueError(
                f"ResNetBKConfig: top_k={self.top_k} exceeds num_experts={self.num_experts}; use top_k <= num_experts"
            )
        if not self.epsilon > 0:
            raise ValueError(f"ResNetBKConfig: epsilon={self.epsilon!r} must be > 0 (it bounds Im z away from the real axis)")
        if not 0.0 <= self.dropout_p < 1.0:
            raise ValueError(f"ResNetBKConfig: dropout_p={self.dropout_p!r} must be in [0, 1)")
        if not 0.0 < self.mourre_margin < 1.0:
            raise ValueError(f"ResNetBKConfig: mourre_margin={self.mourre_margin!r} must be in (0, 1)")
        if self.schatten_threshold is not None:
            if not self.schatten_threshold > 0:
                raise ValueError(f"ResNetBKConfig: schatten_threshold={self.schatten_threshold!r} must be > 0 or None")
            if not self.use_birman_schwinger:
                raise ValueError(
                    "ResNetBKConfig: schatten_threshold bounds the Birman-Schwinger operator; "
                    "set use_birman_schwinger=True or schatten_threshold=None"
                )
        if not self.scattering_scale > 0:
            raise ValueError(f"ResNetBKConfig: scattering_scale={self.scattering_scale!r} must be > 0")
        if not 0.0 < self.act_halt_threshold < 1.0:
            raise ValueError(f"ResNetBKConfig: act_halt_threshold={self.act_halt_threshold!r} must be in (0, 1)")
        for name in ("router_aux_loss_coef", "act_ponder_weight", "norm_eps", "initializer_range"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"ResNetBKConfig: {name}={getattr(self, name)!r} must be >= 0")
        super().__post_init__(**kwargs)

    def _get_generation_parameters(self) -> dict:
        # `top_k` here is the experts alias, not a sampling parameter that someone set on the model config
        params = super()._get_generation_parameters()
        params.pop("top_k", None)
        return params


__all__ = ["ResNetBKConfig"]
