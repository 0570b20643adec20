"""Fine-tune any model (or train one from scratch) on the user's own microscopy or MRI stacks.

    for event in iter_finetune("denoise", "simulated", stack, start="dran", steps=2000,
                               name="my-dran"):
        ...                                   # TrainEvent: step / validation / checkpoint / ...
    save_finetuned(run_folder("my-dran"), "my-dran")   # now in every model picker

One training loop (:func:`~.loop.train`); this module only picks the recipe, reads the data
(:mod:`.user_data`), keeps the run record (its folder and file helpers are :mod:`.runs`) and
saves the model with its card (written by :mod:`.cards`).

Tasks and modes
---------------
==========  ===========  =====================================================================
task        mode         recipe and what the user gives
==========  ===========  =====================================================================
denoise     simulated    :class:`~.recipes.DenoiseRecipe` on clean data: Gaussian noise added
enhance     simulated    :class:`~.recipes.EnhanceRecipe` on good images: Algorithm 1 degrades
sr          simulated    :class:`~.recipes.SRRecipe` on high-resolution data: bicubic ÷4
any of the  paired       :class:`~.recipes.PairedRecipe` around the task's recipe: aligned
three                    real LQ / HQ stacks (``lq=``); the real LQ window replaces the
                         simulated input (for SR the LQ is 4× smaller in Y and X)
enhance     unpaired     ``LaMEGANRecipe(lq_pool, hq_pool)`` (:mod:`.recipes.lamegan`):
                         unaligned LQ and HQ stacks (CycleGAN-style)
==========  ===========  =====================================================================

Starting point (``start``)
--------------------------
``"shipped"`` (the task's published model: ``dran``, ``dpe``, ``msgan-x4``), a registered
model name, a ``.safetensors`` path, or None / ``"scratch"`` (a new network, ``config=``
overriding the paper's constructor arguments). The network is built with the starting model's
own config and its weights are loaded strictly (the loop's ``init_weights``), so a corrupt,
pickled, foreign or mismatched file is refused before anything is written.

Run folders and resuming
------------------------
A run lives in ``run_folder(name)`` = ``<user data>/runs/<name>`` (``$MEDENHANCE_RUNS_DIR``
overrides ``<user data>/runs``; never the working directory): the loop's ``last.safetensors``
(resumable checkpoint) and ``best.safetensors`` (best validated model), and ``run.json`` (the
settings, the data description, every validation, the sessions). Calling again with the same
name and data resumes from the last checkpoint (same step, learning-rate schedule, optimizer
and RNG state), also after a crash; a larger ``steps`` extends the run. With ``name=None`` the
name is derived from the task, the mode and a hash of the data and start, so the same call
resumes too. A run folder holding another task, mode or data is refused (pick another name).

Validation happens at step 0 (the starting model: the card's "before"), every ``val_every``
steps and at the end; ``cancel`` (Stop) ends the run at the next step with a checkpoint, and
the best model validated so far stays in ``best.safetensors``. :func:`save_finetuned` copies it
into the user models folder (:func:`~napari_medenhance.core.zoo.save_user_model`) with a model
card (``NAME.json`` and a readable ``NAME.md``), so it appears in every widget's model picker
and in ``list_models()`` in later sessions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any

import torch

from .. import runtime, tasks, zoo
from ..engine import resolve_device
from ..nets import build as build_net
from ..weights import WeightsError, load_into, read_header
from .cards import _card_data, model_card
from .driver import hardware
from .loop import BEST, LAST, TrainEvent, TrainResult, train
from .patches import Pool
from .recipes import LaMEGANRecipe, PairedRecipe, Recipe, export_generator, recipe_identity
from .recipes.sr import MODES as SR_MODES
from .recipes.sr import SCALE as SR_SCALE
from .runs import (
    _RECORD_VERSION,
    RECORD,
    RUNS_DIR_ENV,
    _write_json,
    _write_text,
    read_record,
    run_folder,
    runs_dir,
)
from .paired_data import PairedData, load_paired_data
from .user_data import UserData, load_user_data

# Also the names that moved to .runs, .cards and .recipes.paired: they were this module's
# public API, and ``finetune.X`` keeps working for the widget, the CLI, scripts and tests.
__all__ = [
    "MODES",
    "RECORD",
    "RUNS_DIR_ENV",
    "TASK_MODES",
    "PairedRecipe",
    "build_recipe",
    "finetune",
    "iter_finetune",
    "model_card",
    "read_record",
    "resolve_start",
    "run_folder",
    "runs_dir",
    "save_finetuned",
]

MODES = tasks.MODES
#: The modes each task can be trained in (the task table's).
TASK_MODES = {t.name: t.modes for t in tasks.TASKS.values()}
#: What the widgets and the CLI call a new network.
SCRATCH = "scratch"


# ------------------------------------------------------------------------------ recipes


def build_recipe(
    task: str,
    mode: str,
    data: UserData | PairedData,
    *,
    lq_data: UserData | None = None,
    config: Mapping[str, Any] | None = None,
    arch: str | None = None,
    start_path: str | os.PathLike | None = None,
    options: Mapping[str, Any] | None = None,
) -> Recipe:
    """The recipe for (``task``, ``mode``) on the user's data (module docstring's table).

    Args:
        data: :class:`~.user_data.UserData` (simulated; the HQ side of unpaired) or
            :class:`~.paired_data.PairedData` (paired).
        lq_data: the LQ side of unpaired training.
        config: network constructor arguments (a starting model's own, or overrides).
        arch: the starting model's architecture, or the one asked for a new network; its
            recipe is the task table's (:func:`~napari_medenhance.core.tasks.recipe_for`).
            None: the task's first architecture. For SR ``msgan`` or ``srresnet`` picks the
            SR recipe's mode.
        start_path: the starting model's file, for unpaired training (LaMEGAN starts its
            LQ → HQ generator from a ``dpe`` enhance model; the other recipes get it through
            the loop's ``init_weights``).
        options: further recipe keywords (e.g. ``{"val_crop": 128}``, ``{"loss": "l1"}``);
            for paired mode ``val_crop`` also sets the paired validation windows.

    Raises:
        ValueError: an unknown task / mode pair, wrong data for the mode, or the recipe's own.
    """
    _check_task_mode(task, mode)
    opts = dict(options or {})
    if task == "sr" and arch in SR_MODES:
        if opts.get("mode", arch) != arch:
            raise ValueError(f"the starting model is an {arch!r} network; SR mode "
                             f"{opts['mode']!r} cannot start from it")
        opts["mode"] = arch
    if mode == "unpaired":
        if not isinstance(data, UserData) or not isinstance(lq_data, UserData):
            raise ValueError("unpaired training needs HQ data and LQ data (lq=)")
        if start_path is not None:
            opts["init_generator"] = start_path
        return LaMEGANRecipe(lq_data.pool, data.pool, config=config, **opts)
    if mode == "paired":
        if not isinstance(data, PairedData):
            raise ValueError("paired training needs aligned LQ/HQ data (lq=)")
        pair_opts = {k: opts.pop(k) for k in ("min_std", "max_empty") if k in opts}
        pool = data.pool.hq_pool()
        if task == "enhance":
            # Algorithm 1's brightness check only selects what to degrade; nothing is degraded
            # here, so dark HQ validation planes must not make the wrapped recipe refuse them.
            opts.setdefault("brightness_threshold", -1.0)
            opts.setdefault("acceptance_samples", 0)
        base = _simulated(task, pool, config, opts, arch)
        return PairedRecipe(base, data.pool, val_crop=int(opts.get("val_crop", 256)), **pair_opts)
    if not isinstance(data, UserData):
        raise ValueError("simulated training needs one data set (the clean / HQ images)")
    return _simulated(task, data.pool, config, opts, arch)


def _simulated(task: str, pool: Pool, config: Mapping[str, Any] | None,
               opts: dict[str, Any], arch: str | None = None) -> Recipe:
    """The recipe the task table names for ``arch`` (None: the task's first architecture)."""
    make = tasks.recipe_for(arch if arch is not None else tasks.architectures(task)[0])
    return make(pool, config=config, **opts)


def _check_task_mode(task: str, mode: str) -> None:
    if task not in TASK_MODES:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_MODES)}")
    if mode not in TASK_MODES[task]:
        raise ValueError(f"{task} cannot be trained in {mode!r} mode; choose one of "
                         f"{', '.join(TASK_MODES[task])}")


def resolve_start(task: str, start: str | os.PathLike | None) -> zoo.ModelInfo | None:
    """The model to fine-tune from: None (scratch) for ``None`` / ``"scratch"``; the task's
    shipped model for ``"shipped"``; else a registered name or a weights file path.

    Raises:
        ValueError / WeightsError: unknown name, shipped weights not bundled, a model for
            another task, a pickled / corrupt / foreign file, a training checkpoint.
    """
    if start is None or (isinstance(start, str) and start.strip().lower() == SCRATCH):
        return None
    if isinstance(start, str) and start == "shipped":
        name = tasks.default_model_name(task)
        shipped = [m.name for m in zoo.list_models(task) if m.source == "shipped"]
        if name not in shipped:
            mine = [m.name for m in zoo.list_models(task) if m.source == "user"]
            others = f"one of your models ({', '.join(mine)})" if mine else "your own weights file"
            raise ValueError(
                f"the shipped {name!r} weights are not bundled yet, so there is no shipped "
                f"model to fine-tune; start from {others} or from scratch (start=None, "
                "--from scratch)"
            )
        return zoo.get_model(name, task=task)
    info = zoo.get_model(start, task=task)
    if read_header(info.path)["meta"].get("kind") == "training-checkpoint":
        raise WeightsError(
            f"{info.path}: a resumable training checkpoint, not a model; start from the run's "
            f"{BEST} (the best validated model), or resume the run under its own name"
        )
    return info


# ------------------------------------------------------------------------------ running


def _start_record(info: zoo.ModelInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {"name": info.name, "source": info.source, "path": str(info.path), "arch": info.arch}


def _default_name(task: str, mode: str, fingerprints: list[str], start: dict | None,
                  config: Mapping | None, arch: str | None = None) -> str:
    parts = [task, mode, fingerprints, start and start["path"], config]
    if arch is not None:  # asked for; the names of runs that did not ask stay what they were
        parts.append(arch)
    key = json.dumps(parts, sort_keys=True)
    return f"{task}-{mode}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def iter_finetune(
    task: str,
    mode: str,
    data: Any,
    *,
    lq: Any = None,
    start: str | os.PathLike | None = "shipped",
    steps: int = 2000,
    batch: int = 8,
    patch: int = 64,
    lr: float = 1e-4,
    device: str | torch.device = "auto",
    out_dir: str | os.PathLike | None = None,
    name: str | None = None,
    val_every: int | None = None,
    ckpt_every: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    rgb: bool | None = None,
    config: Mapping[str, Any] | None = None,
    recipe_options: Mapping[str, Any] | None = None,
    data_name: str = "data",
    lq_name: str = "LQ",
    cancel: Callable[[], bool] | None = None,
    arch: str | None = None,
) -> Generator[TrainEvent, None, TrainResult]:
    """Fine-tune (or train from scratch) on the user's data; yields the loop's
    :class:`~.loop.TrainEvent` s and returns its :class:`~.loop.TrainResult`.

    Args:
        task: ``"denoise"``, ``"enhance"`` or ``"sr"``.
        mode: ``"simulated"`` (``data`` = clean / HQ images, the degradation is simulated),
            ``"paired"`` (``lq`` = the real low-quality counterpart of ``data``, aligned; for SR
            4× smaller in Y and X) or ``"unpaired"`` (enhance only; ``lq`` and ``data`` need
            not match).
        data, lq: arrays (numpy / dask, napari layer data), files or folders of TIFFs, or lists
            of them (:mod:`.user_data`).
        start: ``"shipped"``, a model name, a weights path, or None / ``"scratch"``.
        steps, batch, patch, lr, device, seed: as :func:`~.loop.train` (patch: HQ pixels;
            for SR a multiple of 4).
        out_dir: the run folder (default ``run_folder(name)``).
        name: run name (default derived from task, mode, data and start: the same call
            resumes).
        val_every: validate every this many steps (default ``steps // 10``, 1 to 500);
            ``<= 0``: only at step 0 and at the end. ckpt_every: checkpoint every this many
            steps (default: at every validation).
        val_fraction, rgb: the data split and colour handling (:func:`.user_data.load_user_data`).
        config: network constructor overrides for a new network (with a starting model it
            must be None or that model's config).
        recipe_options: further keywords of the task's recipe (e.g. ``{"loss": "l1"}`` for
            enhance, ``{"mode": "srresnet"}`` for SR from scratch, ``{"val_crop": 128}``).
        data_name, lq_name: names of array data in plane names and the model card.
        cancel: polled before every step; True stops with a checkpoint (the best model kept).
        arch: the architecture of a new network (``start=None``): one of the task's
            registered architectures (:func:`napari_medenhance.core.tasks.architectures`,
            :func:`~napari_medenhance.core.tasks.register_architecture` adds one); None: the
            task's first (``dran``, ``dpe``, ``msgan``; SR's ``recipe_options={"mode":
            "srresnet"}`` still picks SRResNet). With a starting model it must be None or
            that model's architecture. Not for unpaired training (LaMEGAN trains a DPE).

    Argument errors (task, mode, missing ``lq``, ``start``) raise at the call; data and
    recipe errors when the generator first runs (in the worker thread of a GUI).

    Raises:
        ValueError: bad arguments or data (see :mod:`.user_data`), a run folder that holds
            another run; ``WeightsError`` (a ValueError): an unusable starting model;
            ``CheckpointError``: a checkpoint of another setup in the run folder.
    """
    _check_task_mode(task, mode)
    if mode in ("paired", "unpaired") and lq is None:
        raise ValueError(f"{mode} training needs the low-quality data too (lq=...)")
    if mode == "simulated" and lq is not None:
        raise ValueError("lq= is only used in 'paired' and 'unpaired' mode; in 'simulated' mode "
                         "the low-quality input is simulated from data")
    for label, value in (("steps", steps), ("batch", batch), ("patch", patch)):
        if int(value) < 1:
            raise ValueError(f"{label} must be >= 1, got {value}")
    if task == "sr" and patch % SR_SCALE:
        raise ValueError(f"SR patches must be a multiple of {SR_SCALE} pixels; got {patch}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if name is not None and out_dir is None:
        run_folder(name)  # validates the name now
    if arch is not None:
        arch = str(arch).lower()
        if arch not in tasks.architectures(task):
            raise ValueError(f"unknown {task} architecture {arch!r}; known: "
                             f"{', '.join(tasks.architectures(task))}")
        if mode == "unpaired":
            raise ValueError("arch= applies to simulated and paired training; unpaired training "
                             "trains LaMEGAN's DPE generator")
    info = resolve_start(task, start)
    starts = tasks.architectures(task)  # what a task can be fine-tuned from
    if info is not None and info.arch not in starts:
        raise WeightsError(
            f"{info.name!r} ({info.path}) is a {info.arch!r} network; {task} training starts "
            f"from {' or '.join(repr(a) for a in starts)} models or from scratch"
        )
    if info is not None and arch is not None and arch != info.arch:
        raise ValueError(f"arch={arch!r} describes a new network; {info.name!r} is a "
                         f"{info.arch!r} network. Pass arch=None, or start=None to train a new "
                         "network")
    if info is not None and task == "sr" and info.scale != SR_SCALE:
        raise ValueError(
            f"{info.name!r} is a ×{info.scale} model; SR training makes ×{SR_SCALE} models: "
            f"start from a ×{SR_SCALE} model or from scratch"
        )
    if info is not None and config is not None and dict(config) != dict(info.config):
        raise ValueError(
            f"config= describes a new network; fine-tuning {info.name!r} uses its own config "
            f"{info.config}. Pass config=None, or start=None to train a new network"
        )
    dev = resolve_device(device)
    steps = int(steps)
    if val_every is None:
        val_every = max(1, min(500, steps // 10))
    val_every = int(val_every) if val_every > 0 else steps
    ckpt_every = val_every if ckpt_every is None else int(ckpt_every)
    settings = {"steps": steps, "batch": int(batch), "patch": int(patch), "lr": float(lr),
                "seed": int(seed), "val_every": val_every, "ckpt_every": ckpt_every,
                "val_fraction": float(val_fraction), "device": str(device),
                "recipe_options": dict(recipe_options or {})}
    return _run(task, mode, data, lq, info, dev, settings, out_dir, name, rgb,
                dict(info.config) if info is not None else (dict(config) if config else None),
                data_name, lq_name, cancel, arch)


def _load(task: str, mode: str, data: Any, lq: Any, settings: dict, rgb: bool | None,
          data_name: str, lq_name: str) -> tuple[Any, Any, dict[str, Any]]:
    """(data for the recipe, LQ data for unpaired or None, description for the record)."""
    split = {"val_fraction": settings["val_fraction"], "seed": settings["seed"]}
    if mode == "paired":
        paired = load_paired_data(lq, data, scale=SR_SCALE if task == "sr" else 1, rgb=rgb,
                                  lq_name=lq_name, hq_name=data_name, **split)
        return paired, None, {"paired": paired.describe()}
    hq = load_user_data(data, rgb=rgb, name=data_name, **split)
    if mode == "unpaired":
        lq_data = load_user_data(lq, rgb=rgb, name=lq_name, **split)
        return hq, lq_data, {"hq": hq.describe(), "lq": lq_data.describe()}
    return hq, None, {"data": hq.describe()}


def _fingerprints(desc: dict[str, Any]) -> list[str]:
    return [desc[k]["fingerprint"] for k in sorted(desc)]


def _run(task: str, mode: str, data: Any, lq: Any, info: zoo.ModelInfo | None,
         dev: torch.device, settings: dict[str, Any], out_dir: Any, name: str | None,
         rgb: bool | None, config: dict | None, data_name: str, lq_name: str,
         cancel: Callable[[], bool] | None,
         new_arch: str | None = None) -> Generator[TrainEvent, None, TrainResult]:
    hq_data, lq_data, desc = _load(task, mode, data, lq, settings, rgb, data_name, lq_name)
    options = dict(settings["recipe_options"])
    if (info is not None and task == "enhance" and mode != "unpaired"
            and "input_percentiles" in runtime.engine_kwargs(info)):
        # a model trained on contrast-stretched input goes on seeing the same stretch
        options.setdefault("input_norm", "stretch")
        options.setdefault("input_percentiles", runtime.engine_kwargs(info)["input_percentiles"])
    recipe = build_recipe(task, mode, hq_data, lq_data=lq_data, config=config,
                          arch=info.arch if info is not None else new_arch,
                          start_path=info.path if info is not None else None,
                          options=options)
    init_weights = None
    if info is not None:
        # Unpaired: the model is LaMEGAN's generator G (a 'dpe'), inside the recipe's network.
        arch = "dpe" if mode == "unpaired" else recipe.arch
        if info.arch != arch:
            raise WeightsError(
                f"{info.name!r} ({info.path}) is a {info.arch!r} network but {task} training in "
                f"{mode!r} mode trains a {arch!r} network; start from a {arch!r} model or from "
                "scratch"
            )
        # Strict load now, before a run folder exists: a file that does not fit is refused
        # with nothing written (the loop loads it again into its own, seeded network).
        try:
            net = build_net(arch, **info.config)
        except (TypeError, ValueError, KeyError) as e:
            raise WeightsError(f"{info.path}: its config {info.config} does not build a {arch!r} "
                               f"network ({e}); re-save it with the arguments it was trained "
                               "with") from e
        load_into(net, info.path, strict=True, expected_arch=arch)
        init_weights = None if mode == "unpaired" else info.path
    start = _start_record(info)
    if new_arch is not None and recipe.arch != new_arch:
        raise ValueError(f"arch={new_arch!r} but the recipe options make {task} training train "
                         f"a {recipe.arch!r} network; drop one of them")
    if name is None and out_dir is None:
        name = _default_name(task, mode, _fingerprints(desc), start, config, new_arch)
    run_dir = run_folder(name or Path(out_dir).name, out_dir)
    old = read_record(run_dir)
    resumable = (run_dir / LAST).is_file()
    if resumable and old:
        for key, new in (("task", task), ("mode", mode), ("data", _fingerprints(desc))):
            was = _fingerprints(old.get("data", {})) if key == "data" else old.get(key)
            if was != new:
                what = "other data" if key == "data" else f"{key} {was!r}"
                raise ValueError(
                    f"the run folder {run_dir} holds a run on {what}; resuming it with {key} "
                    f"{new!r} would mix the two. Pick another run name (or delete that folder "
                    "to start over)"
                )
    identity = recipe_identity(recipe)
    record: dict[str, Any] = {
        "version": _RECORD_VERSION, "name": run_dir.name, "task": task, "mode": mode,
        "start": start, "arch": recipe.arch, "config": identity["config"],
        "recipe": identity["recipe"], "primary_metric": recipe.primary_metric,
        "higher_is_better": bool(recipe.higher_is_better), "data": desc,
        "settings": settings, "validations": [], "sessions": [], "status": "running",
    }
    if resumable and old:
        # Keep what the run already knows: its start, its baseline and its history.
        for key in ("start", "before", "validations", "sessions", "best"):
            if key in old:
                record[key] = old[key]
        record["settings"] = {**old.get("settings", {}), **settings}
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    session = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "device": str(dev),
               "hardware": hardware(dev), "torch": torch.__version__, "first_step": None,
               "last_step": None, "ended": None}
    record["sessions"].append(session)
    record_path = run_dir / RECORD
    _write_json(record_path, record)

    gen = train(recipe, steps=settings["steps"], out_dir=run_dir, batch=settings["batch"],
                patch=settings["patch"], lr=settings["lr"], device=dev,
                val_every=settings["val_every"], ckpt_every=settings["ckpt_every"],
                seed=settings["seed"], resume=True, init_weights=init_weights, cancel=cancel)
    result: TrainResult | None = None
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            _note(record, session, ev)
            if ev.kind in ("validation", "cancelled", "done"):
                _write_json(record_path, record)
            yield ev
    except BaseException as err:
        gen.close()  # train() writes its checkpoint when closed between steps
        if created and not (run_dir / LAST).is_file():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing resumable: leave nothing
        else:
            session["ended"] = "stopped" if isinstance(err, GeneratorExit) else f"error: {err}"
            record["status"] = "interrupted"
            with contextlib.suppress(OSError):
                _write_json(record_path, record)
        raise
    assert result is not None
    session["ended"] = "cancelled" if result.cancelled else "done"
    record["status"] = session["ended"]
    record["steps_done"] = result.steps
    _write_json(record_path, record)
    return result


def _note(record: dict[str, Any], session: dict[str, Any], ev: TrainEvent) -> None:
    """Fold one event into the run record."""
    if ev.kind == "step":
        if session["first_step"] is None:
            session["first_step"] = ev.step
        session["last_step"] = ev.step
        record["steps_done"] = ev.step
    elif ev.kind == "validation":
        # Steps after the last checkpoint are redone on resume: drop their old validations.
        record["validations"] = [v for v in record["validations"] if v["step"] < ev.step]
        entry = {"step": ev.step, "metrics": dict(ev.metrics), "best": ev.path is not None}
        record["validations"].append(entry)
        if ev.step == 0:
            record["before"] = {"step": 0, "metrics": dict(ev.metrics)}
        if ev.path is not None:
            record["best"] = {"step": ev.step, "metrics": dict(ev.metrics)}


def finetune(*args: Any, progress: Callable[[TrainEvent], None] | None = None,
             **kwargs: Any) -> TrainResult:
    """:func:`iter_finetune` run to the end (``progress`` sees every event)."""
    from ..jobs import drive

    return drive(iter_finetune(*args, **kwargs), progress)


# ------------------------------------------------------------------------------ saving


def save_finetuned(run_dir: str | os.PathLike, name: str, *, overwrite: bool = False
                   ) -> zoo.ModelInfo:
    """Register a run's best model as the user's model ``name``, with a model card.

    Writes ``user_models_dir()/NAME.safetensors``, ``NAME.json`` (the card as data: task, mode,
    start, data, settings, validation before / after) and ``NAME.md`` (the same, readable).
    Model pickers that listen to :func:`~napari_medenhance.core.zoo.on_models_changed` show it
    at once; ``list_models()`` finds it in later sessions.

    Raises:
        ValueError: no validated model in the run yet, an invalid or taken name (unless
            ``overwrite``), a shipped model's name; ``WeightsError`` for a broken best file.
    """
    run_dir = Path(run_dir)
    best = run_dir / BEST
    if not best.is_file():
        raise ValueError(f"{run_dir} holds no validated model yet ({BEST}); train (until the "
                         "first validation) before saving")
    zoo._check_name(name)
    record = read_record(run_dir)
    header = read_header(best)
    card = _card_data(record, header, run_dir)
    with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
        src = best
        if record.get("mode") == "unpaired":
            # The loop's best file holds the whole CycleGAN network; the model is its LQ → HQ
            # generator, which the LaMEGAN module knows how to take out.
            src = Path(tmp) / f"{name}.safetensors"
            export_generator(best, src, name=name, meta={"card": f"{name}.md"})
        info = zoo.save_user_model(src, name, card=card, overwrite=overwrite)
    _write_text(info.path.with_suffix(".md"), model_card(name, card))
    return zoo.get_model(name)
