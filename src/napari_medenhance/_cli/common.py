"""What every ``medenhance`` command shares: the exit statuses, the one-line error convention,
how inputs are read, the progress bar, and the model and folder options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# One convention for every command (documented in `medenhance --help` and the README): errors
# are one line on stderr, ``medenhance COMMAND: message``, and the exit status says what kind.
EXIT_OK = 0
EXIT_FAILED_FILES = 1  # folder mode: some files failed (listed); the others are written
EXIT_BAD_INPUT = 2  # bad input, usage, model or device: nothing written (argparse uses 2 too)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, what shells report for an interrupted command)

EPILOG = (
    "Exit status (every command): 0 done; 1 a folder batch finished but some files failed "
    "(listed at the end); 2 bad input, usage, model or device (nothing written); 130 "
    "interrupted (Ctrl-C). Errors are one line on stderr: 'medenhance COMMAND: message'. A "
    "missing output folder is created, and a line on stderr says so."
)


class InputError(ValueError):
    """An input file the command cannot use (printed as one line, exit status 2)."""


def read_input(path: str):
    """INPUT / OUTPUT / --reference of ``medenhance metrics``: the same reader as every other
    command (TIFF memory-mapped, NIfTI / DICOM / zarr lazily), PNG and JPEG read whole."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file: {path}")
    if io_reads(p):
        from napari_medenhance.core.io import read_volume

        return read_volume(p, lazy=True).data  # its ValueError names the file and the problem
    return read_other(p)


def read_other(p: Path):
    """PNG, JPEG...: formats core.io does not read (no geometry); small images, read whole."""
    from skimage.io import imread

    try:
        return imread(p)
    except Exception as err:  # imageio raises ValueError, OSError or its own errors per backend
        from napari_medenhance.core.io.volume import formats_hint

        raise InputError(f"cannot read {p.name!r} ({type(err).__name__}: {err}); "
                          f"{formats_hint()}, PNG and JPEG") from err


def prepare_output_folder(task: str, folder: Path) -> None:
    """Create a missing output folder and say so on stderr: a typo in OUTPUT should not leave
    the results somewhere the user did not expect without a word (files and folders alike)."""
    if folder.is_dir() or str(folder) in ("", "."):
        return
    folder.mkdir(parents=True, exist_ok=True)
    print(f"medenhance {task}: created the output folder {folder}", file=sys.stderr)


def one_dicom_series(folder: Path, args: argparse.Namespace) -> bool:
    """A folder of DICOM files (and no other inputs) is one volume, not a batch."""
    from napari_medenhance.core.batch import find_inputs
    from napari_medenhance.core.io import is_dicom_folder

    return not args.pattern and is_dicom_folder(folder) and not find_inputs(folder)


def fail(task: str, msg: object) -> int:
    """The one error convention of every command: ``medenhance TASK: message`` on stderr (one
    line, no traceback), exit status 2 (bad input, usage, model or device)."""
    print(f"medenhance {task}: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def drive_with_bar(task: str, job, unit: str = "tile") -> tuple[int, object]:
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
        return fail(task, err), None
    except KeyboardInterrupt:
        close_bar()
        print(f"medenhance {task}: cancelled; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED, None
    close_bar()
    return 0, result


def io_reads(path: Path) -> bool:
    """Whether core.io knows the file's format (NIfTI, DICOM, zarr...)."""
    try:
        from napari_medenhance.core.io import supported_suffixes
    except ImportError:
        return False
    name = path.name.lower()
    return path.is_dir() or any(name.endswith(s.lower()) for s in supported_suffixes())


def add_model_options(n: argparse.ArgumentParser, task: str, default_model: str) -> None:
    """--model, --device, --tile, --rgb and --ensemble: what every model-running subcommand
    takes."""
    n.add_argument("--model", default=None,
                   help=f"registered {task} model name (default {default_model}; see "
                        "`medenhance models`) or a .safetensors path")
    n.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda[:N] or mps")
    n.add_argument("--tile", type=int, default=0,
                   help="tile edge in pixels; 0 = auto (whole planes up to 1024², else 512)")
    n.add_argument("--rgb", choices=["auto", "yes", "no"], default="auto",
                   help="treat a last axis of length 3/4 as colour (default auto)")
    n.add_argument("--ensemble", action="store_true",
                   help="run every tile in its 8 rotations and flips and average them: "
                        "8x the time for a slightly better result (about +0.1 dB PSNR)")


def add_folder_options(n: argparse.ArgumentParser) -> None:
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
