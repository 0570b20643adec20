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
import sys

# The task table: plain data, no torch (``--help`` stays fast).
from napari_medenhance.core.tasks import TASKS

from ._cli import metrics as _metrics
from ._cli import models as _models
from ._cli import restore as _restore
from ._cli import sr as _sr
from ._cli.common import (
    EPILOG,
    EXIT_BAD_INPUT,
    EXIT_FAILED_FILES,
    EXIT_INTERRUPTED,
    EXIT_OK,
)

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED_FILES", "EXIT_INTERRUPTED", "EXIT_OK", "build_parser",
           "main"]


def build_parser() -> argparse.ArgumentParser:
    from napari_medenhance import __version__

    parser = argparse.ArgumentParser(prog="medenhance", description="Medical image restoration and quality metrics.",
                                     epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("metrics", help="LaSSIM/SSIM of OUTPUT vs INPUT, and PSNR/SSIM/ΔE vs a reference",
                       description="Scores every 2-D plane of two same-shaped images, read as "
                                   "every command reads them (TIFF, NIfTI, zarr, a DICOM series "
                                   "folder; PNG/JPEG too).", epilog=EPILOG)
    m.add_argument("input", help="image before restoration")
    m.add_argument("output", help="restored image, same shape as INPUT")
    m.add_argument("--reference", help="clean reference image (adds PSNR, SSIM and CIEDE2000 ΔE)")
    m.add_argument("--level", type=int, default=3, help="LaSSIM Laplacian-pyramid level (default 3)")
    m.add_argument("--data-range", type=float, default=None,
                   help="intensity range for PSNR/SSIM/ΔE (default: dtype range, 1 for floats in [0,1])")
    m.add_argument("--rgb", choices=["auto", "yes", "no"], default="auto",
                   help="treat a last axis of length 3/4 as colour (default auto)")
    m.add_argument("--csv", help="write per-slice values to this CSV file")
    m.set_defaults(func=_metrics.run)

    _restore.add_parser(sub, "denoise", what="denoises", input_help="noisy image")
    _restore.add_parser(
        sub, "enhance", what="enhances (perceptual enhancement, DPE)", input_help="image to enhance")
    _sr.add_parser(sub)

    from ._cli import train as _cli_train  # argparse only at import: torch loads at a run

    _cli_train.add_parser(sub).epilog = EPILOG

    ls = sub.add_parser("models", help="list the installed models, or add your own",
                        description="Lists shipped and user models (name, task, source, path).",
                        epilog=EPILOG)
    ls.add_argument("--task", choices=list(TASKS), help="only models for this task")
    ls.add_argument("--add", metavar="FILE",
                    help="copy this .safetensors file, or the model of a BioImage.IO package "
                         "(.zip) exported by napari-medenhance, into the user models folder")
    ls.add_argument("--name", help="name for --add (default: the file name without extension, "
                                   "or the package's model name)")
    ls.add_argument("--overwrite", action="store_true", help="with --add, replace a user model of that name")
    ls.set_defaults(func=_models.list_or_add)

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
    bx.set_defaults(func=_models.export_bioimageio)

    d = sub.add_parser("demo", help="open napari on a noisy sample stack beside its denoised result",
                       epilog=EPILOG)
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
