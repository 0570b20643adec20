"""Super-resolution benchmark: MS-GAN vs bicubic and Lanczos, per modality and factor; speed; a picture.

    .venv/bin/python benchmarks/bench_sr.py                   # writes benchmarks/results_sr.md
    .venv/bin/python benchmarks/bench_sr.py --psnr-stage runs/msgan-psnr/best.safetensors
    .venv/bin/python benchmarks/bench_sr.py --quick           # small sizes, to check it runs

Quality is measured on the fixed validation split of the data pool (``training/pool.py``)
exactly as the model card's ship gate (``training/sr_gate.py``): of every validation plane the
≤ 256² window with the most structure and the whole plane, downsampled ×2 and ×4 by each of the
three LR kernels (antialiased bicubic, scikit-image's Gaussian-antialiased resize, the author's
3×3 blur then bicubic). Rows per modality and for the gate's groups (``pool.GROUPS``), each the
mean of its modalities; cells are the mean over the three kernels (the card has each kernel).
Methods: bicubic and Lanczos enlargements, the PSNR-oriented stage (``--psnr-stage``, when its
weights exist) and the shipped ``msgan-x4`` (whose ×2 head is ``msgan-x2``).

Speed: the public :func:`napari_medenhance.super_resolve` on one 16-bit MR plane (the shipped
``mr_slice``), ×2 and ×4, in one process one after another with a bicubic enlargement (torch)
for reference; ms per megapixel of OUTPUT and the ratio to bicubic.

Picture: the largest MR validation window at ×4 (bicubic kernel): the LR input (nearest-neighbour
enlarged to the same size), bicubic, MS-GAN and the ground truth, side by side.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import describe  # noqa: E402


def quality(models: dict[str, Path]) -> tuple[list[dict], object]:
    """Rows of bicubic, Lanczos and each model (``{method name: ×4 weights}``) on the gate's
    validation set, and the recipe that made them."""
    import sr_gate

    from napari_medenhance.core.weights import read_header

    first = next(iter(models.values()))
    recipe = sr_gate.make_recipe(read_header(first, expected_arch="msgan")["config"])
    rows = sr_gate.baseline_rows(recipe)
    for name, path in models.items():
        rows += sr_gate.model_rows(recipe, path, method=name)[0]
    return rows, recipe


def quality_table(rows: list[dict], methods: list[str], region: str) -> list[str]:
    from pool import GROUPS, group_mean

    mods = list(dict.fromkeys(r["modality"] for r in rows))
    L = ["| modality | method | ×2 PSNR / SSIM / LaSSIM | ×4 PSNR / SSIM / LaSSIM |",
         "|---|---|---|---|"]
    for label, ms in [(m, (m,)) for m in mods] + [(f"**{g}**", ms) for g, ms in GROUPS.items()]:
        for meth in methods:
            cells = []
            for f in (2, 4):
                w = {"method": meth, "scale": f, "region": region}
                cells.append(" / ".join(f"{group_mean(rows, k, ms, **w):.{d}f}"
                                        for k, d in (("psnr", 2), ("ssim", 4), ("lassim", 4))))
            name = meth if meth in ("bicubic", "lanczos") else f"**{meth}**"
            L.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    return L


def speed(model4: Path, quick: bool, reps: int) -> list[tuple[str, int, float]]:
    """(method, factor, ms per output megapixel) on the 16-bit MR sample, one process."""
    import torch
    import torch.nn.functional as F

    from napari_medenhance import super_resolve
    from napari_medenhance.sample_data import load

    mr = load("mr_slice")
    plane = mr[256:384, 256:384] if quick else mr[256:768, 256:768]
    x2 = model4.with_name(model4.name.replace("-x4", "-x2"))
    out = []
    for f, path in ((2, x2), (4, model4)):
        if not path.is_file():
            continue
        mpx = plane.size * f * f / 1e6
        super_resolve(plane, f, model=str(path), device="cpu")  # warm-up: load, first-call costs
        t = time.perf_counter()
        for _ in range(reps):
            res = super_resolve(plane, f, model=str(path), device="cpu")
        dt = (time.perf_counter() - t) / reps
        assert res.shape == (plane.shape[0] * f, plane.shape[1] * f) and res.dtype == plane.dtype
        out.append(("msgan", f, 1e3 * dt / mpx))
        x = torch.from_numpy(plane.astype(np.float32))[None, None]
        t = time.perf_counter()
        for _ in range(reps):
            F.interpolate(x, scale_factor=f, mode="bicubic", align_corners=False)
        out.append(("bicubic (torch)", f, 1e3 * (time.perf_counter() - t) / reps / mpx))
    return out


def picture(recipe, model4: Path, png: Path) -> Path:
    """LR / bicubic / MS-GAN / ground truth of the largest MR validation window at ×4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    import torch.nn.functional as F

    from napari_medenhance.core import zoo

    net, _ = zoo.load_model(str(model4), task="sr")
    mr = [i for i in recipe.validation_items() if i["plane"].modality == "MR"]
    item = max(mr, key=lambda i: i["hr"].size) if mr else recipe.validation_items()[0]  # the largest MR window
    lr = item[("lr", 4, "bicubic")]
    with torch.no_grad():
        sr = net.float()(lr)[0].clamp(0, 1).mean(0).numpy()
    bic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)[0].clamp(0, 1).mean(0).numpy()
    near = np.kron(lr[0].mean(0).numpy(), np.ones((4, 4)))
    hr = item["hr"]
    h, w = hr.shape[:2]
    c = min(h, w, 128)  # a 128² HR crop around the centre: detail is visible
    y0, x0 = (h - c) // 2, (w - c) // 2
    crops = [a[y0 : y0 + c, x0 : x0 + c] for a in (near, bic, sr, hr)]
    from skimage.metrics import peak_signal_noise_ratio as psnr

    titles = ["LR input (×4 nearest)", f"bicubic {psnr(hr, bic, data_range=1):.2f} dB",
              f"MS-GAN {psnr(hr, sr, data_range=1):.2f} dB", "ground truth"]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4), dpi=100)
    for ax, a, t in zip(axes, crops, titles):
        ax.imshow(a, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"×4, validation {item['plane'].modality} ({item['plane'].name}), LR by "
                 f"antialiased bicubic; PSNR of the whole {h}×{w} window",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def _without_note(argv: list[str]) -> list[str]:
    """The command line as the results quote it: the note is printed after it already."""
    out, skip = [], False
    for x in argv:
        if skip or x == "--note":
            skip = not skip and x == "--note"
            continue
        if not x.startswith("--note="):
            out.append(x)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "msgan-x4.safetensors")
    ap.add_argument("--psnr-stage", type=Path, default=ROOT / "runs" / "msgan-psnr" / "best.safetensors",
                    help="the PSNR-oriented stage's weights (its row is left out when missing)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results_sr.md")
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    ap.add_argument("--note", default=None,
                    help="a sentence for the results, e.g. what else ran on the machine")
    a = ap.parse_args(argv)
    if not a.model.is_file():
        raise SystemExit(f"error: {a.model} not found (train and export it: training/train_sr.py)")
    models = {"msgan": a.model}
    if a.psnr_stage.is_file() and a.psnr_stage.resolve() != a.model.resolve():
        models = {"psnr stage": a.psnr_stage, **models}
    t = time.perf_counter()
    rows, recipe = quality(models)
    t_quality = time.perf_counter() - t
    methods = ["bicubic", "lanczos", *models]
    sp = speed(a.model, a.quick, 1 if a.quick else 3)
    png = picture(recipe, a.model, a.out.with_suffix(".png"))
    L = [
        "# Super-resolution benchmark",
        "",
        f"Machine: {describe()}. Command: `python benchmarks/bench_sr.py"
        + "".join(f" {shlex.quote(x)}" for x in _without_note(argv if argv is not None
                                                               else sys.argv[1:])) + "`."
        + (f" {a.note}" if a.note else ""),
        f"Models: {', '.join(f'{k} = `{Path(v).relative_to(ROOT) if Path(v).is_relative_to(ROOT) else v}`' for k, v in models.items())}.",
        "",
        "## Quality on the fixed validation split",
        "",
        "PSNR (dB) / SSIM / LaSSIM (level 3) against the high-resolution image, each the mean "
        "over the three LR kernels (the model card `models/msgan-x4.md` has each kernel and the "
        "ship-gate verdict). Groups = mean of their modalities.",
        "",
    ]
    for region, what in (("window", "Structure windows (≤ 256², the most structured window of "
                          "each plane; the paper evaluates lesion ROIs)"),
                         ("plane", "Whole planes")):
        L += [f"### {what}", "", *quality_table(rows, methods, region), ""]
    L += [
        "## Speed",
        "",
        f"`super_resolve()` on a {'128²' if a.quick else '512²'} 16-bit MR plane (the shipped "
        "`mr_slice`), CPU, one process, one method after another (whole pipeline: intensity "
        "mapping, tiling, the network, the dtype back); torch's bicubic `interpolate` for "
        "reference. ms per megapixel of output.",
        "",
        "| method | factor | ms / output Mpx | × bicubic |",
        "|---|---|---|---|",
    ]
    ref = {f: v for m, f, v in sp if m.startswith("bicubic")}
    for m, f, v in sp:
        L.append(f"| {m} | ×{f} | {v:,.1f} | {v / ref[f]:,.0f} |")
    L += ["", f"Quality took {t_quality:.0f} s for all rows.", "",
          f"![LR, bicubic, MS-GAN, ground truth]({png.name})", ""]
    a.out.write_text("\n".join(L), encoding="utf-8")
    print("\n".join(L))
    print(f"wrote {a.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
