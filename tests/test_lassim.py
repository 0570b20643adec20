"""LaSSIM and the OpenCV-compatible pyramid, pinned against cv2 and against the paper's Table I.

cv2 is a test-only dependency: it is the authors' own pyramid implementation, so matching it
elementwise pins our numpy/scipy version.
"""

from __future__ import annotations

import os
import sys

import cv2
import dask.array as da
import numpy as np
import pytest
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

sys.path.insert(0, os.path.dirname(__file__))
import _images as im  # noqa: E402

from napari_medenhance.core.pyramid import (  # noqa: E402
    gaussian_pyramid,
    laplacian_band,
    pyr_down,
    pyr_up,
)
from napari_medenhance.metrics import lassim, lassim_map, max_lassim_level, ssim  # noqa: E402


# ----------------------------------------------------------------------------- cv2 reference
def _cv2_band(gray: np.ndarray, level: int) -> np.ndarray:
    g = [np.asarray(gray, np.float64)]
    for _ in range(level + 1):
        g.append(cv2.pyrDown(g[-1]))
    h, w = g[level].shape
    return g[level] - cv2.pyrUp(g[level + 1], dstsize=(w, h))


def _cv2_lassim(a: np.ndarray, b: np.ndarray, level: int, full: bool = False):
    """Independent LaSSIM: rgb2gray, cv2 pyramid, skimage SSIM with the joint band range."""
    if a.ndim == 3:
        a, b = rgb2gray(a), rgb2gray(b)
    la, lb = _cv2_band(a, level), _cv2_band(b, level)
    dr = max(la.max(), lb.max()) - min(la.min(), lb.min())
    return structural_similarity(la, lb, data_range=dr, full=full)


# ----------------------------------------------------------------------------- pyramid
SIZES = [(8, 8), (9, 7), (10, 13), (31, 32), (383, 511), (100, 101)]


@pytest.mark.parametrize("shape", SIZES)
def test_pyr_down_matches_cv2(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape) * 100
    ours, ref = pyr_down(x), cv2.pyrDown(x)
    assert ours.shape == ref.shape == ((shape[0] + 1) // 2, (shape[1] + 1) // 2)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("shape", SIZES)
def test_pyr_up_matches_cv2_all_allowed_sizes(shape):
    rng = np.random.default_rng(sum(shape) + 1)
    x = rng.normal(size=shape) * 100
    h, w = shape
    # OpenCV allows each output side to be 2n, or 2n +- 1 when that is odd
    for dh in (2 * h - 1, 2 * h, 2 * h + 1):
        for dw in (2 * w - 1, 2 * w, 2 * w + 1):
            ref = cv2.pyrUp(x, dstsize=(dw, dh))
            ours = pyr_up(x, (dh, dw))
            assert ours.shape == ref.shape == (dh, dw)
            np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pyr_up(x), cv2.pyrUp(x), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="2\\*"):
        pyr_up(x, (2 * h + 2, 2 * w))


def test_pyr_up_odd_size_is_a_crop_of_the_even_one():
    # the surprising OpenCV behaviour we reproduce: no re-reflection inside the odd grid
    x = im.cell()[:50, :40].astype(np.float64)
    np.testing.assert_array_equal(pyr_up(x, (99, 79)), pyr_up(x)[:99, :79])
    np.testing.assert_allclose(cv2.pyrUp(x, dstsize=(79, 99)), cv2.pyrUp(x)[:99, :79], atol=1e-9)


@pytest.mark.parametrize("level", [0, 1, 2, 3, 4])
def test_laplacian_band_matches_cv2_on_real_odd_image(level):
    gray = im.cell()[:511, :383].astype(np.float64)
    np.testing.assert_allclose(
        laplacian_band(gray, level), _cv2_band(gray, level), rtol=0, atol=1e-9
    )
    g = gaussian_pyramid(gray, level)
    assert len(g) == level + 1 and g[-1].shape == laplacian_band(gray, level).shape


# ----------------------------------------------------------------------------- LaSSIM vs cv2
def _real_pairs():
    cell = im.cell()[:511, :383]  # odd sizes on purpose
    yield "cell uint8 odd", cell, np.rint(im.blur(im.add_noise(cell, 10, 1), 2)).astype(np.uint8)
    ph = im.phantom()
    yield "phantom float", ph, np.clip(im.blur(ph, 3.0), 0, 1)
    ihc = im.ihc()[:383, :511]
    yield "ihc rgb odd", ihc, np.rint(im.elastic(ihc, 60, 6, seed=2)).astype(np.uint8)
    ret = im.retina(501)
    yield "retina rgb", ret, np.rint(im.blur(ret, 2.5)).astype(np.uint8)
    mic = im.microaneurysms()
    yield "microaneurysms", mic, im.add_noise(mic, 8, 3)


PAIRS = list(_real_pairs())


@pytest.mark.parametrize("pair", PAIRS, ids=[p[0] for p in PAIRS])
def test_lassim_matches_independent_cv2_computation(pair):
    _, a, b = pair
    for level in range(1, 5):
        if level > max_lassim_level(a.shape[:2]):
            continue  # microaneurysms (102 px) stops at level 3
        ours = lassim(a, b, level=level)
        assert ours == pytest.approx(_cv2_lassim(a, b, level), abs=1e-10), level
        assert 0.0 < ours < 1.0


def test_lassim_map_shape_and_values():
    a = im.cell()[:511, :383]
    b = np.rint(im.blur(a, 2.0)).astype(np.uint8)
    for level in (1, 3):
        m = lassim_map(a, b, level=level)
        _, ref_map = _cv2_lassim(a, b, level, full=True)
        assert m.shape == ref_map.shape == laplacian_band(a.astype(float), level).shape
        np.testing.assert_allclose(m, ref_map, rtol=0, atol=1e-10)
        assert lassim(a, b, level=level) == pytest.approx(m[3:-3, 3:-3].mean(), abs=1e-12)
    assert m.shape == (64, 48)  # ceil(511 / 8), ceil(383 / 8)
    rgb = im.ihc()[:200, :120]
    stack = np.stack([rgb, rgb[::-1]])
    assert lassim_map(stack, stack, level=2).shape == (2, 50, 30)  # channel axis dropped


def test_identity_is_exactly_one():
    for img in (im.cell(), im.phantom(), im.ihc(), im.retina(400), im.microaneurysms()):
        assert lassim(img, img.copy()) == 1.0
        assert np.all(lassim_map(img, img) == 1.0)
    flat = np.full((64, 64), 7.0)
    assert lassim(flat, flat.copy(), level=2) == 1.0  # both bands 0: data range 0


def test_lassim_rgb_uses_rgb2gray():
    a = im.ihc()[:256, :256]
    b = np.rint(im.blur(a, 2.0)).astype(np.uint8)
    assert lassim(a, b) == pytest.approx(lassim(rgb2gray(a), rgb2gray(b)), abs=1e-12)
    # integer gray is used as-is; a common linear rescale of both cancels out
    c = im.cell()
    d = np.rint(im.blur(c, 2.0)).astype(np.uint8)
    assert lassim(c, d) == pytest.approx(lassim(c / 255.0, d / 255.0), abs=1e-9)


def test_lassim_stack_per_plane_and_dask():
    c = im.cell()[:300, :300]
    ref = np.stack([c, c, c])
    deg = np.stack([c] + [np.rint(im.blur(c, s)).astype(np.uint8) for s in (2, 4)])
    v = lassim(ref, deg, per_plane=True)
    assert v.shape == (3,) and v[0] == 1.0 and v[0] > v[1] > v[2]
    assert lassim(ref, deg) == pytest.approx(v.mean(), abs=1e-12)
    dv = lassim(da.from_array(ref, chunks=(1, -1, -1)), da.from_array(deg), per_plane=True)
    np.testing.assert_array_equal(dv, v)


# ----------------------------------------------------------------------------- paper Table I
def _table_images():
    return {
        "cell": im.cell() / 255.0,
        "phantom": im.phantom(),
        "ihc": im.ihc() / 255.0,
        "retina": im.retina(640) / 255.0,
        "microaneurysms": im.microaneurysms() / 255.0,
    }


@pytest.mark.parametrize("name", list(_table_images()))
def test_lassim_separates_deformation_under_strong_blur(name):
    """Paper Table I: f(gt, blur) > f(gt, deform + blur), and LaSSIM separates the two far
    better than SSIM under strong blur. Here: Gaussian blur sigma = 4 px, elastic deformation
    alpha = 100, sigma = 8 px (seeded). On these five images the LaSSIM gap is 2.3-8x the
    SSIM gap (checked before asserting 2x)."""
    gt = _table_images()[name]
    blurred = im.blur(gt, 4.0)
    deformed = im.blur(im.elastic(gt, alpha=100.0, sigma=8.0, seed=0), 4.0)
    la_blur, la_def = lassim(gt, blurred), lassim(gt, deformed)
    ss_blur = ssim(gt, blurred, data_range=1.0)
    ss_def = ssim(gt, deformed, data_range=1.0)
    assert la_blur > la_def + 0.03
    assert la_blur - la_def > 2.0 * (ss_blur - ss_def)


# ----------------------------------------------------------------------------- validation
def test_max_lassim_level():
    assert max_lassim_level((7, 7)) == 0
    assert max_lassim_level((6, 100)) == -1
    assert max_lassim_level((13, 13)) == 1  # band 1 is 7x7
    assert max_lassim_level((12, 12)) == 0  # band 1 would be 6x6
    assert max_lassim_level((660, 550)) == 6  # level 6 band is 11 x 9, level 7 is 6 x 5


def test_too_small_for_level_names_the_level_that_fits():
    mic = im.microaneurysms()  # 102 x 102: bands 102, 51, 26, 13, 7, 4
    assert max_lassim_level(mic.shape) == 4
    with pytest.raises(ValueError, match=r"level 5.*\(4, 4\).*use level=4"):
        lassim(mic, mic, level=5)
    with pytest.raises(ValueError, match="at least 7x7"):
        lassim(mic[:6, :6], mic[:6, :6], level=0)
    with pytest.raises(ValueError, match="use level=1"):
        lassim_map(mic[:20, :20], mic[:20, :20], level=3)


@pytest.mark.parametrize("level", [-1, 1.5, True, "3"])
def test_bad_level(level):
    c = im.cell()
    with pytest.raises(ValueError, match="level"):
        lassim(c, c, level=level)
