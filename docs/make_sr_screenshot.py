"""Screenshot of lesion-focused super-resolution in napari: a real MR slice, a Shapes ROI, the ×4 layer.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_sr_screenshot.py
    ... docs/make_sr_screenshot.py --model runs/msgan-psnr/best.safetensors   # another ×4 model

Opens ITK's ``BrainMidSagittalSlice`` (a real 8-bit T1 MR slice, 180×217; a *validation* image
of ``training/pool.py``: the model never trained on it), draws a rectangle ROI over the
corpus callosum and the fornix in a Shapes layer, and presses Run in the Super-resolve ROI
widget with the shipped ``msgan-x4``. The result layer lies exactly over the ROI. Put side
by side into ``docs/screenshot-sr.png``: the whole window (widget docked, the ×4 layer over its
ROI), then the ROI's bicubic ×4 zoom and the MS-GAN ×4 layer's data at the window's contrast
(each captioned).
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
#: The ROI (y0, y1, x0, x1) in image pixels: corpus callosum, fornix and the top of the thalamus.
ROI = (58, 110, 70, 150)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="msgan-x4", help="a ×4 SR model name or .safetensors path")
    ap.add_argument("--out", type=Path, default=DOCS / "screenshot-sr.png")
    a = ap.parse_args(argv)

    import napari
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from napari_medenhance._widgets.sr_widget import SuperResolveWidget

    sys.path.insert(0, str(ROOT / "training"))
    from data_pool import itk_example

    mr = itk_example("BrainMidSagittalSlice.png")
    mr = mr.mean(axis=-1).round().astype(np.uint8) if mr.ndim == 3 else mr
    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(title="napari-medenhance: lesion-focused super-resolution")
    viewer.window._qt_window.resize(1500, 900)
    viewer.add_image(mr, name="MR (BrainMidSagittalSlice)")
    widget = SuperResolveWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Super-resolve ROI", area="right")
    y0, y1, x0, x1 = ROI
    shapes = widget.add_roi_layer()
    shapes.add_rectangles(np.array([[y0 - 0.5, x0 - 0.5], [y1 - 0.5, x1 - 0.5]]))
    shapes.mode = "pan_zoom"
    widget.factor.value = 4
    widget.refresh_models()
    if a.model != "msgan-x4":
        widget.add_model_file(a.model)
    want = Path(a.model).resolve() if a.model != "msgan-x4" else None
    widget.model.value = "msgan-x4" if want is None else next(
        v for v in widget.model.choices if Path(str(v)).resolve() == want)
    widget.run()
    t0 = time.time()
    while widget._worker is not None and time.time() - t0 < 300:
        settle(app, 5)
    sr_layer = viewer.layers[-1]
    assert "[SR ×4, ROI 1]" in sr_layer.name, [lay.name for lay in viewer.layers]
    assert sr_layer.data.shape == (4 * (y1 - y0), 4 * (x1 - x0)), sr_layer.data.shape
    viewer.reset_view()
    settle(app)
    window = viewer.screenshot(canvas_only=False, flash=False)

    # The bicubic ×4 zoom of the same ROI, placed with the same affine as the MS-GAN layer.
    crop = torch.from_numpy(mr[y0:y1, x0:x1].astype(np.float32))[None, None]
    bic = F.interpolate(crop, scale_factor=4, mode="bicubic", align_corners=False)[0, 0]
    bic = bic.clamp(0, 255).round().numpy().astype(np.uint8)
    # The two ×4 arrays of the ROI at the window's contrast, each pixel 2×2 on screen.
    lo, hi = (float(v) for v in sr_layer.contrast_limits)

    def shown(a: np.ndarray) -> np.ndarray:
        g = np.clip((a.astype(np.float64) - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(np.repeat(np.stack([g] * 3, axis=-1), 2, axis=0), 2, axis=1)

    shot_bic, shot_sr = shown(bic), shown(np.asarray(sr_layer.data))
    h = 560
    left = caption(fit_height(window, h), "Super-resolve ROI: the ×4 layer lies exactly on its ROI")
    mid = caption(fit_height(shot_bic, h), "bicubic ×4 of the ROI")
    right = caption(fit_height(shot_sr, h), f"MS-GAN ×4 ({Path(a.model).stem}) of the ROI")
    gap = np.full((left.shape[0], 8, 3), 20, np.uint8)
    out = np.concatenate([left, gap, mid, gap, right], axis=1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out).save(a.out)
    print("wrote", a.out)
    viewer.close()


if __name__ == "__main__":
    main()
