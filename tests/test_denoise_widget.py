"""The Denoise dock widget in a real (headless) napari viewer, with a small untrained DRAN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from napari.layers import Image
from scipy.spatial.transform import Rotation

import napari_medenhance as me
from napari_medenhance._widgets._layers import plane_transform_kwargs
from napari_medenhance._widgets.denoise_widget import DenoiseWidget
from napari_medenhance.core.nets.dran import DRAN
from napari_medenhance.core.weights import save_weights

TINY = {"features": 8, "blocks": 1, "layers_per_block": 1, "kernels": 2}
SCALE = (2.0, 0.5, 0.25)  # anisotropic, µm
TRANSLATE = (4.0, -3.0, 10.0)


def _save_tiny(path):
    torch.manual_seed(0)
    save_weights(path, DRAN(**TINY), arch="dran", config=TINY, meta={"task": "denoise", "name": "tiny"})


@pytest.fixture
def user_dir(isolated_models):
    return isolated_models


@pytest.fixture
def stack(nuclei):
    return nuclei[:5, :64, :96].copy()


@pytest.fixture
def setup(make_napari_viewer, user_dir, stack):
    _save_tiny(user_dir / "tiny.safetensors")
    viewer = make_napari_viewer()
    src = viewer.add_image(stack, name="nuclei", scale=SCALE, translate=TRANSLATE,
                           colormap="magma", contrast_limits=(100, 3000))
    _, widget = viewer.window.add_plugin_dock_widget("napari-medenhance", "Denoise")
    assert isinstance(widget, DenoiseWidget)
    widget.layer.value = src
    widget.device.value = "cpu"
    return viewer, widget, src


def _wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


def test_whole_stack_becomes_a_new_layer_in_the_same_place(setup, qtbot, stack):
    viewer, widget, src = setup
    before = stack.copy()
    assert widget.model.value == "tiny"
    widget.run()
    assert not widget.btn_run.isEnabled() and widget.btn_cancel.isEnabled()
    pbar = widget._worker.pbar
    _wait(qtbot, widget)
    assert (pbar.total, pbar.n) == (5, 5)  # one tile per plane, total learnt from the engine
    assert len(viewer.layers) == 2
    out = viewer.layers[-1]
    assert out.name == "nuclei [denoised]"
    assert out.data.shape == stack.shape and out.data.dtype == stack.dtype
    np.testing.assert_allclose(out.scale, SCALE)
    np.testing.assert_allclose(out.translate, TRANSLATE)
    assert out.units == src.units and out.axis_labels == src.axis_labels
    assert tuple(out.contrast_limits) == (100, 3000) and out.colormap.name == "magma"
    np.testing.assert_array_equal(out.data, me.denoise(stack, "tiny", device="cpu"))
    assert src.data is stack
    np.testing.assert_array_equal(src.data, before)
    assert widget.btn_run.isEnabled() and not widget.btn_cancel.isEnabled()
    assert "Added 'nuclei [denoised]'" in widget.status.text()


def test_current_plane_lands_on_that_plane_in_world_space(setup, qtbot, stack):
    viewer, widget, src = setup
    viewer.dims.set_point(0, TRANSLATE[0] + 3 * SCALE[0])  # world z of plane 3
    widget.plane_only.value = True
    widget.run()
    _wait(qtbot, widget)
    out = viewer.layers[-1]
    assert out.data.shape == (1, 64, 96) and out.data.dtype == stack.dtype
    for y, x in [(0, 0), (10, 33), (63, 95)]:
        np.testing.assert_allclose(out.data_to_world((0, y, x)), src.data_to_world((3, y, x)))
    np.testing.assert_array_equal(out.data[0], me.denoise(stack, "tiny", device="cpu")[3])
    np.testing.assert_array_equal(src.data, stack)


def test_the_ensemble_box_runs_eight_views_per_tile(setup, qtbot, stack):
    viewer, widget, _ = setup
    viewer.dims.set_point(0, TRANSLATE[0] + 3 * SCALE[0])  # world z of plane 3
    widget.plane_only.value = True
    widget.ensemble.value = True
    seen = []
    widget.run()
    widget._worker.yielded.connect(lambda ev: seen.append(widget.status.text()))
    pbar = widget._worker.pbar
    _wait(qtbot, widget)
    assert (pbar.total, pbar.n) == (8, 8)  # one plane, one tile, 8 views
    assert seen and all(", view " in t for t in seen) and seen[-1].endswith("view 8/8")
    expected = me.denoise(stack, "tiny", device="cpu", ensemble=True)[3]
    np.testing.assert_array_equal(viewer.layers[-1].data[0], expected)


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing:UserWarning")
def test_plane_placement_is_exact_with_rotation_and_shear():
    rot = Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix()
    src = Image(np.zeros((6, 8, 9)), scale=SCALE, translate=TRANSLATE, rotate=rot,
                shear=[0.2, -0.1, 0.3])
    plane = Image(np.zeros((1, 8, 9)), **plane_transform_kwargs(src, (4,)))
    for y, x in [(0, 0), (7, 2), (3, 8)]:
        np.testing.assert_allclose(plane.data_to_world((0, y, x)), src.data_to_world((4, y, x)),
                                   atol=1e-9)


def test_cancel_adds_nothing_and_reenables_run(setup, qtbot):
    viewer, widget, _ = setup
    widget.run()
    widget.cancel()  # before the first tile
    _wait(qtbot, widget)
    assert len(viewer.layers) == 1
    assert widget.btn_run.isEnabled() and not widget.btn_cancel.isEnabled()
    assert "Cancelled" in widget.status.text()
    widget.run()  # and during the run, after the first tile
    widget._worker.yielded.connect(lambda _event: widget.cancel())
    _wait(qtbot, widget)
    assert len(viewer.layers) == 1 and widget.btn_run.isEnabled()


def test_no_model_installed_explains_and_adds_nothing(make_napari_viewer, user_dir, stack):
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="nuclei")
    widget = DenoiseWidget(viewer)
    assert widget.model.value is None
    widget.run()
    assert widget._worker is None and len(viewer.layers) == 1
    text = widget.status.text()
    assert "No denoising model is installed yet" in text and "Browse…" in text
    assert "medenhance models --add" in text and str(user_dir) in text
    # models installed meanwhile appear when the widget is shown again, and with ↻
    _save_tiny(user_dir / "later.safetensors")
    widget.show()
    assert widget.model.value == "later" and "No denoising model" not in widget.status.text()
    _save_tiny(user_dir / "another.safetensors")
    assert [c for c in widget.model.choices] == ["later"]
    widget.btn_refresh.click()
    assert sorted(widget.model.choices) == ["another", "later"] and widget.model.value == "later"
    widget.close()


def test_browsed_file_is_offered_and_bad_files_explained(make_napari_viewer, user_dir, tmp_path, qtbot, stack):
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="nuclei")
    widget = DenoiseWidget(viewer)
    bad = tmp_path / "evil.safetensors"
    torch.save({"w": torch.zeros(1)}, bad)
    assert not widget.add_model_file(bad)
    assert "pickled PyTorch checkpoints are refused" in widget.status.text()
    assert widget.model.value is None
    good = tmp_path / "mine.safetensors"
    _save_tiny(good)
    assert widget.add_model_file(good)
    assert widget.model.value == str(good)
    widget.device.value = "cpu"
    widget.run()
    _wait(qtbot, widget)
    assert viewer.layers[-1].name == "nuclei [denoised]"


def test_errors_are_reported_and_leave_nothing(setup, qtbot, stack):
    viewer, widget, _ = setup
    bad = stack.astype(np.float32)
    bad[2, 5, 5] = np.nan
    widget.layer.value = viewer.add_image(bad, name="with nan")
    widget.run()
    _wait(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == ["nuclei", "with nan"]
    assert "Denoising failed" in widget.status.text() and "NaN" in widget.status.text()
    assert widget.btn_run.isEnabled()


def test_only_image_layers_are_offered(setup):
    viewer, widget, _ = setup
    viewer.add_labels(np.zeros((5, 64, 96), dtype=np.uint8), name="mask")
    assert [layer.name for layer in widget.layer.choices] == ["nuclei"]


def test_out_of_memory_advice_names_the_controls(setup, qtbot, monkeypatch):
    from napari_medenhance._widgets import denoise_widget

    def oom(*_args, **_kwargs):
        raise RuntimeError("out of memory on cuda:0 while processing a 512x512 tile; pass a smaller tile")
        yield  # a generator, like the real one

    monkeypatch.setattr(denoise_widget, "iter_denoise", oom)
    viewer, widget, _ = setup
    widget.run()
    _wait(qtbot, widget)
    assert len(viewer.layers) == 1
    assert "out of memory" in widget.status.text() and "lower 'tile (px)'" in widget.status.text()

