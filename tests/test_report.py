"""`report.html` is self-contained and shows its figures in a real (headless) browser."""

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from matplotlib.image import imread

import latentjax as lj
from latentjax.report import write_report

# matplotlib's default first colour (tab:blue): the inferred-latent line of the first figure
TAB_BLUE = np.array([31, 119, 180]) / 255


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    dataset = lj.datasets.lorenz(seed=0, num_trials=10, num_bins=40, num_neurons=8)
    noise = np.random.default_rng(0).normal(scale=0.1, size=dataset.truth["latents"].shape)
    posterior = lj.Posterior(latents=dataset.truth["latents"] + noise, rates=dataset.truth["rates"])
    run = tmp_path_factory.mktemp("run")
    history = {"step": np.arange(1, 6) * 10, "loss": np.linspace(2.0, 1.0, 5)}
    path = write_report(
        run,
        trials=dataset.trials,
        posterior=posterior,
        truth=dataset.truth,
        result=lj.FitResult(params=None, config=None, history=history),
    )
    return path


def test_every_figure_is_embedded_as_a_png(report):
    text = report.read_text()
    assert 'src="figures/' not in text and "file://" not in text  # nothing external
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    figures = sorted((report.parent / "figures").glob("*.png"))
    assert len(images) == len(figures) >= 4
    decoded = [imread(io.BytesIO(base64.b64decode(data)), format="png") for data in images]
    assert all(image.shape[0] > 100 and image.shape[1] > 100 for image in decoded)


def test_headless_browser_shows_the_images(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    shot = tmp_path / "shot.png"
    alone = tmp_path / "report.html"
    shutil.copy(report, alone)  # away from figures/: the page must stand alone
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,1400",
            f"--screenshot={shot}",
            alone.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = imread(shot)[..., :3]
    blue = np.all(np.abs(pixels - TAB_BLUE) < 0.03, axis=-1)
    assert blue.sum() > 200, "the rendered page shows no plotted line"
