"""``medenhance`` command line: the same core functions as the napari widgets, headless.

    medenhance metrics INPUT.tif OUTPUT.tif [--reference REF.tif] [--level 3] [--csv out.csv]
    medenhance denoise IN.tif OUT.tif [--model dran|PATH] [--device auto] [--tile N] [--rgb auto]
    medenhance models [--task denoise] [--add FILE.safetensors --name NAME [--overwrite]]
    medenhance demo [--screenshot out/demo.png]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
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


# ImageJ hyperstack metadata worth carrying over: physical spacing, units, timing, display range.
_IMAGEJ_KEYS = ("spacing", "unit", "finterval", "fps", "min", "max")


def _read_tiff(path: Path):
    """(pixels, imwrite keywords that restore the resolution / ImageJ spacing metadata)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        page = tif.pages.first
        kw: dict = {}
        tags = page.tags
        if "XResolution" in tags and "YResolution" in tags:
            # The raw rationals, so the pixel size is written back bit for bit.
            kw["resolution"] = (tags["XResolution"].value, tags["YResolution"].value)
            if "ResolutionUnit" in tags:
                kw["resolutionunit"] = tags["ResolutionUnit"].value
        if tif.is_imagej:
            ij = tif.imagej_metadata or {}
            kw["imagej"] = True
            kw["metadata"] = {"axes": series.axes, **{k: ij[k] for k in _IMAGEJ_KEYS if k in ij}}
        photometric = page.photometric
    try:
        data = tifffile.memmap(path)  # big stacks are read plane by plane, not all at once
    except ValueError:  # compressed or non-contiguous data cannot be memory-mapped
        data = tifffile.imread(path)
    return data, kw, photometric


def _write_tiff(path: Path, data, kw: dict, rgb: bool) -> None:
    """Write ``data`` with ``kw`` to a temporary file beside ``path``, then rename it over."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, data, photometric="rgb" if rgb else "minisblack", **kw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _denoise(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_medenhance.api import iter_denoise
    from napari_medenhance.core.engine import resolve_device
    from napari_medenhance.core.jobs import drive
    from napari_medenhance.core.zoo import load_model

    def fail(msg: object) -> int:
        print(f"medenhance denoise: {msg}", file=sys.stderr)
        return 2

    src, dst = Path(args.input), Path(args.output)
    if not src.is_file():
        return fail(f"no such file: {src}")
    rgb = {"auto": None, "yes": True, "no": False}[args.rgb]
    tile = args.tile or None  # 0 = auto
    try:
        device = resolve_device(args.device)
        load_model(args.model, device=device, task="denoise")  # fail fast, before reading pixels
        if src.suffix.lower() in (".tif", ".tiff"):
            data, kw, photometric = _read_tiff(src)
        else:
            data, kw, photometric = _read_other(src), {}, None
    except (ValueError, OSError) as err:  # WeightsError is a ValueError
        return fail(err)
    bar = None  # opened at the first tile, so input errors print one clean line

    def show(event) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(desc="denoise", unit="tile", total=event.total)
        bar.set_postfix_str(event.stage, refresh=False)
        bar.update(event.done - bar.n)

    try:
        result = drive(iter_denoise(data, args.model, rgb=rgb, device=device, tile=tile), show)
    except (ValueError, RuntimeError) as err:  # NaN input, device, out of memory
        if bar is not None:
            bar.close()  # before the message, so it stays on a line of its own
        return fail(err)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print("medenhance denoise: cancelled; nothing written", file=sys.stderr)
        return 130
    if bar is not None:
        bar.close()
    if photometric is not None:  # keep the input's own colour interpretation
        is_rgb = int(photometric) == 2  # PHOTOMETRIC.RGB
    else:
        is_rgb = bool(rgb if rgb is not None else result.ndim >= 3 and result.shape[-1] in (3, 4))
    try:
        _write_tiff(dst, result, kw, is_rgb)
    except (ValueError, OSError) as err:
        return fail(f"could not write {dst}: {err}")
    print(f"wrote {dst} ({result.dtype}, shape {result.shape})")
    return 0


def _models(args: argparse.Namespace) -> int:
    from napari_medenhance.core import zoo

    try:
        if args.add:
            info = zoo.save_user_model(args.add, args.name or Path(args.add).stem,
                                       overwrite=args.overwrite)
            print(f"added {info.task} model {info.name!r} as {info.path}")
        models = zoo.list_models(args.task)
    except ValueError as err:
        print(f"medenhance models: {err}", file=sys.stderr)
        return 2
    if not models:
        what = f"{args.task} models" if args.task else "models"
        print(f"no {what} installed; user models folder: {zoo.user_models_dir()}\n"
              "add one with: medenhance models --add FILE.safetensors --name NAME")
        return 0
    rows = [("name", "task", "source", "path")] + [(m.name, m.task, m.source, str(m.path)) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
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

    n = sub.add_parser("denoise", help="denoise every 2-D plane of a TIFF with a DRAN model",
                       description="Writes OUT with the input's dtype, shape and TIFF resolution / "
                                   "ImageJ spacing metadata. Exit status 2 on bad input or model.")
    n.add_argument("input", help="noisy image (TIFF; PNG/JPEG also read)")
    n.add_argument("output", help="TIFF file to write")
    n.add_argument("--model", default="dran",
                   help="registered model name (see `medenhance models`) or a .safetensors path")
    n.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda[:N] or mps")
    n.add_argument("--tile", type=int, default=0,
                   help="tile edge in pixels; 0 = auto (whole planes up to 1024², else 512)")
    n.add_argument("--rgb", choices=["auto", "yes", "no"], default="auto",
                   help="treat a last axis of length 3/4 as colour (default auto)")
    n.set_defaults(func=_denoise)

    ls = sub.add_parser("models", help="list the installed models, or add your own",
                        description="Lists shipped and user models (name, task, source, path).")
    ls.add_argument("--task", choices=["denoise", "enhance", "sr"], help="only models for this task")
    ls.add_argument("--add", metavar="FILE", help="copy this .safetensors file into the user models folder")
    ls.add_argument("--name", help="name for --add (default: the file name without extension)")
    ls.add_argument("--overwrite", action="store_true", help="with --add, replace a user model of that name")
    ls.set_defaults(func=_models)

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
