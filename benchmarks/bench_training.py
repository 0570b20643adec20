"""Training speed on this machine: fp32 vs bf16 autocast (vs torch.compile) for DRAN, DPE, MS-GAN,
and what bf16 does to the validation PSNR after the same number of steps.

    .venv/bin/python benchmarks/bench_training.py                 # writes results_training.md
    .venv/bin/python benchmarks/bench_training.py --quick         # tiny, to check it runs

Speed: every model at the CPU recipe's batch 8 and patch 64 (SR: 64-pixel HR patches, batch 8),
full-size networks, through the one training loop (``train()``), all in this process one after
the other; the time of the step events after ``--warmup`` steps (validation and checkpoints
excluded). Kilopixels per second = batch × patch² × steps/s (HR pixels for SR).
``compiled``: the same step with ``torch.compile`` on the network (compile time reported
separately), outside the loop, which does not compile.

Quality: the DRAN recipe trained ``--quality-steps`` steps from the same seed in fp32 and in
bf16 (everything else equal), then validated on the fixed validation split (fp32 validation).
Nothing else should run on the machine meanwhile: pause a background training run first
(``kill -STOP``; ``kill -CONT`` after).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import describe  # noqa: E402

from napari_medenhance.core.training import train  # noqa: E402


def recipes(pool, tiny: bool) -> dict:
    """The three shipped recipes as their CPU training scripts build them."""
    import train_dpe
    import train_sr

    from napari_medenhance.core.training import DenoiseRecipe

    dran_cfg = {"features": 16, "blocks": 1, "layers_per_block": 1} if tiny else {}
    dpe = train_dpe.parse_args([])
    dpe_cfg = {"widths": [8, 12, 16, 20, 24]} if tiny else None
    sr = train_sr.parse_args([])
    sr_cfg = {"features": 8, "blocks": 1} if tiny else None
    return {
        "DRAN": DenoiseRecipe(pool, config=dran_cfg, clip_fraction=0.25),
        "DPE": train_dpe.make_recipe(dpe, pool, dpe_cfg),
        "MS-GAN": train_sr.make_recipe(sr, pool, sr_cfg),
    }


def loop_speed(recipe, precision: str, steps: int, warmup: int, batch: int, patch: int) -> float:
    """Steps per second of ``train()`` over steps ``warmup+1 .. steps`` (step events only)."""
    with tempfile.TemporaryDirectory() as tmp:
        gen = train(recipe, steps=steps, out_dir=tmp, batch=batch, patch=patch, lr=1e-4,
                    device="cpu", val_every=0, ckpt_every=0, precision=precision)
        times: list[float] = []
        for ev in gen:
            if ev.kind == "step":
                times.append(time.perf_counter())
                if ev.step == steps:
                    gen.close()  # skip the final validation and checkpoint
                    break
    t = times[warmup - 1:]
    return (len(t) - 1) / (t[-1] - t[0])


def compiled_speed(recipe, steps: int, warmup: int, batch: int, patch: int) -> tuple[float, float]:
    """(steps/s, compile seconds) of a bf16 step with ``torch.compile(net)``, for recipes with a
    single network (the GAN recipes update several modules per step and are not compiled)."""
    net = recipe.build().train()
    cnet = torch.compile(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    stamps = []
    t0 = time.perf_counter()
    for i in range(steps):
        recipe.on_step(net, 10**9, 1)  # temperature at its final value: no recompiles
        x, y = recipe.sample_batch(rng, batch, patch)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = recipe.loss(cnet, x, y)
        loss.float().backward()
        opt.step()
        stamps.append(time.perf_counter())
        if i == 0:
            compile_s = stamps[0] - t0
    t = stamps[warmup - 1:]
    return (len(t) - 1) / (t[-1] - t[0]), compile_s


def quality(pool, steps: int, tiny: bool) -> dict[str, dict[str, float]]:
    """Validation metrics of the DRAN recipe after ``steps`` steps in fp32 and in bf16."""
    from napari_medenhance.core.training import DenoiseRecipe

    cfg = {"features": 16, "blocks": 1, "layers_per_block": 1} if tiny else {}
    out = {}
    for precision in ("fp32", "bf16"):
        recipe = DenoiseRecipe(pool, config=cfg, clip_fraction=0.25, val_clipped=True,
                               anneal_fraction=0.07)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            last = None
            for ev in train(recipe, steps=steps, out_dir=tmp, batch=8, patch=64, lr=5e-4,
                            device="cpu", val_every=steps, ckpt_every=0, seed=0,
                            precision=precision):
                if ev.kind == "validation" and ev.step == steps:
                    last = ev.metrics
            out[precision] = {**last, "seconds": time.perf_counter() - t}
        print(f"  quality {precision}: {describe_metrics(out[precision])}", flush=True)
    return out


def describe_metrics(m: dict[str, float]) -> str:
    return ", ".join(f"{k} {m[k]:.2f}" for k in sorted(m) if k.startswith("psnr"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny networks and few steps")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per case (+ warm-up)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quality-steps", type=int, default=200)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results_training.md")
    ap.add_argument("--emulated-bf16", action="store_true",
                    help="run even where the CPU has no native bf16 (its bf16 rows then time "
                         "the emulation, tens of times slower than fp32)")
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.warmup, a.quality_steps = 6, 2, 20
    from napari_medenhance.core.device import cpu_has_bf16

    if not cpu_has_bf16() and not a.emulated_bf16:
        print("This CPU has no native bf16 (AVX-512 BF16 or AMX): training runs fp32 here "
              "(precision 'auto'), and timing emulated bf16 would take hours. Pass "
              "--emulated-bf16 to measure it anyway.", file=sys.stderr)
        return 2
    from pool import load_pool

    pool = load_pool()
    batch, patch = 8, 64
    rows = []
    for name, recipe in recipes(pool, a.quick).items():
        sp = {}
        for precision in ("fp32", "bf16"):
            sp[precision] = loop_speed(recipe, precision, a.steps + a.warmup, a.warmup, batch, patch)
            print(f"  {name} {precision}: {sp[precision]:.3f} steps/s", flush=True)
        comp = None
        if not a.no_compile and not callable(getattr(recipe, "build_extras", None)):
            try:
                comp = compiled_speed(recipe, a.steps + a.warmup, a.warmup, batch, patch)
                print(f"  {name} bf16+compile: {comp[0]:.3f} steps/s (compile {comp[1]:.0f} s)",
                      flush=True)
            except Exception as e:  # noqa: BLE001 - reported in the table, not fatal
                comp = e
        rows.append((name, sp, comp))
    q = quality(pool, a.quality_steps, a.quick)

    kpx = batch * patch * patch / 1000
    L = [
        "# Training speed: fp32 vs bf16 autocast (vs torch.compile)",
        "",
        f"Machine: {describe()}; torch threads {torch.get_num_threads()}.",
        f"Command: `.venv/bin/python benchmarks/bench_training.py {' '.join(argv or sys.argv[1:])}`"
        f" ({time.strftime('%Y-%m-%d')}). No GPU was lent to the session that produced this table.",
        "",
        f"Batch {batch}, patch {patch} (SR: HR patch), full-size networks"
        + (" (--quick: tiny networks)" if a.quick else "")
        + f"; {a.steps} timed steps after {a.warmup} warm-up steps through the training loop, "
        "validation excluded. Ratios are to fp32 in the same run.",
        "",
        "| model | fp32 steps/s | fp32 kpx/s | bf16 steps/s | bf16 kpx/s | bf16 / fp32 | "
        "bf16 + compile steps/s | compile / bf16 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, sp, comp in rows:
        if isinstance(comp, tuple):
            c = f"{comp[0]:.3f} (compiling took {comp[1]:.0f} s) | {comp[0] / sp['bf16']:.2f}×"
        elif comp is None:
            c = "– (GAN: several modules; not measured) | –"
        else:
            c = f"failed: {type(comp).__name__}: {str(comp).splitlines()[0][:80]} | –"
        L.append(f"| {name} | {sp['fp32']:.3f} | {sp['fp32'] * kpx:.1f} | {sp['bf16']:.3f} | "
                 f"{sp['bf16'] * kpx:.1f} | {sp['bf16'] / sp['fp32']:.2f}× | {c} |")
    f32, b16 = q["fp32"], q["bf16"]
    keys = sorted(k for k in f32 if k.startswith("psnr_"))
    L += [
        "",
        f"## Does bf16 cost quality? DRAN, {a.quality_steps} steps from the same seed",
        "",
        "Validation PSNR (dB) on the fixed split (fp32 validation; `s` = unclipped, `c` = "
        "clipped noisy input, σ in /255).",
        "",
        "| precision | " + " | ".join(keys) + " | mean | wall s |",
        "|---|" + "---|" * (len(keys) + 2),
    ]
    for name, m in (("fp32", f32), ("bf16", b16)):
        L.append(f"| {name} | " + " | ".join(f"{m[k]:.2f}" for k in keys)
                 + f" | {m['psnr']:.3f} | {m['seconds']:.0f} |")
    L.append("| bf16 − fp32 | " + " | ".join(f"{b16[k] - f32[k]:+.2f}" for k in keys)
             + f" | {b16['psnr'] - f32['psnr']:+.3f} | |")
    L.append("")
    a.out.write_text("\n".join(L), encoding="utf-8")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
