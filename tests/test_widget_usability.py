"""The widgets say what they do (issue 18): the Train widget's time estimate before Start and
steps/s with the time left while training, 'tile (px) 0' shown as auto, options that do not
apply disabled, the ROI layer in the image's units, and forms that scroll instead of squashing
when docked together. The pure timing helpers are tested without Qt."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medenhance.core.eta import StepRate, format_duration
from napari_medenhance.core.training import finetune as ft
from napari_medenhance.sample_data import load

TINY = {"features": 8, "blocks": 1, "layers_per_block": 1, "kernels": 2}


def test_step_rate_and_time_left():
    rate = StepRate()
    assert rate.steps_per_second is None and rate.seconds_left(100) is None
    rate.update(1, now=10.0)  # the first step starts the clock (data loading is not a step)
    assert rate.steps_per_second is None
    rate.update(5, now=12.0)
    assert rate.steps_per_second == pytest.approx(2.0)
    assert rate.seconds_left(105) == pytest.approx(50.0)
    assert rate.seconds_left(3) == 0


@pytest.mark.parametrize(("seconds", "text"), [(12, "under a minute"), (61, "1 min"),
                                               (3599, "1 h 00 min"), (3 * 3600 + 5 * 60, "3 h 05 min"),
                                               (3 * 86400, "3.0 days")])
def test_durations_are_coarse_words(seconds, text):
    assert format_duration(seconds) == text



@pytest.fixture
def train(make_napari_viewer, env):
    from napari_medenhance._widgets.train_widget import TrainWidget

    viewer = make_napari_viewer()
    src = viewer.add_image(load("nuclei_stack")[8:16, 64:160, 64:160], name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-medenhance", "Train")
    assert isinstance(widget, TrainWidget)
    widget.hq.value = src
    widget.device.value = "cpu"
    return viewer, widget


def test_train_says_how_long_before_start_and_while_running(train, qtbot, env):
    viewer, widget = train
    # Before anything is timed: the default 2,000 steps, and what a CPU means.
    text = widget.estimate.text()
    assert text.startswith("2,000 steps: press 'Estimate time'") and "this CPU" in text
    assert "can take hours" in text
    widget.options = {"config": TINY, "recipe_options": {"val_crop": 64}}
    widget.batch.value, widget.patch.value, widget.lr.value = 2, 32, "3e-3"
    widget.name.value = "tiny-run"
    worker = widget.estimate_time()
    assert worker is not None and not widget.btn_start.isEnabled()
    qtbot.waitUntil(lambda: widget._estimate_worker is None, timeout=60_000)
    text = widget.estimate.text()
    assert text.startswith("Estimate: 2,000 steps ≈ ") and "on this CPU" in text, text
    assert "s per step, timed here" in text and "validations add to it" in text
    assert not (env / "runs" / "tiny-run").exists()  # the timing run left nothing behind
    widget.steps.value = 6  # the estimate follows the steps at once
    assert widget.estimate.text().startswith("Estimate: 6 steps ≈ ")
    # While training: steps/s (or s per step) and the time left in the status line.
    widget.val_every.value = 3
    widget.start_training()
    seen: list[str] = []
    widget._worker.yielded.connect(lambda _ev: seen.append(widget.status.text()))
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    live = [t for t in seen if t.startswith("Step ") and " left" in t]
    assert live and ("steps/s" in live[-1] or "s per step" in live[-1]), seen
    assert "Done: 6 steps" in widget.status.text() and widget.btn_estimate.isEnabled()


def test_tile_zero_reads_auto_and_sr_options_that_do_not_apply_are_off(make_napari_viewer, isolated_models):
    from napari_medenhance._widgets.sr_widget import SuperResolveWidget

    viewer = make_napari_viewer()
    ct = load("ct_slice")
    # A NIfTI-like layer: millimetres, as the plugin's reader gives them.
    image = viewer.add_image(ct, name="ct", scale=(0.7, 0.7), units="mm")
    widget = SuperResolveWidget(viewer)
    widget.layer.value = image
    assert widget.tile.value == 0 and widget.tile_note.value.startswith("auto")
    assert widget.tile_row.label == "tile (px)"
    widget.tile.value = 256
    assert widget.tile_note.value == ""
    assert not widget.planes.enabled  # a 2-D image has one plane
    labels = viewer.add_labels(np.zeros(ct.shape, np.uint8), name="painted", scale=(0.7, 0.7),
                               units="mm")
    widget.roi_layer.reset_choices()
    widget.roi_layer.value = labels
    assert widget.margin.enabled
    shapes = widget.add_roi_layer()
    assert widget.roi_layer.value is shapes and not widget.margin.enabled
    assert tuple(str(u) for u in shapes.units) == ("millimeter", "millimeter")
    np.testing.assert_allclose(shapes.scale, image.scale)
    assert viewer.layers.extent.units is not None  # no "Inconsistent units across layers"
    assert shapes.mode == "add_rectangle"
    widget.close()


def test_docked_together_the_forms_scroll_instead_of_squashing(make_napari_viewer, isolated_models,
                                                                 env, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(load("mr_slice"), name="mr")
    _, sr = viewer.window.add_plugin_dock_widget("napari-medenhance", "Super-resolve ROI")
    _, train = viewer.window.add_plugin_dock_widget("napari-medenhance", "Train")
    viewer.window._qt_window.resize(1200, 800)
    qtbot.wait(200)
    for widget in (sr, train):
        body = widget.scroll.widget()
        # Every label keeps at least the height it needs: the scroll area takes the shortfall.
        for label in body.findChildren(type(widget.status)):
            if label.isVisible() and label.text():
                assert label.height() >= label.minimumSizeHint().height(), label.text()
        # ... and nothing is cut off at the side: the form fits the dock's width.
        assert body.minimumSizeHint().width() <= widget.scroll.viewport().width()
        assert widget.height() >= 200
        if widget.height() < body.minimumSizeHint().height():
            assert widget.scroll.verticalScrollBar().maximum() > 0
    shot = viewer.screenshot(canvas_only=False, flash=False)
    from skimage.io import imsave

    imsave(tmp_path / "docked.png", shot)
    print("screenshot:", tmp_path / "docked.png")


def test_sr_no_model_message_names_the_factors_model_and_the_train_widget(make_napari_viewer,
                                                                          isolated_models):
    from napari_medenhance._widgets.sr_widget import SuperResolveWidget

    viewer = make_napari_viewer()
    widget = SuperResolveWidget(viewer)
    widget.factor.value = 2
    text = widget.no_model_message()
    assert "MSGAN-X2 weights are not bundled yet" in text and "Train widget" in text
    widget.factor.value = 4
    assert "MSGAN-X4 weights are not bundled yet" in widget.no_model_message()
    widget.close()


def test_timing_leaves_out_the_warm_up_steps(monkeypatch):
    """Seconds per step from the steps after the warm-up, in a run folder that is then gone."""
    from types import SimpleNamespace

    from napari_medenhance.core import eta

    clock = iter([0.0, 5.0, 5.5, 6.0, 6.5, 7.0])  # two slow warm-up steps, then 0.5 s each
    folders = []

    def fake_finetune(task, mode, data, *, out_dir, name, cancel, val_every, **kw):
        folders.append(out_dir)
        assert val_every == 0 and kw == {"batch": 2}
        step = 0
        while not cancel():
            step += 1
            yield SimpleNamespace(kind="step", step=step)

    monkeypatch.setattr(ft, "iter_finetune", fake_finetune)
    monkeypatch.setattr(eta.time, "monotonic", lambda: next(clock))
    job = eta.iter_time_steps("denoise", "simulated", None, batch=2, name="x", val_every=9)
    from napari_medenhance.core.jobs import drive

    assert drive(job) == pytest.approx(0.5)
    assert len(folders) == 1 and not __import__("os").path.exists(folders[0])
