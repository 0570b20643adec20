"""CPU inference on channels-last vs NCHW activations, every bundled model, side by side.

The engine hands CPU networks their input channels-last (oneDNN's fastest layout for
convolutions); ``DynamicConv2d`` keeps that layout for one sample. This times each model through
the engine both ways in one process, alternating, on a 16-bit MR plane (the plugin's
``mr_slice``: 512² for denoising and enhancement, a 256² crop for super-resolution), in the
precision the engine picks on this CPU, and checks that both layouts give the same output.

    python benchmarks/bench_layout.py [extra .safetensors ...]   # e.g. an interim dpe

Writes ``benchmarks/results_layout.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _layout import Nchw  # noqa: E402
from _machine import describe  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("extra", nargs="*", help="more .safetensors files to time (e.g. interim)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results_layout.md")
    a = ap.parse_args(argv)

    import torch

    from napari_medenhance.core import engine, runtime, zoo
    from napari_medenhance.sample_data import load

    mr = load("mr_slice")
    models = [m.path for m in zoo.list_models() if m.source == "shipped" and m.task in
              ("denoise", "enhance", "sr")] + [Path(p) for p in a.extra]
    rows = []
    for path in models:
        run = runtime.load_runnable(str(path), device="cpu")
        info = run.info
        plane = mr[256:512, 256:512] if info.task == "sr" else mr[:512, :512]
        kw = dict(run.engine_kwargs, device="cpu")
        ways = {"NCHW": Nchw(run.module), "channels-last": run.module}
        outs, times = {}, {k: [] for k in ways}
        for name, module in ways.items():  # warm-up (first-call costs)
            outs[name] = engine.apply(plane[:64, :64], module, **kw)
        for _ in range(a.reps):
            for name, module in ways.items():
                t = time.perf_counter()
                outs[name] = engine.apply(plane, module, **kw)
                times[name].append(time.perf_counter() - t)
        diff = float(np.max(np.abs(outs["NCHW"].astype(np.float64)
                                   - outs["channels-last"].astype(np.float64))))
        t_n, t_c = min(times["NCHW"]), min(times["channels-last"])
        rows.append((info.name, info.task, "×".join(map(str, plane.shape)), t_n, t_c, diff,
                     str(plane.dtype)))
        print(f"{info.name}: NCHW {t_n:.2f} s, channels-last {t_c:.2f} s, "
              f"{t_n / t_c:.2f}x, max |diff| {diff:g}", flush=True)

    command = " ".join(["python", "benchmarks/bench_layout.py", *(argv or sys.argv[1:])])
    L = [
        "# CPU inference: channels-last vs NCHW activations",
        "",
        f"Machine: {describe()}; torch threads {torch.get_num_threads()}. Command: `{command}`.",
        "",
        "Each model through the engine (intensity mapping, the network, the dtype back) on the "
        "plugin's 16-bit `mr_slice`, both layouts alternating in one process, best of "
        f"{a.reps}; the engine's own precision choice on this CPU (bf16 only with native bf16 "
        "and a card that allows it). The difference is the largest absolute difference of the "
        "two outputs in the image's own units (uint16: 1 is one grey level).",
        "",
        "| model | task | input | NCHW s | channels-last s | speed-up | max abs difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, task, shape, t_n, t_c, diff, dtype in rows:
        L.append(f"| {name} | {task} | {shape} {dtype} | {t_n:.2f} | {t_c:.2f} | "
                 f"{t_n / t_c:.2f}× | {diff:g} |")
    L.append("")
    a.out.write_text("\n".join(L), encoding="utf-8")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
