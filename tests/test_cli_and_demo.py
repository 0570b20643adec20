"""The `medenhance` command line and the bundled demo (the README's first command runs it)."""

from __future__ import annotations

import csv

import numpy as np
import tifffile

from napari_medenhance.cli import main
from napari_medenhance.metrics import lassim, psnr


def test_metrics_cli_scores_every_slice(tmp_path, nuclei, nuclei_smoothed, capsys):
    a, b, c = tmp_path / "in.tif", tmp_path / "out.tif", tmp_path / "m.csv"
    tifffile.imwrite(a, nuclei)
    tifffile.imwrite(b, nuclei_smoothed)
    assert main(["metrics", str(a), str(b), "--reference", str(a), "--csv", str(c)]) == 0
    rows = list(csv.DictReader(c.open()))
    assert len(rows) == nuclei.shape[0]
    np.testing.assert_allclose(float(rows[4]["lassim"]), lassim(nuclei[4], nuclei_smoothed[4]), atol=1e-12)
    np.testing.assert_allclose(float(rows[4]["psnr"]), psnr(nuclei[4], nuclei_smoothed[4]), atol=1e-9)
    assert "mean of 24 slices" in capsys.readouterr().out


def test_metrics_cli_refuses_bad_input_clearly(tmp_path, nuclei, capsys):
    a, b = tmp_path / "in.tif", tmp_path / "nan.tif"
    tifffile.imwrite(a, nuclei[:2].astype(np.float32))
    bad = nuclei[:2].astype(np.float32)
    bad[1, 10, 10] = np.nan
    tifffile.imwrite(b, bad)
    assert main(["metrics", str(a), str(b)]) == 2
    assert "NaN" in capsys.readouterr().err


def test_demo_opens_napari_with_widget_and_saves_screenshot(tmp_path, qapp):
    from skimage.io import imread

    from napari_medenhance._demo import run

    path = run(tmp_path / "demo.png", show=True)
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 600 and img.shape[1] > 1000  # the whole window, docks included
    assert img[..., :3].std() > 10  # not a blank frame


def test_demo_input_is_noisy_and_its_fallback_output_says_what_it_is(isolated_models, nuclei):
    from napari_medenhance._demo import DEMO_SIGMA, noisy_copy, restore
    from napari_medenhance.metrics import psnr

    clean = nuclei[10:12]
    noisy = noisy_copy(clean)
    assert noisy.dtype == clean.dtype and noisy.shape == clean.shape
    span = float(clean.max()) - float(clean.min())
    resid = noisy.astype(float) - clean.astype(float)
    assert abs(resid.std() / span - DEMO_SIGMA / 255) < 0.1 * DEMO_SIGMA / 255
    assert np.array_equal(noisy, noisy_copy(clean))  # seeded: the same demo every time
    out, name = restore(noisy)  # no dran in an isolated models folder
    assert "NLM baseline" in name and "no dran" in name
    assert psnr(clean, out, data_range=span) > psnr(clean, noisy, data_range=span) + 3
