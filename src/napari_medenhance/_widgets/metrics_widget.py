"""Quality-metrics dock widget: LaSSIM/SSIM (input vs output) and PSNR/SSIM/ΔE (vs a reference).

The numbers for the viewer's current slice sit in a text overlay on the canvas and follow the
dims slider; whole stacks are computed in a thread worker (progress bar, Cancel), plotted per
slice and exportable as CSV; SSIM and LaSSIM maps can be added as layers aligned in world space.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, SpinBox
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_medenhance.metrics import iter_metric_maps, iter_stack_metrics, plane_metrics

from ._layers import (
    current_plane_index,
    plane_axes,
    surface_runtime_errors,
    text_overlay,
    transform_kwargs,
)
from ._plot import SlicePlot

if TYPE_CHECKING:
    import napari

# Display names for the metric keys the core returns.
LABELS = {
    "lassim": "LaSSIM (in↔out)",
    "ssim": "SSIM (in↔out)",
    "psnr": "PSNR vs ref (dB)",
    "ssim_ref": "SSIM vs ref",
    "delta_e": "ΔE2000 vs ref",
}
#: What a number means, shown beside it on the canvas while "explain" is ticked.
EXPLAIN = {
    "lassim": "1 = all input structure kept",
    "ssim": "1 = output unchanged",
    "psnr": "higher is better; +6 dB = half the error",
    "ssim_ref": "1 = same as reference",
    "delta_e": "colour error; < 2.3 hard to see",
}


class QualityMetricsWidget(QWidget):
    """Dock widget comparing an input layer with its restored output (and an optional reference)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.results: list[dict[str, Any]] = []  # one row per slice after "Compute all slices"
        self.current_values: dict[str, float] = {}  # metrics of the slice on screen
        self._generation = 0  # bumps on every slider move / setting change
        self._pending: tuple | None = None  # the current-slice job waiting for the debounce timer
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(40)
        self._debounce.timeout.connect(self._start_current)
        self._worker = None

        self.input = ComboBox(label="input", choices=self._image_layers, tooltip="Image before restoration")
        self.output = ComboBox(label="output", choices=self._image_layers, tooltip="Restored image, same shape as input")
        self.reference = ComboBox(label="reference", choices=self._image_layers, nullable=True,
                                  tooltip="Optional clean reference: adds PSNR, SSIM and ΔE of output vs reference")
        self.level = SpinBox(label="LaSSIM level", value=3, min=0, max=8,
                             tooltip="Laplacian-pyramid level l; the band is at 1/2^l resolution")
        self.explain = CheckBox(text="explain the numbers on the canvas", value=True,
                                tooltip="Say beside each number what it measures and which way is better")
        self.pickers = Container(widgets=[self.input, self.output, self.reference, self.level,
                                          self.explain])
        if len(self.input.choices) > 1:
            self.output.value = self.input.choices[-1]

        self.status = QLabel("Pick an input and an output layer.")
        self.status.setWordWrap(True)
        self.btn_ssim_map = QPushButton("Add SSIM map")
        self.btn_lassim_map = QPushButton("Add LaSSIM map")
        self.btn_stack = QPushButton("Compute all slices")
        self.btn_cancel = QPushButton("Cancel")
        self.btn_cancel.setEnabled(False)
        self.btn_csv = QPushButton("Export CSV…")
        self.btn_csv.setEnabled(False)
        self.plot = SlicePlot()

        layout = QVBoxLayout(self)
        layout.addWidget(self.pickers.native)
        layout.addWidget(self.status)
        maps = QHBoxLayout()
        maps.addWidget(self.btn_ssim_map)
        maps.addWidget(self.btn_lassim_map)
        layout.addLayout(maps)
        run = QHBoxLayout()
        run.addWidget(self.btn_stack)
        run.addWidget(self.btn_cancel)
        run.addWidget(self.btn_csv)
        layout.addLayout(run)
        layout.addWidget(self.plot)
        layout.addStretch(1)

        self.btn_ssim_map.clicked.connect(lambda: self.add_map("ssim"))
        self.btn_lassim_map.clicked.connect(lambda: self.add_map("lassim"))
        self.btn_stack.clicked.connect(self.compute_stack)
        self.btn_cancel.clicked.connect(self.cancel)
        self.btn_csv.clicked.connect(self._ask_csv)
        self.pickers.changed.connect(self._on_settings_changed)
        self.viewer.dims.events.current_step.connect(self.update_current)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._on_layers_changed)
        self.update_current()

    # ----------------------------------------------------------------- layers
    def _image_layers(self, _widget: Any = None) -> list[Image]:
        # Labels, shapes etc. are not images to score: offering them would only produce errors.
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _on_layers_changed(self, _event: Any = None) -> None:
        self.pickers.reset_choices()
        self.update_current()

    def _on_settings_changed(self, _event: Any = None) -> None:
        self._set_results([])
        self.update_current()

    def _pair(self) -> tuple[Image, Image, Image | None]:
        inp, out, ref = self.input.value, self.output.value, self.reference.value
        if inp is None or out is None:
            raise ValueError("Pick an input and an output image layer.")
        for layer in (out, ref):
            if layer is not None and layer.data.shape != inp.data.shape:
                raise ValueError(
                    f"'{layer.name}' has shape {layer.data.shape} but input '{inp.name}' has "
                    f"{inp.data.shape}; metrics need layers of the same shape."
                )
        return inp, out, ref

    # ----------------------------------------------------------- current slice
    def update_current(self, _event: Any = None) -> None:
        """Recompute the metrics of the slice the viewer is on and show them on the canvas.

        The plane is read and scored in a thread worker, so large planes or lazy (dask) data
        never freeze the viewer; when the slider moves on, results of older slices are dropped.
        """
        self._generation += 1
        generation = self._generation
        overlay = text_overlay(self.viewer)
        try:
            inp, out, ref = self._pair()
        except ValueError as err:
            self._pending = None
            self.status.setText(str(err))
            overlay.visible = False
            return
        idx = current_plane_index(self.viewer, inp)
        where = ", ".join(f"{self._axis_name(inp, a)}={i}" for a, i in enumerate(idx)) or "2-D image"
        header = f"{where}: {out.name} vs {inp.name}"
        level, rgb = self.level.value, inp.rgb

        def score() -> dict[str, float]:
            return plane_metrics(
                np.asarray(inp.data[idx]), np.asarray(out.data[idx]),
                None if ref is None else np.asarray(ref.data[idx]), level=level, rgb=rgb,
            )

        self._pending = (generation, header, idx, score)
        # Debounced: a dragged slider starts one worker, and none starts while the viewer closes.
        self._debounce.start()

    def _start_current(self) -> None:
        if self._pending is None:
            return
        generation, header, idx, score = self._pending
        self._pending = None
        worker = create_worker(score)
        worker.returned.connect(lambda values: self._show_current(generation, header, idx, values))
        worker.errored.connect(lambda err: self._show_current(generation, header, idx, err))
        worker.start()

    def _show_current(self, generation: int, header: str, idx: tuple[int, ...], values: Any) -> None:
        if generation != self._generation:
            return  # the user has moved on; a newer computation is under way
        overlay = text_overlay(self.viewer)
        overlay.position = "top_left"
        overlay.font_size = 11
        overlay.visible = True
        if isinstance(values, Exception):
            self.current_values = {}
            overlay.text = f"Quality metrics: {values}"
            self.status.setText(str(values))
            return
        lines = [f"{LABELS[k]}: {v:.4f}" if k != "psnr" else f"{LABELS[k]}: {v:.2f}"
                 for k, v in values.items()]
        text = header + "\n" + "\n".join(lines)
        if self.explain.value:
            lines = [f"{line}   ← {EXPLAIN[k]}" for line, k in zip(lines, values)]
        overlay.text = header + "\n" + "\n".join(lines)
        self.status.setText(text)
        self.current_values = values
        if self.results and idx:
            self.plot.mark(self._slice_position(idx))

    @staticmethod
    def _axis_name(layer: Image, axis: int) -> str:
        label = str(layer.axis_labels[axis])
        # napari's unnamed axes are '-3', '-2', ...: show the axis number instead
        return f"axis {axis}" if label.lstrip("-").isdigit() else label

    # ------------------------------------------------------------------- maps
    def add_map(self, kind: str) -> None:
        """Compute the SSIM or LaSSIM map of all slices in a worker and add it as a layer."""
        try:
            inp, out, _ = self._pair()
        except ValueError as err:
            show_error(str(err))
            return
        level = self.level.value
        stride = 2.0**level if kind == "lassim" else 1.0
        name = f"{out.name} [{kind} map{f' l={level}' if kind == 'lassim' else ''}]"
        total = int(np.prod(inp.data.shape[: plane_axes(inp)], dtype=int))

        def add(stack: np.ndarray) -> None:
            self.viewer.add_image(
                stack, name=name, colormap="magma", contrast_limits=(0.0, 1.0), blending="additive",
                opacity=0.7, **transform_kwargs(inp, plane_stride=stride),
            )

        self._start(
            create_worker(
                surface_runtime_errors, iter_metric_maps, inp.data, out.data, kind=kind, level=level, rgb=inp.rgb,
                _progress={"total": total, "desc": f"{kind.upper()} map"},
            ),
            returned=add,
        )

    # ------------------------------------------------------------------ stack
    def compute_stack(self) -> None:
        """Score every slice in a thread worker, with a progress bar, live plot and Cancel."""
        try:
            inp, out, ref = self._pair()
        except ValueError as err:
            show_error(str(err))
            return
        total = int(np.prod(inp.data.shape[: plane_axes(inp)], dtype=int))
        self._set_results([])
        worker = create_worker(
            surface_runtime_errors, iter_stack_metrics, inp.data, out.data, None if ref is None else ref.data,
            level=self.level.value, rgb=inp.rgb,
            _progress={"total": total, "desc": "Quality metrics"},
        )
        worker.yielded.connect(self._on_slice)
        self._start(worker)

    def _on_slice(self, item: tuple) -> None:
        index, _done, _total, values = item
        self.results.append({"slice": "/".join(map(str, index)) if index else "0", "index": index, **values})
        self._redraw()

    def _start(self, worker, returned=None) -> None:
        self._worker = worker
        self.btn_cancel.setEnabled(True)
        for b in (self.btn_stack, self.btn_ssim_map, self.btn_lassim_map):
            b.setEnabled(False)
        if returned is not None:
            worker.returned.connect(returned)
        worker.errored.connect(lambda err: show_error(f"Quality metrics failed: {err}"))
        worker.aborted.connect(lambda: show_info("Quality metrics cancelled; partial results kept in the plot."))
        worker.finished.connect(self._on_finished)
        worker.start()

    def cancel(self) -> None:
        """Ask the running worker to stop at its next slice boundary."""
        if self._worker is not None:
            self._worker.quit()

    def _on_finished(self) -> None:
        self._worker = None
        self.btn_cancel.setEnabled(False)
        for b in (self.btn_stack, self.btn_ssim_map, self.btn_lassim_map):
            b.setEnabled(True)
        self.btn_csv.setEnabled(bool(self.results))

    # ---------------------------------------------------------- plot and CSV
    def _set_results(self, rows: list[dict[str, Any]]) -> None:
        self.results = rows
        self.btn_csv.setEnabled(bool(rows))
        self._redraw()

    def _slice_position(self, index: tuple[int, ...]) -> float:
        return float(index[-1]) if index else 0.0

    def _redraw(self) -> None:
        if not self.results:
            self.plot.clear()
            return
        keys = [k for k in LABELS if k in self.results[0]]
        x = [self._slice_position(r["index"]) if len(r["index"]) == 1 else i for i, r in enumerate(self.results)]
        self.plot.show_series(x, {k: [r[k] for r in self.results] for k in keys})

    def export_csv(self, path: str | Path) -> Path:
        """Write the per-slice results (one row per slice, one column per metric) to ``path``."""
        if not self.results:
            raise ValueError("Nothing to export: run 'Compute all slices' first.")
        path = Path(path)
        keys = [k for k in LABELS if k in self.results[0]]
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["slice", *keys])
            for r in self.results:
                writer.writerow([r["slice"], *(repr(float(r[k])) for k in keys)])
        return path

    def _ask_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export per-slice metrics", "metrics.csv", "CSV (*.csv)")
        if path:
            show_info(f"Saved {self.export_csv(path)}")
