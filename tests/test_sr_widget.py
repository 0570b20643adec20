"""The Super-resolve ROI dock widget in a real (headless) napari viewer, with a tiny untrained
MS-GAN registered as the user's ×2 and ×4 models, on the real MR sample slice."""

from __future__ import annotations

import numpy as np
import pytest

import napari_medenhance as me
from napari_medenhance._widgets.sr_widget import SuperResolveWidget, data_to_world_matrix
from napari_medenhance.core import zoo
from napari_medenhance.sample_data import load

from _tiny_models import save_tiny_msgan_pair

SCALE = (0.7, 0.5)
TRANSLATE = (10.0, -5.0)


@pytest.fixture
def user_dir(isolated_models):
    """Tiny ×2 and ×4 models (one network, as train_sr.py exports them), no shipped models."""
    save_tiny_msgan_pair(isolated_models)
    return isolated_models


@pytest.fixture
def setup(make_napari_viewer, user_dir):
    mr = load("mr_slice")
    viewer = make_napari_viewer()
    src = viewer.add_image(mr, name="mr", scale=SCALE, translate=TRANSLATE, colormap="gray",
                           contrast_limits=(0, 500))
    _, widget = viewer.window.add_plugin_dock_widget("napari-medenhance", "Super-resolve ROI")
    assert isinstance(widget, SuperResolveWidget)
    widget.layer.value = src
    widget.device.value = "cpu"
    return viewer, widget, src, mr


def _wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


def _world_box(layer, y0, y1, x0, x1):
    """World corners of the pixel-edge box [y0, y1) × [x0, x1) of ``layer``."""
    return np.array([layer.data_to_world((y0 - 0.5, x0 - 0.5)), layer.data_to_world((y1 - 0.5, x1 - 0.5))])


def _out_box(layer):
    h, w = layer.data.shape[-2:]
    return _world_box(layer, 0, h, 0, w)


def test_rectangles_become_layers_exactly_over_them(setup, qtbot):
    viewer, widget, src, mr = setup
    rects = [_world_box(src, 400, 440, 300, 360), _world_box(src, 100, 110, 700, 713)]
    shapes = viewer.add_shapes(rects, shape_type="rectangle", name="lesions")
    widget.roi_layer.value = shapes
    widget.factor.value = 2
    assert widget.model.value == "tiny-x2"
    widget.run()
    _wait(qtbot, widget)
    outs = viewer.layers[-2:]
    assert [o.name for o in outs] == ["mr [SR ×2, ROI 1]", "mr [SR ×2, ROI 2]"]
    assert outs[0].data.shape == (80, 120) and outs[1].data.shape == (20, 26)
    assert outs[0].data.dtype == mr.dtype
    for out, rect in zip(outs, rects):
        # the output's outer pixel edges are the rectangle's corners, in world units
        np.testing.assert_allclose(_out_box(out), rect, atol=1e-6)
        np.testing.assert_allclose(out.extent.world[1] - out.extent.world[0],
                                   rect[1] - rect[0] - np.asarray(SCALE) / 2, atol=1e-6)
    expect = me.super_resolve(mr, 2, "tiny-x2", roi=[(400, 440, 300, 360), (100, 110, 700, 713)],
                              device="cpu")
    for out, e in zip(outs, expect):
        np.testing.assert_array_equal(out.data, e)
    assert tuple(outs[0].contrast_limits) == (0, 500)
    assert widget.status.text().startswith("Added 2 layer(s)")


def test_the_ensemble_box_super_resolves_each_roi_in_eight_views(setup, qtbot):
    viewer, widget, src, mr = setup
    widget.roi_layer.value = viewer.add_shapes([_world_box(src, 400, 440, 300, 360)],
                                               shape_type="rectangle", name="lesion")
    widget.factor.value = 2
    widget.ensemble.value = True
    widget.run()
    pbar = widget._worker.pbar
    _wait(qtbot, widget)
    assert (pbar.total, pbar.n) == (8, 8)
    expect = me.super_resolve(mr, 2, "tiny-x2", roi=(400, 440, 300, 360), device="cpu",
                              ensemble=True)
    np.testing.assert_array_equal(viewer.layers[-1].data, expect)


def test_rotated_source_and_x4(setup, qtbot):
    viewer, widget, src, _ = setup
    src.rotate = 25.0
    corners = [src.data_to_world(p) for p in ((499.5, 199.5), (499.5, 229.5), (519.5, 229.5), (519.5, 199.5))]
    shapes = viewer.add_shapes([np.array(corners)], shape_type="polygon")
    widget.roi_layer.value = shapes
    widget.factor.value = 4
    assert widget.model.value == "tiny-x4"
    widget.run()
    _wait(qtbot, widget)
    out = viewer.layers[-1]
    assert out.name == "mr [SR ×4, ROI 1]" and out.data.shape == (80, 120)
    np.testing.assert_allclose(_out_box(out), _world_box(src, 500, 520, 200, 230), atol=1e-6)
    # pixel centres: output (i, j) sits on source (y0 - 0.5 + (i + .5)/4, x0 - 0.5 + (j + .5)/4)
    np.testing.assert_allclose(out.data_to_world((37, 101)),
                               src.data_to_world((499.5 + 37.5 / 4, 199.5 + 101.5 / 4)), atol=1e-6)


def test_labels_roi_with_margin(setup, qtbot):
    viewer, widget, src, _ = setup
    lab = np.zeros(src.data.shape, np.uint8)
    lab[300:310, 400:420] = 1
    labels = viewer.add_labels(lab, scale=SCALE, translate=TRANSLATE)
    widget.roi_layer.value = labels
    widget.factor.value = 2
    widget.margin.value = 5
    widget.run()
    _wait(qtbot, widget)
    out = viewer.layers[-1]
    assert out.data.shape == (2 * 20, 2 * 30)
    np.testing.assert_allclose(_out_box(out), _world_box(src, 295, 315, 395, 425), atol=1e-6)


def test_current_plane_of_a_stack(make_napari_viewer, user_dir, qtbot):
    stack = load("nuclei_stack")[:4, :64, :80]
    viewer = make_napari_viewer()
    src = viewer.add_image(stack, scale=(2.0, 0.3, 0.3), translate=(1.0, 5.0, 7.0))
    viewer.dims.set_point(0, src.data_to_world((2, 0, 0))[0])
    shapes = viewer.add_shapes([_world_box(src, 10, 30, 20, 44)[:, 1:]], shape_type="rectangle")
    _, widget = viewer.window.add_plugin_dock_widget("napari-medenhance", "Super-resolve ROI")
    widget.layer.value, widget.roi_layer.value, widget.factor.value = src, shapes, 2
    widget.device.value = "cpu"
    widget.run()
    _wait(qtbot, widget)
    out = viewer.layers[-1]
    assert out.data.shape == (1, 40, 48)
    np.testing.assert_allclose(out.data_to_world((0, -0.5, -0.5)), src.data_to_world((2, 9.5, 19.5)),
                               atol=1e-6)
    np.testing.assert_array_equal(
        out.data[0], me.super_resolve(stack, 2, "tiny-x2", roi=(10, 30, 20, 44), device="cpu")[2]
    )


def test_errors_are_explained(setup, qtbot):
    viewer, widget, src, _ = setup
    widget.run()
    assert "Pick an ROI layer" in widget.status.text()
    outside = viewer.add_shapes([_world_box(src, 2000, 2050, 10, 20)], shape_type="rectangle")
    widget.roi_layer.value = outside
    widget.run()
    assert widget._worker is None and "outside the image" in widget.status.text()
    line = viewer.add_shapes([_world_box(src, 10, 50, 10, 20)], shape_type="line")
    widget.roi_layer.value = line
    widget.run()
    assert "encloses no area" in widget.status.text()
    empty = viewer.add_labels(np.zeros(src.data.shape, np.uint8))
    widget.roi_layer.value = empty
    widget.run()
    assert "no labelled pixels" in widget.status.text()
    n = len(viewer.layers)
    (zoo.user_models_dir() / "tiny-x4.safetensors").unlink()
    widget.factor.value = 2
    assert widget.model.value == "tiny-x2"
    widget.factor.value = 4
    assert widget.model.value is None  # the picker lists models of the chosen factor only
    widget.roi_layer.value = outside
    widget.run()
    assert "×4 model is needed" in widget.status.text() and len(viewer.layers) == n


def test_data_to_world_matrix_matches_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    extra = np.array([[1.0, 0.2, 3.0], [-0.1, 0.9, -1.0], [0, 0, 1]])
    layer = viewer.add_image(np.zeros((5, 6)), scale=SCALE, translate=TRANSLATE, rotate=33.0,
                             shear=[0.4], affine=extra)
    m = data_to_world_matrix(layer)
    for p in np.random.default_rng(0).uniform(-20, 20, (5, 2)):
        np.testing.assert_allclose((m @ np.append(p, 1))[:2], layer.data_to_world(p), atol=1e-9)
