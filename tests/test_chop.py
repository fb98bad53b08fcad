"""`lj.data.chop` / `lj.data.merge`: continuous recordings cut into windows and put back."""

import numpy as np
import pytest

import latentjax as lj


def stream_of(num_bins, num_neurons=3, seed=0):
    rng = np.random.default_rng(seed)
    return lj.Trials(
        rng.poisson(2.0, (1, num_bins, num_neurons)),
        dt=0.02,
        behavior=rng.normal(size=(1, num_bins, 2)),
    )


@pytest.mark.parametrize(
    "num_bins, window, overlap",
    [(20, 5, 0), (20, 5, 2), (23, 6, 3), (17, 4, 3), (9, 9, 0), (10, 9, 8), (31, 8, 1)],
)
@pytest.mark.parametrize("mode", ["average", "centre"])
def test_chop_then_merge_returns_the_signal_exactly(num_bins, window, overlap, mode):
    stream = stream_of(num_bins)
    windows = lj.data.chop(stream, window, overlap)
    starts = lj.data.window_starts(num_bins, window, overlap)
    assert windows.shape == (len(starts), window, 3)
    # the windows are the stream's slices, edges included (the last one ends at the end)
    assert starts[0] == 0 and starts[-1] == num_bins - window
    assert np.all(np.diff(starts) <= window - overlap) and np.all(np.diff(starts) > 0)
    for w, start in enumerate(starts):
        np.testing.assert_array_equal(windows.spikes[w], stream.spikes[0, start : start + window])
        np.testing.assert_array_equal(windows.times[w], stream.times[0, start : start + window])
    # integer-valued counts come back bit for bit in both modes; random floats exactly when
    # one window is taken per bin (centre), to the last bit of float64 when averaged
    merged = lj.data.merge(windows.spikes, num_bins=num_bins, overlap=overlap, mode=mode)
    np.testing.assert_array_equal(merged, stream.spikes)
    behavior = lj.data.merge(windows.behavior, num_bins=num_bins, overlap=overlap, mode=mode)
    if mode == "centre":
        np.testing.assert_array_equal(behavior, stream.behavior)
    else:
        np.testing.assert_allclose(behavior, stream.behavior, rtol=1e-15, atol=0)


def test_merge_averages_overlaps_and_centre_keeps_the_nearest_window():
    # window w holds the value w everywhere: averaging and nearest-centre are then visible
    num_bins, window, overlap = 10, 4, 2  # starts 0, 2, 4, 6
    windows = np.broadcast_to(np.arange(4.0)[:, None, None], (4, window, 1))
    average = lj.data.merge(windows, num_bins=num_bins, overlap=overlap)[0, :, 0]
    np.testing.assert_array_equal(average, [0, 0, 0.5, 0.5, 1.5, 1.5, 2.5, 2.5, 3, 3])
    centre = lj.data.merge(windows, num_bins=num_bins, overlap=overlap, mode="centre")[0, :, 0]
    # centres at 1.5, 3.5, 5.5, 7.5; bin 2 is 0.5 from window 0's centre, 1.5 from window 1's
    np.testing.assert_array_equal(centre, [0, 0, 0, 1, 1, 2, 2, 3, 3, 3])


def test_merge_a_posterior_merges_every_time_field():
    windows = np.arange(4 * 5 * 2, dtype=float).reshape(4, 5, 2)
    posterior = lj.Posterior(
        latents=windows, rates=windows + 1, extras={"covariances": windows[..., None], "x": 1.0}
    )
    merged = lj.data.merge(posterior, num_bins=14, overlap=2, mode="centre")
    assert merged.latents.shape == (1, 14, 2) and merged.rates.shape == (1, 14, 2)
    assert merged.covariances.shape == (1, 14, 2, 1) and "x" not in merged.extras
    np.testing.assert_array_equal(merged.rates, merged.latents + 1)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: lj.data.chop(s, 0, 0), "`window` must be at least 1"),
        (lambda s: lj.data.chop(s, 5, 5), r"`overlap` must be in \[0, window\)"),
        (lambda s: lj.data.chop(s, 5, -1), "`overlap`"),
        (lambda s: lj.data.chop(s, 5.0, 1), "`window` must be an int"),
        (lambda s: lj.data.chop(s, 50, 1), "at least one `window`"),
        (lambda s: lj.data.chop(np.zeros((1, 10, 2)), 5, 1), "`stream` must be lj.Trials"),
        (lambda s: lj.data.merge(np.zeros((3, 5, 2)), num_bins=20, overlap=1), "`windows` must"),
        (lambda s: lj.data.merge(np.zeros((5, 5)), num_bins=20, overlap=1, mode="x"), "`mode`"),
    ],
)
def test_chop_and_merge_validate(call, message):
    with pytest.raises(ValueError, match=message):
        call(stream_of(20))


def test_chop_needs_one_stream():
    two = lj.Trials(np.zeros((2, 20, 3), dtype=int), dt=0.02)
    with pytest.raises(ValueError, match="`stream` must be one continuous recording"):
        lj.data.chop(two, 5, 1)
