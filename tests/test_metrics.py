"""PSNR / SSIM / ΔE / stacks / validation, pinned against scikit-image on real images."""

from __future__ import annotations

import os
import sys
import warnings

import dask.array as da
import numpy as np
import pytest
from skimage.color import deltaE_ciede2000, gray2rgb, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

sys.path.insert(0, os.path.dirname(__file__))
import _images as im  # noqa: E402

from napari_medenhance.metrics import (  # noqa: E402
    delta_e,
    iter_stack_metrics,
    lassim,
    plane_metrics,
    psnr,
    ssim,
    ssim_map,
)


def _de_ref(ref01: np.ndarray, img01: np.ndarray) -> float:
    if ref01.ndim == 2:
        ref01, img01 = gray2rgb(ref01), gray2rgb(img01)
    return float(deltaE_ciede2000(rgb2lab(ref01), rgb2lab(img01)).mean())


def _cases():
    """(name, reference, distorted, data_range skimage should use, [0,1]-scaled pair for ΔE)."""
    cell = im.cell()[:300, :260]
    c_noisy = im.add_noise(cell, 12.0, seed=1)
    yield "uint8 gray", cell, c_noisy, 255.0, (cell, c_noisy)

    rgb = im.ihc()[:256, :200]
    r_blur = np.rint(im.blur(rgb, 1.5)).astype(np.uint8)
    yield "uint8 rgb", rgb, r_blur, 255.0, (rgb, r_blur)

    c16 = cell.astype(np.uint16) * 257  # 8-bit micrograph on the full 16-bit scale
    c16_noisy = im.add_noise(c16, 3000.0, seed=2)
    yield "uint16 gray", c16, c16_noisy, 65535.0, (c16, c16_noisy)

    ph = im.phantom()[::2, ::2]
    ph_noisy = im.add_noise(ph, 0.05, seed=3)  # float64, stays in [0, 1]
    yield "float [0,1]", ph, ph_noisy, 1.0, (ph, ph_noisy)

    # float32 in physical-ish units (not [0, 1]): joint max - min, offset = joint min for ΔE
    hu = (ph * 2000.0 - 1000.0).astype(np.float32)
    hu_blur = im.blur(hu, 2.0).astype(np.float32)
    lo = min(hu.min(), hu_blur.min())
    dr = float(max(hu.max(), hu_blur.max())) - float(lo)
    yield "float32 HU", hu, hu_blur, dr, ((hu - float(lo)) / dr, (hu_blur - float(lo)) / dr)


CASES = list(_cases())
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_psnr_ssim_delta_e_match_skimage(case):
    _, ref, img, dr, (ref01, img01) = case
    rgb_axis = -1 if ref.ndim == 3 else None
    assert psnr(ref, img) == pytest.approx(
        peak_signal_noise_ratio(ref, img, data_range=dr), abs=1e-6
    )
    assert ssim(ref, img) == pytest.approx(
        structural_similarity(ref, img, data_range=dr, channel_axis=rgb_axis), abs=1e-6
    )
    assert delta_e(ref, img) == pytest.approx(_de_ref(ref01, img01), abs=1e-6)
    # the distortion is real: metrics are far from identity
    assert 10 < psnr(ref, img) < 60 and ssim(ref, img) < 0.99 and delta_e(ref, img) > 0.1


def test_defaults_equal_skimage_defaults_for_uint8():
    cell = im.cell()[:200, :200]
    noisy = im.add_noise(cell, 20.0, seed=4)
    assert psnr(cell, noisy) == pytest.approx(peak_signal_noise_ratio(cell, noisy), abs=1e-6)
    rgb = im.ihc()[:128, :128]
    rb = np.rint(im.blur(rgb, 2.0)).astype(np.uint8)
    # uint8 rgb2lab directly (img_as_float inside) == our [0, 1] scaling
    want = deltaE_ciede2000(rgb2lab(rgb), rgb2lab(rb)).mean()
    assert delta_e(rgb, rb) == pytest.approx(want, abs=1e-9)


def test_explicit_data_range_wins():
    cell = im.cell()[:200, :200]
    noisy = im.add_noise(cell, 10.0, seed=5)
    assert psnr(cell, noisy, data_range=100) == pytest.approx(
        peak_signal_noise_ratio(cell, noisy, data_range=100), abs=1e-6
    )
    assert ssim(cell, noisy, data_range=100) == pytest.approx(
        structural_similarity(cell, noisy, data_range=100), abs=1e-6
    )
    assert ssim(cell, noisy, data_range=100) != pytest.approx(ssim(cell, noisy), abs=1e-3)
    with pytest.raises(ValueError, match="data_range"):
        psnr(cell, noisy, data_range=0)


def test_identical_images_psnr_inf_without_warning():
    cell = im.cell()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert psnr(cell, cell.copy()) == float("inf")
        assert ssim(cell, cell) == 1.0
        assert delta_e(cell, cell) == 0.0


def test_rgba_drops_alpha_and_rgb_flag():
    rgb = im.ihc()[:128, :160]
    rb = np.rint(im.blur(rgb, 1.0)).astype(np.uint8)
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    rgba, rba = np.concatenate([rgb, alpha], -1), np.concatenate([rb, alpha * 0], -1)
    assert ssim(rgba, rba) == pytest.approx(ssim(rgb, rb), abs=1e-12)
    assert psnr(rgba, rba) == pytest.approx(psnr(rgb, rb), abs=1e-12)
    # rgb=False reads (Y, X, 3) as Y grayscale planes of X x 3 pixels: too narrow for SSIM
    with pytest.raises(ValueError, match="7x7"):
        ssim(rgb, rb, rgb=False)
    with pytest.raises(ValueError, match="last axis of length 3 or 4"):
        psnr(im.cell()[:20, :20], im.cell()[:20, :20], rgb=True)


def _stack():
    """(3, Y, X) uint8: three real noise levels of the same cell crop."""
    cell = im.cell()[:160, :140]
    ref = np.stack([cell] * 3)
    deg = np.stack([im.add_noise(cell, s, seed=i) for i, s in enumerate((5.0, 15.0, 30.0))])
    return ref, deg


def test_stack_per_plane_and_mean():
    ref, deg = _stack()
    for fn in (psnr, ssim, delta_e):
        vals = fn(ref, deg, per_plane=True)
        assert vals.shape == (3,)
        assert fn(ref, deg) == pytest.approx(vals.mean(), abs=1e-12)
        for z in range(3):
            assert vals[z] == pytest.approx(fn(ref[z], deg[z]), abs=1e-12)
    # more noise -> lower scores, strictly
    p = psnr(ref, deg, per_plane=True)
    assert p[0] > p[1] > p[2]
    # two leading axes (T, Z) keep their shape
    ref4, deg4 = ref.reshape(1, 3, *ref.shape[1:]), deg.reshape(1, 3, *deg.shape[1:])
    assert ssim(ref4, deg4, per_plane=True).shape == (1, 3)
    # a single plane with per_plane=True gives a 0-d array
    assert psnr(ref[0], deg[0], per_plane=True).shape == ()


def test_rgb_stack_per_plane():
    rgb = im.ihc()[:96, :96]
    ref = np.stack([rgb, rgb])
    deg = np.stack([rgb, np.rint(im.blur(rgb, 2.0)).astype(np.uint8)])
    v = ssim(ref, deg, per_plane=True)
    assert v.shape == (2,) and v[0] == 1.0 and v[1] < 0.95


def test_dask_equals_numpy():
    ref, deg = _stack()
    dref, ddeg = da.from_array(ref, chunks=(1, -1, -1)), da.from_array(deg, chunks=(1, -1, -1))
    for fn in (psnr, ssim, delta_e, lassim):
        np.testing.assert_allclose(
            fn(dref, ddeg, per_plane=True), fn(ref, deg, per_plane=True), rtol=0, atol=1e-12
        )
    np.testing.assert_array_equal(ssim_map(dref, ddeg), ssim_map(ref, deg))


def test_ssim_map_shapes_and_relation_to_scalar():
    cell = im.cell()[:120, :100]
    noisy = im.add_noise(cell, 15.0, seed=7)
    m = ssim_map(cell, noisy)
    assert m.shape == cell.shape and m.dtype == np.float64
    # scikit-image's scalar is the map's mean without the 3-pixel border
    assert ssim(cell, noisy) == pytest.approx(m[3:-3, 3:-3].mean(), abs=1e-12)
    rgb = im.ihc()[:64, :80]
    rb = np.rint(im.blur(rgb, 1.0)).astype(np.uint8)
    assert ssim_map(rgb, rb).shape == (64, 80)
    assert ssim_map(np.stack([rgb] * 2), np.stack([rb] * 2)).shape == (2, 64, 80)
    ref, deg = _stack()
    assert ssim_map(ref, deg).shape == ref.shape


# ----------------------------------------------------------------------------- validation
def test_shape_mismatch_shows_both_shapes():
    a, b = im.cell()[:100, :100], im.cell()[:100, :90]
    for fn in (psnr, ssim, delta_e, lassim):
        with pytest.raises(ValueError, match=r"\(100, 100\).*\(100, 90\)"):
            fn(a, b)


def test_nan_and_inf_are_counted():
    ph = im.phantom()[:64, :64].copy()
    bad = ph.copy()
    bad[0, :3] = np.nan
    bad[5, 5] = np.inf
    for fn in (psnr, ssim, delta_e, lassim):
        with pytest.raises(ValueError, match=r"3 NaN and 1 infinite"):
            fn(ph, bad) if fn is not lassim else fn(ph, bad, level=1)
    # dask: found per plane, with the plane index
    stack = da.from_array(np.stack([ph, bad]), chunks=(1, -1, -1))
    with pytest.raises(ValueError, match=r"3 NaN and 1 infinite.*plane \(1,\)"):
        psnr(da.from_array(np.stack([ph, ph])), stack)


@pytest.mark.parametrize(
    "shape, match",
    [((0, 10), "empty"), ((1, 1), "at least 2x2"), ((5,), "2-D"), ((4, 0, 3), "empty")],
)
def test_degenerate_shapes(shape, match):
    a = np.zeros(shape, np.float64)
    for fn in (psnr, ssim, delta_e, lassim):
        with pytest.raises(ValueError, match=match):
            fn(a, a)


def test_ssim_too_small_and_bool_rejected():
    a = im.cell()[:6, :40]
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(a, a)
    m = im.cell() > 100
    with pytest.raises(ValueError, match="boolean"):
        psnr(m, m)


# ----------------------------------------------------------------------------- per-plane API
def test_plane_metrics_keys_and_values():
    cell = im.cell()[:200, :176]
    noisy = im.add_noise(cell, 20.0, seed=8)
    out = np.rint(im.blur(noisy, 1.0)).astype(np.uint8)  # a "denoised" output
    d = plane_metrics(noisy, out)
    assert set(d) == {"lassim", "ssim"}
    d = plane_metrics(noisy, out, cell, level=2)
    assert set(d) == {"lassim", "ssim", "psnr", "ssim_ref", "delta_e"}
    assert d["lassim"] == pytest.approx(lassim(noisy, out, level=2), abs=1e-12)
    assert d["ssim"] == pytest.approx(ssim(noisy, out), abs=1e-12)
    assert d["psnr"] == pytest.approx(psnr(cell, out), abs=1e-12)
    assert d["ssim_ref"] == pytest.approx(ssim(cell, out), abs=1e-12)
    assert d["delta_e"] == pytest.approx(delta_e(cell, out), abs=1e-12)
    # the blur really denoises: closer to the clean reference than the noisy input was
    assert d["psnr"] > psnr(cell, noisy)
    with pytest.raises(ValueError, match="iter_stack_metrics"):
        plane_metrics(np.stack([cell] * 2), np.stack([cell] * 2))


def test_iter_stack_metrics_total_cancel_dask():
    ref, deg = _stack()
    out = np.stack([np.rint(im.blur(p, 1.0)).astype(np.uint8) for p in deg])
    events = list(iter_stack_metrics(deg, out, ref, level=2))
    assert [e[0] for e in events] == [(0,), (1,), (2,)]
    assert [(e[1], e[2]) for e in events] == [(1, 3), (2, 3), (3, 3)]
    for (idx, _, _, d) in events:
        assert d == pytest.approx(plane_metrics(deg[idx], out[idx], ref[idx], level=2))

    # cancel after the first plane: the generator stops cooperatively
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    assert len(list(iter_stack_metrics(deg, out, level=2, cancel=cancel))) == 1

    # dask: same numbers; planes computed lazily
    dd = [da.from_array(x, chunks=(1, -1, -1)) for x in (deg, out, ref)]
    devents = list(iter_stack_metrics(*dd, level=2))
    for e, de in zip(events, devents):
        assert e[:3] == de[:3] and de[3] == pytest.approx(e[3], abs=1e-12)

    # a single plane is one event with index ()
    (only,) = list(iter_stack_metrics(deg[0], out[0], level=2))
    assert only[:3] == ((), 1, 1)


def test_iter_metric_maps_progress_cancel_and_equality():
    from napari_medenhance.metrics import iter_metric_maps, lassim_map

    base = im.cell()[:96, :128].astype(np.float64) / 255.0
    stack = np.stack([base, base[::-1], base[:, ::-1]])
    noisy = np.clip(stack + np.random.default_rng(3).normal(0, 0.05, stack.shape), 0, 1)
    gen = iter_metric_maps(stack, noisy, kind="lassim", level=2)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            maps = stop.value
            break
    assert events == [(1, 3), (2, 3), (3, 3)]
    np.testing.assert_array_equal(maps, lassim_map(stack, noisy, level=2))
    assert maps.shape == (3, 24, 32)
    calls = iter(range(10))
    gen = iter_metric_maps(stack, noisy, kind="ssim", cancel=lambda: next(calls) >= 1)
    assert list(gen) == [(1, 3)]  # stopped before plane 2, and returns no partial map
    with pytest.raises(ValueError, match="kind"):
        next(iter_metric_maps(stack, noisy, kind="psnr"))
