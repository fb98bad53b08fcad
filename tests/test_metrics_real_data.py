"""Metrics on a real recording: the NLB spike-smoothing baseline on MC_Maze_Small (test split).

Data: ../shared/data/mc_maze_small_test (DANDI:000140; Churchland et al. 2010, 2012; Pei et al.
2021, CC-BY-4.0). Skipped when absent.
"""

import numpy as np
import pytest
from conftest import SHARED_DATA

import latentjax as lj
from latentjax import metrics
from latentjax.metrics.nlb import smooth_spikes

MC_MAZE_SMALL = SHARED_DATA / "mc_maze_small_test/sub-Jenkins_ses-small_desc-test_ecephys.nwb"


@pytest.mark.skipif(not MC_MAZE_SMALL.exists(), reason=f"real data absent: {MC_MAZE_SMALL}")
def test_spike_smoothing_baseline_co_bps_on_mc_maze_small():
    trials = lj.io.load_nwb(
        MC_MAZE_SMALL, bin_size=0.02, align="move_onset_time", window=(-0.25, 0.45)
    )
    heldin, heldout = lj.data.heldout_neurons(trials, 0.2, seed=0)
    # NLB smoothing baseline: a Poisson GLM from smoothed held-in spikes to held-out neurons.
    smoothed = smooth_spikes(heldin.spikes.astype(float), heldin.mask, 0.05 / heldin.dt)
    co_bps = metrics.few_shot_co_bps(
        smoothed, heldout.spikes, num_shots=80, num_repeats=1, mask=trials.mask
    )
    shuffled = smoothed[np.random.default_rng(0).permutation(trials.num_trials)]
    chance = metrics.few_shot_co_bps(
        shuffled, heldout.spikes, num_shots=80, num_repeats=1, mask=trials.mask
    )
    # The NLB'21 leaderboard lists smoothing at about 0.2 co-bps on MC_Maze_Small (20 ms).
    assert 0.1 < co_bps < 0.3
    assert chance < 0.03
