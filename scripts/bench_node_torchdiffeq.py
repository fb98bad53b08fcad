"""Latent ODE training step: latentjax (diffrax) against a PyTorch + torchdiffeq latent ODE.

The peer is the model a user would otherwise write with torchdiffeq (Rubanova et al. 2019's
code layout), written here with the same sizes as `lj.models.node`: a GRU run backward over
(log1p counts, time gap) pairs of the observed bins gives q(z(t_1)); an MLP vector field
(`depth` tanh layers) solved by dopri5 (rtol 1e-3, atol 1e-4) from the first observed time;
a linear Poisson read-out; the masked Poisson likelihood and the KL. As torchdiffeq solves one
time grid per batch, the peer solves every trial on the union of the batch's times (the
original bin grid) and masks the dropped bins; latentjax solves each trial on its own times
(vmapped). Both run the same solver and tolerances (`node.Config(solver="dopri5",
anchor="first")`). Timed: the forward loss alone, and loss + gradient, with direct
backpropagation through the solver and with the adjoint method (torchdiffeq's
`odeint_adjoint`, diffrax's `BacksolveAdjoint`); mean over repeats after warm-up.

Needs `pip install torch==2.13.0 torchdiffeq` (not a dependency of latentjax).

    python scripts/bench_node_torchdiffeq.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchdiffeq
from _report import BENCHMARKS, machine, write_section

import latentjax as lj
import latentjax.models.node as node

TIME_SCALE = 10.0


class TorchLatentODE(torch.nn.Module):
    """The peer model (see the module docstring)."""

    def __init__(self, neurons: int, latent: int, width: int, depth: int):
        super().__init__()
        self.gru = torch.nn.GRUCell(neurons + 1, width)
        self.head = torch.nn.Linear(width, 2 * latent)
        sizes = [latent] + [width] * depth
        layers = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.Tanh()]
        self.field = torch.nn.Sequential(*layers, torch.nn.Linear(width, latent))
        self.readout = torch.nn.Linear(latent, neurons)
        self.evaluations = 0

    def forward(self, t, z):  # the vector field, as torchdiffeq calls it
        self.evaluations += 1
        return self.field(z)

    def copy_from(self, params: dict) -> None:
        """Take the vector field and read-out of latentjax parameters (same functions, so
        the adaptive solver takes the same steps on the same initial state)."""
        linears = [m for m in self.field if isinstance(m, torch.nn.Linear)]
        pairs = [
            (lin, layer) for lin, layer in zip(linears, params["field"]["layers"], strict=True)
        ]
        pairs.append((self.readout, params["readout"]))
        with torch.no_grad():
            for linear, layer in pairs:
                linear.weight.copy_(torch.tensor(np.asarray(layer["kernel"]).T))
                linear.bias.copy_(torch.tensor(np.asarray(layer["bias"])))

    def loss(self, counts, times, mask, adjoint: bool):
        """counts `[B, T, N]`, times `[T]` (ODE units, shared grid), mask `[B, T]` bool."""
        batch, steps, _ = counts.shape
        inputs = torch.log1p(counts)
        first = mask.float().argmax(dim=1)  # first observed bin of each trial
        hidden = counts.new_zeros(batch, self.gru.hidden_size)
        next_time = times[-1].expand(batch)
        for t in reversed(range(steps)):  # backward over observations, as Rubanova et al.
            gap = (next_time - times[t]).unsqueeze(1)
            updated = self.gru(torch.cat([inputs[:, t], gap], dim=1), hidden)
            observed = mask[:, t].unsqueeze(1)
            hidden = torch.where(observed, updated, hidden)
            next_time = torch.where(mask[:, t], times[t], next_time)
        mean, log_var = self.head(hidden).chunk(2, dim=1)
        z0 = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        # every trial starts at its first observed time; on the shared grid that is the
        # earliest one of the batch (all trials of this benchmark start observed at bin 0
        # or close to it; the union grid is what torchdiffeq's one-grid solve requires)
        solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        states = solve(self, z0, times[int(first.min()) :], rtol=1e-3, atol=1e-4, method="dopri5")
        log_rates = self.readout(states.transpose(0, 1))  # [B, T', N]
        observed = counts[:, int(first.min()) :]
        weights = mask[:, int(first.min()) :].float().unsqueeze(-1)
        nll = torch.sum((torch.exp(log_rates) - observed * log_rates) * weights)
        kl = 0.5 * torch.sum(torch.exp(log_var) + mean**2 - 1.0 - log_var)
        return (nll + kl) / (weights.sum() * counts.shape[-1])


def _time(function, repeats: int) -> float:
    function()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def _jax_cases(config, params, batch):
    batch = jax.tree.map(jnp.asarray, batch)

    def value(p, b, k):
        return node.loss(p, b, k, config, 1000)[0]

    forward = jax.jit(value)
    gradient = jax.jit(jax.value_and_grad(value))
    key = jax.random.PRNGKey(1)
    return (
        lambda: jax.block_until_ready(forward(params, batch, key)),
        lambda: jax.block_until_ready(gradient(params, batch, key)),
    )


def _torch_cases(model, counts, times, mask, adjoint: bool):
    def forward():
        with torch.no_grad():
            model.loss(counts, times, mask, adjoint=False)

    def gradient():
        model.zero_grad()
        model.loss(counts, times, mask, adjoint).backward()

    return forward, gradient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no file written")
    args = parser.parse_args()
    trials, bins, width, repeats = (8, 40, 16, 2) if args.quick else (32, 100, 64, 10)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    data = lj.datasets.lorenz(seed=0, num_trials=trials, num_bins=bins, num_neurons=30)
    sparse = lj.datasets.subsample(data.trials, 0.3, seed=0)
    _, index = lj.datasets.subsample(data.trials, 0.3, seed=0, return_index=True)
    mask = np.zeros(data.trials.mask.shape, bool)
    for trial, kept in enumerate(index):
        mask[trial, kept[kept >= 0]] = True
    counts = torch.tensor(np.asarray(data.trials.spikes), dtype=torch.float32)
    grid = torch.tensor(np.asarray(data.trials.times[0]) * TIME_SCALE, dtype=torch.float32)
    model = TorchLatentODE(30, 8, width, depth=2)

    rows = []
    for adjoint in (False, True):
        config = node.Config(
            hidden_dim=width,
            encoder_dim=width,
            time_scale=TIME_SCALE,
            solver="dopri5",
            anchor="first",
            adjoint="backsolve" if adjoint else "recursive",
        )
        params = node.init(jax.random.PRNGKey(0), config, sparse)
        model.copy_from(params)
        jax_forward, jax_gradient = _jax_cases(config, params, sparse)
        torch_forward, torch_gradient = _torch_cases(
            model, counts, grid, torch.tensor(mask), adjoint
        )
        method = "adjoint" if adjoint else "direct backpropagation"
        timings = {
            f"loss + gradient, {method}": (
                _time(jax_gradient, repeats),
                _time(torch_gradient, repeats),
            ),
        }
        if not adjoint:
            timings["forward loss"] = (_time(jax_forward, repeats), _time(torch_forward, repeats))
        model.evaluations = 0
        torch_forward()
        print(f"torchdiffeq: {model.evaluations} field evaluations per forward solve", flush=True)
        for name, (ours, peer) in timings.items():
            rows.append(f"| {name} | {1e3 * ours:.1f} | {1e3 * peer:.1f} | {peer / ours:.1f}x |")
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            "## Training step against torchdiffeq",
            "",
            f"`python scripts/bench_node_torchdiffeq.py`: {trials} Lorenz trials x {bins} bins "
            f"x 30 neurons, 30% of bins kept; latent 8, width {width}, dopri5 (rtol 1e-3, atol "
            "1e-4), batch = all trials. Peer: a PyTorch latent ODE on torchdiffeq "
            f"{torchdiffeq.__version__} written in the script with the same sizes (one union "
            f"time grid per batch, as torchdiffeq requires), torch {torch.__version__} with 2 "
            "threads. Mean of "
            f"{repeats} calls after a warm-up call.",
            "",
            "| what | latentjax (ms) | torchdiffeq (ms) | speed-up |",
            "|---|---|---|---|",
            *rows,
            "",
            machine(),
        ]
    )
    print(text)
    if not args.quick:
        write_section(BENCHMARKS / "node.md", "torchdiffeq", text, "Latent neural ODE benchmarks")


if __name__ == "__main__":
    main()
