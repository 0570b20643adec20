"""``medenhance`` command line: the same core functions as the napari widgets, headless.

    medenhance metrics INPUT.tif OUTPUT.tif [--reference REF.tif] [--level 3] [--csv out.csv]
    medenhance demo [--screenshot out/demo.png]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def _read(path: str):
    import tifffile

    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"medenhance: no such file: {path}")
    try:
        return tifffile.memmap(p) if p.suffix.lower() in (".tif", ".tiff") else _read_other(p)
    except ValueError:  # compressed TIFFs cannot be memory-mapped
        return tifffile.imread(p)


def _read_other(p: Path):
    from skimage.io import imread

    return imread(p)


def _metrics(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_medenhance.metrics import iter_stack_metrics

    inp, out = _read(args.input), _read(args.output)
    ref = _read(args.reference) if args.reference else None
    rgb = {"auto": None, "yes": True, "no": False}[args.rgb]
    rows = []
    try:
        with tqdm(desc="metrics", unit="slice") as bar:
            for index, done, total, values in iter_stack_metrics(
                inp, out, ref, level=args.level, rgb=rgb, data_range=args.data_range
            ):
                bar.total = total
                bar.update(1)
                rows.append({"slice": "/".join(map(str, index)) if index else "0", **values})
    except ValueError as err:
        print(f"medenhance metrics: {err}", file=sys.stderr)
        return 2
    keys = [k for k in rows[0] if k != "slice"]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    for k in keys:
        print(f"{k:>9}: {mean[k]:.6f}" + (f"  (mean of {len(rows)} slices)" if len(rows) > 1 else ""))
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["slice", *keys])
            w.writeheader()
            w.writerows(rows)
        print(f"per-slice values written to {args.csv}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medenhance", description="Medical image restoration and quality metrics.")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("metrics", help="LaSSIM/SSIM of OUTPUT vs INPUT, and PSNR/SSIM/ΔE vs a reference",
                       description="Scores every 2-D plane of two same-shaped images (TIFF or PNG/JPEG).")
    m.add_argument("input", help="image before restoration")
    m.add_argument("output", help="restored image, same shape as INPUT")
    m.add_argument("--reference", help="clean reference image (adds PSNR, SSIM and CIEDE2000 ΔE)")
    m.add_argument("--level", type=int, default=3, help="LaSSIM Laplacian-pyramid level (default 3)")
    m.add_argument("--data-range", type=float, default=None,
                   help="intensity range for PSNR/SSIM/ΔE (default: dtype range, 1 for floats in [0,1])")
    m.add_argument("--rgb", choices=["auto", "yes", "no"], default="auto",
                   help="treat a last axis of length 3/4 as colour (default auto)")
    m.add_argument("--csv", help="write per-slice values to this CSV file")
    m.set_defaults(func=_metrics)

    d = sub.add_parser("demo", help="open napari with a sample stack and the widgets docked")
    d.add_argument("--screenshot", default=None, help="save a PNG of the window here and exit")
    d.set_defaults(func=lambda a: __import__("napari_medenhance._demo", fromlist=["main"]).main(
        [] if a.screenshot is None else ["--screenshot", a.screenshot]))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
