"""The "Export to BioImage.IO…" button of the model pickers and the Train widget: a file
dialog, then :func:`napari_medenhance.core.bioimageio.export_package` in a thread worker."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QPushButton, QWidget

__all__ = ["EXPORT_TEXT", "ask_export_path", "export_button", "start_export"]

EXPORT_TEXT = "Export to BioImage.IO…"
_TIP = ("Write the model as a BioImage.IO package (.zip: TorchScript and PyTorch weights, test "
        "images, README with its validation numbers) for Fiji/deepImageJ, ilastik, "
        "bioimageio.core, or `medenhance models --add` elsewhere")


def export_button(on_click: Callable[[], Any]) -> QPushButton:
    """A button with the export text and tooltip that calls ``on_click``."""
    button = QPushButton(EXPORT_TEXT)
    button.setToolTip(_TIP)
    button.clicked.connect(lambda _checked=False: on_click())
    return button


def ask_export_path(parent: QWidget, model_name: str) -> Path | None:
    """The zip to write, from a save dialog (None when cancelled)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-") or "model"
    path, _ = QFileDialog.getSaveFileName(parent, "Export to BioImage.IO",
                                          f"{stem}.bioimageio.zip", "BioImage.IO package (*.zip)")
    return Path(path) if path else None


def start_export(model: str | Path, out: Path, report: Callable[[str], None]) -> Any:
    """Export ``model`` (name or path) to ``out`` in a thread worker; ``report`` gets a status
    line when it starts and when it ends. Returns the started worker."""
    from napari_medenhance.core.bioimageio import export_package

    def done(result: Any) -> None:
        report(f"Exported {result.path} (BioImage.IO; its network matches the plugin's to "
               f"{result.engine_max_abs_diff:.2g} on the test image).")
        show_info(f"Exported {result.path.name}")

    def failed(err: Exception) -> None:
        report(f"Export failed: {err}")
        show_error(f"Export failed: {err}")

    worker = create_worker(export_package, model, out, _ignore_errors=True)
    worker.returned.connect(done)
    worker.errored.connect(failed)
    report(f"Exporting to {out}…")
    worker.start()
    return worker
