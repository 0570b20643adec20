"""The Quality metrics dock widget in a real (headless) napari viewer."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_medenhance._widgets._layers import text_overlay
from napari_medenhance.metrics import lassim, plane_metrics, ssim, ssim_map

SCALE = (2.0, 0.5, 0.25)  # anisotropic, µm
TRANSLATE = (4.0, -3.0, 10.0)


@pytest.fixture
def viewer_widget(make_napari_viewer, nuclei, nuclei_smoothed):
    viewer = make_napari_viewer()
    src = viewer.add_image(nuclei, name="nuclei", scale=SCALE, translate=TRANSLATE)
    out = viewer.add_image(nuclei_smoothed, name="nuclei [smoothed]", scale=SCALE, translate=TRANSLATE)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medenhance", "Quality metrics")
    widget.input.value, widget.output.value = src, out
    return viewer, widget, src, out


def _wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


def _overlay_settles(qtbot, viewer, contains: str) -> str:
    qtbot.waitUntil(lambda: contains in text_overlay(viewer).text, timeout=10_000)
    return text_overlay(viewer).text


def test_overlay_shows_current_slice_and_follows_dims(viewer_widget, qtbot, nuclei, nuclei_smoothed):
    viewer, widget, _, _ = viewer_widget
    viewer.dims.set_current_step(0, 5)
    text5 = _overlay_settles(qtbot, viewer, "axis 0=5:")
    assert text_overlay(viewer).visible
    expect5 = plane_metrics(nuclei[5], nuclei_smoothed[5], level=3)
    assert f"{expect5['lassim']:.4f}" in text5 and f"{expect5['ssim']:.4f}" in text5
    assert text5.startswith("axis 0=5: nuclei [smoothed] vs nuclei")
    viewer.dims.set_current_step(0, 17)
    text17 = _overlay_settles(qtbot, viewer, "axis 0=17:")
    assert f"{lassim(nuclei[17], nuclei_smoothed[17], level=3):.4f}" in text17
    assert text17 != text5
    widget.level.value = 2
    _overlay_settles(qtbot, viewer, f"{lassim(nuclei[17], nuclei_smoothed[17], level=2):.4f}")


def test_fast_slider_moves_end_on_the_last_slice(viewer_widget, qtbot, nuclei, nuclei_smoothed):
    viewer, widget, _, _ = viewer_widget
    for z in range(0, 24, 2):
        viewer.dims.set_current_step(0, z)
    viewer.dims.set_current_step(0, 9)
    _overlay_settles(qtbot, viewer, "axis 0=9:")
    qtbot.wait(300)  # let any stale workers finish: they must not overwrite the newest slice
    assert text_overlay(viewer).text.startswith("axis 0=9:")
    assert widget.current_values["ssim"] == pytest.approx(ssim(nuclei[9], nuclei_smoothed[9]), abs=1e-12)


def test_reference_adds_psnr_ssim_and_delta_e(viewer_widget, qtbot, nuclei):
    viewer, widget, _, _ = viewer_widget
    ref = viewer.add_image(nuclei, name="reference", scale=SCALE, translate=TRANSLATE)
    widget.reference.value = ref
    viewer.dims.set_current_step(0, 3)
    text = _overlay_settles(qtbot, viewer, "ΔE2000 vs ref")
    for label in ("PSNR vs ref", "SSIM vs ref"):
        assert label in text
    assert set(widget.current_values) == {"lassim", "ssim", "psnr", "ssim_ref", "delta_e"}
    # each number says what it means on the canvas (default), and not once unticked
    assert "higher is better" in text and "1 = all input structure kept" in text
    widget.explain.value = False
    qtbot.waitUntil(lambda: "higher is better" not in text_overlay(viewer).text, timeout=10_000)
    assert "PSNR vs ref" in text_overlay(viewer).text


def test_whole_stack_plot_and_csv(viewer_widget, qtbot, tmp_path, nuclei, nuclei_smoothed):
    _, widget, _, _ = viewer_widget
    widget.compute_stack()
    _wait(qtbot, widget)
    assert len(widget.results) == nuclei.shape[0]
    assert [r["index"] for r in widget.results] == [(i,) for i in range(nuclei.shape[0])]
    lines = widget.plot.ax.get_lines()
    assert {ln.get_label() for ln in lines} >= {"lassim", "ssim"}
    assert len(lines[0].get_xdata()) == nuclei.shape[0]
    path = widget.export_csv(tmp_path / "m.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == nuclei.shape[0] and rows[0].keys() >= {"slice", "lassim", "ssim"}
    np.testing.assert_allclose(float(rows[11]["ssim"]), ssim(nuclei[11], nuclei_smoothed[11]), rtol=0, atol=1e-12)


def test_cancel_stops_early_and_keeps_viewer_usable(viewer_widget, qtbot, nuclei):
    viewer, widget, _, _ = viewer_widget
    n_layers = len(viewer.layers)
    widget.add_map("ssim")
    widget.cancel()
    _wait(qtbot, widget)
    assert len(viewer.layers) == n_layers  # no half-made map layer
    assert widget.btn_stack.isEnabled() and not widget.btn_cancel.isEnabled()
    widget.compute_stack()
    widget.cancel()
    _wait(qtbot, widget)
    assert len(widget.results) < nuclei.shape[0]


def test_lassim_map_sits_over_the_image_in_world_space(viewer_widget, qtbot, nuclei, nuclei_smoothed):
    viewer, widget, src, _ = viewer_widget
    src.rotate = 20.0  # a rotated source must still line up
    widget.level.value = 2
    widget.add_map("lassim")
    _wait(qtbot, widget)
    layer = viewer.layers[-1]
    assert layer.name == "nuclei [smoothed] [lassim map l=2]"
    assert layer.data.shape == (24, 64, 64)
    np.testing.assert_allclose(layer.scale, (2.0, 2.0, 1.0))
    # map pixel (z, i, j) is centred on source pixel (z, 4i, 4j)
    for z, i, j in [(0, 0, 0), (7, 10, 33), (23, 63, 5)]:
        np.testing.assert_allclose(layer.data_to_world((z, i, j)), src.data_to_world((z, 4 * i, 4 * j)), atol=1e-9)
    assert layer.units == src.units and layer.axis_labels == src.axis_labels


def test_ssim_map_layer_matches_core(viewer_widget, qtbot, nuclei, nuclei_smoothed):
    viewer, widget, src, _ = viewer_widget
    widget.add_map("ssim")
    _wait(qtbot, widget)
    layer = viewer.layers[-1]
    np.testing.assert_allclose(layer.data[9], ssim_map(nuclei[9], nuclei_smoothed[9]), atol=1e-6)
    np.testing.assert_allclose(layer.scale, src.scale)
    np.testing.assert_allclose(layer.translate, src.translate)


def test_only_image_layers_are_offered_and_mismatch_is_explained(viewer_widget):
    viewer, widget, src, _ = viewer_widget
    viewer.add_labels(np.zeros((24, 256, 256), dtype=np.uint8), name="mask")
    assert all(c.name != "mask" for c in widget.input.choices)
    small = viewer.add_image(np.zeros((24, 128, 128), dtype=np.uint16), name="small")
    widget.output.value = small
    assert "same shape" in widget.status.text()
    assert not text_overlay(viewer).visible


def test_rgb_pair_gives_delta_e(make_napari_viewer, qtbot):
    from skimage.filters import gaussian

    from napari_medenhance.sample_data import load

    ihc = load("ihc_rgb")
    blurred = (gaussian(ihc, sigma=1.5, channel_axis=-1) * 255).round().astype(np.uint8)
    viewer = make_napari_viewer()
    a = viewer.add_image(ihc, name="ihc")
    b = viewer.add_image(blurred, name="ihc blurred")
    _, widget = viewer.window.add_plugin_dock_widget("napari-medenhance", "Quality metrics")
    widget.input.value, widget.output.value, widget.reference.value = b, b, a
    qtbot.waitUntil(lambda: "delta_e" in widget.current_values, timeout=10_000)
    assert widget.current_values["lassim"] == pytest.approx(1.0)
    assert widget.current_values["delta_e"] > 0.5
