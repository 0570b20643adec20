"""Denoise dock widget: pick an image layer and a model, run in a worker, get a new layer.

All the work is :func:`napari_medenhance.api.iter_denoise` (model registry + inference engine);
this widget only picks the inputs, renders the engine's progress events and places the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, SpinBox
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_medenhance.api import iter_denoise
from napari_medenhance.core import zoo

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

HELP = (
    "Denoise an image layer with a DRAN model. Every 2-D plane of a stack is processed; the "
    "result is added as a new layer in the same place and the source is left untouched."
)


def no_model_message() -> str:
    """What to tell the user when no denoising model is installed."""
    return (
        "No denoising model is installed yet (the shipped DRAN weights are not bundled yet). "
        "Pick a .safetensors weights file with 'Browse…', or add one for every session with "
        "`medenhance models --add FILE.safetensors --name NAME` (it is copied to "
        f"{zoo.user_models_dir()}) and press ↻."
    )


class DenoiseWidget(QWidget):
    """Dock widget: denoise a whole image layer, or only the plane on screen, with a model."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._worker = None
        self._cancelled = False
        self._running = False  # False once the job's outcome is known: late progress is dropped
        self._files: dict[str, str] = {}  # models picked with Browse…: path -> label

        self.layer = ComboBox(label="image", choices=self._image_layers,
                              tooltip="Image layer to denoise (its data is never modified)")
        self.model = ComboBox(label="model", choices=self._model_choices,
                              tooltip="Installed denoising models (shipped and your own) and files "
                                      "picked with Browse…")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto",
                               tooltip="auto: CUDA GPU, then Apple MPS, then CPU")
        self.tile = SpinBox(label="tile (px)", value=0, min=0, max=16384, step=64,
                            tooltip="Tile edge in pixels. 0 = auto: whole planes up to 1024×1024, "
                                    "else 512-pixel tiles. Smaller tiles use less (GPU) memory.")
        self.plane_only = CheckBox(text="current plane only", value=False,
                                   tooltip="Denoise only the plane the viewer shows (a quick "
                                           "preview), with the same intensity mapping as the whole "
                                           "stack; unchecked: every plane")
        self.pickers = Container(widgets=[self.layer, self.model, self.device, self.tile,
                                          self.plane_only])

        self.help = QLabel(HELP)
        self.help.setWordWrap(True)
        self.btn_refresh = QPushButton("↻")
        self.btn_refresh.setToolTip("Look for newly installed models again")
        self.btn_browse = QPushButton("Browse…")
        self.btn_browse.setToolTip("Use a .safetensors weights file that is not installed")
        self.btn_run = QPushButton("Run")
        self.btn_run.setToolTip("Denoise in the background; the result is added as a new layer")
        self.btn_cancel = QPushButton("Cancel")
        self.btn_cancel.setToolTip("Stop after the current tile; no layer is added")
        self.btn_cancel.setEnabled(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setToolTip("What the widget is doing, or why it could not")

        layout = QVBoxLayout(self)
        layout.addWidget(self.help)
        layout.addWidget(self.pickers.native)
        models = QHBoxLayout()
        models.addWidget(self.btn_refresh)
        models.addWidget(self.btn_browse)
        layout.addLayout(models)
        run = QHBoxLayout()
        run.addWidget(self.btn_run)
        run.addWidget(self.btn_cancel)
        layout.addLayout(run)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.btn_refresh.clicked.connect(self.refresh_models)
        self.btn_browse.clicked.connect(self._ask_model_file)
        self.btn_run.clicked.connect(self.run)
        self.btn_cancel.clicked.connect(self.cancel)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._on_layers_changed)
        self.refresh_models()

    # ---------------------------------------------------------------- pickers
    def _image_layers(self, _widget: Any = None) -> list[Image]:
        # Labels hold class ids, not intensities: denoising them would invent labels.
        return [lay for lay in self.viewer.layers if isinstance(lay, Image) and not isinstance(lay, Labels)]

    def _on_layers_changed(self, _event: Any = None) -> None:
        self.layer.reset_choices()

    def _model_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        choices = [(f"{m.name} ({m.source})", m.name) for m in zoo.list_models("denoise")]
        choices += [(label, path) for path, label in self._files.items()]
        return choices

    def refresh_models(self) -> None:
        """Re-scan the model folders (a model installed meanwhile appears)."""
        self.model.reset_choices()
        if self.model.value is None:
            self.status.setText(no_model_message())
        elif self.status.text() == no_model_message():
            self.status.setText("")

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        super().showEvent(event)
        self.refresh_models()

    def add_model_file(self, path: str | Path) -> bool:
        """Offer a weights file in the model picker and select it; False (with a message) if unusable."""
        try:
            info = zoo.get_model(Path(path), task="denoise")
        except ValueError as err:  # includes WeightsError
            self._fail(str(err))
            return False
        key = str(info.path)
        self._files[key] = f"{info.path.name} (file)"
        self.refresh_models()
        self.model.value = key
        self.status.setText(f"Using {info.path}")
        return True

    def _ask_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Pick a denoising model", "", "Weights (*.safetensors);;All files (*)"
        )
        if path:
            self.add_model_file(path)

    # -------------------------------------------------------------------- run
    def _fail(self, message: str) -> None:
        self.status.setText(message)
        show_error(message)

    def run(self) -> None:
        """Denoise the picked layer (or its current plane) in a thread worker."""
        if self._worker is not None:
            return
        layer = self.layer.value
        if layer is None or not isinstance(layer, Image) or isinstance(layer, Labels):
            self._fail("Pick an image layer to denoise (label layers cannot be denoised).")
            return
        if layer.multiscale:
            self._fail(f"'{layer.name}' is a multiscale (pyramid) layer; denoise its full-resolution "
                       "array instead, e.g. viewer.add_image(layer.data[0]).")
            return
        self.refresh_models()
        model = self.model.value
        if model is None:
            self._fail(no_model_message())
            return
        index = None
        if self.plane_only.value and plane_axes(layer):
            index = current_plane_index(self.viewer, layer)
        # Placement and display are taken now, so later edits of the source don't move the result.
        place = transform_kwargs(layer) if index is None else plane_transform_kwargs(layer, index)
        display: dict[str, Any] = {"rgb": layer.rgb, "contrast_limits": tuple(layer.contrast_limits)}
        if not layer.rgb:
            display["colormap"] = layer.colormap
        name = f"{layer.name} [denoised]"
        if index is not None:
            name = f"{layer.name} [denoised plane {'/'.join(map(str, index))}]"

        worker = create_worker(
            surface_runtime_errors, iter_denoise, layer.data, model, rgb=layer.rgb,
            device=self.device.value, tile=self.tile.value or None, plane=index,
            _progress={"total": 0, "desc": f"Denoise {layer.name}"},
            # Errors are reported here (notification + status), not re-raised in the main thread.
            _ignore_errors=True,
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._add_result(result, index, name, place, display))
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._cancelled = False
        self._running = True
        self.btn_run.setEnabled(False)
        self.btn_cancel.setEnabled(True)
        self.status.setText(f"Denoising '{layer.name}' with {Path(model).name}…")
        worker.start()

    def cancel(self) -> None:
        """Stop the running job at its next tile; nothing is added."""
        if self._worker is not None:
            self._cancelled = True
            self._worker.quit()

    def _on_progress(self, event: Progress) -> None:
        if not self._running:
            return  # the outcome is already shown
        self.status.setText(f"Denoising: {event.stage}, tile {event.done}/{event.total}")
        # Last: napari's progress bar processes Qt events while it redraws, so the worker's next
        # signals (later tiles, the result) can run inside this call; nothing may follow it.
        pbar = getattr(self._worker, "pbar", None)
        if pbar is not None:
            if pbar.total != event.total:
                pbar.total = event.total  # the engine knows the tile count once it has planned
            if event.done > pbar.n:  # a nested, later event may have moved it on already
                pbar.update(event.done - pbar.n)

    def _add_result(self, result: np.ndarray, index: tuple[int, ...] | None, name: str,
                    place: dict[str, Any], display: dict[str, Any]) -> None:
        self._running = False
        if self._cancelled:
            return  # finished just as Cancel was pressed: the user asked for nothing
        if index is not None:
            # Keep singleton leading axes so the plane has a world position along them.
            result = result.reshape((1,) * len(index) + result.shape)
        added = self.viewer.add_image(result, name=name, **display, **place)
        self.status.setText(f"Added '{added.name}'.")

    def _on_error(self, err: Exception) -> None:
        self._running = False
        message = f"Denoising failed: {err}"
        if "out of memory" in str(err).lower():
            message += " In this widget: lower 'tile (px)' or set device to 'cpu'."
        self._fail(message)

    def _on_aborted(self) -> None:
        self._running = False
        self.status.setText("Cancelled; no layer was added.")
        show_info("Denoising cancelled.")

    def _on_finished(self) -> None:
        self._running = False
        self._worker = None
        self.btn_run.setEnabled(True)
        self.btn_cancel.setEnabled(False)
