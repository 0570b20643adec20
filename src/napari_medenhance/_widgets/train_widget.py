"""Train dock widget: fine-tune a model (or train one from scratch) on the user's own images.

All the work is :func:`napari_medenhance.core.training.finetune.iter_finetune` (the one training
loop with the task's recipe on the user's data) in a thread worker; this widget only gathers the
settings, renders the loop's events — a napari progress bar, a live loss plot, the validation
numbers as text and plot points, and a preview layer of the current model on a validation plane
that is updated in place at every validation — and saves the best model into the user models
folder, where every widget's model picker finds it (they refresh as soon as it is saved).

Stop ends the run at the next step with a checkpoint and keeps the best model; Start with the
same run name resumes it (also after a crash).

How long a run takes is said before and during it: 'Estimate time' times a few real steps with
the chosen settings on the chosen device (:func:`napari_medenhance.core.eta.iter_time_steps`)
and the line above Start turns that into the time the chosen steps take; while training, the
status shows steps per second and the time left (:class:`~napari_medenhance.core.eta.StepRate`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, LineEdit, SpinBox
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QWidget

from napari_medenhance.core import tasks, zoo
from napari_medenhance.core.engine import device_choices, resolve_device
from napari_medenhance.core.eta import StepRate, format_duration, iter_time_steps
from napari_medenhance.core.training import finetune as ft
from napari_medenhance.core.training.loop import BEST, LAST, TrainEvent
from napari_medenhance.core.training.runs import run_folder
from napari_medenhance.core.training.paired_data import check_pair_shapes
from napari_medenhance.core.training.recipes.sr import SCALE as SR_SCALE

from ._bioimageio import ask_export_path, export_button, start_export
from ._layers import surface_runtime_errors
from ._run_widget import scrolling_form

if TYPE_CHECKING:
    import napari

#: Name of the preview layer (one layer, updated in place).
PREVIEW_NAME = "training preview"
#: What each mode needs, for the help line under the pickers.
MODE_HELP = {
    "simulated": "Give clean / good images; the low-quality input is simulated (noise, "
                 "Algorithm 1 degradation, or ×4 downsampling).",
    "paired": "Give aligned low-quality (LQ) and high-quality (HQ) images of the same scene; "
              "for super-resolution the LQ is 4× smaller in Y and X.",
    "unpaired": "Give low-quality and high-quality images that need not show the same scenes "
                "(LaMEGAN, a CycleGAN with a structure-preserving loss).",
}
#: Seconds between redraws of the loss curve while steps arrive.
_REDRAW_S = 0.25
#: Display names of validation metrics.
METRIC_LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lassim": "LaSSIM", "score": "score",
                 "hq_distance": "HQ distance", "delta_e": "ΔE", "loss": "loss"}


class TrainPlot(FigureCanvasQTAgg):
    """Running training loss per step (left, log scale) and the validation metric (right)."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=(3.2, 2.2), layout="constrained")
        super().__init__(self.figure)
        self.setMinimumHeight(180)
        self.ax = self.figure.add_subplot(111)
        self.ax_val = self.ax.twinx()
        self.loss_steps: list[int] = []
        self.loss_values: list[float] = []
        self.val_steps: list[int] = []
        self.val_values: list[float] = []
        self.val_label = ""
        self._loss_line = None
        self._val_line = None
        self._drawn = 0.0
        self.clear()

    def clear(self) -> None:
        """Forget all points (a new run)."""
        self.loss_steps, self.loss_values = [], []
        self.val_steps, self.val_values, self.val_label = [], [], ""
        for ax in (self.ax, self.ax_val):
            ax.cla()
        self.ax.set_xlabel("step")
        self.ax.set_ylabel("training loss")
        (self._loss_line,) = self.ax.plot([], [], lw=1, color="tab:blue", label="loss")
        (self._val_line,) = self.ax_val.plot([], [], marker="o", ms=4, lw=1, color="tab:red",
                                             label="validation")
        self.ax_val.yaxis.set_label_position("right")  # cla() puts a twin's label on the left
        self.ax_val.yaxis.tick_right()
        self.ax_val.set_ylabel("validation")
        self.draw_idle()

    def add_loss(self, step: int, value: float) -> None:
        if not math.isfinite(value):
            return
        self.loss_steps.append(step)
        self.loss_values.append(value)
        # Fast GPU runs send many steps a second: redraw a few times a second, not per step.
        now = time.monotonic()
        if now - self._drawn >= _REDRAW_S or len(self.loss_steps) == 1:
            self.redraw()

    def redraw(self) -> None:
        """Show every point received so far."""
        self._drawn = time.monotonic()
        self._loss_line.set_data(self.loss_steps, self.loss_values)
        if self.loss_values:
            # A loss that can be 0 or negative (a GAN term) cannot go on a log axis.
            self.ax.set_yscale("log" if min(self.loss_values) > 0 else "linear")
        self.ax.relim()
        self.ax.autoscale_view()
        # The x range covers both curves (the step-0 validation comes before any loss).
        self.ax.set_xlim(0, max([1, *self.loss_steps[-1:], *self.val_steps[-1:]]))
        self.draw_idle()

    def add_validation(self, step: int, value: float, label: str) -> None:
        if label != self.val_label:  # the metric changed (another task or mode): start over
            self.val_steps, self.val_values, self.val_label = [], [], label
            self.ax_val.set_ylabel(label)
        if not math.isfinite(value):
            return
        self.val_steps.append(step)
        self.val_values.append(value)
        self._val_line.set_data(self.val_steps, self.val_values)
        self.ax_val.relim()
        self.ax_val.autoscale_view()
        self.redraw()


def _loss_of(losses: dict[str, float]) -> float:
    """The one loss to plot: the total when the recipe reports one, else its first term."""
    for key in ("total", "loss", "net", "l1"):
        if key in losses:
            return float(losses[key])
    return float(next(iter(losses.values()), float("nan")))


def _main_metric(metrics: dict[str, float]) -> str | None:
    for key in ("psnr", "score", "lassim", "ssim", "loss"):
        if key in metrics:
            return key
    return None


def format_metrics(metrics: dict[str, float]) -> str:
    """``PSNR 21.21 dB, SSIM 0.3354`` (the summary metrics a validation reports)."""
    parts = []
    for key, label in METRIC_LABELS.items():
        if key in metrics and key != "loss" and math.isfinite(metrics[key]):
            v = metrics[key]
            parts.append(f"{label} {v:.2f} dB" if key == "psnr" else f"{label} {v:.4f}")
    return ", ".join(parts) or ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


class TrainWidget(QWidget):
    """Dock widget: fine-tune a denoising, enhancement or SR model on image layers or folders.

    ``options`` holds advanced keywords for
    :func:`~napari_medenhance.core.training.finetune.iter_finetune` (e.g. ``config`` for a
    smaller new network, ``recipe_options``); set it from the napari console.
    """

    #: Emitted (from any thread) when a model was saved: refreshes the 'start from' picker.
    models_changed = Signal()

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.options: dict[str, Any] = {}
        self._worker = None
        self._stop_requested = False
        self._running = False
        self._run_dir: Path | None = None  # the folder of the last run started here
        self._folders: dict[str, dict[str, str]] = {"hq": {}, "lq": {}}  # role -> path -> label
        self.preview_layer: Image | None = None
        self.validations: list[tuple[int, dict[str, float]]] = []
        self._default_name = "my-denoise"

        self.task = ComboBox(label="task", choices=list(tasks.TASKS), value="denoise",
                             tooltip="What the model learns: denoising (DRAN), perceptual "
                                     "enhancement (DPE / LaMEGAN) or ×4 super-resolution")
        self.mode = ComboBox(label="mode", choices=self._mode_choices, tooltip=MODE_HELP["simulated"])
        self.hq = ComboBox(label="clean / HQ", choices=lambda _w=None: self._data_choices("hq"),
                           tooltip="The good images: an image layer, or a folder of TIFFs "
                                   "(Folder…). Every plane of a stack is used.")
        self.lq = ComboBox(label="LQ", choices=lambda _w=None: self._data_choices("lq"),
                           nullable=True, tooltip="The low-quality images (paired / unpaired)")
        self.start = ComboBox(label="start from", choices=self._start_choices,
                              tooltip="Fine-tune an installed model (shipped or your own), or "
                                      "train a new network from scratch")
        self.steps = SpinBox(label="steps", value=2000, min=1, max=10_000_000, step=100,
                             tooltip="Optimisation steps of the run (a resumed run counts on)")
        self.batch = SpinBox(label="batch", value=8, min=1, max=1024,
                             tooltip="Patches per step (lower it when memory runs out)")
        self.patch = SpinBox(label="patch (px)", value=64, min=8, max=1024, step=8,
                             tooltip="Patch edge in pixels (HQ pixels for super-resolution: a "
                                     "multiple of 4)")
        self.lr = LineEdit(label="learning rate", value="1e-4",
                           tooltip="Initial Adam learning rate, cosine-decayed to 1 % of it")
        self.val_every = SpinBox(label="validate every", value=200, min=1, max=1_000_000,
                                 step=50, tooltip="Validate (and checkpoint) every this many "
                                                  "steps; also at step 0 and at the end")
        self.device = ComboBox(label="device", choices=device_choices(), value="auto",
                               tooltip="Devices this machine has; auto picks a CUDA GPU, then "
                                       "Apple MPS, then the CPU (the one in use is in brackets)")
        self.name = LineEdit(label="name", value=self._default_name,
                             tooltip="Run name (its folder holds the checkpoints: Start with "
                                     "the same name resumes) and the saved model's name")
        self.overwrite = CheckBox(text="replace a saved model of this name", value=False)
        self.pickers = Container(widgets=[self.task, self.mode, self.hq, self.lq, self.start,
                                          self.steps, self.batch, self.patch, self.lr,
                                          self.val_every, self.device, self.name])

        self.help = QLabel("Fine-tune a model on your own images, or train one from scratch. "
                           + MODE_HELP["simulated"])
        self.help.setWordWrap(True)
        self.btn_hq_folder = QPushButton("HQ folder…")
        self.btn_hq_folder.setToolTip("Use a folder of TIFF files as the clean / HQ images")
        self.btn_lq_folder = QPushButton("LQ folder…")
        self.btn_lq_folder.setToolTip("Use a folder of TIFF files as the LQ images")
        self.btn_refresh = QPushButton("↻")
        self.btn_refresh.setToolTip("Look for new layers and installed models again")
        self.btn_start = QPushButton("Start")
        self.btn_start.setToolTip("Train in the background (resumes the run of this name)")
        self.btn_stop = QPushButton("Stop")
        self.btn_stop.setToolTip("Stop after the current step; the checkpoint and the best "
                                 "model are kept (Start resumes)")
        self.btn_stop.setEnabled(False)
        self.btn_save = QPushButton("Save model")
        self.btn_save.setToolTip("Save the best validated model under 'name'; it appears in "
                                 "every widget's model picker")
        self.btn_save.setEnabled(False)
        self.btn_export = export_button(self.export_model)
        self.btn_export.setEnabled(False)
        self._saved: zoo.ModelInfo | None = None
        self._export_worker = None
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.metrics_label = QLabel("")
        self.metrics_label.setWordWrap(True)
        self.metrics_label.setToolTip("Validation on the held-out part of your data: 'before' "
                                      "is the starting model, then the latest validation")
        self.plot = TrainPlot()
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)
        self.estimate.setToolTip("An estimate from timing a few steps on this machine; the "
                                 "rate changes with what else the machine is doing")
        self.btn_estimate = QPushButton("Estimate time")
        self.btn_estimate.setToolTip("Time a few training steps with these settings on this "
                                     "device (reads the data; takes seconds to a minute)")
        self._rate = StepRate()
        self._timings: dict[tuple, float] = {}  # settings -> measured seconds per step
        self._estimate_worker = None
        self._run_key: tuple = ()

        # Docked beside other widgets the dock gets short: the form scrolls instead of
        # squashing its labels (the plot keeps its minimum height).
        self.scroll, layout = scrolling_form(self)
        layout.addWidget(self.help)
        layout.addWidget(self.pickers.native)
        row = QHBoxLayout()
        for b in (self.btn_hq_folder, self.btn_lq_folder, self.btn_refresh):
            row.addWidget(b)
        layout.addLayout(row)
        layout.addWidget(self.estimate)
        row = QHBoxLayout()
        row.addWidget(self.btn_estimate)
        row.addWidget(self.btn_start)
        row.addWidget(self.btn_stop)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addWidget(self.metrics_label)
        layout.addWidget(self.plot)
        row = QHBoxLayout()
        row.addWidget(self.btn_save)
        row.addWidget(self.btn_export)
        layout.addLayout(row)
        layout.addWidget(self.overwrite.native)  # its own line: beside the buttons it is too wide
        layout.addStretch(1)

        self.task.changed.connect(self._on_task_changed)
        self.mode.changed.connect(self._on_mode_changed)
        self.btn_hq_folder.clicked.connect(lambda: self._ask_folder("hq"))
        self.btn_lq_folder.clicked.connect(lambda: self._ask_folder("lq"))
        self.btn_refresh.clicked.connect(self.refresh)
        self.btn_start.clicked.connect(self.start_training)
        self.btn_stop.clicked.connect(self.stop)
        self.btn_save.clicked.connect(self.save)
        self.btn_estimate.clicked.connect(self.estimate_time)
        for w in (self.task, self.mode, self.hq, self.lq, self.start, self.steps, self.batch,
                  self.patch, self.device):
            w.changed.connect(self._show_estimate)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.models_changed.connect(self._refresh_start)
        zoo.on_models_changed(self._emit_models_changed)
        self._on_mode_changed()
        self._show_estimate()

    def _emit_models_changed(self) -> None:
        self.models_changed.emit()

    # ---------------------------------------------------------------- pickers
    def _mode_choices(self, _widget: Any = None) -> list[str]:
        return list(tasks.TASKS[self.task.value].modes)

    def _data_choices(self, role: str) -> list[tuple[str, Any]]:
        # Labels hold class ids, not intensities; the preview is the model's own output.
        layers = [(lay.name, lay) for lay in self.viewer.layers
                  if isinstance(lay, Image) and not isinstance(lay, Labels)
                  and not self._is_preview(lay)]
        return layers + [(label, path) for path, label in self._folders[role].items()]

    def _start_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        models = [(f"{m.name} ({m.source})", m.name) for m in zoo.list_models(self.task.value)]
        return [*models, ("scratch (new network)", ft.SCRATCH)]

    def _refresh_start(self) -> None:
        self.start.reset_choices()

    def refresh(self) -> None:
        """Re-read the layers and the installed models."""
        self.pickers.reset_choices()

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        super().showEvent(event)
        self.refresh()

    def _on_layers_changed(self, _event: Any = None) -> None:
        self.hq.reset_choices()
        self.lq.reset_choices()

    def _is_preview(self, layer: Any) -> bool:
        # By id, not identity: napari hands plugins proxies of its layers.
        return self.preview_layer is not None and layer.unique_id == self.preview_layer.unique_id

    def _on_layer_removed(self, event: Any) -> None:
        if self._is_preview(event.value):
            self.preview_layer = None  # made again at the next validation

    def _on_task_changed(self, _value: Any = None) -> None:
        task = self.task.value
        if self.name.value in ("", self._default_name):
            self._default_name = f"my-{task}"
            self.name.value = self._default_name
        self.mode.reset_choices()
        self.start.reset_choices()
        self.patch.step = 4 if task == "sr" else 8
        self._on_mode_changed()

    def _on_mode_changed(self, _value: Any = None) -> None:
        mode = self.mode.value or "simulated"
        self.lq.enabled = mode != "simulated"
        self.btn_lq_folder.setEnabled(mode != "simulated")
        self.hq.label = "clean / HQ" if mode == "simulated" else "HQ"
        self.mode.tooltip = MODE_HELP[mode]
        self.help.setText("Fine-tune a model on your own images, or train one from scratch. "
                          + MODE_HELP[mode])

    def add_folder(self, role: str, path: str | Path) -> None:
        """Offer a folder of TIFFs as the ``"hq"`` or ``"lq"`` data and select it."""
        p = str(Path(path).expanduser())
        self._folders[role][p] = f"{Path(p).name}/ (folder)"
        picker = self.hq if role == "hq" else self.lq
        picker.reset_choices()
        picker.value = p

    def _ask_folder(self, role: str) -> None:
        path = QFileDialog.getExistingDirectory(self, f"Folder of {role.upper()} TIFF images")
        if path:
            self.add_folder(role, path)

    # ------------------------------------------------------------------ run
    def _fail(self, message: str) -> None:
        self.status.setText(message)
        show_error(message)

    def _source(self, value: Any, what: str) -> tuple[Any, bool | None, str]:
        """(data, rgb, name) of a picked layer or folder; ValueError when unusable."""
        if value is None:
            raise ValueError(f"Pick the {what} images (an image layer or a folder).")
        if isinstance(value, Image):
            if value.multiscale:
                raise ValueError(f"'{value.name}' is a multiscale (pyramid) layer; train on a "
                                 "full-resolution array instead, e.g. viewer.add_image("
                                 "layer.data[0]) of a smaller region.")
            return value.data, bool(value.rgb), value.name
        return str(value), None, Path(str(value)).name

    def _settings(self) -> dict[str, Any]:
        """Everything ``iter_finetune`` needs from the pickers; ValueError says what to fix."""
        task, mode = self.task.value, self.mode.value
        data, rgb, data_name = self._source(self.hq.value, "clean / HQ")
        lq = lq_name = None
        if mode != "simulated":
            lq, lq_rgb, lq_name = self._source(self.lq.value, "low-quality (LQ)")
            if mode == "paired" and isinstance(self.lq.value, Image) \
                    and isinstance(self.hq.value, Image):  # folders are checked by the core
                check_pair_shapes(self.lq.value.data.shape, self.hq.value.data.shape,
                                  SR_SCALE if task == "sr" else 1,
                                  lq_name=f"LQ '{lq_name}'", hq_name=f"HQ '{data_name}'",
                                  rgb=bool(rgb))
            if rgb is None:
                rgb = lq_rgb
        try:
            lr = float(self.lr.value)
        except ValueError:
            raise ValueError(f"learning rate {self.lr.value!r} is not a number; e.g. 1e-4") from None
        name = self.name.value.strip()
        if not name:
            raise ValueError("Give the run a name (it is also the saved model's name).")
        run_folder(name)  # the name rules, checked now
        start = self.start.value
        if start is None:
            raise ValueError("Pick a model to start from, or 'scratch'.")
        return {
            "task": task, "mode": mode, "data": data, "lq": lq, "rgb": rgb,
            "data_name": data_name, "lq_name": lq_name or "LQ",
            "start": None if start == ft.SCRATCH else start, "steps": self.steps.value,
            "batch": self.batch.value, "patch": self.patch.value, "lr": lr,
            "device": self.device.value, "name": name, "val_every": self.val_every.value,
        }

    def start_training(self) -> None:
        """Start (or resume) the run named in 'name' in a thread worker."""
        if self._worker is not None or self._estimate_worker is not None:
            return
        try:
            kw = self._settings()
        except ValueError as err:
            self._fail(str(err))
            return
        self._run_key = self._estimate_key()
        run_dir = run_folder(kw["name"])
        resuming = (run_dir / LAST).is_file()
        kw = {**kw, **self.options}
        task, mode, data = kw.pop("task"), kw.pop("mode"), kw.pop("data")
        self._stop_requested = False
        worker = create_worker(
            surface_runtime_errors, ft.iter_finetune, task, mode, data,
            cancel=lambda: self._stop_requested,
            _progress={"total": kw["steps"], "desc": f"Training {kw['name']}"},
            _ignore_errors=True,  # reported here (status + notification)
            **kw,
        )
        worker.yielded.connect(self._on_event)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._running = True
        self._run_dir = run_dir
        self._saved = None  # a new run: what was saved before is not this run's model
        self.validations = []
        self._rate = StepRate()
        self.plot.clear()
        self.metrics_label.setText("")
        self.pickers.enabled = False
        for b in (self.btn_start, self.btn_save, self.btn_export, self.btn_hq_folder,
                  self.btn_lq_folder, self.btn_estimate):
            b.setEnabled(False)
        self.btn_stop.setEnabled(True)
        what = "Resuming" if resuming else "Starting"
        self.status.setText(f"{what} run '{kw['name']}' ({task}, {mode}): reading the data and "
                            f"preparing the validation set… (run folder {run_dir})")
        worker.start()

    def stop(self) -> None:
        """Stop after the current step (checkpoint written, best model kept)."""
        if self._worker is not None:
            self._stop_requested = True
            self.btn_stop.setEnabled(False)
            self.status.setText("Stopping after this step…")

    def _on_event(self, ev: TrainEvent) -> None:
        if not self._running:
            return
        if ev.kind == "step":
            loss = _loss_of(ev.losses)
            self.plot.add_loss(ev.step, loss)
            self._rate.update(ev.step)
            if not self._stop_requested:
                self.status.setText(f"Step {ev.step}/{ev.total}: loss {loss:.4g}, "
                                    f"learning rate {ev.lr:.2e}" + self._speed_text(ev.total))
        elif ev.kind == "validation":
            self._on_validation(ev)
        elif ev.kind == "cancelled":
            self.status.setText(f"Stopped at step {ev.step}/{ev.total}. The best model so far "
                                "is kept (Save model); Start with the same name resumes.")
        elif ev.kind == "done":
            self.status.setText(f"Done: {ev.step} steps. Save the best model under a name to "
                                "use it in the other widgets.")
        # Last: napari's progress bar processes Qt events while it redraws (see _run_widget).
        pbar = getattr(self._worker, "pbar", None)
        if pbar is not None:
            if pbar.total != ev.total:
                pbar.total = ev.total
            if ev.step > pbar.n:
                pbar.update(ev.step - pbar.n)

    def _on_validation(self, ev: TrainEvent) -> None:
        self.validations.append((ev.step, dict(ev.metrics)))
        key = _main_metric(ev.metrics)
        if key is not None:
            self.plot.add_validation(ev.step, float(ev.metrics[key]),
                                     METRIC_LABELS.get(key, key) + (" (dB)" if key == "psnr" else ""))
        first_step, first = self.validations[0]
        lines = [f"{'before' if first_step == 0 else f'step {first_step}'}: {format_metrics(first)}"]
        if len(self.validations) > 1:
            lines.append(f"step {ev.step}: {format_metrics(ev.metrics)}"
                         + ("  (best so far)" if ev.path is not None else ""))
        self.metrics_label.setText("\n".join(lines))
        if ev.preview is not None:
            self.show_preview(ev.preview, ev.step)

    def show_preview(self, preview: np.ndarray, step: int) -> None:
        """Show the current model's output on a validation plane: one layer, updated in place."""
        rgb = preview.ndim == 3
        layer = self.preview_layer
        if layer is not None and (layer not in self.viewer.layers or layer.rgb != rgb):
            if layer in self.viewer.layers:  # (== compares the proxied layer itself)
                self.viewer.layers.remove(layer)
            layer = None
        if layer is None:
            self.preview_layer = layer = self.viewer.add_image(
                preview, name=PREVIEW_NAME, rgb=rgb, contrast_limits=(0.0, 1.0))
            self._on_layers_changed()  # the pickers saw it before it was known as the preview
        else:
            layer.data = preview
        layer.metadata["step"] = step

    def _on_error(self, err: Exception) -> None:
        self._running = False
        message = f"Training failed: {err}"
        if "out of memory" in str(err).lower():
            message += " Lower 'batch' or 'patch (px)', or set device to 'cpu'."
        self._fail(message)

    def _speed_text(self, total: int) -> str:
        """``' · 1.3 steps/s, about 24 min left'`` once the rate is known, else ``''``."""
        rate = self._rate.steps_per_second
        if rate is None:
            return ""
        speed = f"{rate:.2g} steps/s" if rate >= 1 else f"{1 / rate:.2g} s per step"
        left = self._rate.seconds_left(total)
        return f" · {speed}, about {format_duration(left)} left" if left else f" · {speed}"

    # ------------------------------------------------------------- estimate
    def _device_words(self) -> str:
        try:
            dev = resolve_device(self.device.value)
        except ValueError:
            return "this device"
        return {"cpu": "this CPU", "mps": "Apple MPS"}.get(dev.type, f"this GPU ({dev})")

    def _estimate_key(self) -> tuple:
        """What the time per step depends on (not the number of steps)."""
        def ident(v: Any) -> Any:
            return v.unique_id if isinstance(v, Image) else v

        return (self.task.value, self.mode.value, ident(self.hq.value), ident(self.lq.value),
                self.start.value, self.batch.value, self.patch.value, self.device.value,
                repr(sorted(self.options.items())))

    def _show_estimate(self, _value: Any = None) -> None:
        """The line above Start: how long the chosen steps take here, or how to find out."""
        steps, where = self.steps.value, self._device_words()
        per_step = self._timings.get(self._estimate_key())
        if per_step is not None:
            text = (f"Estimate: {steps:,} steps ≈ {format_duration(steps * per_step)} on "
                    f"{where} ({per_step:.2g} s per step, timed here with these settings; "
                    "validations add to it).")
        else:
            text = f"{steps:,} steps: press 'Estimate time' to time a few steps on {where}"
            if where == "this CPU":
                text += "; on a CPU, thousands of steps can take hours"
            text += "."
        self.estimate.setText(text)

    def estimate_time(self) -> Any:
        """Time a few real training steps with the current settings in a thread worker (in a
        temporary run folder); the line above Start then says how long the steps take."""
        if self._worker is not None or self._estimate_worker is not None:
            return None
        try:
            kw = self._settings()
        except ValueError as err:
            self._fail(str(err))
            return None
        key = self._estimate_key()
        kw = {**kw, **self.options}
        task, mode, data = kw.pop("task"), kw.pop("mode"), kw.pop("data")
        kw.pop("name")
        worker = create_worker(surface_runtime_errors, iter_time_steps, task, mode, data,
                               cancel=lambda: self._stop_requested, _ignore_errors=True, **kw)

        def done(per_step: float | None) -> None:
            if per_step is not None:
                self._timings[key] = per_step
            self._show_estimate()

        def failed(err: Exception) -> None:
            self._fail(f"Could not time the steps: {err}")

        def finished() -> None:
            self._estimate_worker = None
            self.btn_start.setEnabled(True)
            self.btn_estimate.setEnabled(True)

        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.finished.connect(finished)
        self._estimate_worker = worker
        self._stop_requested = False
        self.btn_start.setEnabled(False)
        self.btn_estimate.setEnabled(False)
        self.estimate.setText(f"Timing a few steps on {self._device_words()} (reading the data "
                              "first)…")
        worker.start()
        return worker

    def _on_finished(self) -> None:
        self._running = False
        self._worker = None
        self.plot.redraw()
        self.pickers.enabled = True
        for b in (self.btn_start, self.btn_hq_folder, self.btn_refresh, self.btn_estimate):
            b.setEnabled(True)
        self._on_mode_changed()
        self.btn_stop.setEnabled(False)
        rate = self._rate.steps_per_second
        if rate:  # the run's own rate is the best estimate for these settings next time
            self._timings[self._run_key] = 1 / rate
        self._show_estimate()
        has_best = self._run_dir is not None and (self._run_dir / BEST).is_file()
        self.btn_save.setEnabled(has_best)
        self.btn_export.setEnabled(has_best)

    def save(self) -> zoo.ModelInfo | None:
        """Save the last run's best model under 'name' into the user models folder."""
        if self._run_dir is None or self._worker is not None:
            return None
        name = self.name.value.strip()
        try:
            info = ft.save_finetuned(self._run_dir, name, overwrite=self.overwrite.value)
        except ValueError as err:  # includes WeightsError
            hint = " Tick 'replace…' or pick another name." if "already exists" in str(err) else ""
            self._fail(f"Could not save: {err}{hint}")
            return None
        self.status.setText(f"Saved '{info.name}' ({info.path}); it is in the {info.task} "
                            "widget's model picker, with its model card next to it.")
        show_info(f"Saved model '{info.name}'")
        self._saved = info
        return info

    def export_model(self, out: str | Path | None = None) -> Any:
        """Export the saved model (else the run's best one) as a BioImage.IO package; asks
        where when ``out`` is None. Runs in a thread worker, which is returned."""
        if self._saved is not None and self._saved.path.is_file():
            model, label = self._saved.path, self._saved.name
        elif self._run_dir is not None and (self._run_dir / BEST).is_file():
            model, label = self._run_dir / BEST, self.name.value.strip() or "model"
        else:
            self._fail("Nothing to export yet: train (and save) a model first.")
            return None
        if out is None:
            out = ask_export_path(self, label)
            if out is None:
                return None
        self._export_worker = start_export(model, Path(out), self.status.setText)
        return self._export_worker

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self._stop_requested = True  # a running job stops at its next step, checkpointed
        super().closeEvent(event)
