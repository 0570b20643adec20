"""``medenhance sr``: the whole image or each ``--roi`` into its own file, placed in space (the
output pixels tile the input pixels they come from); a folder goes through the batch of
``denoise`` / ``enhance``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_medenhance.core.tasks import TASKS

from .common import (
    add_folder_options,
    add_model_options,
    drive_with_bar,
    fail,
    io_reads,
    one_dicom_series,
    prepare_output_folder,
    read_other,
)
from .restore import restore_folder


def parse_roi(text: str) -> tuple[int, int, int, int]:
    """``--roi Y0,Y1,X0,X1`` (data pixels, end-exclusive)."""
    parts = [t.strip() for t in text.split(",")]
    try:
        vals = tuple(int(t) for t in parts)
    except ValueError:
        vals = ()
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not Y0,Y1,X0,X1: four integers separated by commas, the data pixels "
            "[Y0, Y1) × [X0, X1), e.g. --roi 100,164,200,264")
    return vals  # type: ignore[return-value]


def parse_planes(text: str) -> slice | None:
    """``--planes all|Z|Z0:Z1`` → None (all) or a slice of Z (end-exclusive; Z is ``Z:Z+1``)."""
    t = text.strip().lower()
    if t == "all":
        return None
    try:
        if ":" in t:
            a, b = t.split(":")
            z0, z1 = int(a) if a.strip() else 0, int(b) if b.strip() else None
        else:
            z0 = int(t)
            z1 = z0 + 1
    except ValueError:
        z0 = -1
    if z0 < 0 or (z1 is not None and z1 < 0):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not 'all', a plane Z or a range Z0:Z1 (end-exclusive, from 0)")
    return slice(z0, z1)


def roi_path(dst: Path, k: int, n: int) -> Path:
    """OUTPUT for one ROI; ``<stem>_roi<k><suffix>`` (k from 1) when there are several."""
    if n == 1:
        return dst
    from napari_medenhance.core.io.volume import stem

    base = stem(dst)
    return dst.with_name(f"{base}_roi{k}{dst.name[len(base):]}")


def run(args: argparse.Namespace) -> int:
    """``medenhance sr``: the whole image, or each --roi into its own file, placed in space;
    a folder: every matching file whole, through the same batch as denoise / enhance."""
    import numpy as np

    from napari_medenhance import api
    from napari_medenhance.core import engine, intensity, lazy
    from napari_medenhance.core.io import Volume, read_volume, write_volume, writable_suffixes
    from napari_medenhance.core.io.volume import suffix_of
    from napari_medenhance.core.roi import check_roi

    task = "sr"
    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        return fail(task, f"no such file: {src}")
    if src.is_dir() and src.suffix.lower() != ".zarr" and not one_dicom_series(src, args):
        if args.roi or args.planes is not None:
            return fail(task, "--roi and --planes apply when INPUT is a file; in folder mode "
                               "every file is super-resolved whole")
        return restore_folder(args)
    if args.scheduler or args.workers or args.pattern:
        return fail(task, "--pattern, --scheduler and --workers apply when INPUT is a folder")
    if suffix_of(dst) not in writable_suffixes():
        return fail(task, f"cannot write {dst.name!r}: OUTPUT must end in "
                           f"{', '.join(writable_suffixes())}")
    rgb = {"auto": None, "yes": True, "no": False}[args.rgb]
    try:
        device = engine.resolve_device(args.device)
        if io_reads(src):
            vol = read_volume(src, lazy=True)  # TIFF memory-mapped, others lazily
            rgb = vol.rgb if rgb is None else rgb
        else:  # PNG, JPEG...: small images, read whole; no geometry (pixel units)
            vol = Volume(data=read_other(src), spacing=(), axis_labels=())
        data = vol.data
        is_rgb = intensity.resolve_rgb(tuple(data.shape), rgb)[0]
    except (ValueError, OSError) as err:
        return fail(task, err)
    n = data.ndim - int(is_rgb)
    if is_rgb and suffix_of(dst) in (".nii", ".nii.gz"):
        return fail(task, "NIfTI cannot hold RGB images; write OUTPUT as .tif or .zarr")
    if len(vol.spacing) != n:  # no geometry, or --rgb overrode the reader: pixel units
        vol = Volume(data=data, spacing=(1.0,) * n, axis_labels=(), units=vol.units)
    plane_shape = tuple(data.shape[n - 2 : n])
    planes, z0, drop_z = None, 0, False
    if args.planes is not None:
        if n < 3:
            return fail(task, f"--planes applies to 3-D inputs; {src.name} is a 2-D image "
                               f"shaped {tuple(data.shape)}")
        nz = int(data.shape[n - 3])
        z0, z1 = args.planes.start, nz if args.planes.stop is None else args.planes.stop
        if not z0 < z1 <= nz:
            what = f"{z0}" if z1 == z0 + 1 else f"{z0}:{z1}"
            return fail(task, f"--planes {what} is outside the input's planes, Z = 0..{nz - 1} "
                               f"(ranges are end-exclusive)" if z1 > z0 else
                               f"--planes {what} is an empty range (Z1 must be above Z0)")
        # One plane of a 3-D input: a 2-D image (a TIFF reader drops a Z axis of length 1).
        drop_z = n == 3 and z1 == z0 + 1
        planes = (slice(None),) * (n - 3) + (z0 if drop_z else slice(z0, z1),)
    boxes = args.roi or []
    names = [f"ROI {k}" if len(boxes) > 1 else "ROI" for k in range(1, len(boxes) + 1)]
    try:
        rois = [check_roi(b, plane_shape, name) for b, name in zip(boxes, names)]
    except ValueError as err:
        return fail(task, err)
    for box, r, name in zip(boxes, rois, names):
        if r.as_tuple() != tuple(box):
            print(f"medenhance sr: {name} {','.join(map(str, box))} reaches past the image "
                  f"({plane_shape[0]}×{plane_shape[1]} pixels); clipped to "
                  f"{','.join(map(str, r.as_tuple()))}", file=sys.stderr)
    job = api.iter_super_resolve(
        data, args.scale, args.model, [r.as_tuple() for r in rois] if rois else None,
        rgb=is_rgb, device=device, tile=args.tile or None, planes=planes,
        ensemble=args.ensemble)
    code, result = drive_with_bar(task, job)
    if code:
        return code
    outputs = result if rois else [result]
    if not rois:
        rois = [check_roi((0, plane_shape[0], 0, plane_shape[1]), plane_shape)]
    try:
        prepare_output_folder(task, dst.parent)
        for k, (r, out) in enumerate(zip(rois, outputs), start=1):
            path = roi_path(dst, k, len(rois))
            like = lazy.upscaled_like(vol, r, args.scale, z0, drop_z)
            write_volume(path, out, like, rgb=is_rgb)  # like's geometry, not re-derived
            where = f" from ROI {','.join(map(str, r.as_tuple()))}" if args.roi else ""
            print(f"wrote {path} ({np.dtype(out.dtype)}, shape {tuple(out.shape)}){where}")
    except (ValueError, OSError) as err:  # NIfTI cannot hold RGB, disk full...
        return fail(task, err)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    n = sub.add_parser(
        "sr", help=TASKS["sr"].help,
        description="Multiplies Y and X by --scale; the output keeps the input's dtype and "
                    "geometry: Y/X spacing divided by the factor, the origin (NIfTI: the "
                    "affine's voxel 0) moved so the output pixels cover exactly the input "
                    "pixels they come from. With --roi only those pixels are done, each ROI "
                    "into its own file (OUTPUT_roi1, OUTPUT_roi2... when there are several). "
                    "A folder: every file matching --pattern, whole, into the OUTPUT folder "
                    "(same names), skipping those already done, in-process or on a dask "
                    "cluster (--scheduler). Exit status: 0 done, 1 some files of a folder "
                    "failed (listed at the end), 2 bad input, ROI or model, 130 interrupted.")
    n.add_argument("input", help="image to super-resolve (TIFF, NIfTI, zarr, a DICOM series "
                                 "folder; PNG/JPEG also read) or a folder of images")
    n.add_argument("output", help="file to write (.tif, .nii.gz, .zarr...), or a folder for a "
                                  "folder")
    n.add_argument("--scale", type=int, choices=[2, 4], required=True,
                   help="upscaling factor of Y and X (the model must upscale by it)")
    add_model_options(n, "sr", TASKS["sr"].default_model.format(scale="{SCALE}"))
    n.add_argument("--roi", type=parse_roi, nargs="+", action="extend", metavar="Y0,Y1,X0,X1",
                   help="region in data pixels, end-exclusive (Y0 <= y < Y1, X0 <= x < X1), "
                        "applied to every selected plane; several ROIs (--roi A B or --roi A "
                        "--roi B) give one file each; default: the whole image")
    n.add_argument("--planes", type=parse_planes, default=None, metavar="all|Z|Z0:Z1",
                   help="3-D inputs: the planes along Z to process, end-exclusive; one plane "
                        "of a 3-D image gives a 2-D image (NIfTI/DICOM→NIfTI: placed at that "
                        "plane by the affine); default all")
    add_folder_options(n)
    n.set_defaults(func=run, task="sr")


