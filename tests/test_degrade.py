"""Algorithm 1 of the DPE paper (core.degrade) on real images from the shipped sample data."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2lab

from napari_medenhance.core.degrade import (
    Degradation,
    TooDarkError,
    adjust_brightness,
    adjust_contrast,
    apply_degradation,
    bright_enough,
    degrade,
    draw_degradation,
    mean_luminance,
)
from napari_medenhance.metrics import psnr
from napari_medenhance.sample_data import load


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    """Real RGB immunohistochemistry image, float [0, 1]: bright (mean Lab L ~170 / 255)."""
    return load("ihc_rgb").astype(np.float64) / 255.0


def _norm(a: np.ndarray) -> np.ndarray:
    """Robust percentile normalisation to [0, 1], as training/pool.py does for 16-bit data."""
    a = a.astype(np.float64)
    lo, hi = np.percentile(a, (0.1, 99.9))
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    """Real CT slice, percentile-normalised gray (mean non-zero Lab L ~155 / 255)."""
    return _norm(load("ct_slice"))


@pytest.fixture(scope="module")
def nuclei() -> np.ndarray:
    """Real fluorescence plane (dark background, bright nuclei): mean Lab L well below 100."""
    return _norm(load("nuclei_stack")[12])


def test_luminance_is_8bit_lab_l(ihc):
    # white, black and sRGB mid-gray: L* = 100, 0 and 53.39 → 255, 0 (no non-zero pixels) and 136
    assert mean_luminance(np.ones((4, 4))) == 255.0
    assert mean_luminance(np.zeros((4, 4, 3))) == 0.0
    assert mean_luminance(np.full((4, 4), 0.5)) == 136.0
    # only non-zero L counts: half black, half white is still 255
    half = np.zeros((4, 4))
    half[:2] = 1.0
    assert mean_luminance(half) == 255.0
    expected = np.rint(rgb2lab(ihc)[..., 0] * 2.55)
    assert mean_luminance(ihc) == pytest.approx(expected[expected > 0].mean())


def test_dark_images_are_skipped(ihc, ct, nuclei):
    assert mean_luminance(nuclei) < 100 and not bright_enough(nuclei)
    assert bright_enough(ihc) and bright_enough(ct)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    with pytest.raises(TooDarkError, match=r"too dark.*mean non-zero Lab L is \d+\.\d.*threshold 100"):
        degrade(nuclei, rng)
    assert rng.bit_generator.state == state  # nothing drawn for a skipped image
    # the check can be switched off
    out = degrade(nuclei, rng, brightness_threshold=None)
    assert out.shape == nuclei.shape


def test_deterministic_per_seed(ihc, ct):
    for img in (ihc, ct):
        a = degrade(img, np.random.default_rng(7))
        b = degrade(img, np.random.default_rng(7))
        c = degrade(img, np.random.default_rng(8))
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)


def test_shapes_dtype_and_range(ihc, ct):
    for img in (ihc, ct):
        for seed in range(5):
            out = degrade(img, np.random.default_rng(seed))
            assert out.shape == img.shape and out.dtype == np.float32
            assert 0.0 <= out.min() and out.max() <= 1.0
    # a gray image keeps one noise field: it stays 2-D, not three independent channels
    assert degrade(ct, np.random.default_rng(0)).ndim == 2


def test_parameters_lie_in_the_documented_ranges():
    rng = np.random.default_rng(0)
    draws = [draw_degradation(rng) for _ in range(2000)]
    sig = np.array([d.sigma for d in draws]) * 255
    con = np.array([d.contrast for d in draws])
    bri = np.array([d.brightness for d in draws])
    assert 0 <= sig.min() and sig.max() <= 10 and sig.mean() == pytest.approx(5, abs=0.3)
    for f in (con, bri):
        assert 0.1 <= f.min() and f.max() <= 0.8 and f.mean() == pytest.approx(0.45, abs=0.02)
    with pytest.raises(ValueError, match="0 < lo"):
        draw_degradation(rng, factor_range=(0.0, 0.8))


def test_colorjitter_definitions():
    rng = np.random.default_rng(1)
    rgb = rng.random((8, 9, 3))
    # contrast: blend with the mean of torchvision's gray (0.2989 R + 0.587 G + 0.114 B)
    m = (rgb[..., 0] * 0.2989 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).mean()
    np.testing.assert_allclose(adjust_contrast(rgb, 0.3), np.clip(0.3 * rgb + 0.7 * m, 0, 1))
    gray = rng.random((8, 9))
    np.testing.assert_allclose(adjust_contrast(gray, 0.5), 0.5 * gray + 0.5 * gray.mean())
    assert np.allclose(adjust_contrast(gray, 0.0), gray.mean())  # factor 0: flat
    # brightness: blend with black
    np.testing.assert_allclose(adjust_brightness(rgb, 0.25), 0.25 * rgb)
    np.testing.assert_allclose(adjust_brightness(rgb, 2.0), np.clip(2 * rgb, 0, 1))


def test_degradation_lowers_psnr_plausibly(ihc, ct):
    # noise alone at sigma = 10/255 (factors 1): PSNR ~ 20 log10(255 / 10) = 28.1 dB (a bit more:
    # clipping at 0 and 1 removes some noise)
    noisy = apply_degradation(ct, Degradation(10 / 255, 1.0, 1.0), np.random.default_rng(0))
    assert 28.0 < psnr(ct, noisy, data_range=1.0) < 30.0
    # the full degradation darkens and flattens as well: far below the noise-only value, but the
    # image is still there (not black)
    for img in (ihc, ct):
        values = [psnr(img, degrade(img, np.random.default_rng(s)), data_range=1.0) for s in range(8)]
        assert 5.0 < np.mean(values) < 22.0, values
        assert max(values) < 28.0
    out = degrade(ihc, np.random.default_rng(3))
    assert out.mean() < ihc.mean() and out.std() < ihc.std()  # darker and flatter (factors < 1)
    assert np.corrcoef(out.ravel(), ihc.ravel())[0, 1] > 0.8  # same picture


def test_bad_inputs_are_refused_with_advice(ihc):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="float image.*img_as_float"):
        degrade(load("ihc_rgb"), rng)
    with pytest.raises(ValueError, match=r"within \[0, 1\].*normalise"):
        degrade(ihc * 2, rng)
    with pytest.raises(ValueError, match="H×W or RGB H×W×3.*each plane"):
        degrade(np.zeros((2, 8, 8)), rng)
