"""Screenshot of perceptual enhancement in napari: a degraded 16-bit MR slice, Enhance, LaSSIM.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_enhance_screenshot.py
        # the shipped `dpe`; --model FILE.safetensors for another enhance model

Takes ITK's ``BrainMidSagittalSlice`` (a real T1 MR slice; a *validation* image of
``training/pool.py``: the model never trained on it), degrades it once with Algorithm 1 of the
DPE paper (seed 7: Gaussian noise, then lower contrast and brightness), stores it as a 16-bit
image with a few hot pixels (as a 16-bit acquisition can have), opens it in napari and presses
Run in the Enhance widget. Written to ``docs/screenshot-enhance.png``: the whole window (the
enhanced layer beside the degraded one, the widget with its LaSSIM readout), then the degraded
input over the full uint16 range (how dark it is), the enhanced result at its 1–99 % range and
the clean slice.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
from _screens import caption, fit_height, settle  # noqa: E402

DOCS = ROOT / "docs"


def _shown(a: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    if lo is None or hi is None:
        lo, hi = np.percentile(a, (1, 99))
    g = np.clip((a.astype(np.float64) - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255).astype(np.uint8)
    return np.stack([g] * 3, axis=-1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="dpe", help="an enhance model name or .safetensors path")
    ap.add_argument("--out", type=Path, default=DOCS / "screenshot-enhance.png")
    a = ap.parse_args(argv)

    import napari
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from napari_medenhance._widgets.enhance_widget import EnhanceWidget
    from napari_medenhance.core.degrade import apply_degradation, draw_degradation

    sys.path.insert(0, str(ROOT / "training"))
    from data_pool import itk_example

    mr = itk_example("BrainMidSagittalSlice.png")
    mr = mr.mean(axis=-1) if mr.ndim == 3 else mr
    clean = (mr / 255.0).astype(np.float32)
    rng = np.random.default_rng(7)
    degraded = apply_degradation(clean, draw_degradation(rng), rng)
    image = np.round(degraded * 65535.0 * 0.2).astype(np.uint16)  # a dim 16-bit acquisition
    image[rng.integers(0, image.shape[0], 3), rng.integers(0, image.shape[1], 3)] = 65535

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(title="napari-medenhance: perceptual enhancement")
    viewer.window._qt_window.resize(1500, 900)
    viewer.add_image(image, name="MR, degraded (uint16)", contrast_limits=(0, 65535))
    widget = EnhanceWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Enhance", area="right")
    widget.refresh_models()
    if a.model != "dpe":
        widget.add_model_file(a.model)
        want = Path(a.model).resolve()
        widget.model.value = next(v for v in widget.model.choices
                                  if Path(str(v)).resolve() == want)
    widget.run()
    t0 = time.time()
    while (widget._worker is not None or widget.lassim_value is None) and time.time() - t0 < 300:
        settle(app, 5)
    result = viewer.layers[-1]
    assert "[enhanced]" in result.name, [lay.name for lay in viewer.layers]
    assert result.data.dtype == np.uint16 and result.data.shape == image.shape
    viewer.grid.enabled = True
    viewer.reset_view()
    settle(app)
    window = viewer.screenshot(canvas_only=False, flash=False)

    h = 520
    left = caption(fit_height(window, h), f"Enhance, with LaSSIM of the result vs its input "
                   f"({widget.lassim_value:.3f}, level {widget.lassim_level})")
    panels = [caption(fit_height(x, h), t) for x, t in (
        (_shown(image, 0, 65535), "degraded input (uint16, shown 0-65535)"),
        (_shown(np.asarray(result.data)), f"enhanced ({Path(a.model).stem}), 1-99 %"),
        (_shown(clean, 0, 1), "clean slice (never seen by the model)"))]
    gap = np.full((left.shape[0], 8, 3), 20, np.uint8)
    parts = [left]
    for p in panels:
        parts += [gap, p]
    out = np.concatenate(parts, axis=1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out).save(a.out)
    print("wrote", a.out, "LaSSIM", widget.lassim_value)
    viewer.close()


if __name__ == "__main__":
    main()
