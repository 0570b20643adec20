"""The one dock widget that runs a restoration model on an image layer; each task subclasses it.

Picks an image layer, a model of the subclass's task (shipped, the user's own, or a file picked
with Browse…), device, tile size and whole stack / current plane; runs the task's core generator
(``iter_<task>``) in a thread worker; renders its :class:`~napari_medenhance.core.engine.Progress`
events as a napari progress bar; adds the result as ``<name> [<done>]`` placed over the source.
A subclass sets the class attributes below, returns its generator function from :meth:`job`
and may use :meth:`on_result` and :meth:`add_section`; nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, SpinBox
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from napari_medenhance.core import tasks, zoo
from napari_medenhance.core.engine import device_choices

from ._bioimageio import ask_export_path, export_button, start_export
from ._layers import (
    current_plane_index,
    plane_axes,
    plane_transform_kwargs,
    surface_runtime_errors,
    transform_kwargs,
)

if TYPE_CHECKING:
    import napari

    from napari_medenhance.core.engine import Progress

#: Smallest height of a widget's scrolling form (pixels): docked together, napari shares the
#: height between widgets, and below this one of them shrinks to a couple of lines.
MIN_SCROLL_HEIGHT = 240


def scrolling_form(widget: QWidget) -> tuple[QScrollArea, QVBoxLayout]:
    """Give ``widget`` a vertically scrolling body; returns (the scroll area, the body's layout).

    Text wraps to the dock's width rather than scrolling sideways, and the widget keeps a
    readable height when napari shares the dock area between several of them.
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setMinimumHeight(MIN_SCROLL_HEIGHT)
    body = QWidget()
    scroll.setWidget(body)
    outer.addWidget(scroll)
    return scroll, QVBoxLayout(body)

#: ``job(image, model, *, rgb, device, tile, plane)`` -> generator of Progress, returning the result.
Job = Callable[..., Generator["Progress", None, np.ndarray]]


class RunModelWidget(QWidget):
    """Base dock widget: run a model of :attr:`TASK` on a whole image layer or its current plane.

    Subclasses set the wording and the task, and implement :meth:`job`.
    """

    #: Registry task whose models the picker offers (:data:`napari_medenhance.core.tasks.TASKS`).
    TASK: ClassVar[str] = ""
    #: Imperative, for the progress bar and tooltips: "Denoise".
    VERB: ClassVar[str] = ""
    #: Gerund, for status lines: "Denoising".
    DOING: ClassVar[str] = ""
    #: Past participle, for the result's layer name: "<name> [denoised]".
    DONE: ClassVar[str] = ""
    #: Adjective for the model kind in messages: "No denoising model is installed yet".
    NOUN: ClassVar[str] = ""
    #: One paragraph at the top of the widget.
    HELP: ClassVar[str] = ""
    #: Emitted (from any thread) when a model was saved to the registry: refreshes the picker.
    models_changed = Signal()

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._worker = None
        self._cancelled = False
        self._running = False  # False once the job's outcome is known: late progress is dropped
        self._unit = "tile"  # what a progress event counts: tiles, or their views (ensemble)
        self._files: dict[str, str] = {}  # models picked with Browse…: path -> label
        verb = self.VERB.lower()

        self.layer = ComboBox(label="image", choices=self._image_layers,
                              tooltip=f"Image layer to {verb} (its data is never modified)")
        self.model = ComboBox(label="model", choices=self._model_choices,
                              tooltip=f"Installed {self.NOUN} models (shipped and your own) and "
                                      "files picked with Browse…")
        self.device = ComboBox(label="device", choices=device_choices(), value="auto",
                               tooltip="Devices this machine has; auto picks a CUDA GPU, then "
                                       "Apple MPS, then the CPU (the one in use is in brackets)")
        self.tile = SpinBox(label="tile (px)", value=0, min=0, max=16384, step=64,
                            tooltip="Tile edge in pixels. 0 = auto: whole planes up to 1024×1024, "
                                    "else 512-pixel tiles. Smaller tiles use less (GPU) memory.")
        # "0" alone does not say it means automatic (superqt's spin box has no special-value
        # text): a note beside it says what 0 does, and nothing once a size is set.
        self.tile_note = Label(value="", tooltip="0 = auto: whole planes up to 1024×1024, "
                                                  "else 512-pixel tiles")
        self.tile_row = Container(widgets=[self.tile, self.tile_note], layout="horizontal",
                                  labels=False, label="tile (px)")
        self.tile_row.margins = (0, 0, 0, 0)
        self.tile.changed.connect(self._on_tile_changed)
        self._on_tile_changed()
        self.plane_only = CheckBox(text="current plane only", value=False,
                                   tooltip=f"{self.VERB} only the plane the viewer shows (a quick "
                                           "preview), with the same intensity mapping as the whole "
                                           "stack; unchecked: every plane")
        self.ensemble = CheckBox(
            text="8-view ensemble (8× slower)", value=False,
            tooltip=f"{self.VERB} every tile in its 8 rotations and flips and average the results "
                    "turned back: a slightly better result (about +0.1 dB PSNR) for 8× the time")
        self.pickers = Container(widgets=[self.layer, self.model, self.device, self.tile_row,
                                          self.plane_only, self.ensemble])

        self.help = QLabel(self.HELP)
        self.help.setWordWrap(True)
        self.btn_refresh = QPushButton("↻")
        self.btn_refresh.setToolTip("Look for newly installed models again")
        self.btn_browse = QPushButton("Browse…")
        self.btn_browse.setToolTip("Use a .safetensors weights file that is not installed")
        self.btn_export = export_button(self.export_model)
        self._export_worker = None
        self.btn_run = QPushButton("Run")
        self.btn_run.setToolTip(f"{self.VERB} in the background; the result is added as a new layer")
        self.btn_cancel = QPushButton("Cancel")
        self.btn_cancel.setToolTip("Stop after the current tile; no layer is added")
        self.btn_cancel.setEnabled(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setToolTip("What the widget is doing, or why it could not")

        # Docked beside other widgets the dock gets short: the form scrolls instead of squashing
        # its labels until they are unreadable.
        self.scroll, self._layout = scrolling_form(self)
        self._layout.addWidget(self.help)
        self._layout.addWidget(self.pickers.native)
        models = QHBoxLayout()
        models.addWidget(self.btn_refresh)
        models.addWidget(self.btn_browse)
        models.addWidget(self.btn_export)
        self._layout.addLayout(models)
        run = QHBoxLayout()
        run.addWidget(self.btn_run)
        run.addWidget(self.btn_cancel)
        self._layout.addLayout(run)
        self._layout.addWidget(self.status)
        self._layout.addStretch(1)

        self.btn_refresh.clicked.connect(self.refresh_models)
        self.btn_browse.clicked.connect(self._ask_model_file)
        self.btn_run.clicked.connect(self.run)
        self.btn_cancel.clicked.connect(self.cancel)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._on_layers_changed)
        # A model saved meanwhile (e.g. by the Train widget) appears at once; the zoo holds
        # this bound method weakly, and the signal hops to the GUI thread.
        self.models_changed.connect(self.refresh_models)
        zoo.on_models_changed(self._emit_models_changed)
        self.refresh_models()

    def _emit_models_changed(self) -> None:
        self.models_changed.emit()

    # ------------------------------------------------------------ subclass API
    def job(self) -> Job:
        """The core generator function to run, e.g. :func:`napari_medenhance.api.iter_denoise`.

        Looked up on every run (not stored at import), so tests can replace it.
        """
        raise NotImplementedError

    def on_result(self, added: Image, source: Image, index: tuple[int, ...] | None,
                  source_data: Any, result: np.ndarray) -> None:
        """Called on the main thread after the result layer ``added`` was put in the viewer.

        ``index`` is the plane that was run (None: the whole layer); ``source_data`` is the
        array that was read (``source.data`` at Run time) and ``result`` what came back,
        shaped like ``source_data`` or like its plane ``index``.
        """

    def _on_tile_changed(self, _value: Any = None) -> None:
        self.tile_note.value = "auto" if self.tile.value == 0 else ""

    def add_section(self, widget: QWidget) -> None:
        """Put a subclass's own widget below the status line (above the bottom stretch)."""
        self._layout.insertWidget(self._layout.count() - 1, widget)

    def default_model_name(self) -> str:
        """The shipped model this widget would use (named when it is missing; the task
        table's)."""
        return tasks.default_model_name(self.TASK)

    def no_model_message(self) -> str:
        """What to tell the user when no model of this task is installed."""
        return (
            f"No {self.NOUN} model is installed yet (the shipped "
            f"{self.default_model_name().upper()} weights are not bundled yet). "
            "Pick a .safetensors weights file with 'Browse…', or add one for every session with "
            "`medenhance models --add FILE.safetensors --name NAME` (it is copied to "
            f"{zoo.user_models_dir()}) and press ↻, or train one on your images in the Train "
            "widget."
        )

    # ---------------------------------------------------------------- pickers
    def _image_layers(self, _widget: Any = None) -> list[Image]:
        # Labels hold class ids, not intensities: restoring them would invent labels.
        return [lay for lay in self.viewer.layers if isinstance(lay, Image) and not isinstance(lay, Labels)]

    def _on_layers_changed(self, _event: Any = None) -> None:
        self.layer.reset_choices()

    def _model_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        choices = [(f"{m.name} ({m.source})", m.name) for m in zoo.list_models(self.TASK)]
        choices += [(label, path) for path, label in self._files.items()]
        return choices

    def refresh_models(self) -> None:
        """Re-scan the model folders (a model installed meanwhile appears)."""
        self.model.reset_choices()
        if self.model.value is None:
            self.status.setText(self.no_model_message())
        elif self.status.text() == self.no_model_message():
            self.status.setText("")

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        super().showEvent(event)
        self.refresh_models()

    def add_model_file(self, path: str | Path) -> bool:
        """Offer a weights file in the model picker and select it; False (with a message) if unusable."""
        try:
            info = zoo.get_model(Path(path), task=self.TASK)
        except ValueError as err:  # includes WeightsError
            self._fail(str(err))
            return False
        key = str(info.path)
        self._files[key] = f"{info.path.name} (file)"
        self.refresh_models()
        self.model.value = key
        self.status.setText(f"Using {info.path}")
        return True

    def export_model(self, out: str | Path | None = None) -> Any:
        """Export the picked model as a BioImage.IO package (asks where when ``out`` is None);
        runs in a thread worker, which is returned (None when nothing started)."""
        model = self.model.value
        if model is None:
            self._fail(self.no_model_message())
            return None
        if out is None:
            out = ask_export_path(self, Path(str(model)).stem)
            if out is None:
                return None
        self._export_worker = start_export(model, Path(out), self.status.setText)
        return self._export_worker

    def _ask_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, f"Pick a {self.NOUN} model", "", "Weights (*.safetensors);;All files (*)"
        )
        if path:
            self.add_model_file(path)

    # -------------------------------------------------------------------- run
    def _fail(self, message: str) -> None:
        self.status.setText(message)
        show_error(message)

    def run(self) -> None:
        """Run the model on the picked layer (or its current plane) in a thread worker."""
        if self._worker is not None:
            return
        layer = self.layer.value
        verb = self.VERB.lower()
        if layer is None or not isinstance(layer, Image) or isinstance(layer, Labels):
            self._fail(f"Pick an image layer to {verb} (label layers cannot be {self.DONE}).")
            return
        if layer.multiscale:
            self._fail(f"'{layer.name}' is a multiscale (pyramid) layer; {verb} its full-resolution "
                       "array instead, e.g. viewer.add_image(layer.data[0]).")
            return
        self.refresh_models()
        model = self.model.value
        if model is None:
            self._fail(self.no_model_message())
            return
        index = None
        if self.plane_only.value and plane_axes(layer):
            index = current_plane_index(self.viewer, layer)
        # Taken now, so later edits of the source (data, transforms, display) don't change the
        # result or where it lands.
        data = layer.data
        place = transform_kwargs(layer) if index is None else plane_transform_kwargs(layer, index)
        display: dict[str, Any] = {"rgb": layer.rgb, "contrast_limits": tuple(layer.contrast_limits)}
        if not layer.rgb:
            display["colormap"] = layer.colormap
        name = f"{layer.name} [{self.DONE}]"
        if index is not None:
            name = f"{layer.name} [{self.DONE} plane {'/'.join(map(str, index))}]"

        worker = create_worker(
            surface_runtime_errors, self.job(), data, model, rgb=layer.rgb,
            device=self.device.value, tile=self.tile.value or None, plane=index,
            ensemble=self.ensemble.value,
            _progress={"total": 0, "desc": f"{self.VERB} {layer.name}"},
            # Errors are reported here (notification + status), not re-raised in the main thread.
            _ignore_errors=True,
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(
            lambda result: self._add_result(result, layer, data, index, name, place, display)
        )
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._cancelled = False
        self._running = True
        self._unit = "view" if self.ensemble.value else "tile"
        self.btn_run.setEnabled(False)
        self.btn_cancel.setEnabled(True)
        self.status.setText(f"{self.DOING} '{layer.name}' with {Path(model).name}…")
        worker.start()

    def cancel(self) -> None:
        """Stop the running job at its next tile; nothing is added."""
        if self._worker is not None:
            self._cancelled = True
            self._worker.quit()

    def _on_progress(self, event: Progress) -> None:
        if not self._running:
            return  # the outcome is already shown
        self.status.setText(f"{self.DOING}: {event.stage}, {self._unit} {event.done}/{event.total}")
        # Last: napari's progress bar processes Qt events while it redraws, so the worker's next
        # signals (later tiles, the result) can run inside this call; nothing may follow it.
        pbar = getattr(self._worker, "pbar", None)
        if pbar is not None:
            if pbar.total != event.total:
                pbar.total = event.total  # the engine knows the tile count once it has planned
            if event.done > pbar.n:  # a nested, later event may have moved it on already
                pbar.update(event.done - pbar.n)

    def _add_result(self, result: np.ndarray, source: Image, source_data: Any,
                    index: tuple[int, ...] | None, name: str, place: dict[str, Any],
                    display: dict[str, Any]) -> None:
        self._running = False
        if self._cancelled:
            return  # finished just as Cancel was pressed: the user asked for nothing
        plane = result
        if index is not None:
            # Keep singleton leading axes so the plane has a world position along them.
            result = result.reshape((1,) * len(index) + result.shape)
        added = self.viewer.add_image(result, name=name, **display, **place)
        self.status.setText(f"Added '{added.name}'.")
        self.on_result(added, source, index, source_data, plane)

    def _on_error(self, err: Exception) -> None:
        self._running = False
        message = f"{self.DOING} failed: {err}"
        if "out of memory" in str(err).lower():
            message += " In this widget: lower 'tile (px)' or set device to 'cpu'."
        self._fail(message)

    def _on_aborted(self) -> None:
        self._running = False
        self.status.setText("Cancelled; no layer was added.")
        show_info(f"{self.DOING} cancelled.")

    def _on_finished(self) -> None:
        self._running = False
        self._worker = None
        self.btn_run.setEnabled(True)
        self.btn_cancel.setEnabled(False)
