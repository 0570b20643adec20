"""``medenhance train``: fine-tune a model (or train one from scratch) on your own images.

    medenhance train --task denoise --data stack.tif --from dran --steps 2000 --name my-dran
    medenhance train --task denoise --mode paired --data clean/ --lq noisy/ --from scratch --name n2c
    medenhance train --task sr --data hr.tif --from msgan-x4 --patch 128 --name my-sr
    medenhance train --task enhance --mode unpaired --data good/ --lq poor/ --from scratch --name ug

The same core as the Train widget (:func:`~napari_medenhance.core.training.finetune.iter_finetune`)
with a terminal progress bar. The run folder is ``<user data>/runs/NAME`` (``--out`` elsewhere);
running the same command again resumes it (also after a crash), Ctrl-C stops cleanly at the next
step with a checkpoint (a second Ctrl-C aborts at once; the last checkpoint stays valid). When
the run completes, its best model is saved as the user model NAME with a model card, unless
``--no-save``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# The task table: plain data, no torch (``--help`` stays fast).
from napari_medenhance.core.tasks import MODES, TASKS

from .common import fail

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to ``medenhance``'s sub-parsers (sets ``func=run``)."""
    p = subparsers.add_parser(
        "train",
        help="fine-tune a model (or train one from scratch) on your own images",
        description=(
            "Fine-tunes a denoising, enhancement or super-resolution model on your images "
            "(files, or folders of TIFFs) and saves it as your own model with a model card. "
            "Re-running the same command resumes the run."
        ),
    )
    p.add_argument("--task", choices=list(TASKS), required=True)
    p.add_argument("--mode", choices=list(MODES), default="simulated",
                   help="simulated: the low-quality input is simulated from --data (default); "
                        "paired: --lq holds aligned low-quality images (for sr 4× smaller); "
                        "unpaired (enhance): --lq holds low-quality images of other scenes")
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="clean / high-quality images: files (TIFF, NIfTI, DICOM, zarr) or "
                        "folders of TIFFs")
    p.add_argument("--lq", nargs="+", metavar="PATH",
                   help="low-quality images for --mode paired / unpaired")
    p.add_argument("--from", dest="start", default="shipped", metavar="MODEL",
                   help="model to fine-tune: 'shipped' (default: the task's shipped model, "
                        "while one ships), a model name, a .safetensors file, or 'scratch' for "
                        "a new network")
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps (default 2000)")
    p.add_argument("--batch", type=int, default=8, help="patches per step (default 8)")
    p.add_argument("--patch", type=int, default=64,
                   help="patch edge in pixels (default 64; for sr a multiple of 4)")
    p.add_argument("--lr", type=float, default=1e-4, help="initial learning rate (default 1e-4)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda[:N] or mps")
    p.add_argument("--val-every", type=int, default=None,
                   help="validate and checkpoint every N steps (default steps/10, at most 500)")
    p.add_argument("--name", required=True,
                   help="run name and the saved model's name (letters, digits, . _ -)")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (default: <user data>/runs/NAME)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", type=json.loads, default=None, metavar="JSON",
                   help="network constructor arguments for --from scratch, e.g. "
                        "'{\"features\": 32}'")
    p.add_argument("--recipe-options", type=json.loads, default=None, metavar="JSON",
                   help="further recipe keywords, e.g. '{\"loss\": \"l1\"}' (enhance) or "
                        "'{\"mode\": \"srresnet\"}' (sr from scratch)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a saved user model of this name")
    p.add_argument("--no-save", action="store_true", help="train only; do not save the model")
    p.set_defaults(func=run)
    return p


def _fail(msg: object) -> int:
    return fail("train", msg)


def _no_shipped_model(task: str, start: str) -> str | None:
    """The command-line message for ``--from shipped`` when nothing ships for ``task`` (the
    core's message is worded for every caller); None when there is a shipped model or
    ``start`` names something else."""
    from napari_medenhance.core import zoo

    if start != "shipped":
        return None
    name = TASKS[task].default_model_name()
    if any(m.name == name and m.source == "shipped" for m in zoo.list_models(task)):
        return None
    mine = [m.name for m in zoo.list_models(task) if m.source == "user"]
    yours = (f"--from NAME to fine-tune one of your {task} models ({', '.join(mine)})" if mine
             else "--from FILE.safetensors to fine-tune weights of your own")
    return (f"--from shipped (the default) fine-tunes the shipped {name!r} model, which is "
            f"not bundled yet; pass --from scratch to train a new network, or {yours}")


def _data(paths: list[str] | None) -> Any:
    if paths is None:
        return None
    return paths[0] if len(paths) == 1 else list(paths)


def run(args: argparse.Namespace) -> int:
    """Run ``medenhance train``; 0 when done (and saved), 130 when stopped, 2 on errors."""
    from tqdm import tqdm

    from napari_medenhance.core import zoo
    from napari_medenhance.core.training import CheckpointError
    from napari_medenhance.core.training import finetune as ft
    from napari_medenhance.core.training.driver import GracefulStop
    from napari_medenhance.core.training.runs import run_folder

    save = not args.no_save
    stop = GracefulStop(tqdm.write)
    try:
        if save and not args.overwrite:
            taken = [m for m in zoo.list_models() if m.name == args.name and m.source == "user"]
            if taken:  # say so now, not after hours of training
                return _fail(f"a user model called {args.name!r} already exists "
                             f"({taken[0].path}); pass --overwrite or another --name")
        problem = _no_shipped_model(args.task, args.start)
        if problem:
            return _fail(problem)
        job = ft.iter_finetune(
            args.task, args.mode, _data(args.data), lq=_data(args.lq), start=args.start,
            steps=args.steps, batch=args.batch, patch=args.patch, lr=args.lr,
            device=args.device, out_dir=args.out, name=args.name, val_every=args.val_every,
            seed=args.seed, config=args.config, recipe_options=args.recipe_options,
            cancel=lambda: stop.requested,
        )
    except ValueError as err:  # WeightsError is a ValueError
        return _fail(err)
    run_dir = run_folder(args.name, args.out)

    bar = None
    result = None

    def show(ev: Any) -> None:
        nonlocal bar
        if bar is None:
            tqdm.write(f"run folder: {run_dir}")
            bar = tqdm(total=ev.total, initial=max(0, ev.step - (ev.kind == "step")),
                       desc=f"train {args.name}", unit="step", dynamic_ncols=True)
        if ev.kind == "step":
            bar.update(ev.step - bar.n)
            bar.set_postfix({**{k: f"{v:.4g}" for k, v in ev.losses.items()},
                             "lr": f"{ev.lr:.2e}"}, refresh=False)
        elif ev.kind == "validation":
            m = ev.metrics
            shown = ", ".join(f"{k} {m[k]:.4g}" for k in ("psnr", "ssim", "lassim", "score",
                                                           "loss") if k in m)
            label = "before (starting model)" if ev.step == 0 else f"step {ev.step}"
            tqdm.write(f"{label}: {shown}" + ("  * best" if ev.path and ev.step else ""))
        elif ev.kind == "cancelled":
            tqdm.write(f"stopped at step {ev.step}; the best model so far is kept; run the same "
                       "command to resume")

    try:
        from napari_medenhance.core.jobs import drive

        with stop:  # Ctrl-C: stop after this step with a checkpoint; twice: abort at once
            result = drive(job, show)
    except (ValueError, CheckpointError, FloatingPointError, RuntimeError, OSError) as err:
        if bar is not None:
            bar.close()
        return _fail(err)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print("medenhance train: aborted; the last checkpoint is kept (run the same command to "
              "resume)", file=sys.stderr)
        return 130
    if bar is not None:
        bar.close()
    if result.cancelled:
        return 130
    print(f"done: {result.steps} steps; best validation {result.metric} "
          f"{result.best_metric:.4f} at step {result.best_step}" if result.best_metric is not None
          else f"done: {result.steps} steps")
    if not save:
        print(f"best model: {result.best_path} (not saved: --no-save)")
        return 0
    try:
        info = ft.save_finetuned(run_dir, args.name, overwrite=args.overwrite)
    except ValueError as err:
        return _fail(f"{err} (the run is kept in {run_dir})")
    card = info.card.get("card_file")
    print(f"saved model {info.name!r}: {info.path}" + (f" (card: {card})" if card else ""))
    return 0
