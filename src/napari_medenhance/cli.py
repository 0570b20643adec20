"""``medenhance`` command line: the same core functions as the napari widgets, headless.

    medenhance metrics INPUT.tif OUTPUT.tif [--reference REF.tif] [--level 3] [--csv out.csv]
    medenhance denoise IN.tif OUT.tif [--model dran|PATH] [--device auto] [--tile N] [--rgb auto]
    medenhance denoise IN_DIR OUT_DIR [--pattern "*.tif,*.nii.gz"] [--scheduler local|ADDRESS]
                       [--workers N] [--memory-limit 4GB] [--overwrite]
    medenhance enhance IN OUT ...      the same options, a DPE model (--model dpe|PATH)
    medenhance models [--task denoise] [--add FILE.safetensors --name NAME [--overwrite]]
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


def _restore(args: argparse.Namespace) -> int:
    """``medenhance denoise|enhance``: ``args.task`` picks the model family (core.batch.TASKS)."""
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
    print(f"medenhance {task}: {msg}", file=sys.stderr)
    return 2


def _restore_file(args: argparse.Namespace) -> int:
    """One file, read and written block by block (a stack larger than memory works too)."""
    from tqdm import tqdm

    from napari_medenhance.core import batch, lazy
    from napari_medenhance.core.engine import resolve_device
    from napari_medenhance.core.jobs import drive

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
        dst.parent.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as err:  # WeightsError is a ValueError
        return _fail(task, err)
    bar = None  # opened at the first event, so input errors print one clean line

    def show(event) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(desc=task, unit="tile", total=event.total)
        bar.set_postfix_str(event.stage, refresh=False)
        bar.update(event.done - bar.n)

    def close_bar() -> None:
        if bar is not None:
            bar.close()  # before any message, so it stays on a line of its own

    try:
        drive(job, show)
    except (ValueError, RuntimeError, OSError) as err:  # NaN input, device, out of memory, disk
        close_bar()
        return _fail(task, err)
    except KeyboardInterrupt:
        close_bar()
        print(f"medenhance {task}: cancelled; nothing written", file=sys.stderr)
        return 130
    close_bar()
    print(f"wrote {dst} ({data.dtype}, shape {tuple(data.shape)})")
    return 0


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
    bar = None

    def show(event) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(desc=task, unit="file", total=event.total)
        bar.set_postfix_str(f"{event.input.name}: {event.status}", refresh=False)
        if event.status == "failed":
            bar.write(f"failed: {event.input}: {event.reason}", file=sys.stderr)
        bar.update(1)

    def close_bar() -> None:
        if bar is not None:
            bar.close()

    job = iter_batch(
        src, dst, task=task, model=args.model, pattern=args.pattern or DEFAULT_PATTERNS,
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
        return 130
    close_bar()
    print(summary.format())
    if summary.total == 0:
        print(f"no files in {src} match {args.pattern or ', '.join(DEFAULT_PATTERNS)}")
    return 0 if summary.ok else 1


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


def _add_restore_parser(sub: argparse._SubParsersAction, task: str, *, what: str,
                        input_help: str, help: str, default_model: str) -> None:
    """``medenhance TASK IN OUT``: the options every restoration task shares (file and folder
    modes). ``--model`` defaults to None, which the batch resolves to the task's model
    (:data:`napari_medenhance.core.batch.TASKS`, not imported here: it pulls in torch, too
    slow for ``--help``); ``default_model`` only names it in the help."""
    n = sub.add_parser(
        task, help=help,
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
    n.add_argument("--model", default=None,
                   help=f"registered {task} model name (default {default_model}; see "
                        "`medenhance models`) or a .safetensors path")
    n.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda[:N] or mps")
    n.add_argument("--tile", type=int, default=0,
                   help="tile edge in pixels; 0 = auto (whole planes up to 1024², else 512)")
    n.add_argument("--rgb", choices=["auto", "yes", "no"], default="auto",
                   help="treat a last axis of length 3/4 as colour (default auto)")
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
    n.set_defaults(func=_restore, task=task)


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

    _add_restore_parser(
        sub, "denoise", what="denoises", input_help="noisy image", default_model="dran",
        help="denoise every 2-D plane of an image, or of every image in a folder")
    _add_restore_parser(
        sub, "enhance", what="enhances (perceptual enhancement, DPE)", input_help="image to enhance",
        default_model="dpe",
        help="enhance every 2-D plane of an image, or of every image in a folder (DPE)")

    from . import _cli_train  # argparse only at import: torch loads when a run starts

    _cli_train.add_parser(sub)

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
