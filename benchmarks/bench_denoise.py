"""Denoising benchmark: quality vs noisy / NLM / BM3D, speed vs BM3D, peak memory.

    .venv/bin/python benchmarks/bench_denoise.py                # writes benchmarks/results_denoise.md
    .venv/bin/python benchmarks/bench_denoise.py --quick        # small sizes, to check it runs
    .venv/bin/python benchmarks/bench_denoise.py --model runs/dran/best.safetensors

Quality is measured on the fixed validation split of the data pool (``training/pool.py``) with
the noise drawn exactly as for the model card (``DenoiseRecipe``: central ≤ 256² crops, noise
seed 0, σ = 15, 25, 50 /255, input not clipped). The baselines get the TRUE σ (non-blind);
``dran`` is blind. Rows are per modality and for the groups the issue targets: radiology
(CT, MR, CR) and microscopy (fluorescence, H&E histology), each the mean of its modalities.

Speed runs every method on the same 512² 16-bit plane in one process, one after another, and
reports ms per megapixel and the ratio to BM3D. Peak memory is measured in a fresh subprocess
per case (its own peak RSS after warm-up, ``_rss.py``) for 1024² (one whole-plane pass) and
4096² (tiled) uint16 images and a 64×512×512 uint16 stack through the public
:func:`napari_medenhance.denoise`; ``--only-memory`` redoes just that section of ``--out``.

BM3D comes from the optional ``bm3d`` package (``pip install bm3d``; benchmark only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import describe  # noqa: E402

GROUPS = {"radiology": ("CT", "MR", "CR"), "microscopy": ("fluorescence", "colour")}


def _nlm(noisy: np.ndarray, sigma: float, rgb: bool) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    # scikit-image's recommended setting for a known σ (h slightly below σ, σ subtracted).
    return denoise_nl_means(noisy, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                            fast_mode=True, channel_axis=-1 if rgb else None)


def _bm3d(noisy: np.ndarray, sigma: float, rgb: bool) -> np.ndarray:
    import bm3d

    if rgb:
        return bm3d.bm3d_rgb(noisy, sigma_psd=sigma)
    return bm3d.bm3d(noisy, sigma_psd=sigma)


def quality(model: str, methods: list[str]) -> tuple[list[dict], dict]:
    """Rows (name, modality, sigma, method, psnr, ssim) on the fixed validation set."""
    import torch

    from pool import load_pool

    from napari_medenhance.core import zoo
    from napari_medenhance.core.metrics import psnr, ssim
    from napari_medenhance.core.training import DenoiseRecipe

    pool = load_pool()
    info = zoo.get_model(model, task="denoise")
    net, _ = zoo.load_model(model, device="cpu", task="denoise")
    recipe = DenoiseRecipe(pool, config=info.config)
    t = time.perf_counter()
    rows, _ = recipe.evaluate(net.float(), torch.device("cpu"))
    times = {"dran": time.perf_counter() - t}
    out = [{**{k: r[k] for k in ("name", "modality", "sigma")}, "method": "dran",
            "psnr": r["psnr"], "ssim": r["ssim"]} for r in rows]
    out += [{**{k: r[k] for k in ("name", "modality", "sigma")}, "method": "noisy",
             "psnr": r["psnr_input"], "ssim": r["ssim_input"]} for r in rows]
    fns = {"nlm": _nlm, "bm3d": _bm3d}
    for m in methods:
        times[m] = 0.0
    for item in recipe._val:  # the exact noisy arrays the card's numbers come from
        plane = item["plane"]
        for i, s in enumerate(recipe.val_sigmas):
            noisy = recipe._to_plane(item["noisy"][i], plane.rgb).astype(np.float64)
            for m in methods:
                t = time.perf_counter()
                den = np.clip(fns[m](noisy, s / 255.0, plane.rgb), 0.0, 1.0)
                times[m] += time.perf_counter() - t
                out.append({"name": plane.name, "modality": plane.modality, "sigma": s,
                            "method": m,
                            "psnr": float(psnr(item["clean"], den, data_range=1.0, rgb=plane.rgb)),
                            "ssim": float(ssim(item["clean"], den, data_range=1.0, rgb=plane.rgb))})
            print(f"  {plane.name} σ={s:g} done", flush=True)
    return out, times


def _mean(rows: list[dict], key: str, mods: tuple[str, ...]) -> float:
    per_mod = [np.mean([r[key] for r in rows if r["modality"] == m]) for m in mods
               if any(r["modality"] == m for r in rows)]
    return float(np.mean(per_mod))


def quality_table(rows: list[dict], methods: list[str]) -> list[str]:
    sigmas = sorted({r["sigma"] for r in rows})
    mods = list(dict.fromkeys(r["modality"] for r in rows))
    order = ["noisy", *methods, "dran"]
    L = ["| modality | method | " + " | ".join(f"σ={s:g} PSNR / SSIM" for s in sigmas) + " |",
         "|---|---|" + "---|" * len(sigmas)]
    labels = [(m, (m,)) for m in mods] + [(f"**{g}**", ms) for g, ms in GROUPS.items()]
    for label, ms in labels:
        for meth in order:
            cells = []
            for s in sigmas:
                sel = [r for r in rows if r["method"] == meth and r["sigma"] == s]
                cells.append(f"{_mean(sel, 'psnr', ms):.2f} / {_mean(sel, 'ssim', ms):.4f}")
            name = f"**{meth}**" if meth == "dran" else meth
            L.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    return L


def target_lines(rows: list[dict]) -> list[str]:
    """The issue's target: blind dran ≥ BM3D (true σ) in PSNR at every σ, per group."""
    L = []
    for g, ms in GROUPS.items():
        for s in sorted({r["sigma"] for r in rows}):
            d = _mean([r for r in rows if r["method"] == "dran" and r["sigma"] == s], "psnr", ms)
            b = _mean([r for r in rows if r["method"] == "bm3d" and r["sigma"] == s], "psnr", ms)
            L.append(f"- {g}, σ={s:g}: dran {d:.2f} dB vs BM3D {b:.2f} dB → "
                     f"{d - b:+.2f} dB {'✔' if d >= b else '✘ below target'}")
    return L


def speed(model: str, size: int, methods: list[str], reps: int) -> list[tuple[str, float]]:
    """ms per megapixel on one uint16 plane of real fluorescence, all methods in this process."""
    import tifffile

    from napari_medenhance import denoise

    stack = tifffile.imread(ROOT / "src/napari_medenhance/sample_data/nuclei_stack.tif")
    plane = np.tile(stack[12], (size // stack.shape[1] + 1, size // stack.shape[2] + 1))[:size, :size]
    rng = np.random.default_rng(1)
    noisy = np.clip(plane + rng.normal(0, 0.1 * plane.std(), plane.shape), 0, 65535).astype(np.uint16)
    lo, hi = float(noisy.min()), float(noisy.max())
    sigma = float(0.1 * plane.std() / (hi - lo))
    as01 = (noisy - lo) / (hi - lo)
    mpx = size * size / 1e6
    res = []
    denoise(noisy[:64, :64], model=model, device="cpu")  # warm-up: model load, allocator
    for name, fn in [("dran", lambda: denoise(noisy, model=model, device="cpu"))] + [
        (m, (lambda m=m: {"nlm": _nlm, "bm3d": _bm3d}[m](as01, sigma, False))) for m in methods
    ]:
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        res.append((name, min(ts) * 1000 / mpx))
        print(f"  speed {name}: {res[-1][1]:.0f} ms/Mpx", flush=True)
    return res


_MEMORY_CHILD = r"""
import json, sys, numpy as np
sys.path.insert(0, sys.argv[3])
from _rss import peak_rss, reset_peak
from napari_medenhance import denoise
from napari_medenhance.core import zoo
shape, model = json.loads(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
img = rng.integers(0, 4096, size=shape, dtype=np.uint16)
zoo.load_model(model, device="cpu", task="denoise")
denoise(img[(0,) * (len(shape) - 2)][:64, :64], model=model, device="cpu")
base = reset_peak()
import time; t = time.perf_counter()
out = denoise(img, model=model, device="cpu")
dt = time.perf_counter() - t
peak = peak_rss()
print(json.dumps({"base_mb": base / 2**20, "peak_mb": peak / 2**20, "seconds": dt,
                  "in_mb": img.nbytes / 2**20, "out_mb": out.nbytes / 2**20}))
"""


MEMORY_HEADING = "## Peak memory"


def _measure_memory(model: str, cases: list[tuple[int, ...]]) -> list[tuple[tuple[int, ...], dict]]:
    out = []
    for shape in cases:
        print(f"memory {shape} ...", flush=True)
        out.append((shape, memory(model, shape)))
    return out


def memory_section(mem: list[tuple[tuple[int, ...], dict]], command: str | None = None,
                   machine: str | None = None) -> list[str]:
    """The results file's memory section (``command``/``machine``: when measured on its own)."""
    L = [
        f"{MEMORY_HEADING} (`denoise()` on CPU, fresh process per case)",
        "",
        "'before' is the process's RSS after importing, creating the input and a 64² warm-up run; "
        "'peak' is its own peak RSS during the call (`VmHWM`, reset at 'before'; "
        "benchmarks/_rss.py).",
        "",
    ]
    if command:
        L += [f"Measured on its own: `{command}`; machine: {machine}.", ""]
    L += [
        "| input | input MB | output MB | RSS before MB | peak MB | peak − before MB | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for shape, m in mem:
        L.append(f"| {'×'.join(map(str, shape))} uint16 | {m['in_mb']:.0f} | {m['out_mb']:.0f} | "
                 f"{m['base_mb']:.0f} | {m['peak_mb']:.0f} | {m['peak_mb'] - m['base_mb']:.0f} | "
                 f"{m['seconds']:.0f} |")
    L.append("")
    return L


def memory(model: str, shape: tuple[int, ...]) -> dict:
    p = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, json.dumps(list(shape)), model,
                        str(ROOT / "benchmarks")],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="dran", help="registered name or .safetensors path")
    ap.add_argument("--quick", action="store_true", help="small speed / memory cases only")
    ap.add_argument("--no-bm3d", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results_denoise.md")
    ap.add_argument("--only-memory", action="store_true",
                    help="measure peak memory only and replace that section of --out in place")
    a = ap.parse_args(argv)
    methods = ["nlm"] + ([] if a.no_bm3d else ["bm3d"])
    from napari_medenhance.core import zoo

    info = zoo.get_model(a.model, task="denoise")
    cases = [(1024, 1024), (4, 256, 256)] if a.quick else [(1024, 1024), (4096, 4096), (64, 512, 512)]
    command = " ".join([".venv/bin/python", "benchmarks/bench_denoise.py", *(argv or sys.argv[1:])])
    if a.only_memory:
        text = a.out.read_text(encoding="utf-8")
        head, sep, _ = text.partition(MEMORY_HEADING)
        if not sep:
            raise SystemExit(f"{a.out} has no '{MEMORY_HEADING}' section to replace")
        section = memory_section(_measure_memory(a.model, cases), command, describe())
        a.out.write_text(head + "\n".join(section), encoding="utf-8")
        print(f"replaced the memory section of {a.out}")
        return 0
    print("quality on the fixed validation split ...", flush=True)
    rows, qtimes = quality(a.model, methods)
    print("speed ...", flush=True)
    sp = speed(a.model, 256 if a.quick else 512, methods, 1 if a.quick else 2)
    mem = _measure_memory(a.model, cases)

    import torch

    L = [
        "# Denoising benchmark",
        "",
        f"Machine: {describe()}; torch threads {torch.get_num_threads()}.",
        f"Model: `{info.name}` ({info.path.name}; step {info.card.get('step', '?')}). "
        f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/bench_denoise.py', *(argv or sys.argv[1:])])}`.",
        "No GPU was lent to the session that produced this table, so GPU speed is not measured here.",
        "",
        "## Quality (fixed validation split, same noise as the model card)",
        "",
        "PSNR (dB) / SSIM at data range 1, outputs clipped to [0, 1]. Baselines are given the "
        "true σ; `dran` is blind (one network for σ ∈ [0, 50]). Modality rows are means over "
        "that modality's validation planes; group rows are means over their modalities.",
        "",
        *quality_table(rows, methods),
        "",
        "Target (issue 3): blind `dran` at least as good in PSNR as BM3D with the true σ, on "
        "radiology and on microscopy:",
        "",
        *(target_lines(rows) if "bm3d" in methods else ["- BM3D not run (--no-bm3d)"]),
        "",
        "Time for the whole quality set (45 plane × σ cases), one process: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in qtimes.items()) + ".",
        "",
        f"## Speed ({256 if a.quick else 512}² uint16 fluorescence plane, CPU)",
        "",
        "| method | ms / Mpx | × BM3D time |",
        "|---|---|---|",
    ]
    ref = dict(sp).get("bm3d")
    for name, ms in sp:
        L.append(f"| {name} | {ms:,.0f} | {ms / ref:.2f} |" if ref else f"| {name} | {ms:,.0f} | – |")
    L += [
        "",
        "`dran` goes through the public `denoise()` (engine: intensity mapping, tiling, "
        "dtype round trip); NLM / BM3D get the [0, 1]-scaled plane and the true σ.",
        "",
    ]
    L += memory_section(mem)
    a.out.write_text("\n".join(L), encoding="utf-8")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
