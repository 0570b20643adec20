"""The Enhance dock widget in a real (headless) napari viewer, with a small untrained DPE."""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils import progress

import napari_medenhance as me
from napari_medenhance._widgets.enhance_widget import LASSIM_LEVEL, EnhanceWidget
from napari_medenhance.core.nets.dran import DRAN
from napari_medenhance.core.weights import save_weights
from napari_medenhance.metrics import lassim
from napari_medenhance.sample_data import load

from _tiny_models import save_tiny_dpe

SCALE = (2.0, 0.5, 0.25)  # anisotropic, µm
TRANSLATE = (4.0, -3.0, 10.0)
ANGLE = np.deg2rad(20)
# Rotation and shear within the Y-X plane only, so the 2-D view still slices along Z.
ROTATE = np.array([[1, 0, 0], [0, np.cos(ANGLE), -np.sin(ANGLE)], [0, np.sin(ANGLE), np.cos(ANGLE)]])
SHEAR = (0.0, 0.0, 0.15)
AFFINE = np.array([[1, 0, 0, 1.5], [0, 1, 0, 2.0], [0, 0, 1, -4.0], [0, 0, 0, 1.0]])


@pytest.fixture
def user_dir(isolated_models):
    return isolated_models


@pytest.fixture
def stack(nuclei):
    return nuclei[:5, :64, :96].copy()


@pytest.fixture
def setup(make_napari_viewer, user_dir, stack):
    save_tiny_dpe(user_dir / "tiny.safetensors")
    viewer = make_napari_viewer()
    src = viewer.add_image(stack, name="nuclei", scale=SCALE, translate=TRANSLATE, rotate=ROTATE,
                           shear=SHEAR, affine=AFFINE, units=("um", "um", "um"),
                           axis_labels=("z", "y", "x"), colormap="magma", contrast_limits=(100, 3000))
    _, widget = viewer.window.add_plugin_dock_widget("napari-medenhance", "Enhance")
    assert isinstance(widget, EnhanceWidget)
    widget.layer.value = src
    widget.device.value = "cpu"
    return viewer, widget, src


def _wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


def _wait_lassim(qtbot, widget, timeout=30_000):
    qtbot.waitUntil(lambda: widget.lassim_value is not None, timeout=timeout)
    return widget.lassim_value


def _go_to_plane(viewer, z):
    # World z of plane z; the Y-X rotation, shear and Z-only part of the affine leave it alone.
    viewer.dims.set_point(0, AFFINE[0, 3] + TRANSLATE[0] + z * SCALE[0])


def test_whole_stack_becomes_a_layer_in_the_same_place_with_lassim(setup, qtbot, stack):
    viewer, widget, src = setup
    assert widget.model.value == "tiny"
    _go_to_plane(viewer, 2)
    widget.run()
    assert not widget.btn_run.isEnabled() and widget.btn_cancel.isEnabled()
    pbar = widget._worker.pbar
    assert pbar in progress._all_instances
    _wait(qtbot, widget)
    assert (pbar.total, pbar.n) == (5, 5)
    assert pbar not in progress._all_instances  # the progress bar was closed
    out = viewer.layers[-1]
    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei [enhanced]"]
    assert out.data.shape == stack.shape and out.data.dtype == stack.dtype
    np.testing.assert_allclose(out.scale, SCALE)
    np.testing.assert_allclose(out.translate, TRANSLATE)
    np.testing.assert_allclose(out.rotate, ROTATE, atol=1e-12)
    np.testing.assert_allclose(out.shear, SHEAR, atol=1e-12)
    np.testing.assert_allclose(out.affine.affine_matrix, AFFINE)
    assert out.units == src.units and tuple(out.axis_labels) == ("z", "y", "x")
    for p in [(0, 0, 0), (3, 10, 33), (4, 63, 95)]:
        np.testing.assert_allclose(out.data_to_world(p), src.data_to_world(p), atol=1e-9)
    assert tuple(out.contrast_limits) == (100, 3000) and out.colormap.name == "magma"
    np.testing.assert_array_equal(out.data, me.enhance(stack, "tiny", device="cpu"))
    assert src.data is stack

    # LaSSIM of the plane on screen, then of the next one when the slider moves
    value = _wait_lassim(qtbot, widget)
    assert widget.lassim_level == LASSIM_LEVEL  # 64 x 96 fits level 3 (8 x 12 band)
    assert value == pytest.approx(lassim(stack[2], out.data[2], level=3), abs=1e-12)
    assert f"{value:.4f}" in widget.lassim_label.text() and "plane 2" in widget.lassim_label.text()
    _go_to_plane(viewer, 4)
    assert widget.lassim_value is None  # the old plane's number is not shown for the new plane
    value4 = _wait_lassim(qtbot, widget)
    assert value4 == pytest.approx(lassim(stack[4], out.data[4], level=3), abs=1e-12)
    assert value4 != value and "plane 4" in widget.lassim_label.text()

    # deleting the result removes its score
    viewer.layers.remove(out)
    assert widget.lassim_value is None and widget.lassim_label.text() == ""


def test_current_plane_only(setup, qtbot, stack):
    viewer, widget, src = setup
    _go_to_plane(viewer, 3)
    widget.plane_only.value = True
    widget.run()
    _wait(qtbot, widget)
    out = viewer.layers[-1]
    assert out.name == "nuclei [enhanced plane 3]" and out.data.shape == (1, 64, 96)
    for y, x in [(0, 0), (10, 33), (63, 95)]:
        np.testing.assert_allclose(out.data_to_world((0, y, x)), src.data_to_world((3, y, x)), atol=1e-9)
    np.testing.assert_array_equal(out.data[0], me.enhance(stack, "tiny", device="cpu")[3])
    value = _wait_lassim(qtbot, widget)
    assert value == pytest.approx(lassim(stack[3], out.data[0], level=3), abs=1e-12)
    _go_to_plane(viewer, 1)
    assert widget.lassim_value is None and "only plane 3 was enhanced" in widget.lassim_label.text()


def test_small_rgb_image_gets_the_deepest_level_that_fits(make_napari_viewer, user_dir, qtbot):
    save_tiny_dpe(user_dir / "tiny.safetensors")
    viewer = make_napari_viewer()
    rgb = load("ihc_rgb")[:32, :40]
    src = viewer.add_image(rgb, name="ihc")
    widget = EnhanceWidget(viewer)
    widget.layer.value, widget.device.value = src, "cpu"
    widget.run()
    _wait(qtbot, widget)
    out = viewer.layers[-1]
    assert out.name == "ihc [enhanced]" and out.rgb and out.data.dtype == np.uint8
    value = _wait_lassim(qtbot, widget)
    assert widget.lassim_level == 2  # level 3 of 32 x 40 would be a 4 x 5 band, under 7 x 7
    assert value == pytest.approx(lassim(rgb, out.data, level=2, rgb=True), abs=1e-12)
    assert "the image" in widget.lassim_label.text()
    widget.close()


def test_no_enhance_model_explains_and_adds_nothing(make_napari_viewer, user_dir, stack):
    # a denoising model is installed, but it is not offered for enhancement
    tiny_dran = {"features": 8, "blocks": 1, "layers_per_block": 1, "kernels": 2}
    save_weights(user_dir / "den.safetensors", DRAN(**tiny_dran), arch="dran", config=tiny_dran,
                 meta={"task": "denoise"})
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="nuclei")
    widget = EnhanceWidget(viewer)
    assert widget.model.value is None and list(widget.model.choices) == []
    widget.run()
    assert widget._worker is None and len(viewer.layers) == 1
    text = widget.status.text()
    assert "No enhancement model is installed yet" in text and "DPE weights are not bundled" in text
    assert "medenhance models --add" in text and str(user_dir) in text
    save_tiny_dpe(user_dir / "later.safetensors")
    widget.btn_refresh.click()
    assert list(widget.model.choices) == ["later"] and "No enhancement" not in widget.status.text()
    widget.close()


def test_cancel_adds_nothing(setup, qtbot):
    viewer, widget, _ = setup
    widget.run()
    widget._worker.yielded.connect(lambda _event: widget.cancel())
    _wait(qtbot, widget)
    assert len(viewer.layers) == 1 and widget.btn_run.isEnabled()
    assert "Cancelled" in widget.status.text() and widget.lassim_value is None


def test_errors_mid_run_are_shown_and_leave_nothing(setup, qtbot, monkeypatch):
    from napari_medenhance._widgets import enhance_widget

    def fails_after_one_tile(*_args, **_kwargs):
        from napari_medenhance.core.engine import Progress

        yield Progress(done=1, total=5, stage="enhance")
        raise ValueError("the model file changed on disk; reload it")

    monkeypatch.setattr(enhance_widget, "iter_enhance", fails_after_one_tile)
    viewer, widget, _ = setup
    widget.run()
    pbar = widget._worker.pbar
    assert pbar in progress._all_instances
    _wait(qtbot, widget)
    assert len(viewer.layers) == 1
    assert "Enhancing failed: the model file changed on disk" in widget.status.text()
    assert pbar not in progress._all_instances and widget.btn_run.isEnabled()
