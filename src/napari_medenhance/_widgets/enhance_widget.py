"""Enhance dock widget: perceptual enhancement (DPE) of an image layer, plus the LaSSIM it kept.

The run is :class:`~._run_widget.RunModelWidget` over :func:`napari_medenhance.api.iter_enhance`.
After a run the widget shows LaSSIM (Laplacian SSIM) of the enhanced plane against its input for
the plane the viewer is on — a no-reference check that the enhancement kept the structure —
computed in a thread worker and following the dims slider.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel

from napari_medenhance.api import iter_enhance
from napari_medenhance.metrics import lassim, max_lassim_level

from ._layers import current_plane_index
from ._run_widget import Job, RunModelWidget

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

#: LaSSIM level used when the plane is large enough (Kim et al.'s default, 1/8 resolution).
LASSIM_LEVEL = 3


class EnhanceWidget(RunModelWidget):
    """Dock widget: enhance an image layer (or its current plane) and report LaSSIM per plane."""

    TASK = "enhance"
    VERB = "Enhance"
    DOING = "Enhancing"
    DONE = "enhanced"
    NOUN = "enhancement"
    HELP = (
        "Perceptually enhance an image layer with a DPE model (contrast, sharpness, noise). Every "
        "2-D plane of a stack is processed; the result is added as a new layer in the same place "
        "and the source is left untouched. Below: LaSSIM of the result vs its input on the plane "
        "you are viewing (1 = the input's structure kept)."
    )

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        #: LaSSIM of the last result vs its input on the current plane; None when not shown.
        self.lassim_value: float | None = None
        #: The pyramid level that value is at.
        self.lassim_level: int | None = None
        # (source layer, source array at Run time, result array, plane index or None)
        self._last: tuple[Image, Any, np.ndarray, tuple[int, ...] | None] | None = None
        self._added: Image | None = None
        self._generation = 0  # bumps on every slider move / new result: older scores are dropped
        self._pending = None
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(40)
        self._debounce.timeout.connect(self._start_lassim)

        # Shown in the widget, not in the canvas text overlay: the Quality metrics widget owns
        # that overlay, and two writers would overwrite each other on every slider move.
        self.lassim_label = QLabel("")
        self.lassim_label.setWordWrap(True)
        self.lassim_label.setToolTip(
            "LaSSIM (Laplacian SSIM) of the enhanced plane vs its input at pyramid level l "
            f"(default {LASSIM_LEVEL}, lower for small planes): 1 = identical structure. For "
            "all slices, maps and PSNR/ΔE against a reference, use the Quality metrics widget."
        )
        self.add_section(self.lassim_label)
        self.viewer.dims.events.current_step.connect(self.update_lassim)
        self.viewer.layers.events.removed.connect(self._on_removed)

    def job(self) -> Job:
        return iter_enhance

    # ------------------------------------------------------------------ LaSSIM
    def on_result(self, added: Image, source: Image, index: tuple[int, ...] | None,
                  source_data: Any, result: np.ndarray) -> None:
        self._last = (source, source_data, result, index)
        self._added = added
        self.update_lassim()

    def _on_removed(self, event: Any) -> None:
        last = self._last
        if last is not None and event.value in (last[0], self._added):
            # Scoring a layer the user deleted would describe nothing on screen.
            self._last = self._added = None
            self._generation += 1
            self._show(None, None, "")

    def update_lassim(self, _event: Any = None) -> None:
        """Score the last result on the plane the viewer is on (in a worker, debounced)."""
        self._generation += 1
        if self._last is None:
            return
        source, data, result, index = self._last
        idx = current_plane_index(self.viewer, source)
        where = f"plane {'/'.join(map(str, idx))}" if idx else "the image"
        if index is not None and idx != index:
            self._pending = None
            self._show(None, None, f"LaSSIM: only plane {'/'.join(map(str, index))} was enhanced; "
                                   "move the slider there (or run on the whole stack).")
            return
        rgb = bool(source.rgb)

        def score() -> tuple[int, float]:
            inp = np.asarray(data[idx])
            out = result if index is not None else np.asarray(result[idx])
            level = min(LASSIM_LEVEL, max_lassim_level(inp.shape[:2]))
            if level < 0:
                raise ValueError(f"a {inp.shape[0]}×{inp.shape[1]} plane is too small for LaSSIM "
                                 "(it needs at least 7×7 pixels)")
            return level, float(lassim(inp, out, level=level, rgb=rgb))

        self._pending = (self._generation, where, score)
        self._show(None, None, f"LaSSIM of {where}: computing…")
        self._debounce.start()

    def _start_lassim(self) -> None:
        if self._pending is None:
            return
        generation, where, score = self._pending
        self._pending = None
        worker = create_worker(score, _ignore_errors=True)
        worker.returned.connect(lambda lv: self._scored(generation, where, lv))
        worker.errored.connect(lambda err: self._scored(generation, where, err))
        worker.start()

    def _scored(self, generation: int, where: str, value: Any) -> None:
        if generation != self._generation:
            return  # the slider moved on (or a new result came); a newer score is under way
        if isinstance(value, Exception):
            self._show(None, None, f"LaSSIM of {where}: {value}")
            return
        level, v = value
        self._show(v, level, f"LaSSIM (level {level}) of {where}, enhanced vs input: {v:.4f}")

    def _show(self, value: float | None, level: int | None, text: str) -> None:
        self.lassim_value, self.lassim_level = value, level
        self.lassim_label.setText(text)
