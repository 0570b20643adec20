"""A compact matplotlib canvas for per-slice curves inside a dock widget."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure


class SlicePlot(FigureCanvasQTAgg):
    """Per-slice metric curves: structure metrics (0..1) on the left axis, dB on the right."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=(3.2, 2.2), layout="constrained")
        super().__init__(self.figure)
        self.setMinimumHeight(180)
        self.ax = self.figure.add_subplot(111)
        self.ax_db = self.ax.twinx()
        self._cursor = None
        self.clear()

    def clear(self) -> None:
        for ax in (self.ax, self.ax_db):
            ax.cla()
        self.ax.set_xlabel("slice")
        self.ax.set_ylabel("LaSSIM / SSIM")
        self.ax_db.set_ylabel("PSNR (dB)")
        self.ax_db.set_visible(False)
        self._cursor = None
        self.draw_idle()

    def show_series(self, x: Sequence[int], series: dict[str, Sequence[float]]) -> None:
        """Draw one line per metric; keys starting with ``psnr`` go to the dB axis."""
        self.clear()
        xs = np.asarray(x)
        for name, ys in series.items():
            ax = self.ax_db if name.startswith("psnr") else self.ax
            ax.plot(xs, np.asarray(ys, dtype=float), marker=".", ms=3, lw=1,
                    label=name, color="tab:red" if ax is self.ax_db else None)
            ax.set_visible(True)
        handles = [h for ax in (self.ax, self.ax_db) for h in ax.get_legend_handles_labels()[0]]
        if handles:
            self.ax.legend(handles=handles, fontsize="x-small", loc="lower left")
        self.draw_idle()

    def mark(self, x: float | None) -> None:
        """Move the vertical cursor that marks the viewer's current slice."""
        if self._cursor is not None:
            self._cursor.remove()
            self._cursor = None
        if x is not None:
            self._cursor = self.ax.axvline(x, color="0.5", lw=0.8, ls="--")
        self.draw_idle()
