"""The Train dock widget in a real (headless) napari viewer, with a tiny DRAN trained from scratch."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medenhance._widgets.denoise_widget import DenoiseWidget
from napari_medenhance._widgets.train_widget import PREVIEW_NAME, TrainWidget
from napari_medenhance.core.training import finetune as ft
from napari_medenhance.core.training.loop import BEST, LAST
from napari_medenhance.sample_data import load

TINY = {"features": 8, "blocks": 1, "layers_per_block": 1, "kernels": 2}



@pytest.fixture
def setup(make_napari_viewer, env):
    viewer = make_napari_viewer()
    stack = load("nuclei_stack")[8:16, 64:160, 64:160]
    src = viewer.add_image(stack, name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-medenhance", "Train")
    assert isinstance(widget, TrainWidget)
    widget.options = {"config": TINY, "recipe_options": {"val_crop": 64}}
    widget.hq.value = src
    widget.device.value = "cpu"
    widget.steps.value, widget.batch.value, widget.patch.value = 6, 2, 32
    widget.val_every.value = 3
    widget.lr.value = "3e-3"
    widget.name.value = "tiny-run"
    return viewer, widget, src


def _wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


def test_runs_plots_previews_and_saves_into_other_pickers(setup, qtbot, env):
    viewer, widget, src = setup
    denoise = DenoiseWidget(viewer)  # open before the model exists
    assert denoise.model.value is None
    assert widget.start.value == ft.SCRATCH and widget.mode.choices == ("simulated", "paired")
    widget.start_training()
    assert not widget.btn_start.isEnabled() and widget.btn_stop.isEnabled()
    pbar = widget._worker.pbar
    _wait(qtbot, widget)
    assert (pbar.total, pbar.n) == (6, 6)
    assert widget.plot.loss_steps == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(widget.plot.loss_values))
    assert widget.plot.val_steps == [0, 3, 6] and widget.plot.val_label == "PSNR (dB)"
    assert [s for s, _ in widget.validations] == [0, 3, 6]
    text = widget.metrics_label.text()
    assert text.startswith("before: PSNR") and "step 6: PSNR" in text
    # One preview layer, replaced in place at every validation (now: step 6's output).
    previews = [lay for lay in viewer.layers if lay.name == PREVIEW_NAME]
    assert len(previews) == 1 and previews[0].unique_id == widget.preview_layer.unique_id
    assert previews[0].data.shape == (64, 64) and previews[0].metadata["step"] == 6
    assert [lay.name for lay in widget.hq.choices] == ["nuclei"]  # the preview is no input
    assert "Done: 6 steps" in widget.status.text() and widget.btn_save.isEnabled()
    np.testing.assert_array_equal(src.data, load("nuclei_stack")[8:16, 64:160, 64:160])

    info = widget.save()
    assert info is not None and info.name == "tiny-run" and info.task == "denoise"
    assert (env / "models" / "tiny-run.md").is_file()
    # The Denoise widget offers it at once (registry notification, no ↻ / show needed).
    assert denoise.model.choices == ("tiny-run",) and denoise.model.value == "tiny-run"
    assert "tiny-run" in [v for v in widget.start.choices]
    assert widget.save() is None and "already exists" in widget.status.text()
    denoise.close()


def test_stop_keeps_the_best_model_and_start_resumes(setup, qtbot, env):
    _, widget, _ = setup
    widget.steps.value = 500
    widget.start_training()
    widget._worker.yielded.connect(lambda ev: ev.kind == "step" and widget.stop())
    _wait(qtbot, widget)
    run_dir = env / "runs" / "tiny-run"
    assert "Stopped at step" in widget.status.text()
    assert (run_dir / LAST).is_file() and (run_dir / BEST).is_file()
    assert widget.btn_save.isEnabled()
    stopped = widget.plot.loss_steps[-1]
    assert stopped < 500

    widget.steps.value = stopped + 2
    widget.start_training()
    assert widget.status.text().startswith("Resuming run 'tiny-run'")
    _wait(qtbot, widget)
    assert widget.plot.loss_steps == [stopped + 1, stopped + 2]
    assert ft.read_record(run_dir)["steps_done"] == stopped + 2


def test_bad_settings_and_failures_are_reported_and_leave_nothing(setup, qtbot, env):
    viewer, widget, src = setup
    widget.mode.value = "paired"
    assert widget.lq.enabled
    widget.lq.value = viewer.add_image(np.zeros((8, 90, 96), np.uint16), name="small")
    widget.start_training()
    assert widget._worker is None
    assert "(8, 90, 96)" in widget.status.text() and "(8, 96, 96)" in widget.status.text()
    widget.mode.value = "simulated"
    assert not widget.lq.enabled
    widget.lr.value = "fast"
    widget.start_training()
    assert widget._worker is None and "not a number" in widget.status.text()
    widget.lr.value = "3e-3"
    widget.patch.value = 256  # larger than the planes: fails in the worker after step 0
    widget.start_training()
    _wait(qtbot, widget)
    assert "Training failed" in widget.status.text() and "smaller patch" in widget.status.text()
    assert not (env / "runs" / "tiny-run").exists()  # nothing resumable: nothing kept
    assert not widget.btn_save.isEnabled() and widget.btn_start.isEnabled()
