"""``medenhance`` command line: the same core functions as the napari widgets, headless.

    medenhance metrics INPUT.tif OUTPUT.tif [--reference REF.tif] [--level 3] [--csv out.csv]
    medenhance denoise IN.tif OUT.tif [--model dran|PATH] [--device auto] [--tile N] [--rgb auto]
    medenhance denoise IN_DIR OUT_DIR [--pattern "*.tif,*.nii.gz"] [--scheduler local|ADDRESS]
                       [--workers N] [--memory-limit 4GB] [--overwrite]
    medenhance enhance IN OUT ...      the same options, a DPE model (--model dpe|PATH)
    medenhance sr IN OUT --scale {2,4} [--model msgan-x4|PATH] [--roi Y0,Y1,X0,X1 ...]
                  [--planes all|Z|Z0:Z1] [--device auto] [--tile N]
    medenhance sr IN_DIR OUT_DIR --scale {2,4} ...   every file whole; the folder options above
    medenhance models [--task denoise] [--add FILE.safetensors|PACKAGE.zip --name NAME [--overwrite]]
    medenhance export-bioimageio MODEL OUT.zip [--author "Name (Affiliation)"] [--license ID]
    medenhance demo [--screenshot out/demo.png] [--model dran]
    medenhance --version

Every command reads inputs through :func:`napari_medenhance.core.io.read_volume` (PNG/JPEG, which
it does not read, through scikit-image), reports an error as one line on stderr, ``medenhance
COMMAND: message``, and exits with ``EXIT_*`` below; a missing output folder is created and said.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

# The task table: plain data, no torch (``--help`` stays fast).
from napari_medenhance.core.tasks import TASKS

# One convention for every command (documented in `medenhance --help` and the README): errors
# are one line on stderr, ``medenhance COMMAND: message``, and the exit status says what kind.
EXIT_OK = 0
EXIT_FAILED_FILES = 1  # folder mode: some files failed (listed); the others are written
EXIT_BAD_INPUT = 2  # bad input, usage, model or device: nothing written (argparse uses 2 too)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, what shells report for an interrupted command)

_EPILOG = (
    "Exit status (every command): 0 done; 1 a folder batch finished but some files failed "
    "(listed at the end); 2 bad input, usage, model or device (nothing written); 130 "
    "interrupted (Ctrl-C). Errors are one line on stderr: 'medenhance COMMAND: message'. A "
    "missing output folder is created, and a line on stderr says so."
)


class _InputError(ValueError):
    """An input file the command cannot use (printed as one line, exit status 2)."""


def _read(path: str):
    """INPUT / OUTPUT / --reference of ``medenhance metrics``: the same reader as every other
    command (TIFF memory-mapped, NIfTI / DICOM / zarr lazily), PNG and JPEG read whole."""
    p = Path(path)
    if not p.exists():
        raise _InputError(f"no such file: {path}")
    if _io_reads(p):
        from napari_medenhance.core.io import read_volume

        return read_volume(p, lazy=True).data  # its ValueError names the file and the problem
    return _read_other(p)


def _read_other(p: Path):
    """PNG, JPEG...: formats core.io does not read (no geometry); small images, read whole."""
    from skimage.io import imread

    try:
        return imread(p)
    except Exception as err:  # imageio raises ValueError, OSError or its own errors per backend
        from napari_medenhance.core.io.volume import formats_hint

        raise _InputError(f"cannot read {p.name!r} ({type(err).__name__}: {err}); "
                          f"{formats_hint()}, PNG and JPEG") from err


def _prepare_output_folder(task: str, folder: Path) -> None:
    """Create a missing output folder and say so on stderr: a typo in OUTPUT should not leave
    the results somewhere the user did not expect without a word (files and folders alike)."""
    if folder.is_dir() or str(folder) in ("", "."):
        return
    folder.mkdir(parents=True, exist_ok=True)
    print(f"medenhance {task}: created the output folder {folder}", file=sys.stderr)


def _metrics(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_medenhance.metrics import iter_stack_metrics

    try:
        inp, out = _read(args.input), _read(args.output)
        ref = _read(args.reference) if args.reference else None
    except (ValueError, OSError) as err:  # missing, unknown or corrupt file: nothing scored
        return _fail("metrics", err)
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
        return _fail("metrics", str(err).replace("level=", "--level "))
    keys = [k for k in rows[0] if k != "slice"]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    for k in keys:
        print(f"{k:>9}: {mean[k]:.6f}" + (f"  (mean of {len(rows)} slices)" if len(rows) > 1 else ""))
    if args.csv:
        _prepare_output_folder("metrics", Path(args.csv).parent)
        with open(args.csv, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["slice", *keys])
            w.writeheader()
            w.writerows(rows)
        print(f"per-slice values written to {args.csv}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    """``medenhance denoise|enhance``: ``args.task`` picks the model family (core.tasks.TASKS)."""
    src = Path(args.input)
    if src.is_dir() and src.suffix.lower() != ".zarr" and not _one_dicom_series(src, args):
        return _restore_folder(args)
    return _restore_file(args)


def _one_dicom_series(folder: Path, args: argparse.Namespace) -> bool:
    """A folder of DICOM files (and no other inputs) is one volume, not a batch."""
    from napari_medenhance.core.batch import find_inputs
    from napari_medenhance.core.io import is_dicom_folder

    return not args.pattern and is_dicom_folder(folder) and not find_inputs(folder)


def _fail(task: str, msg: object) -> int:
    """The one error convention of every command: ``medenhance TASK: message`` on stderr (one
    line, no traceback), exit status 2 (bad input, usage, model or device)."""
    print(f"medenhance {task}: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _restore_file(args: argparse.Namespace) -> int:
    """One file, read and written block by block (a stack larger than memory works too)."""
    from napari_medenhance.core import batch, lazy
    from napari_medenhance.core.engine import resolve_device

    task = args.task
    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        return _fail(task, f"no such file: {src}")
    if args.scheduler or args.workers or args.pattern:
        return _fail(task, "--pattern, --scheduler and --workers apply when INPUT is a folder")
    rgb = {"auto": None, "yes": True, "no": False}[args.rgb]
    tile = args.tile or None  # 0 = auto
    try:
        device = resolve_device(args.device)
        # Fail fast on the model, before reading pixels.
        loaded = batch.load_task_model(task, args.model, device)
        if _io_reads(src):
            from napari_medenhance.core.io import read_volume

            vol = read_volume(src, lazy=True)  # TIFF memory-mapped, others lazily
            data = vol.data
            job = batch.iter_process_file(vol, dst, task=task, model=args.model,
                                          device=device, tile=tile, rgb=rgb)
        else:  # PNG, JPEG...: small images, read whole
            data = _read_other(src)
            job = lazy.iter_process_volume(data, loaded.module, dst, rgb=rgb, device=device,
                                           tile=tile, **loaded.engine_kwargs)
        _prepare_output_folder(task, dst.parent)
    except (ValueError, OSError) as err:  # WeightsError is a ValueError
        return _fail(task, err)
    code, _ = _drive_with_bar(task, job)
    if code:
        return code
    print(f"wrote {dst} ({data.dtype}, shape {tuple(data.shape)})")
    return 0


def _drive_with_bar(task: str, job, unit: str = "tile") -> tuple[int, object]:
    """Run ``job`` (a generator of events with ``done``, ``total`` and ``stage``) under a tqdm
    bar; ``(0, its return value)``, or ``(2, None)`` after printing the error (NaN input,
    model, device, out of memory, disk) or ``(130, None)`` when interrupted."""
    from tqdm import tqdm

    from napari_medenhance.core.jobs import drive

    bar = None  # opened at the first event, so input errors print one clean line

    def show(event) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(desc=task, unit=unit, total=event.total)
        bar.set_postfix_str(event.stage, refresh=False)
        bar.update(event.done - bar.n)

    def close_bar() -> None:
        if bar is not None:
            bar.close()  # before any message, so it stays on a line of its own

    try:
        result = drive(job, show)
    except (ValueError, RuntimeError, OSError) as err:  # WeightsError is a ValueError
        close_bar()
        return _fail(task, err), None
    except KeyboardInterrupt:
        close_bar()
        print(f"medenhance {task}: cancelled; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED, None
    close_bar()
    return 0, result


def _io_reads(path: Path) -> bool:
    """Whether core.io knows the file's format (NIfTI, DICOM, zarr...)."""
    try:
        from napari_medenhance.core.io import supported_suffixes
    except ImportError:
        return False
    name = path.name.lower()
    return path.is_dir() or any(name.endswith(s.lower()) for s in supported_suffixes())


def _restore_folder(args: argparse.Namespace) -> int:
    """Every matching file of a folder; exit 1 when any file failed, 0 otherwise."""
    from tqdm import tqdm

    from napari_medenhance.core.batch import DEFAULT_PATTERNS, iter_batch
    from napari_medenhance.core.engine import Cancelled
    from napari_medenhance.core.jobs import drive

    task = args.task
    src, dst = Path(args.input), Path(args.output)
    if dst.exists() and not dst.is_dir():
        return _fail(task, f"INPUT is a folder, so OUTPUT must be a folder too; {dst} is a file")
    if args.workers is not None and args.scheduler != "local":
        return _fail(task, "--workers applies to --scheduler local (a remote cluster has its own)")
    rgb = {"auto": None, "yes": True, "no": False}[args.rgb]
    # The batch creates OUTPUT once the model and device are checked (a bad --model leaves no
    # empty folder behind); say so, as for a file's missing folder.
    missing = {"out": not dst.exists()}

    def announce() -> None:
        if missing["out"] and dst.is_dir():
            missing["out"] = False
            print(f"medenhance {task}: created the output folder {dst}", file=sys.stderr)

    bar = None

    def show(event) -> None:
        nonlocal bar
        if bar is None:
            announce()
            bar = tqdm(desc=task, unit="file", total=event.total)
        bar.set_postfix_str(f"{event.input.name}: {event.status}", refresh=False)
        if event.status == "failed":
            bar.write(f"failed: {event.input}: {event.reason}", file=sys.stderr)
        bar.update(1)

    def close_bar() -> None:
        if bar is not None:
            bar.close()

    job = iter_batch(
        src, dst, task=task, model=args.model, scale=getattr(args, "scale", None),
        pattern=args.pattern or DEFAULT_PATTERNS,
        device=args.device, tile=args.tile or None, rgb=rgb, scheduler=args.scheduler,
        n_workers=args.workers, memory_limit=args.memory_limit, overwrite=args.overwrite,
    )
    try:
        summary = drive(job, show)
    except ValueError as err:  # folder, model, device or scheduler problems: nothing was run
        close_bar()
        return _fail(task, err)
    except (KeyboardInterrupt, Cancelled):
        close_bar()
        print(f"medenhance {task}: cancelled; finished files are kept, run again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    close_bar()
    announce()
    print(summary.format())
    if summary.total == 0:
        print(f"no files in {src} match {args.pattern or ', '.join(DEFAULT_PATTERNS)}")
    return 0 if summary.ok else EXIT_FAILED_FILES


# -------------------------------------------------------------------------- super-resolution


def _parse_roi(text: str) -> tuple[int, int, int, int]:
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


def _parse_planes(text: str) -> slice | None:
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


def _roi_path(dst: Path, k: int, n: int) -> Path:
    """OUTPUT for one ROI; ``<stem>_roi<k><suffix>`` (k from 1) when there are several."""
    if n == 1:
        return dst
    from napari_medenhance.core.io.volume import stem

    base = stem(dst)
    return dst.with_name(f"{base}_roi{k}{dst.name[len(base):]}")


def _sr(args: argparse.Namespace) -> int:
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
        return _fail(task, f"no such file: {src}")
    if src.is_dir() and src.suffix.lower() != ".zarr" and not _one_dicom_series(src, args):
        if args.roi or args.planes is not None:
            return _fail(task, "--roi and --planes apply when INPUT is a file; in folder mode "
                               "every file is super-resolved whole")
        return _restore_folder(args)
    if args.scheduler or args.workers or args.pattern:
        return _fail(task, "--pattern, --scheduler and --workers apply when INPUT is a folder")
    if suffix_of(dst) not in writable_suffixes():
        return _fail(task, f"cannot write {dst.name!r}: OUTPUT must end in "
                           f"{', '.join(writable_suffixes())}")
    rgb = {"auto": None, "yes": True, "no": False}[args.rgb]
    try:
        device = engine.resolve_device(args.device)
        if _io_reads(src):
            vol = read_volume(src, lazy=True)  # TIFF memory-mapped, others lazily
            rgb = vol.rgb if rgb is None else rgb
        else:  # PNG, JPEG...: small images, read whole; no geometry (pixel units)
            vol = Volume(data=_read_other(src), spacing=(), axis_labels=())
        data = vol.data
        is_rgb = intensity.resolve_rgb(tuple(data.shape), rgb)[0]
    except (ValueError, OSError) as err:
        return _fail(task, err)
    n = data.ndim - int(is_rgb)
    if is_rgb and suffix_of(dst) in (".nii", ".nii.gz"):
        return _fail(task, "NIfTI cannot hold RGB images; write OUTPUT as .tif or .zarr")
    if len(vol.spacing) != n:  # no geometry, or --rgb overrode the reader: pixel units
        vol = Volume(data=data, spacing=(1.0,) * n, axis_labels=(), units=vol.units)
    plane_shape = tuple(data.shape[n - 2 : n])
    planes, z0, drop_z = None, 0, False
    if args.planes is not None:
        if n < 3:
            return _fail(task, f"--planes applies to 3-D inputs; {src.name} is a 2-D image "
                               f"shaped {tuple(data.shape)}")
        nz = int(data.shape[n - 3])
        z0, z1 = args.planes.start, nz if args.planes.stop is None else args.planes.stop
        if not z0 < z1 <= nz:
            what = f"{z0}" if z1 == z0 + 1 else f"{z0}:{z1}"
            return _fail(task, f"--planes {what} is outside the input's planes, Z = 0..{nz - 1} "
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
        return _fail(task, err)
    for box, r, name in zip(boxes, rois, names):
        if r.as_tuple() != tuple(box):
            print(f"medenhance sr: {name} {','.join(map(str, box))} reaches past the image "
                  f"({plane_shape[0]}×{plane_shape[1]} pixels); clipped to "
                  f"{','.join(map(str, r.as_tuple()))}", file=sys.stderr)
    job = api.iter_super_resolve(
        data, args.scale, args.model, [r.as_tuple() for r in rois] if rois else None,
        rgb=is_rgb, device=device, tile=args.tile or None, planes=planes)
    code, result = _drive_with_bar(task, job)
    if code:
        return code
    outputs = result if rois else [result]
    if not rois:
        rois = [check_roi((0, plane_shape[0], 0, plane_shape[1]), plane_shape)]
    try:
        _prepare_output_folder(task, dst.parent)
        for k, (r, out) in enumerate(zip(rois, outputs), start=1):
            path = _roi_path(dst, k, len(rois))
            like = lazy.upscaled_like(vol, r, args.scale, z0, drop_z)
            write_volume(path, out, like, rgb=is_rgb)  # like's geometry, not re-derived
            where = f" from ROI {','.join(map(str, r.as_tuple()))}" if args.roi else ""
            print(f"wrote {path} ({np.dtype(out.dtype)}, shape {tuple(out.shape)}){where}")
    except (ValueError, OSError) as err:  # NIfTI cannot hold RGB, disk full...
        return _fail(task, err)
    return 0


def _add_sr_parser(sub: argparse._SubParsersAction) -> None:
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
    _add_model_options(n, "sr", TASKS["sr"].default_model.format(scale="{SCALE}"))
    n.add_argument("--roi", type=_parse_roi, nargs="+", action="extend", metavar="Y0,Y1,X0,X1",
                   help="region in data pixels, end-exclusive (Y0 <= y < Y1, X0 <= x < X1), "
                        "applied to every selected plane; several ROIs (--roi A B or --roi A "
                        "--roi B) give one file each; default: the whole image")
    n.add_argument("--planes", type=_parse_planes, default=None, metavar="all|Z|Z0:Z1",
                   help="3-D inputs: the planes along Z to process, end-exclusive; one plane "
                        "of a 3-D image gives a 2-D image (NIfTI/DICOM→NIfTI: placed at that "
                        "plane by the affine); default all")
    _add_folder_options(n)
    n.set_defaults(func=_sr, task="sr")


def _models(args: argparse.Namespace) -> int:
    from napari_medenhance.core import zoo

    try:
        if args.add and Path(args.add).suffix.lower() == ".zip":  # a BioImage.IO package
            from napari_medenhance.core.bioimageio import import_package

            info = import_package(args.add, args.name, overwrite=args.overwrite)
            print(f"added {info.task} model {info.name!r} from the BioImage.IO package "
                  f"{args.add} as {info.path}")
        elif args.add:
            info = zoo.save_user_model(args.add, args.name or Path(args.add).stem,
                                       overwrite=args.overwrite)
            print(f"added {info.task} model {info.name!r} as {info.path}")
        models = zoo.list_models(args.task)
    except (ValueError, OSError) as err:  # bad file or name, user folder not writable
        return _fail("models", err)
    if not models:
        what = f"{args.task} models" if args.task else "models"
        task = args.task or "denoise"
        print(f"no {what} installed; user models folder: {zoo.user_models_dir()}\n"
              "add one with: medenhance models --add FILE.safetensors --name NAME\n"
              f"or train one with: medenhance train --task {task} --data YOUR_IMAGES "
              "--from scratch --name NAME")
        return 0
    rows = [("name", "task", "source", "path")] + [(m.name, m.task, m.source, str(m.path)) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return 0


def _export_bioimageio(args: argparse.Namespace) -> int:
    """``medenhance export-bioimageio``: a model as a BioImage.IO package (zip)."""
    from napari_medenhance.core.bioimageio import export_package

    folder = Path(args.output).parent
    missing = not folder.exists()
    try:
        result = export_package(args.model, args.output, authors=args.author,
                                license=args.license, name=args.name)
    except (ValueError, OSError) as err:  # unknown model, not exportable, disk full...
        return _fail("export-bioimageio", err)
    if missing and folder.is_dir():  # the export made it, once the model was checked
        print(f"medenhance export-bioimageio: created the output folder {folder}", file=sys.stderr)
    print(f"wrote {result.path} ({', '.join(result.files)}); on its test image the package's "
          f"network differs from the plugin's engine by at most {result.engine_max_abs_diff:.3g} "
          f"(image values {result.input_range[0]:.4g} to {result.input_range[1]:.4g})")
    return 0


def _add_model_options(n: argparse.ArgumentParser, task: str, default_model: str) -> None:
    """--model, --device, --tile and --rgb: what every model-running subcommand takes."""
    n.add_argument("--model", default=None,
                   help=f"registered {task} model name (default {default_model}; see "
                        "`medenhance models`) or a .safetensors path")
    n.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda[:N] or mps")
    n.add_argument("--tile", type=int, default=0,
                   help="tile edge in pixels; 0 = auto (whole planes up to 1024², else 512)")
    n.add_argument("--rgb", choices=["auto", "yes", "no"], default="auto",
                   help="treat a last axis of length 3/4 as colour (default auto)")


def _add_restore_parser(sub: argparse._SubParsersAction, task: str, *, what: str,
                        input_help: str) -> None:
    """``medenhance TASK IN OUT``: the options every restoration task shares (file and folder
    modes). ``--model`` defaults to None, which the batch resolves to the task's model; the
    help names it and says what the task does from the task table
    (:data:`napari_medenhance.core.tasks.TASKS`, which imports no torch)."""
    n = sub.add_parser(
        task, help=TASKS[task].help,
        description=f"A file: writes OUTPUT with the input's dtype, shape and spacing (TIFF "
                    "resolution / ImageJ metadata, NIfTI affine), block by block, so stacks "
                    f"larger than memory work. A folder: {what} every file matching "
                    "--pattern into the OUTPUT folder (same names), skipping those already done, "
                    "in-process or on a dask cluster (--scheduler). Exit status: 0 done, "
                    "1 some files of a folder failed (listed at the end), 2 bad input or model, "
                    "130 interrupted.")
    n.add_argument("input", help=f"{input_help} (TIFF, NIfTI, zarr, a DICOM series folder; "
                                 "PNG/JPEG also read) or a folder of images")
    n.add_argument("output", help="file to write (.tif, .zarr, .nii.gz...), or a folder for a folder")
    _add_model_options(n, task, TASKS[task].default_model_name())
    _add_folder_options(n)
    n.set_defaults(func=_restore, task=task)


def _add_folder_options(n: argparse.ArgumentParser) -> None:
    """--pattern, --scheduler, --workers, --memory-limit and --overwrite: folder mode."""
    n.add_argument("--pattern", default=None,
                   help="folder mode: comma-separated glob patterns of the inputs "
                        "(default '*.tif,*.tiff,*.nii,*.nii.gz'; '**/*.tif' recurses)")
    n.add_argument("--scheduler", default=None,
                   help="folder mode: 'local' starts a dask LocalCluster, an address "
                        "(tcp://host:8786) uses a running one; default: in this process")
    n.add_argument("--workers", type=int, default=None,
                   help="folder mode with --scheduler local: worker processes "
                        "(default: CPU count, at most one per file)")
    n.add_argument("--memory-limit", default="auto",
                   help="folder mode with --scheduler local: memory per worker, e.g. 4GB "
                        "(default auto = system memory / workers)")
    n.add_argument("--overwrite", action="store_true",
                   help="folder mode: redo files whose output exists (default: skip them)")


def build_parser() -> argparse.ArgumentParser:
    from napari_medenhance import __version__

    parser = argparse.ArgumentParser(prog="medenhance", description="Medical image restoration and quality metrics.",
                                     epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("metrics", help="LaSSIM/SSIM of OUTPUT vs INPUT, and PSNR/SSIM/ΔE vs a reference",
                       description="Scores every 2-D plane of two same-shaped images, read as "
                                   "every command reads them (TIFF, NIfTI, zarr, a DICOM series "
                                   "folder; PNG/JPEG too).", epilog=_EPILOG)
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

    _add_restore_parser(sub, "denoise", what="denoises", input_help="noisy image")
    _add_restore_parser(
        sub, "enhance", what="enhances (perceptual enhancement, DPE)", input_help="image to enhance")
    _add_sr_parser(sub)

    from . import _cli_train  # argparse only at import: torch loads when a run starts

    _cli_train.add_parser(sub).epilog = _EPILOG

    ls = sub.add_parser("models", help="list the installed models, or add your own",
                        description="Lists shipped and user models (name, task, source, path).",
                        epilog=_EPILOG)
    ls.add_argument("--task", choices=list(TASKS), help="only models for this task")
    ls.add_argument("--add", metavar="FILE",
                    help="copy this .safetensors file, or the model of a BioImage.IO package "
                         "(.zip) exported by napari-medenhance, into the user models folder")
    ls.add_argument("--name", help="name for --add (default: the file name without extension, "
                                   "or the package's model name)")
    ls.add_argument("--overwrite", action="store_true", help="with --add, replace a user model of that name")
    ls.set_defaults(func=_models)

    bx = sub.add_parser(
        "export-bioimageio", help="write a model as a BioImage.IO package (.zip)",
        description="Writes MODEL as a BioImage.IO model package (format 0.5) for Fiji/deepImageJ, "
                    "ilastik, bioimageio.core and `medenhance models --add`: TorchScript and "
                    "PyTorch state-dict weights with their architecture source, test tensors "
                    "from the plugin's sample data, a cover image, citations, licence and a "
                    "README with the model card's validation numbers. The network includes the "
                    "plugin's intensity mapping, so it gives the engine's results in the image's "
                    "units. Exit status: 0 written, 2 bad model or output.")
    bx.add_argument("model", help="registered model name (see `medenhance models`) or a "
                                  ".safetensors path")
    bx.add_argument("output", help="the .zip to write")
    bx.add_argument("--author", action="append", default=None, metavar="'NAME (AFFILIATION)'",
                    help="an author (repeat for several); default: the model card's, else "
                         "'napari-medenhance developers'")
    bx.add_argument("--license", default=None, help="SPDX licence id (default: the card's, else "
                                                    "BSD-3-Clause)")
    bx.add_argument("--name", default=None, help="the package's name (default from the model)")
    bx.set_defaults(func=_export_bioimageio)

    d = sub.add_parser("demo", help="open napari on a noisy sample stack beside its denoised result",
                       epilog=_EPILOG)
    d.add_argument("--screenshot", default=None, help="save a PNG of the window here and exit")
    d.add_argument("--model", default="dran", help="denoising model (name or .safetensors path)")
    d.set_defaults(func=lambda a: __import__("napari_medenhance._demo", fromlist=["main"]).main(
        ([] if a.screenshot is None else ["--screenshot", a.screenshot]) + ["--model", a.model]))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``medenhance`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status
    (``EXIT_*``: 0 done, 1 some files of a folder failed, 2 bad input, 130 interrupted)."""
    import logging

    # tifffile logs its own line about a corrupt file before raising; the command's one-line
    # error already names the file and the problem.
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # commands that do not handle it themselves (metrics, models...)
        print(f"medenhance {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
