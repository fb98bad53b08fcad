"""lfads-torch, built from a local checkout of its source, timed as its own training loop runs it.

The model is lfads-torch's `LFADS` LightningModule at the sizes of an `lfads.Config` (Poisson
read-out, coordinated dropout, AR(1) input prior, Gaussian initial-condition prior), run
without a Lightning `Trainer`: one training step is what the trainer does per batch minus its
bookkeeping (zero the gradients, `training_step`, backward, gradient clipping, AdamW step),
which favours the peer. Forward and posterior sampling follow
`lfads_torch.post_run.analysis.run_posterior_sampling` (eval mode, `predict_step` with
posterior samples, no gradients). Requires torch, pytorch-lightning and torchmetrics
(`pip install -e ".[bench]"`).

`scripts/bench_lfads.py` runs this file as a separate process (`main`, which prints its
timings as JSON), so that the worker threads of torch and of JAX never share the cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


class Peer:
    """lfads-torch's LFADS at the sizes of `config` on `[trials, bins, neurons]` counts."""

    def __init__(self, source: str, config, spikes: np.ndarray, threads: int | None = None):
        root = Path(source).resolve()
        if not (root / "lfads_torch" / "model.py").exists():
            raise ValueError(f"--peer: no lfads_torch/model.py under {root}")
        sys.path.insert(0, str(root))
        import torch
        from lfads_torch.model import LFADS
        from lfads_torch.modules import augmentations, priors, recons
        from lfads_torch.modules.readin_readout import FanInLinear
        from lfads_torch.tuples import SessionBatch

        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        c = config
        neurons, bins = spikes.shape[2], spikes.shape[1]
        heldin, enc_bins = neurons - c.n_heldout, bins - c.forward_bins
        self.model = LFADS(
            encod_data_dim=heldin, encod_seq_len=enc_bins, recon_seq_len=bins, ext_input_dim=0,
            ic_enc_seq_len=0, ic_enc_dim=c.ic_enc_dim, ci_enc_dim=c.ci_enc_dim,
            ci_lag=c.ci_lag, con_dim=c.con_dim, co_dim=c.co_dim, ic_dim=c.ic_dim,
            gen_dim=c.gen_dim, fac_dim=c.fac_dim, dropout_rate=c.dropout,
            reconstruction=torch.nn.ModuleList([recons.Poisson()]), variational=True,
            co_prior=priors.AutoregressiveMultivariateNormal(tau=10.0, nvar=0.1, shape=c.co_dim),
            ic_prior=priors.MultivariateNormal(mean=0.0, variance=0.1, shape=c.ic_dim),
            ic_post_var_min=c.ic_post_var_min, cell_clip=c.cell_clip,
            train_aug_stack=augmentations.AugmentationStack(
                [augmentations.CoordinatedDropout(c.cd_rate, 0.0, 0)], [0], [0]
            ),
            infer_aug_stack=augmentations.AugmentationStack(),
            readin=torch.nn.ModuleList([torch.nn.Identity()]),
            readout=torch.nn.ModuleList([FanInLinear(c.fac_dim, neurons)]),
            loss_scale=1e4, recon_reduce_mean=True, lr_scheduler=False,
            lr_init=c.train.learning_rate, lr_stop=1e-5, lr_decay=0.95, lr_patience=6,
            lr_adam_beta1=0.9, lr_adam_beta2=0.999, lr_adam_epsilon=1e-8, weight_decay=0.0,
            l2_start_epoch=0, l2_increase_epoch=80, l2_ic_enc_scale=0.0, l2_ci_enc_scale=0.0,
            l2_gen_scale=c.l2_gen_scale, l2_con_scale=c.l2_con_scale, kl_start_epoch=0,
            kl_increase_epoch=80, kl_ic_scale=c.kl_ic_scale, kl_co_scale=c.kl_co_scale,
        )
        # Outside a Trainer, Lightning's logging has nowhere to go.
        self.model.log = lambda *args, **kwargs: None
        self.model.log_dict = lambda *args, **kwargs: None
        self.optimizer = self.model.configure_optimizers()
        data = torch.as_tensor(spikes, dtype=torch.float32)
        empty = torch.zeros(len(data), 0)
        self.batch = {
            0: (
                SessionBatch(
                    encod_data=data[:, :enc_bins, :heldin], recon_data=data,
                    ext_input=torch.zeros(len(data), bins, 0), truth=empty, sv_mask=empty,
                ),
                (),
            )
        }

    def train_step(self):
        self.model.train()
        self.optimizer.zero_grad()
        loss = self.model.training_step(self.batch, 0)
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 200.0)
        self.optimizer.step()

    def forward(self):
        self.model.eval()
        with self.torch.no_grad():
            self.model.predict_step(self.batch, 0, sample_posteriors=True)

    def posterior_means(self, samples: int):
        self.model.eval()
        with self.torch.no_grad():
            outputs = [
                self.model.predict_step(self.batch, 0, sample_posteriors=True)[0]
                for _ in range(samples)
            ]
            return [sum(values) / samples for values in zip(*outputs, strict=True)]


def main():
    """Print `{"versions", "train": {batch: s}, "forward": s, "posterior": s}` as JSON."""
    parser = argparse.ArgumentParser(description="lfads-torch timings for bench_lfads.py")
    parser.add_argument("source")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import pytorch_lightning
    import torch
    from bench_lfads import make_trials, median_seconds, sizes

    config, total, bins, batches = sizes(args.quick)
    versions = f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
    versions += f"pytorch-lightning {pytorch_lightning.__version__}"
    result = {"versions": versions, "train": {}}
    for batch in batches:
        peer = Peer(args.source, config, np.asarray(make_trials(batch, bins, total).spikes))
        result["train"][batch] = median_seconds(peer.train_step, args.repeats)
    result["forward"] = median_seconds(peer.forward, args.repeats)
    result["posterior"] = median_seconds(lambda: peer.posterior_means(20), 2, warmup=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
