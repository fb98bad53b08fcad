"""Contrastive embeddings (CEBRA-style): an encoder of short windows of activity trained with
InfoNCE so that positive pairs of bins lie close on an embedding sphere (or in a Euclidean
space) and random bins far apart.

For a bin `t` of a trial with counts `y` `[time, neurons]`, the encoder `f` reads the window
`y[t - h : t - h + window]` (`h = window // 2`) and returns `z_t = f(window)` `[output_dim]`,
normalised to the unit sphere when `distance="cosine"`. With similarity `s(a, b) = a . b`
(cosine) or `-|a - b|^2` (Euclidean) and temperature `tau`, the loss of a batch of references
`r_i`, positives `p_i` and negatives `n_j` is

    L = mean_i [ -s(r_i, p_i) / tau + logsumexp_j s(r_i, n_j) / tau ]

(for "euclidean" the positive joins the logsumexp, which bounds the loss below).

Negatives are bins drawn uniformly from the batch. Positives (`positives`):

- "time": the bin `time_offset` bins later in the same trial (self-supervised);
- "delta": the bin whose behaviour is nearest to the reference's behaviour plus Gaussian noise
  of standard deviation `delta` (CEBRA's "delta" distribution);
- "time_delta": nearest to the reference's behaviour plus the behaviour change over
  `time_offset` bins at a random other bin (CEBRA's "time_delta");
- "label": a random bin of a trial with the same `Trials.conditions` label.

Nearest neighbours (and same-label bins) are searched in a pool of `num_candidates` bins drawn
at each step, not the whole data set (a reference with no same-label bin in the pool takes a
random pool bin). All sampling happens inside the jitted loss from its key; the engine draws
minibatches of trials (`train.batch_size`, None: every trial each step), and the loss draws
`batch_points` references, positives and negatives from the bins of those trials whose whole
window is observed.

Several sessions (a tuple of `Trials`; neuron counts may differ) each get their own encoder
into one shared embedding: each session's references also take positives (by behaviour or
label) from the next session, which aligns the sessions' embeddings.

Examples:
    >>> import latentjax as lj
    >>> data = lj.datasets.ring(seed=0)
    >>> config = lj.models.contrastive.Config(positives="delta", output_dim=3)
    >>> result = lj.fit(config, data.trials)                 # minutes   # doctest: +SKIP
    >>> embedding = lj.infer(result, data.trials).latents    # [trials, time, 3]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from latentjax.data import Trials
from latentjax.results import Posterior
from latentjax.train.config import TrainConfig, knob

__all__ = [
    "Config",
    "adapt",
    "embed",
    "init",
    "info_nce",
    "loss",
    "multi_session",
    "posterior",
    "validation_loss",
]

multi_session = True

ENCODERS = ("conv", "mlp")
DISTANCES = ("cosine", "euclidean")
POSITIVES = ("time", "delta", "time_delta", "label")


@dataclasses.dataclass(frozen=True)
class Config:
    """Contrastive embedding settings (sizes and choices are static; `temperature` is a knob).

    Attributes:
      output_dim: dimensions of the embedding (a sphere S^(output_dim - 1) for "cosine").
      hidden_dim: channels of the encoder's hidden layers.
      window: bins the encoder reads around each bin (its receptive field).
      encoder: "conv" (1-D convolutions over time: kernel `window - 4`, then two of 3;
        needs `window >= 5`) or "mlp" (a dense layer over the flattened window, then two
        dense layers).
      distance: "cosine" (unit-norm output, dot-product similarity) or "euclidean" (minus
        the squared distance).
      positives: "time", "delta", "time_delta" or "label" (see the module docstring).
      time_offset: bins between a reference and its positive ("time") or over which the
        behaviour change is taken ("time_delta").
      delta: standard deviation of the behaviour noise for "delta" (behaviour units).
      batch_points: references (and as many positives and negatives) per step.
      num_candidates: bins searched for the positive nearest in behaviour, or sharing a
        label ("delta", "time_delta", "label").
      temperature: InfoNCE temperature (knob).
      train: optimiser and loop settings; `train.steps` None sizes training to the data.
    """

    output_dim: int = 3
    hidden_dim: int = 32
    window: int = 10
    encoder: str = "conv"
    distance: str = "cosine"
    positives: str = "time"
    time_offset: int = 5
    delta: float = 0.1
    batch_points: int = 512
    num_candidates: int = 2048
    temperature: float = knob(1.0, "positive")
    train: TrainConfig = TrainConfig(learning_rate=3e-3, batch_size=None, steps=None)

    def __post_init__(self):
        sizes = ("output_dim", "hidden_dim", "window", "time_offset", "batch_points",
                 "num_candidates")  # fmt: skip
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"contrastive.Config: `{name}` must be a positive int, got {value!r}"
                )
        choices = (("encoder", ENCODERS), ("distance", DISTANCES), ("positives", POSITIVES))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"contrastive.Config: `{name}` must be one of {allowed}, "
                    f"got {getattr(self, name)!r}"
                )
        if self.encoder == "conv" and self.window < 5:
            raise ValueError(
                f"contrastive.Config: `window` must be >= 5 for encoder='conv', got {self.window}"
            )
        if not (isinstance(self.delta, (int, float)) and self.delta >= 0):
            raise ValueError(f"contrastive.Config: `delta` must be >= 0, got {self.delta!r}")
        if not isinstance(self.train, TrainConfig):
            raise ValueError("contrastive.Config: `train` must be a latentjax.train.TrainConfig")


def kernel_sizes(config: Config) -> tuple[int, int, int]:
    """Time kernels of the encoder's three layers; they add up to a receptive field of
    `window` bins ("conv": `window - 4, 3, 3`; "mlp": `window, 1, 1`)."""
    return (config.window - 4, 3, 3) if config.encoder == "conv" else (config.window, 1, 1)


def _conv(layer: dict, x):
    """Valid 1-D convolution `[length, c_in] -> [length - k + 1, c_out]` as one matrix product
    of the stacked shifted inputs (fast inside the engine's compiled loops on CPU)."""
    k = layer["kernel"].shape[0]
    length = x.shape[0] - k + 1
    patches = jnp.concatenate([x[i : i + length] for i in range(k)], axis=-1)
    return patches @ layer["kernel"].reshape(-1, layer["kernel"].shape[-1]) + layer["bias"]


def _init_encoder(key, config: Config, num_neurons: int) -> dict:
    widths = (num_neurons, config.hidden_dim, config.hidden_dim, config.output_dim)
    layers = {}
    for i, (k, key_i) in enumerate(zip(kernel_sizes(config), jax.random.split(key, 3),
                                       strict=True)):  # fmt: skip
        fan_in = k * widths[i]
        kernel = jax.random.normal(key_i, (k, widths[i], widths[i + 1])) / np.sqrt(fan_in)
        layers[f"layer{i}"] = {"kernel": kernel, "bias": jnp.zeros(widths[i + 1])}
    return layers


def _apply_encoder(params: dict, x):
    """`[length, neurons]` -> `[length - window + 1, output_dim]`: one embedding per full
    window (not normalised): two GELU layers and a linear one."""
    x = jax.nn.gelu(_conv(params["layer0"], x))
    x = jax.nn.gelu(_conv(params["layer1"], x))
    return _conv(params["layer2"], x)


def _normalise(z, config: Config):
    if config.distance == "cosine":
        return z * jax.lax.rsqrt(jnp.sum(z**2, axis=-1, keepdims=True) + 1e-12)  # finite grad at 0
    return z


def _similarity(a, b, config: Config):
    """`[M, K] x [P, K] -> [M, P]` similarities."""
    if config.distance == "cosine":
        return a @ b.T
    return -(jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :] - 2 * a @ b.T)


def info_nce(reference, positive, negative, temperature, config: Config):
    """InfoNCE of references `[M, K]`, their positives `[M, K]` and negatives `[P, K]`.

    Returns `(loss, alignment, uniformity)`: `loss = uniformity - alignment`, alignment the
    mean positive similarity over `temperature`, uniformity the mean logsumexp of the
    negative similarities over `temperature`. For "euclidean" the positive joins the
    logsumexp (so the loss is >= 0): without it, pushing every point apart lowers the loss
    without end and the embedding's scale diverges."""
    if config.distance == "cosine":
        aligned = jnp.sum(reference * positive, axis=-1)
    else:
        aligned = -jnp.sum((reference - positive) ** 2, axis=-1)
    logits = _similarity(reference, negative, config) / temperature
    if config.distance == "euclidean":
        logits = jnp.concatenate([aligned[:, None] / temperature, logits], axis=1)
    alignment = jnp.mean(aligned) / temperature
    uniformity = jnp.mean(jax.nn.logsumexp(logits, axis=-1))
    return uniformity - alignment, alignment, uniformity


def _as_sessions(trials, where: str) -> tuple[Trials, ...]:
    sessions = (trials,) if isinstance(trials, Trials) else tuple(trials)
    if not sessions or not all(isinstance(t, Trials) for t in sessions):
        raise ValueError(
            f"contrastive.{where}: `trials` must be a Trials or a sequence of Trials (sessions)"
        )
    return sessions


def _check_trials(config: Config, sessions: tuple[Trials, ...], where: str) -> None:
    """Trace-time checks of the data against the config (ValueError naming the argument)."""
    behaviour = config.positives in ("delta", "time_delta")
    dims = set()
    for s, trials in enumerate(sessions):
        name = "trials" if len(sessions) == 1 else f"trials[{s}]"
        uses_offset = config.positives in ("time", "time_delta")
        need = config.window + (config.time_offset if uses_offset else 0)
        if trials.num_bins < need:
            field = "window" if trials.num_bins < config.window else "time_offset"
            raise ValueError(
                f"contrastive.{where}: `{field}`: trials of `{name}` have {trials.num_bins} "
                f"bins, fewer than window + time_offset = {need}"
                if field == "time_offset"
                else f"contrastive.{where}: `window` ({config.window}) is longer than the "
                f"trials of `{name}` ({trials.num_bins} bins)"
            )
        if behaviour and trials.behavior is None:
            raise ValueError(
                f"contrastive.{where}: positives={config.positives!r} need `{name}.behavior`, "
                "which is None (use positives='time' without behaviour)"
            )
        if behaviour:
            dims.add(np.shape(trials.behavior)[-1])
        if config.positives == "label" and trials.conditions is None:
            raise ValueError(
                f"contrastive.{where}: positives='label' needs `{name}.conditions`, which is None"
            )
    if len(dims) > 1:
        raise ValueError(
            f"contrastive.{where}: the sessions' `behavior` must share one width, got {dims}"
        )
    if len(sessions) > 1 and config.positives == "time":
        raise ValueError(
            f"contrastive.{where}: several sessions need positives from behaviour or labels "
            "(`positives` 'delta', 'time_delta' or 'label') to share one embedding, got 'time'"
        )


def adapt(config: Config, trials) -> Config:
    """`config` unchanged after checking it against the training data (`window` and
    `time_offset` fit in the trials; behaviour or labels present when the positives need
    them): the errors come before anything is built."""
    _check_trials(config, _as_sessions(trials, "adapt"), "adapt")
    return config


def init(key, config: Config, trials) -> dict:
    """Parameters `{"encoders": (one per session: {"layer0", "layer1", "layer2"}, each
    {"kernel": [k, c_in, c_out], "bias": [c_out]})}`."""
    sessions = _as_sessions(trials, "init")
    _check_trials(config, sessions, "init")
    keys = jax.random.split(key, len(sessions))
    encoders = tuple(
        _init_encoder(k, config, t.num_neurons) for k, t in zip(keys, sessions, strict=True)
    )
    return {"encoders": encoders}


def _encode_windows(params, spikes, flat_index, config: Config):
    """Embeddings `[M, output_dim]` of the windows starting at `flat_index` `[M]` (indices into
    the flattened `[trials * time]` grid of `spikes` `[trials, time, neurons]`)."""
    num_bins = spikes.shape[1]
    trial, start = flat_index // num_bins, flat_index % num_bins - config.window // 2

    def window(b, t):
        return jax.lax.dynamic_slice_in_dim(spikes[b], t, config.window, axis=0)

    windows = jax.vmap(window)(trial, start)
    z = jax.vmap(lambda w: _apply_encoder(params, w)[0])(windows)
    return _normalise(z, config)


def _valid_centres(mask, config: Config):
    """`[trials, time]` bool: bins whose whole window lies inside the trial and is observed."""
    num_bins = mask.shape[1]
    window, before = config.window, config.window // 2
    counts = jnp.cumsum(jnp.pad(mask.astype(jnp.int32), ((0, 0), (1, 0))), axis=1)
    start = jnp.arange(num_bins) - before
    inside = (start >= 0) & (start + window <= num_bins)
    lo, hi = jnp.clip(start, 0, num_bins), jnp.clip(start + window, 0, num_bins)
    full = (counts[:, hi] - counts[:, lo]) == window
    return full & inside[None, :]


def _shifted(valid, offset: int):
    """`valid[:, t + offset]` (False past the end)."""
    return jnp.pad(valid[:, offset:], ((0, 0), (0, offset)))


def _draw(key, weights, num: int):
    """`num` flat indices drawn with probability proportional to `weights` `[trials, time]`."""
    flat = weights.reshape(-1).astype(jnp.float32)
    p = flat / jnp.maximum(jnp.sum(flat), 1.0)
    return jax.random.choice(key, flat.shape[0], (num,), p=p)


def _behaviour(batch: Trials):
    return jnp.asarray(batch.behavior, jnp.float32).reshape(-1, np.shape(batch.behavior)[-1])


def _positive_index(key, ref_batch: Trials, ref_index, ref_valid, pos_batch: Trials, pos_valid,
                    config: Config):  # fmt: skip
    """Flat indices `[M]` into `pos_batch` of the positives of the references `ref_index`."""
    pool_key, noise_key, pick_key = jax.random.split(key, 3)
    pool = _draw(pool_key, pos_valid, config.num_candidates)
    if config.positives == "label":
        ref_label = jnp.asarray(ref_batch.conditions)[ref_index // ref_batch.spikes.shape[1]]
        pool_label = jnp.asarray(pos_batch.conditions)[pool // pos_batch.spikes.shape[1]]
        same = ref_label[:, None] == pool_label[None, :]
        noise = jax.random.gumbel(pick_key, same.shape)
        return pool[jnp.argmax(jnp.where(same, noise, -jnp.inf), axis=1)]
    behaviour = _behaviour(ref_batch)
    query = behaviour[ref_index]
    if config.positives == "delta":
        query = query + config.delta * jax.random.normal(noise_key, query.shape)
    else:  # time_delta: the behaviour change over time_offset at random other bins
        moved = _valid_pair(ref_valid, config.time_offset)
        start = _draw(noise_key, moved, ref_index.shape[0])
        query = query + behaviour[start + config.time_offset] - behaviour[start]
    candidates = _behaviour(pos_batch)[pool]
    distance = jnp.sum((query[:, None, :] - candidates[None, :, :]) ** 2, axis=-1)
    return pool[jnp.argmin(distance, axis=1)]


def _valid_pair(valid, offset: int):
    return valid & _shifted(valid, offset)


def _session_loss(params_ref, params_pos, ref: Trials, pos: Trials, key, temperature,
                  config: Config):  # fmt: skip
    """InfoNCE of references from `ref` with positives and negatives from `pos`."""
    ref_key, pos_key, neg_key = jax.random.split(key, 3)
    ref_spikes = jnp.asarray(ref.spikes, jnp.float32)
    pos_spikes = jnp.asarray(pos.spikes, jnp.float32)
    ref_valid = _valid_centres(jnp.asarray(ref.mask), config)
    pos_valid = _valid_centres(jnp.asarray(pos.mask), config)
    if config.positives == "time":  # ref and pos are the same session
        ref_index = _draw(ref_key, _valid_pair(ref_valid, config.time_offset), config.batch_points)
        pos_index = ref_index + config.time_offset
    else:
        ref_index = _draw(ref_key, ref_valid, config.batch_points)
        pos_index = _positive_index(pos_key, ref, ref_index, ref_valid, pos, pos_valid, config)
    neg_index = _draw(neg_key, pos_valid, config.batch_points)
    reference = _encode_windows(params_ref, ref_spikes, ref_index, config)
    positive = _encode_windows(params_pos, pos_spikes, pos_index, config)
    negative = _encode_windows(params_pos, pos_spikes, neg_index, config)
    return info_nce(reference, positive, negative, temperature, config)


def _loss(params, batch, key, config: Config):
    sessions = batch if isinstance(batch, tuple) else (batch,)
    encoders = params["encoders"]
    if len(sessions) != len(encoders):
        raise ValueError(
            f"contrastive.loss: `batch` has {len(sessions)} session(s), the parameters "
            f"{len(encoders)}"
        )
    pairs = [(s, s) for s in range(len(sessions))]
    if len(sessions) > 1:
        pairs += [(s, (s + 1) % len(sessions)) for s in range(len(sessions))]
    keys = jax.random.split(key, len(pairs))
    terms = [
        _session_loss(encoders[a], encoders[b], sessions[a], sessions[b], k,
                      config.temperature, config)
        for (a, b), k in zip(pairs, keys, strict=True)
    ]  # fmt: skip
    total, alignment, uniformity = (sum(t[i] for t in terms) / len(terms) for i in range(3))
    return total, {"alignment": alignment, "uniformity": uniformity}


def loss(params, batch, key, config: Config, step) -> tuple[jax.Array, dict]:
    """InfoNCE (see the module docstring) of `batch_points` references drawn from `batch`
    (a `Trials` `[trials, time, neurons]`, or a tuple of them, one per session); aux
    `alignment`, `uniformity` (the loss is their difference)."""
    del step
    return _loss(params, batch, key, config)


def validation_loss(params, batch, key, config: Config, step) -> tuple[jax.Array, dict]:
    """`loss` on held-out trials (the same draws, from `key`)."""
    del step
    return _loss(params, batch, key, config)


def _embed_trial(params, spikes, config: Config):
    """`[time, neurons]` -> `[time, output_dim]`; the trial's ends are padded by repeating
    the first and last bins so every bin has a full window."""
    before = config.window // 2
    after = config.window - 1 - before
    padded = jnp.pad(spikes, ((before, after), (0, 0)), mode="edge")
    return _normalise(_apply_encoder(params, padded), config)


_embed_batch = jax.jit(jax.vmap(_embed_trial, in_axes=(None, 0, None)), static_argnames="config")


def embed(params, trials: Trials, config: Config, *, session: int = 0) -> np.ndarray:
    """Embedding `[trials, time, output_dim]` of every bin of `trials` with the encoder of
    `session`."""
    encoders = params["encoders"]
    if isinstance(session, bool) or not isinstance(session, int):
        raise ValueError(f"contrastive.embed: `session` must be an int, got {session!r}")
    if not 0 <= session < len(encoders):
        raise ValueError(
            f"contrastive.embed: `session` must be in [0, {len(encoders)}), got {session}"
        )
    if not isinstance(trials, Trials):
        raise ValueError(f"contrastive.embed: `trials` must be a Trials, got {type(trials)}")
    params_s = encoders[session]
    num_neurons = params_s["layer0"]["kernel"].shape[1]
    if trials.num_neurons != num_neurons:
        raise ValueError(
            f"contrastive.embed: `trials` has {trials.num_neurons} neurons, the encoder of "
            f"session {session} {num_neurons}"
        )
    if trials.num_bins < 1:
        raise ValueError("contrastive.embed: `trials` has no bins")
    spikes = jnp.asarray(trials.spikes, jnp.float32)
    return np.asarray(_embed_batch(params_s, spikes, config))


def posterior(params, trials: Trials, config: Config, key, *, session: int = 0) -> Posterior:
    """`Posterior` whose `latents` `[trials, time, output_dim]` are the embedding of every bin
    (`rates` None: no observation model). `key` is unused."""
    del key
    return Posterior(latents=embed(params, trials, config, session=session), rates=None)
