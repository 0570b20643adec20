"""``medenhance denoise`` and ``medenhance enhance``: one file block by block, or a folder of
files (in-process or on a dask cluster); the task table names each task's model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_medenhance.core.tasks import TASKS

from .common import (
    EXIT_FAILED_FILES,
    EXIT_INTERRUPTED,
    add_folder_options,
    add_model_options,
    drive_with_bar,
    fail,
    io_reads,
    one_dicom_series,
    prepare_output_folder,
    read_other,
)


def run(args: argparse.Namespace) -> int:
    """``medenhance denoise|enhance``: ``args.task`` picks the model family (core.tasks.TASKS)."""
    src = Path(args.input)
    if src.is_dir() and src.suffix.lower() != ".zarr" and not one_dicom_series(src, args):
        return restore_folder(args)
    return restore_file(args)


def restore_file(args: argparse.Namespace) -> int:
    """One file, read and written block by block (a stack larger than memory works too)."""
    from napari_medenhance.core import batch, lazy
    from napari_medenhance.core.engine import resolve_device

    task = args.task
    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        return fail(task, f"no such file: {src}")
    if args.scheduler or args.workers or args.pattern:
        return fail(task, "--pattern, --scheduler and --workers apply when INPUT is a folder")
    rgb = {"auto": None, "yes": True, "no": False}[args.rgb]
    tile = args.tile or None  # 0 = auto
    try:
        device = resolve_device(args.device)
        # Fail fast on the model, before reading pixels.
        loaded = batch.load_task_model(task, args.model, device)
        if io_reads(src):
            from napari_medenhance.core.io import read_volume

            vol = read_volume(src, lazy=True)  # TIFF memory-mapped, others lazily
            data = vol.data
            job = batch.iter_process_file(vol, dst, task=task, model=args.model,
                                          device=device, tile=tile, rgb=rgb,
                                          ensemble=args.ensemble)
        else:  # PNG, JPEG...: small images, read whole
            data = read_other(src)
            job = lazy.iter_process_volume(data, loaded.module, dst, rgb=rgb, device=device,
                                           tile=tile, ensemble=args.ensemble,
                                           **loaded.engine_kwargs)
        prepare_output_folder(task, dst.parent)
    except (ValueError, OSError) as err:  # WeightsError is a ValueError
        return fail(task, err)
    code, _ = drive_with_bar(task, job)
    if code:
        return code
    print(f"wrote {dst} ({data.dtype}, shape {tuple(data.shape)})")
    return 0


def restore_folder(args: argparse.Namespace) -> int:
    """Every matching file of a folder; exit 1 when any file failed, 0 otherwise."""
    from tqdm import tqdm

    from napari_medenhance.core.batch import DEFAULT_PATTERNS, iter_batch
    from napari_medenhance.core.engine import Cancelled
    from napari_medenhance.core.jobs import drive

    task = args.task
    src, dst = Path(args.input), Path(args.output)
    if dst.exists() and not dst.is_dir():
        return fail(task, f"INPUT is a folder, so OUTPUT must be a folder too; {dst} is a file")
    if args.workers is not None and args.scheduler != "local":
        return fail(task, "--workers applies to --scheduler local (a remote cluster has its own)")
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
        ensemble=args.ensemble,
    )
    try:
        summary = drive(job, show)
    except ValueError as err:  # folder, model, device or scheduler problems: nothing was run
        close_bar()
        return fail(task, err)
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


def add_parser(sub: argparse._SubParsersAction, task: str, *, what: str,
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
    add_model_options(n, task, TASKS[task].default_model_name())
    add_folder_options(n)
    n.set_defaults(func=run, task=task)


