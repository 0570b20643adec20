"""The bundled demo: napari with a real sample stack, the plugin's widgets docked, metrics shown.

Until a restoration model ships, the "output" compared in the demo is a classical baseline
(scikit-image non-local means per plane), named as such in the layer list.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

PLUGIN = "napari-medenhance"


def baseline_denoise(stack: np.ndarray) -> np.ndarray:
    """Non-local means per plane, in the input's dtype and intensity scale (a placeholder output)."""
    from skimage.restoration import denoise_nl_means

    lo, hi = float(stack.min()), float(stack.max())
    x = (stack.astype(np.float32) - lo) / max(hi - lo, 1e-12)
    out = np.empty_like(x)
    for i, plane in enumerate(x):
        # robust noise estimate from horizontal differences (MAD / 0.6745, /√2 for the difference)
        sigma = float(np.median(np.abs(np.diff(plane, axis=1)))) / (0.6745 * np.sqrt(2))
        out[i] = denoise_nl_means(plane, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)
    return np.clip(out * (hi - lo) + lo, lo, hi).astype(stack.dtype)


def _wait_for(app, predicate, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        app.processEvents()
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("demo: worker did not finish in time")
        time.sleep(0.02)


def run(screenshot: str | Path | None = None, *, show: bool = True) -> Path | None:
    """Open napari with the nuclei sample and the Quality metrics widget computing every slice.

    With ``screenshot`` set, saves the whole window (canvas + docks) as PNG there and closes.
    """
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_medenhance.sample_data import nuclei_stack

    viewer = napari.Viewer(title="napari-medenhance demo", show=show)
    viewer.window.resize(1500, 950)
    (data, kwargs, _), = nuclei_stack()
    source = viewer.add_image(data, **kwargs)
    restored = viewer.add_image(baseline_denoise(data), **{**kwargs, "name": "nuclei [NLM baseline]"})
    viewer.dims.set_current_step(0, data.shape[0] // 2)
    viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Quality metrics", tabify=True)
    widget.input.value, widget.output.value = source, restored
    app = QApplication.instance()
    widget.compute_stack()
    _wait_for(app, lambda: widget._worker is None)
    widget.add_map("ssim")
    _wait_for(app, lambda: widget._worker is None)
    source.visible = False
    viewer.layers[-1].opacity = 0.45
    widget.update_current()
    _wait_for(app, lambda: bool(widget.current_values))
    if screenshot is None:
        napari.run()
        return None
    path = Path(screenshot).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    viewer.screenshot(str(path), canvas_only=False)
    from napari.qt.threading import WorkerBase

    # Qt must not tear down a worker's signals while its thread still runs.
    WorkerBase.await_workers(msecs=30_000)
    viewer.close()
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="medenhance demo", description=__doc__)
    p.add_argument("--screenshot", default=None,
                   help="save a PNG of the window here and exit (default when no display is present: out/demo.png)")
    args = p.parse_args(argv)
    shot = args.screenshot
    if shot is None and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        shot = "out/demo.png"
    path = run(shot, show=True)
    if path is not None:
        print(f"Screenshot of the napari window saved to {path}")
    return 0
