"""``medenhance metrics``: LaSSIM / SSIM of OUTPUT vs INPUT per slice, and PSNR / SSIM / ΔE
against a clean reference, with a per-slice CSV.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from .common import fail, prepare_output_folder, read_input


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_medenhance.metrics import iter_stack_metrics

    try:
        inp, out = read_input(args.input), read_input(args.output)
        ref = read_input(args.reference) if args.reference else None
    except (ValueError, OSError) as err:  # missing, unknown or corrupt file: nothing scored
        return fail("metrics", err)
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
    except (ValueError, OSError) as err:  # shapes differ, NaN, a lazy read hits bad bytes
        # The core names its keyword (level=1); here the option is --level.
        return fail("metrics", str(err).replace("level=", "--level "))
    keys = [k for k in rows[0] if k != "slice"]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    for k in keys:
        print(f"{k:>9}: {mean[k]:.6f}" + (f"  (mean of {len(rows)} slices)" if len(rows) > 1 else ""))
    if args.csv:
        prepare_output_folder("metrics", Path(args.csv).parent)
        with open(args.csv, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["slice", *keys])
            w.writeheader()
            w.writerows(rows)
        print(f"per-slice values written to {args.csv}")
    return 0
