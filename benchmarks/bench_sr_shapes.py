"""Seconds per MS-GAN training step of the PSNR-oriented stage (MSE ×2 + MSE ×4) for several
batch × patch shapes, on the real pool: the trial behind the CPU recipe of ``msgan-x2`` /
``msgan-x4`` (their cards cite it).

    .venv/bin/python benchmarks/bench_sr_shapes.py            # prints the table
    .venv/bin/python benchmarks/bench_sr_shapes.py --steps 3  # quicker, noisier

Full-size generator, bf16 autocast, Adam, torch's default thread count, all three LR kernels;
the median of ``--steps`` timed steps after one warm-up step, shapes one after another in one
process. Run it on a quiet machine: another process on the cores changes every number.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import describe  # noqa: E402

SHAPES = ((16, 64), (8, 96), (16, 96), (8, 128))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args(argv)
    from pool import load_pool

    from napari_medenhance.core.training.recipes import SRRecipe
    from napari_medenhance.core.training.recipes.sr import KERNELS

    recipe = SRRecipe(load_pool(), mode="msgan", kernels=KERNELS, vgg_weight=0.0,
                      adversarial_weight=0.0)
    net = recipe.build()
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    rng = np.random.default_rng(0)
    print(f"Machine: {describe()}; {torch.get_num_threads()} torch threads\n")
    print("| batch × patch | s / step | kilopixels / s |\n|---|---|---|")
    for batch, patch in SHAPES:
        times = []
        for _ in range(a.steps + 1):
            t = time.perf_counter()
            lr, hr = recipe.sample_batch(rng, batch, patch)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, _ = recipe.loss(net, lr, hr)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        s = float(np.median(times[1:]))
        print(f"| {batch} × {patch}² | {s:.3f} | {batch * patch * patch / s / 1e3:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
