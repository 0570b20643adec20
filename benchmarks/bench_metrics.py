"""Speed of the metrics against calling scikit-image directly, side by side in one run.

    .venv/bin/python benchmarks/bench_metrics.py            # writes benchmarks/results_metrics.md

Ratios (ours / scikit-image) show the cost of validation and plane handling; LaSSIM has no
library counterpart, so it is compared with OpenCV pyramid + scikit-image SSIM when cv2 exists.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage import color, metrics as skm

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe  # noqa: E402

from napari_medenhance import metrics  # noqa: E402
from napari_medenhance.sample_data import load  # noqa: E402

OUT = Path(__file__).with_name("results_metrics.md")


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def cv2_lassim(a, b, level=3):
    import cv2

    def band(x):
        g = [x]
        for _ in range(level + 1):
            g.append(cv2.pyrDown(g[-1]))
        h, w = g[level].shape
        return g[level] - cv2.pyrUp(g[level + 1], dstsize=(w, h))

    ba, bb = band(a.astype(np.float64)), band(b.astype(np.float64))
    rng = max(ba.max(), bb.max()) - min(ba.min(), bb.min())
    return skm.structural_similarity(ba, bb, data_range=rng)


def main() -> None:
    mr = load("mr_slice")  # 1024² uint16, a real 1-megapixel plane
    mr_blur = gaussian_filter(mr.astype(np.float32), 1.5).round().astype(mr.dtype)
    ihc = load("ihc_rgb")
    ihc_blur = np.stack([gaussian_filter(ihc[..., c].astype(np.float32), 1.5) for c in range(3)], -1)
    ihc_blur = ihc_blur.round().astype(np.uint8)
    mpx_mr, mpx_ihc = mr.size / 1e6, ihc.shape[0] * ihc.shape[1] / 1e6
    rows = [
        ("PSNR, 1024² uint16", mpx_mr, lambda: metrics.psnr(mr, mr_blur),
         lambda: skm.peak_signal_noise_ratio(mr, mr_blur, data_range=65535)),
        ("SSIM, 1024² uint16", mpx_mr, lambda: metrics.ssim(mr, mr_blur),
         lambda: skm.structural_similarity(mr, mr_blur, data_range=65535)),
        ("ΔE2000, 512² RGB", mpx_ihc, lambda: metrics.delta_e(ihc, ihc_blur),
         lambda: color.deltaE_ciede2000(color.rgb2lab(ihc), color.rgb2lab(ihc_blur)).mean()),
    ]
    try:
        import cv2  # noqa: F401

        rows.append(("LaSSIM l=3, 1024² uint16", mpx_mr, lambda: metrics.lassim(mr, mr_blur),
                     lambda: cv2_lassim(mr, mr_blur)))
    except ImportError:
        rows.append(("LaSSIM l=3, 1024² uint16", mpx_mr, lambda: metrics.lassim(mr, mr_blur), None))
    lines = [
        "# Metrics speed (best of 5 runs)",
        "",
        f"Machine: {describe()}",
        "",
        "| metric | ours (ms/Mpx) | reference (ms/Mpx) | ratio ours/reference | reference is |",
        "|---|---|---|---|---|",
    ]
    for name, mpx, ours, ref in rows:
        t_ours = best_of(ours) * 1e3 / mpx
        if ref is None:
            lines.append(f"| {name} | {t_ours:.1f} | — | — | — |")
            continue
        t_ref = best_of(ref) * 1e3 / mpx
        what = "cv2 pyramid + skimage SSIM" if "LaSSIM" in name else "scikit-image"
        lines.append(f"| {name} | {t_ours:.1f} | {t_ref:.1f} | {t_ours / t_ref:.2f} | {what} |")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
