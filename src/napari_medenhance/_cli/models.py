"""``medenhance models`` (list, add a weights file or a BioImage.IO package) and ``medenhance
export-bioimageio``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import fail


def list_or_add(args: argparse.Namespace) -> int:
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
        return fail("models", err)
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


def export_bioimageio(args: argparse.Namespace) -> int:
    """``medenhance export-bioimageio``: a model as a BioImage.IO package (zip)."""
    from napari_medenhance.core.bioimageio import export_package

    folder = Path(args.output).parent
    missing = not folder.exists()
    try:
        result = export_package(args.model, args.output, authors=args.author,
                                license=args.license, name=args.name)
    except (ValueError, OSError) as err:  # unknown model, not exportable, disk full...
        return fail("export-bioimageio", err)
    if missing and folder.is_dir():  # the export made it, once the model was checked
        print(f"medenhance export-bioimageio: created the output folder {folder}", file=sys.stderr)
    print(f"wrote {result.path} ({', '.join(result.files)}); on its test image the package's "
          f"network differs from the plugin's engine by at most {result.engine_max_abs_diff:.3g} "
          f"(image values {result.input_range[0]:.4g} to {result.input_range[1]:.4g})")
    return 0
