"""The `msgan-x2` / `msgan-x4` ship gate: MS-GAN vs bicubic (and Lanczos) on the fixed validation split.

    python training/sr_gate.py runs/msgan-psnr/best.safetensors    # tables + gate verdict
    python training/sr_gate.py models/msgan-x4.safetensors --json out.json

The validation set is the model card's (``SRRecipe`` with every LR kernel of
``recipes.sr.KERNELS``): of every validation plane of ``pool.py`` the ≤ 256² window with the
most structure (``window``) and the whole plane (``plane``), each downsampled ×2 and ×4 by each
kernel (antialiased bicubic; scikit-image's Gaussian-antialiased resize; the author's 3×3 blur
then bicubic). The ×4 network's own ×2 head gives the ×2 rows (``msgan-x2`` is that head).

* bicubic: torch's bicubic enlargement (a = −0.75, as the networks' residual path).
* lanczos: Pillow's Lanczos-3 enlargement (``Image.resize(..., LANCZOS)`` on float planes).

Gate (issue "Ship msgan-x2 and msgan-x4"): at ×2 and ×4, on radiology and on microscopy
(``pool.GROUPS``, each the mean of its modalities), on the windows and on the whole planes:
PSNR ≥ bicubic + 0.5 dB (mean over the three LR kernels), and above bicubic on every kernel
("the shipped model must beat bicubic on all three"). Target: ≥ bicubic + 1 dB there, with
SSIM and LaSSIM above bicubic's on every kernel too. The lines print each kernel's margin.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pool import GROUPS, group_mean, load_pool  # noqa: E402

from napari_medenhance.core.training.recipes import SRRecipe  # noqa: E402
from napari_medenhance.core.training.recipes.sr import KERNELS  # noqa: E402

#: dB over bicubic the shipped models need (gate) and the issue's target.
GATE_DB = 0.5
TARGET_DB = 1.0
REGIONS = ("window", "plane")
SCALES = (2, 4)


def make_recipe(config: dict | None = None, pool=None, val_crop: int = 256) -> SRRecipe:
    """The card's validation set for an MS-GAN generator ``config`` (no loss networks built)."""
    cfg = {k: v for k, v in (config or {}).items() if k not in ("output_scale", "scale")}
    return SRRecipe(pool or load_pool(), mode="msgan", config=cfg, kernels=KERNELS,
                    vgg_weight=0.0, adversarial_weight=0.0, val_crop=val_crop)


def lanczos_up(lr: torch.Tensor, factor: int) -> torch.Tensor:
    """Pillow's Lanczos enlargement of a 1×C×h×w float tensor, channel by channel."""
    from PIL import Image

    chans = []
    for c in lr[0].numpy():
        im = Image.fromarray(np.ascontiguousarray(c, np.float32), mode="F")
        im = im.resize((c.shape[1] * factor, c.shape[0] * factor), Image.Resampling.LANCZOS)
        chans.append(np.asarray(im, np.float32))
    return torch.from_numpy(np.stack(chans))[None]


def baseline_rows(recipe: SRRecipe, methods: Sequence[str] = ("bicubic", "lanczos")) -> list[dict]:
    """Rows ``name, modality, method, scale, kernel, region, psnr, ssim, lassim, mse``."""
    rows = [r for r in recipe.baselines(whole=True)] if "bicubic" in methods else []
    if "lanczos" in methods:
        for item in recipe.validation_items(True):
            for k in recipe.kernels:
                for f in SCALES:
                    rows.append(recipe.rows_for(item, "lanczos", f, k,
                                             lanczos_up(item[("lr", f, k)], f))[0])
    return rows


def model_rows(recipe: SRRecipe, weights: str | Path, device: str = "cpu",
               method: str = "msgan") -> tuple[list[dict], float]:
    """Rows of the ×4 generator in ``weights`` (fp32, as validation runs), named ``method``;
    and the seconds it took."""
    from napari_medenhance.core import zoo

    net, info = zoo.load_model(str(weights), device=device, task="sr")
    if info.scale != 4:
        raise SystemExit(f"error: {weights} is a ×{info.scale} model; the gate evaluates the ×4 "
                         "file (its ×2 head is the ×2 model)")
    t = time.perf_counter()
    rows, _ = recipe.evaluate(net.float(), torch.device(device), whole=True)
    return [{**r, "method": method} for r in rows], time.perf_counter() - t


def noise_ceiling(hr: np.ndarray, factor: int, rgb: bool = False) -> tuple[float, float]:
    """``(σ, PSNR ceiling in dB)`` of an HR plane in [0, 1] (Y×X, or Y×X×3 with ``rgb``).

    σ is the plane's white noise as scikit-image's wavelet estimator sees it
    (``estimate_sigma``, averaged over colour channels). A ×``factor`` LR holds the lowest
    1/factor² of the spectrum; the noise above it, of variance σ²·(1 − 1/factor²), is independent
    of the LR, so no enlargement gets a mean squared error against this HR below that:
    PSNR ≤ −10·log10(σ²·(1 − 1/factor²)) at data range 1. Approximate: the LR kernels are not
    ideal low-passes, and the estimator counts the finest real texture as noise.
    """
    from skimage.restoration import estimate_sigma

    sigma = float(estimate_sigma(hr, channel_axis=-1 if rgb else None, average_sigmas=True))
    floor = sigma * sigma * (1.0 - 1.0 / factor**2)
    return sigma, float(10.0 * np.log10(1.0 / floor)) if floor > 0 else float("inf")


def ceiling_rows(recipe: SRRecipe) -> list[dict]:
    """Rows ``name, modality, method="ceiling", scale, kernel, region, psnr, sigma`` of every
    validation item (windows and whole planes), one per kernel so that they average like the
    methods' rows (the ceiling depends on the HR alone)."""
    rows = []
    for item in recipe.validation_items(True):
        plane = item["plane"]
        for f in SCALES:
            sigma, ceil = noise_ceiling(item["hr"], f, plane.rgb)
            rows += [{"name": plane.name, "modality": plane.modality, "method": "ceiling",
                      "scale": f, "kernel": k, "region": item["region"], "psnr": ceil,
                      "sigma": sigma} for k in recipe.kernels]
    return rows


def ceiling_table(rows: Sequence[dict], region: str = "window", method: str = "msgan") -> list[str]:
    """Markdown: per modality and group, the HR's noise σ and, at ×2 and ×4, bicubic's and
    ``method``'s PSNR (means over the kernels) beside the noise ceiling (:func:`noise_ceiling`)."""
    mods = list(dict.fromkeys(r["modality"] for r in rows if r["method"] == "ceiling"))
    L = ["| modality | HR noise σ | " + " | ".join(f"×{f} bicubic / {method} / ceiling (dB)"
                                                  for f in SCALES) + " |",
         "|---|---|" + "---|" * len(SCALES)]
    labels = [(m, (m,)) for m in mods] + [(f"**{g}**", ms) for g, ms in GROUPS.items()]
    for label, ms in labels:
        sigma = group_mean(rows, "sigma", ms, method="ceiling", region=region, scale=SCALES[0])
        cells = [" / ".join(f"{group_mean(rows, 'psnr', ms, method=m, region=region, scale=f):.2f}"
                            for m in ("bicubic", method, "ceiling")) for f in SCALES]
        L.append(f"| {label} | {sigma:.4f} | " + " | ".join(cells) + " |")
    return L


def verdict(rows: Sequence[dict], method: str = "msgan", against: str = "bicubic",
            margin: float = GATE_DB, *, structure: bool = False) -> list[dict]:
    """One entry per scale, group and region: ``method``'s and ``against``'s PSNR (means over
    the LR kernels), the margin and each kernel's margin, and whether it passes: a mean margin
    of at least ``margin`` dB and ``method`` above ``against`` on every kernel (with
    ``structure``, also SSIM and LaSSIM above on every kernel)."""
    out = []
    for f in SCALES:
        for g, mods in GROUPS.items():
            for region in REGIONS:
                per = {}
                for k in KERNELS:
                    where = {"scale": f, "region": region, "kernel": k}
                    m = {key: group_mean(rows, key, mods, method=method, **where)
                         for key in ("psnr", "ssim", "lassim")}
                    b = {key: group_mean(rows, key, mods, method=against, **where)
                         for key in ("psnr", "ssim", "lassim")}
                    if np.isfinite(m["psnr"]) and np.isfinite(b["psnr"]):
                        per[k] = (m, b)
                if not per:
                    continue
                mean = {key: float(np.mean([m[key] for m, _ in per.values()])) for key in ("psnr", "ssim", "lassim")}
                base = {key: float(np.mean([b[key] for _, b in per.values()])) for key in ("psnr", "ssim", "lassim")}
                kern = {k: m["psnr"] - b["psnr"] for k, (m, b) in per.items()}
                ok = mean["psnr"] - base["psnr"] >= margin and all(v > 0 for v in kern.values())
                if structure:
                    ok = ok and all(m["ssim"] > b["ssim"] and m["lassim"] > b["lassim"]
                                    for m, b in per.values())
                out.append({"scale": f, "group": g, "region": region, method: mean["psnr"],
                            against: base["psnr"], "margin": mean["psnr"] - base["psnr"],
                            "kernel_margins": kern,
                            "ssim_margin": mean["ssim"] - base["ssim"],
                            "lassim_margin": mean["lassim"] - base["lassim"], "pass": bool(ok)})
    return out


def passed(v: Sequence[dict]) -> bool:
    return bool(v) and all(e["pass"] for e in v)


def table(rows: Sequence[dict], methods: Sequence[str], scale: int, region: str) -> list[str]:
    """Markdown: PSNR / SSIM / LaSSIM per modality and group, per method and kernel."""
    mods = list(dict.fromkeys(r["modality"] for r in rows))
    L = ["| modality | method | " + " | ".join(f"{k} PSNR / SSIM / LaSSIM" for k in KERNELS) + " |",
         "|---|---|" + "---|" * len(KERNELS)]
    labels = [(m, (m,)) for m in mods] + [(f"**{g}**", ms) for g, ms in GROUPS.items()]
    for label, ms in labels:
        for meth in methods:
            where = {"method": meth, "scale": scale, "region": region}
            cells = [" / ".join(f"{group_mean(rows, key, ms, kernel=k, **where):.{d}f}"
                                for key, d in (("psnr", 2), ("ssim", 4), ("lassim", 4)))
                     for k in KERNELS]
            name = f"**{meth}**" if meth not in ("bicubic", "lanczos") else meth
            L.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    return L


def verdict_lines(v: Sequence[dict], method: str = "msgan", against: str = "bicubic") -> list[str]:
    return [f"- ×{e['scale']} {e['group']}, {e['region']}s: {method} {e[method]:.2f} dB vs "
            f"{against} {e[against]:.2f} dB → {e['margin']:+.2f} dB (per kernel: "
            + ", ".join(f"{k} {d:+.2f}" for k, d in e["kernel_margins"].items())
            + f"; SSIM {e['ssim_margin']:+.4f}, LaSSIM {e['lassim_margin']:+.4f}) "
            f"{'✔' if e['pass'] else '✘'}" for e in v]


def run(recipe: SRRecipe, weights: str | Path, method: str = "msgan",
        device: str = "cpu") -> dict:
    """Everything the card and the CLI show: rows, gate, target and times."""
    t = time.perf_counter()
    base = baseline_rows(recipe)
    t_base = time.perf_counter() - t
    mine, dt = model_rows(recipe, weights, device, method)
    rows = base + mine
    gate = verdict(rows, method, margin=GATE_DB)
    target = verdict(rows, method, margin=TARGET_DB, structure=True)
    return {"rows": rows, "gate": gate, "target": target, "passed": passed(gate),
            "target_met": passed(target), "seconds": {"baselines": t_base, method: dt},
            "ceiling": ceiling_rows(recipe)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", help="an MS-GAN ×4 .safetensors file (run best, or models/msgan-x4)")
    ap.add_argument("--json", type=Path, help="write rows and verdicts here")
    a = ap.parse_args(argv)
    from napari_medenhance.core.weights import read_header

    recipe = make_recipe(read_header(a.weights, expected_arch="msgan")["config"])
    res = run(recipe, a.weights)
    for region in REGIONS:
        for f in SCALES:
            print(f"\n## ×{f}, {region}s\n")
            print("\n".join(table(res["rows"], ("bicubic", "lanczos", "msgan"), f, region)))
    print(f"\nShip gate (≥ bicubic + {GATE_DB} dB over the kernels, above it on each):\n" + "\n".join(verdict_lines(res["gate"])))
    print(f"\nTarget (≥ bicubic + {TARGET_DB} dB, SSIM and LaSSIM above):\n"
          + "\n".join(verdict_lines(res["target"])))
    print("\nThe HR's own noise caps any method's PSNR (windows; sr_gate.noise_ceiling):\n")
    print("\n".join(ceiling_table(res["rows"] + res["ceiling"])))
    print(f"\ngate {'PASSED' if res['passed'] else 'not passed'}; target "
          f"{'met' if res['target_met'] else 'not met'}; msgan evaluated in "
          f"{res['seconds']['msgan']:.0f} s")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
