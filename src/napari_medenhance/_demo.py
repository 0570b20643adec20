"""The bundled demo: napari with a real sample stack, the plugin's widgets docked, metrics shown.

The 16-bit nuclei stack gets Gaussian noise (σ = 25/255 of its range, seeded), the shipped
``dran`` denoises it, and input and result are shown side by side (grid view) with the
Quality metrics widget scoring the result against the clean stack, every number explained on
the canvas. Where no ``dran`` is installed (a checkout without its weights) the output is a
classical baseline, scikit-image non-local means, named as such in the layer list.
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


#: Noise added to the demo stack, in /255 of its intensity range (the validation σ of the card).
DEMO_SIGMA = 25.0


def noisy_copy(stack: np.ndarray, sigma: float = DEMO_SIGMA, seed: int = 0) -> np.ndarray:
    """``stack`` + Gaussian noise of σ = ``sigma``/255 of its range, clipped to its dtype."""
    lo, hi = float(stack.min()), float(stack.max())
    rng = np.random.default_rng(seed)
    noisy = stack.astype(np.float64) + rng.normal(0.0, sigma / 255.0 * (hi - lo), stack.shape)
    info = np.iinfo(stack.dtype) if stack.dtype.kind in "iu" else None
    if info is not None:
        noisy = np.clip(np.rint(noisy), info.min, info.max)
    return noisy.astype(stack.dtype)


def restore(noisy: np.ndarray, model: str = "dran") -> tuple[np.ndarray, str]:
    """(denoised stack, layer name): the shipped model when it is installed, else NLM."""
    from napari_medenhance import denoise
    from napari_medenhance.core import zoo

    try:
        zoo.get_model(model, task="denoise")
    except ValueError:
        return baseline_denoise(noisy), "nuclei + noise [NLM baseline: no dran installed]"
    return denoise(noisy, model=model), f"nuclei + noise [denoised, {model}]"


def run(screenshot: str | Path | None = None, *, show: bool = True, model: str = "dran") -> Path | None:
    """Open napari on the noisy nuclei sample beside its denoised result, metrics on the canvas.

    With ``screenshot`` set, saves the whole window (canvas + docks) as PNG there and closes.
    """
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_medenhance.sample_data import nuclei_stack

    (data, kwargs, _), = nuclei_stack()
    noisy = noisy_copy(data)
    restored_data, restored_name = restore(noisy, model)
    viewer = napari.Viewer(title="napari-medenhance demo", show=show)
    viewer.window.resize(1500, 950)
    clean = viewer.add_image(data, **{**kwargs, "name": "nuclei (clean reference)", "visible": False})
    source = viewer.add_image(noisy, **{**kwargs, "name": f"nuclei + noise σ={DEMO_SIGMA:g}/255"})
    restored = viewer.add_image(restored_data, **{**kwargs, "name": restored_name})
    for layer in (source, restored):
        layer.contrast_limits = clean.contrast_limits
    viewer.grid.enabled = True
    viewer.dims.set_current_step(0, data.shape[0] // 2)
    viewer.reset_view()
    viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Quality metrics", tabify=True)
    widget.input.value, widget.output.value = source, restored
    widget.reference.value = clean
    app = QApplication.instance()
    widget.compute_stack()
    _wait_for(app, lambda: widget._worker is None)
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
    p.add_argument("--model", default="dran", help="denoising model (name or .safetensors path)")
    args = p.parse_args(argv)
    shot = args.screenshot
    if shot is None and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        shot = "out/demo.png"
    path = run(shot, show=True, model=args.model)
    if path is not None:
        print(f"Screenshot of the napari window saved to {path}")
    return 0
