"""Enhancement benchmark: `dpe` vs the degraded input, CLAHE and a percentile stretch; CPU speed
beside the paper's.

    .venv/bin/python benchmarks/bench_enhance.py                  # models/dpe.safetensors
    .venv/bin/python benchmarks/bench_enhance.py runs/dpe/best.safetensors \\
        --ablation runs/dpe-l1/best.safetensors        # a run's weights: no shipped model needed
    .venv/bin/python benchmarks/bench_enhance.py W.safetensors --sizes 64,128 --repeats 1 \\
        --out /tmp/r.md --png /tmp/r.png                          # a smoke run

Quality is measured on the fixed validation split of the model card (``training/enhance_gate.py``:
central ≤ 256² crops of ``training/pool.py``'s validation planes, each degraded 8 times by
Algorithm 1 of S M A Sharif, R. A. Naqvi, M. Biswas and W.-K. Loh, "Deep Perceptual Enhancement for
Medical Image Analysis", IEEE JBHI): PSNR / SSIM / ΔE2000 against the clean crop and LaSSIM
against the degraded input, per modality and group, for the degraded input, CLAHE, the 2–98 %
stretch, the 0.1–99.9 % stretch (a reference the gate does not use: the range the clean images
are normalised by), ``dpe`` and (``--ablation``) the L1-only model, with the ship gate's verdict.

Speed: the public :func:`napari_medenhance.enhance` on an RGB uint8 image (the shipped IHC
sample, tiled) of 256², 512² and 1024² pixels — the sizes of the paper's Table III, whose CPU
times (0.45 / 1.65 / 6.85 s on an AMD Ryzen 3 3200G, 4 cores at 3.6 GHz) are shown beside ours;
the fastest of ``--repeats`` runs after a warm-up, in ms per megapixel and seconds per image.

The picture (``--png``): degraded / the two stretches / ``dpe`` / clean for the largest
validation crop of every modality.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import describe  # noqa: E402

#: Table III of the paper: CPU seconds per image of side 256, 512, 1024 (× 3 channels).
PAPER_CPU_S = {256: 0.45, 512: 1.65, 1024: 6.85}


def quality(weights: Path, ablation: Path | None):
    """(recipe, rows) of the gate's validation set for the baselines, dpe and the ablation."""
    import enhance_gate

    from napari_medenhance.core.weights import read_header

    header = read_header(weights, expected_arch="dpe")
    recipe = enhance_gate.make_recipe(header["config"], **enhance_gate.recipe_options(header))
    rows = enhance_gate.baseline_rows(recipe) + enhance_gate.model_rows(recipe, weights)
    if ablation is not None:
        rows += enhance_gate.model_rows(recipe, ablation, method="dpe-l1")
    return recipe, rows


def speed(weights: Path, sizes: list[int], repeats: int) -> list[tuple[int, float]]:
    """(side, seconds per image) of the public ``enhance()`` on RGB uint8 images, CPU."""
    from napari_medenhance import enhance
    from napari_medenhance.sample_data import load

    ihc = load("ihc_rgb")
    enhance(ihc[:64, :64], model=str(weights), device="cpu")  # warm-up: model load, allocator
    out = []
    for s in sizes:
        img = np.tile(ihc, (s // ihc.shape[0] + 1, s // ihc.shape[1] + 1, 1))[:s, :s]
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            enhance(img, model=str(weights), device="cpu")
            ts.append(time.perf_counter() - t)
        out.append((s, min(ts)))
        print(f"  {s}²: {min(ts):.3f} s", flush=True)
    return out


def picture(recipe, weights: Path, png: Path) -> Path:
    """Degraded / the two stretches / dpe / clean for the largest validation crop of each
    modality."""
    import enhance_gate
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_medenhance.core import zoo
    from napari_medenhance.core.training.recipes.enhance import INPUT_PERCENTILES, percentile_stretch
    from napari_medenhance.core.weights import read_header

    net, _ = zoo.load_model(str(weights), device="cpu", task="enhance")
    header = read_header(weights)
    norm, pct = enhance_gate.input_norm(header), enhance_gate.stretch_of(header)
    picks: dict[str, dict] = {}
    for item in recipe.validation_items():
        m = item["plane"].modality
        if m not in picks or item["clean"].size > picks[m]["clean"].size:
            picks[m] = item
    fig, axes = plt.subplots(len(picks), 5, figsize=(10, 2.1 * len(picks)), squeeze=False)
    with torch.no_grad():
        for r, (mod, item) in enumerate(picks.items()):
            x = torch.from_numpy(recipe.network_input(item, norm, pct)[None])
            y = ((net.float()(x)[0] + 1) * 0.5).clamp(0, 1)
            out = recipe.to_plane(y.numpy(), item["plane"].rgb)
            panels = [("degraded", item["degraded"]),
                      ("stretch 2–98 %", percentile_stretch(item["degraded"])),
                      ("stretch 0.1–99.9 %", percentile_stretch(item["degraded"], *INPUT_PERCENTILES)),
                      ("dpe", out), ("clean", item["clean"])]
            row = axes[r]
            for ax, (title, img) in zip(row, panels):
                ax.imshow(np.clip(img, 0, 1), cmap=None if img.ndim == 3 else "gray",
                          vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(title, fontsize=9)
            row[0].set_ylabel(f"{mod}\n{item['plane'].name}", fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", nargs="?", type=Path, default=None,
                    help="dpe weights (default: the shipped models/dpe.safetensors)")
    ap.add_argument("--ablation", type=Path, default=None, help="the L1-only weights (a row)")
    ap.add_argument("--sizes", default="256,512,1024", help="image sides for the speed table")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results_enhance.md")
    ap.add_argument("--png", type=Path, default=None,
                    help="the picture (default: next to --out, results_enhance.png)")
    a = ap.parse_args(argv)
    weights = a.weights or ROOT / "models" / "dpe.safetensors"
    if not weights.is_file():
        raise SystemExit(f"no weights at {weights}: no `dpe` is shipped yet; pass a weights file "
                         "(e.g. runs/dpe/best.safetensors or training/checkpoints/dpe.safetensors)")
    png = a.png or a.out.with_name("results_enhance.png")
    sizes = [int(s) for s in a.sizes.split(",") if s]
    for path in (a.out, png):
        path.parent.mkdir(parents=True, exist_ok=True)

    import enhance_gate
    import torch

    print("quality on the fixed validation split ...", flush=True)
    recipe, rows = quality(weights, a.ablation)
    print("speed ...", flush=True)
    sp = speed(weights, sizes, a.repeats)
    picture(recipe, weights, png)
    command = " ".join([".venv/bin/python", "benchmarks/bench_enhance.py", *(argv or sys.argv[1:])])
    L = [
        "# Enhancement benchmark",
        "",
        f"Machine: {describe()}; torch threads {torch.get_num_threads()}.",
        f"Model: `{weights}`" + (f", ablation `{a.ablation}`" if a.ablation else "")
        + f". Command: `{command}`.",
        "",
        "## Quality (fixed validation split of the model card, Algorithm 1 degradations)",
        "",
        "PSNR (dB) / SSIM / ΔE2000 (colour planes) against the clean crop, outputs clipped to "
        "[0, 1]; LaSSIM of the output against the degraded input (the `clean` row: what the "
        "ideal output scores). Modality rows: means over its planes; group rows: means over "
        "their modalities.",
        "",
        *enhance_gate.table(rows),
        "",
        *enhance_gate.report(rows, "###"),
        "## Speed (public `enhance()`, RGB uint8, CPU)",
        "",
        "| image | dpe here: s / image | ms / Mpx | paper (Table III, 4-core Ryzen 3 3200G): "
        "s / image | ms / Mpx | here / paper |",
        "|---|---|---|---|---|---|",
    ]
    for s, sec in sp:
        mpx = s * s / 1e6
        ref = PAPER_CPU_S.get(s)
        paper = (f"{ref:.2f} | {ref * 1e3 / mpx:,.0f} | {sec / ref:.2f}× |" if ref
                 else "– | – | – |")
        L.append(f"| {s}×{s}×3 | {sec:.3f} | {sec * 1e3 / mpx:,.0f} | {paper}")
    L += ["", f"![degraded / stretch / dpe / clean for one image of each modality]({png.name})", ""]
    a.out.write_text("\n".join(L), encoding="utf-8")
    print(f"wrote {a.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
