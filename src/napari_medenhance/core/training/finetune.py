"""Fine-tune any model (or train one from scratch) on the user's own microscopy or MRI stacks.

    for event in iter_finetune("denoise", "simulated", stack, start="dran", steps=2000,
                               name="my-dran"):
        ...                                   # TrainEvent: step / validation / checkpoint / ...
    save_finetuned(run_folder("my-dran"), "my-dran")   # now in every model picker

One training loop (:func:`~.loop.train`); this module only picks the recipe, reads the data
(:mod:`.user_data`), keeps a run record and writes the model card.

Tasks and modes
---------------
==========  ===========  =====================================================================
task        mode         recipe and what the user gives
==========  ===========  =====================================================================
denoise     simulated    :class:`~.recipes.DenoiseRecipe` on clean data: Gaussian noise added
enhance     simulated    :class:`~.recipes.EnhanceRecipe` on good images: Algorithm 1 degrades
sr          simulated    :class:`~.recipes.SRRecipe` on high-resolution data: bicubic ÷4
any of the  paired       :class:`PairedRecipe` around the task's recipe: aligned real LQ / HQ
three                    stacks (``lq=``); the real LQ window replaces the simulated input
                         (for SR the LQ is 4× smaller in Y and X)
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
import dataclasses
import hashlib
import importlib
import json
import math
import os
import shutil
import tempfile
import time
import types
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import zoo
from ..engine import resolve_device
from ..metrics import psnr as _psnr
from ..metrics import ssim as _ssim
from ..nets import ARCHITECTURES
from ..nets import build as build_net
from ..weights import WeightsError, load_into, read_header
from .loop import BEST, LAST, TrainEvent, TrainResult, train
from .patches import Pool
from .recipes import DenoiseRecipe, EnhanceRecipe, Recipe, SRRecipe, recipe_identity
from .recipes.sr import SCALE as SR_SCALE
from .user_data import (
    PairedData,
    PairedPatchSampler,
    PairedPool,
    UserData,
    center_pair,
    load_paired_data,
    load_user_data,
)

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

MODES = ("simulated", "paired", "unpaired")
#: The modes each task can be trained in.
TASK_MODES = {
    "denoise": ("simulated", "paired"),
    "enhance": ("simulated", "paired", "unpaired"),
    "sr": ("simulated", "paired"),
}
#: Environment variable naming the folder that holds run folders.
RUNS_DIR_ENV = "MEDENHANCE_RUNS_DIR"
#: The run record inside a run folder.
RECORD = "run.json"
#: What the widgets and the CLI call a new network.
SCRATCH = "scratch"
#: Architectures a task can be fine-tuned from (unpaired enhancement starts LaMEGAN's G).
_START_ARCHS = {"denoise": ("dran",), "enhance": ("dpe",), "sr": ("msgan", "srresnet")}
_RECORD_VERSION = 1
_LAMEGAN = f"{__package__}.recipes.lamegan"


# ------------------------------------------------------------------------------ folders


def runs_dir() -> Path:
    """Folder of the run folders (not created here): ``$MEDENHANCE_RUNS_DIR`` when set, else
    ``platformdirs.user_data_dir("napari-medenhance") / "runs"``, never the working directory."""
    env = os.environ.get(RUNS_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-medenhance", appauthor=False)) / "runs"


def run_folder(name: str, out_dir: str | os.PathLike | None = None) -> Path:
    """The run folder of run ``name``: ``out_dir`` when given, else ``runs_dir() / name``.

    Raises:
        ValueError: ``name`` is not usable as a folder name (the model-name rules apply).
    """
    if out_dir is not None:
        return Path(out_dir).expanduser().resolve()
    zoo._check_name(name)  # the same rules as model names: it becomes a folder name
    return runs_dir() / name


def read_record(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run record (``run.json``) of a run folder; ``{}`` when there is none."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable run record ({e}); delete the run folder to start "
                         "over") from e
    return record if isinstance(record, dict) else {}


def _write_json(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=False, default=_jsonable)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    # The record describes a run for people and cards; it is never turned back into objects,
    # so anything else (a feature network passed as a recipe option) is recorded by its repr.
    return str(value) if isinstance(value, Path) else repr(value)


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------ paired recipe


def _restorer(net: torch.nn.Module, task: str) -> torch.nn.Module:
    """What the engine runs for ``net``: [0, 1] in, restored [0, 1] out (zoo's one adapter)."""
    # inference_module only reads the task of its ModelInfo.
    return zoo.inference_module(net, types.SimpleNamespace(task=task))  # type: ignore[arg-type]


class PairedRecipe:
    """A task recipe trained on real aligned LQ / HQ pairs instead of simulated degradations.

    Everything about the network and the objective is the wrapped recipe's (build, extra
    modules, loss or losses, per-step hooks, value range); only the data change: a batch is the
    real LQ patch and the HQ patch at the same window (:class:`~.user_data.PairedPatchSampler`:
    same flips / rotations on both, empty HQ background redrawn), mapped to the network's value
    range ([-1, 1] for DPE), and validation runs the network as the engine would on the central
    ≤ ``val_crop``² window of every validation pair and scores it against the HQ: ``psnr`` and
    ``ssim`` (data range 1, output clipped to [0, 1], gray outputs averaged back to one
    channel) and ``loss`` = mean absolute error, averaged over the pairs.

    Args:
        base: the task's recipe, built on the HQ planes (:meth:`PairedPool.hq_pool`); its own
            sampling and validation are not used.
        pairs: the paired train / validation split; ``pairs.scale`` must be the recipe's
            factor (1, or 4 for SR).
        val_crop: HQ pixels per side of a validation window at most.
        min_std, max_empty: the sampler's background test (:class:`~.patches.PatchSampler`).
    """

    primary_metric = "psnr"
    higher_is_better = True

    def __init__(self, base: Recipe, pairs: PairedPool, *, val_crop: int = 256,
                 min_std: float = 0.005, max_empty: float = 0.75) -> None:
        if not pairs.train or not pairs.val:
            raise ValueError("paired training needs training and validation pairs")
        want = SR_SCALE if base.task == "sr" else 1
        if pairs.scale != want:
            raise ValueError(f"{base.task} pairs must have scale {want}; got {pairs.scale}")
        if getattr(base, "input_norm", "none") == "stretch":
            # A model trained on stretched input sees every LQ plane stretched by its own
            # percentiles, as the engine stretches an image (the recipe's STRETCH_PERCENTILES).
            from .recipes.enhance import percentile_stretch

            pairs = PairedPool(
                train=[dataclasses.replace(p, lq=percentile_stretch(p.lq)) for p in pairs.train],
                val=[dataclasses.replace(p, lq=percentile_stretch(p.lq)) for p in pairs.val],
                scale=pairs.scale)
        self.base = base
        self.pairs = pairs
        self.task, self.arch, self.config = base.task, base.arch, base.config
        self.val_crop = int(val_crop)
        self.min_std, self.max_empty = float(min_std), float(max_empty)
        vr = tuple(getattr(ARCHITECTURES.get(self.arch), "value_range", (0.0, 1.0)))
        self._signed = vr == (-1.0, 1.0)
        self._samplers: dict[int, PairedPatchSampler] = {}
        self._val = [(p, *center_pair(p, self.val_crop)) for p in pairs.val]

    @property
    def objective(self) -> dict[str, Any]:
        """The wrapped recipe's objective, marked as trained on real pairs (checkpoint identity:
        a simulated-mode checkpoint is not resumed as a paired run, or vice versa)."""
        return {"base": getattr(self.base, "objective", None), "pairs": "real",
                "base_recipe": type(self.base).__name__, "scale": self.pairs.scale}

    def build(self) -> torch.nn.Module:
        return self.base.build()

    def build_extras(self) -> dict[str, torch.nn.Module]:
        fn = getattr(self.base, "build_extras", None)
        return dict(fn()) if callable(fn) else {}

    def on_step(self, net: torch.nn.Module, step: int, total: int) -> None:
        self.base.on_step(net, step, total)

    def loss(self, net: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.base.loss(net, inputs, targets)

    def losses(self, net: torch.nn.Module, extras: Mapping[str, torch.nn.Module],
               inputs: torch.Tensor, targets: torch.Tensor
               ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        return self.base.losses(net, extras, inputs, targets)  # type: ignore[attr-defined]

    def sampler(self, patch: int) -> PairedPatchSampler:
        """The (cached) paired sampler for ``patch``-pixel HQ patches."""
        if patch not in self._samplers:
            self._samplers[patch] = PairedPatchSampler(
                self.pairs.train, patch, min_std=self.min_std, max_empty=self.max_empty)
        return self._samplers[patch]

    def sample_batch(self, rng: np.random.Generator, batch: int, patch: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(LQ, HQ)``: ``batch×3×(patch/scale)²`` and ``batch×3×patch²``, in the network's
        value range."""
        lq, hq = self.sampler(patch).sample(rng, batch)
        if self._signed:
            lq, hq = lq * 2.0 - 1.0, hq * 2.0 - 1.0
        return torch.from_numpy(lq), torch.from_numpy(hq)

    def validate(self, net: torch.nn.Module, device: str | torch.device = "cpu"
                 ) -> tuple[dict[str, float], np.ndarray]:
        """``({"psnr", "ssim", "loss"}, preview)``; preview: the output on the first pair."""
        device = torch.device(device)
        run = _restorer(net, self.task)
        rows, preview = [], None
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                for pair, lq, hq in self._val:
                    x = lq.transpose(2, 0, 1) if pair.rgb else np.broadcast_to(lq, (3, *lq.shape))
                    y = run(torch.from_numpy(np.ascontiguousarray(x))[None].to(device))[0]
                    y = y.clamp(0.0, 1.0).cpu().numpy()
                    out = (y.transpose(1, 2, 0) if pair.rgb else y.mean(axis=0)).astype(np.float32)
                    rows.append((_psnr(hq, out, data_range=1.0, rgb=pair.rgb),
                                 _ssim(hq, out, data_range=1.0, rgb=pair.rgb),
                                 float(np.abs(out - hq).mean())))
                    if preview is None:
                        preview = np.ascontiguousarray(out)
        finally:
            net.train(was_training)
        m = np.asarray(rows, dtype=np.float64).mean(axis=0)
        assert preview is not None
        return {"psnr": float(m[0]), "ssim": float(m[1]), "loss": float(m[2])}, preview

    def describe(self) -> dict[str, Any]:
        """The wrapped recipe's loss description and the pairs, for the weights header / card."""
        base = getattr(self.base, "describe", None)
        keep = ("loss", "objective", "mode", "discriminator", "input_norm", "input_percentiles")
        info = {k: v for k, v in (base() if callable(base) else {}).items() if k in keep}
        info.update(
            pairs=f"real aligned LQ/HQ pairs (scale {self.pairs.scale}); no simulated degradation",
            train_planes=[p.name for p in self.pairs.train],
            val_planes=[p.name for p in self.pairs.val],
            val_crop=self.val_crop,
            validation="PSNR / SSIM of the output vs the HQ on the central validation windows",
        )
        return info


# ------------------------------------------------------------------------------ recipes


def _lamegan() -> types.ModuleType:
    """The LaMEGAN recipe module, imported only for unpaired training."""
    try:
        return importlib.import_module(_LAMEGAN)
    except ModuleNotFoundError as e:
        if e.name != _LAMEGAN:
            raise  # the module exists but one of its own imports is missing: say that
        raise ValueError(
            "unpaired training needs the LaMEGAN recipe, which this installation does not "
            "have yet; use 'simulated' or 'paired' mode"
        ) from e


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
            :class:`~.user_data.PairedData` (paired).
        lq_data: the LQ side of unpaired training.
        config: network constructor arguments (a starting model's own, or overrides).
        arch: the starting model's architecture; for SR it picks the mode (``msgan`` or
            ``srresnet``).
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
    if task == "sr" and arch is not None:
        if opts.get("mode", arch) != arch:
            raise ValueError(f"the starting model is an {arch!r} network; SR mode "
                             f"{opts['mode']!r} cannot start from it")
        opts["mode"] = arch
    if mode == "unpaired":
        if not isinstance(data, UserData) or not isinstance(lq_data, UserData):
            raise ValueError("unpaired training needs HQ data and LQ data (lq=)")
        if start_path is not None:
            opts["init_generator"] = start_path
        return _lamegan().LaMEGANRecipe(lq_data.pool, data.pool, config=config, **opts)
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
        base = _simulated(task, pool, config, opts)
        return PairedRecipe(base, data.pool, val_crop=int(opts.get("val_crop", 256)), **pair_opts)
    if not isinstance(data, UserData):
        raise ValueError("simulated training needs one data set (the clean / HQ images)")
    return _simulated(task, data.pool, config, opts)


def _simulated(task: str, pool: Pool, config: Mapping[str, Any] | None,
               opts: dict[str, Any]) -> Recipe:
    if task == "denoise":
        return DenoiseRecipe(pool, config=config, **opts)
    if task == "enhance":
        return EnhanceRecipe(pool, config=config, **opts)
    return SRRecipe(pool, config=config, **opts)


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
        name = zoo.DEFAULT_MODEL[task]
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


def _hardware(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA {torch.version.cuda})"
    if dev.type == "mps":
        return "Apple MPS"
    return f"CPU, {torch.get_num_threads()} torch threads"


def _start_record(info: zoo.ModelInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {"name": info.name, "source": info.source, "path": str(info.path), "arch": info.arch}


def _default_name(task: str, mode: str, fingerprints: list[str], start: dict | None,
                  config: Mapping | None) -> str:
    key = json.dumps([task, mode, fingerprints, start and start["path"], config], sort_keys=True)
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
    info = resolve_start(task, start)
    if info is not None and info.arch not in _START_ARCHS[task]:
        raise WeightsError(
            f"{info.name!r} ({info.path}) is a {info.arch!r} network; {task} training starts "
            f"from {' or '.join(repr(a) for a in _START_ARCHS[task])} models or from scratch"
        )
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
                data_name, lq_name, cancel)


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
         cancel: Callable[[], bool] | None) -> Generator[TrainEvent, None, TrainResult]:
    hq_data, lq_data, desc = _load(task, mode, data, lq, settings, rgb, data_name, lq_name)
    options = dict(settings["recipe_options"])
    if (info is not None and task == "enhance" and mode != "unpaired"
            and "input_percentiles" in zoo.engine_kwargs(info)):
        # a model trained on contrast-stretched input goes on seeing stretched input
        options.setdefault("input_norm", "stretch")
    recipe = build_recipe(task, mode, hq_data, lq_data=lq_data, config=config,
                          arch=info.arch if info is not None else None,
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
    if name is None and out_dir is None:
        name = _default_name(task, mode, _fingerprints(desc), start, config)
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
               "hardware": _hardware(dev), "torch": torch.__version__, "first_step": None,
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
            _lamegan().export_generator(best, src, name=name, meta={"card": f"{name}.md"})
        info = zoo.save_user_model(src, name, card=card, overwrite=overwrite)
    _write_text(info.path.with_suffix(".md"), model_card(name, card))
    return zoo.get_model(name)


def _n_params(header: dict[str, Any]) -> int:
    return int(sum(math.prod(t["shape"]) for t in header["tensors"].values()))


def _card_data(record: dict[str, Any], header: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    meta = header["meta"]
    after = {"step": meta.get("step"), "metrics": meta.get("metrics", {})}
    training = meta.get("training") or {}
    return {
        "trained_with": "napari-medenhance fine-tuning (core.training.finetune)",
        "task": record.get("task", meta.get("task")),
        "mode": record.get("mode"),
        "arch": header["arch"],
        "config": header["config"],
        "parameters": _n_params(header),
        "started_from": record.get("start"),
        "data": record.get("data"),
        "settings": record.get("settings"),
        "steps_done": record.get("steps_done"),
        "steps_planned": meta.get("total"),
        "primary_metric": meta.get("primary_metric", record.get("primary_metric")),
        "validation": {"before": record.get("before"), "after": after},
        "recipe": {k: v for k, v in training.items()
                   if k not in ("train_planes", "val_planes")},
        "sessions": record.get("sessions", []),
        "run_folder": str(run_dir),
        "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


_MODE_TEXT = {
    ("denoise", "simulated"): "Gaussian noise (σ ~ U(0, 50)/255) added to your clean images; "
                              "validation at σ = 15, 25, 50",
    ("enhance", "simulated"): "Algorithm 1 of the DPE paper (noise, contrast, brightness) "
                              "applied to your good images",
    ("sr", "simulated"): "your high-resolution images downsampled ×4 (antialiased bicubic)",
    ("enhance", "unpaired"): "unpaired low- and high-quality images (LaMEGAN)",
}


_ROLES = {"data": "images", "hq": "HQ", "lq": "LQ"}
#: Card rows first (the summary metrics), then the rest alphabetically.
_MAIN = ("psnr", "ssim", "lassim", "delta_e", "loss")


def model_card(name: str, card: Mapping[str, Any]) -> str:
    """The readable model card (markdown) of a fine-tuned model, from its card data."""
    task, mode = card.get("task"), card.get("mode")
    start = card.get("started_from")
    started = (f"`{start['name']}` ({start['source']}, {start['arch']})" if start
               else "scratch (a new network)")
    s = card.get("settings") or {}
    val = card.get("validation") or {}
    before = (val.get("before") or {}).get("metrics") or {}
    after_entry = val.get("after") or {}
    after = after_entry.get("metrics") or {}
    how = _MODE_TEXT.get((task, mode), "your real, aligned low-/high-quality pairs"
                         if mode == "paired" else "")
    L = [
        f"# {name} — {task} model fine-tuned on your data",
        "",
        "Trained with napari-medenhance's Train module (the same training loop and recipes as "
        "the shipped models).",
        "",
        "| | |",
        "|---|---|",
        f"| task / mode | {task}, {mode}: {how} |",
        f"| started from | {started} |",
        f"| architecture | `{card.get('arch')}`, config `{json.dumps(card.get('config'), sort_keys=True)}`, "
        f"{card.get('parameters', 0):,} parameters |",
        f"| steps | {card.get('steps_done')} of {card.get('steps_planned')}; saved model from "
        f"step {after_entry.get('step')} (best validation {card.get('primary_metric')}) |",
        f"| settings | batch {s.get('batch')}, patch {s.get('patch')} px, learning rate "
        f"{s.get('lr')} (cosine decay to 1 %), seed {s.get('seed')}, validation every "
        f"{s.get('val_every')} steps |",
        f"| run folder | `{card.get('run_folder')}` |",
        f"| saved | {card.get('saved')} |",
        "",
        "## Data",
        "",
        "| role | source | shape | dtype | planes used | intensities |",
        "|---|---|---|---|---|---|",
    ]
    data = card.get("data") or {}
    splits = []
    for role, d in data.items():
        for src in d.get("sources", []):
            items = [("LQ", src["lq"]), ("HQ", src["hq"])] if "lq" in src and "hq" in src \
                else [(_ROLES.get(role, role), src)]
            for r, x in items:
                L.append(f"| {r} | {x['name']} | {tuple(x['shape'])} | {x['dtype']} | "
                         f"{x['planes_used']} of {x['planes_total']} | {x['normalisation']} |")
        sp = d.get("split") or {}
        splits.append(f"- {role}: {sp.get('how', '?')}; {len(sp.get('train', []))} training / "
                      f"{len(sp.get('val', []))} validation planes (validation: "
                      f"{', '.join(sp.get('val', [])[:8])}{' ...' if len(sp.get('val', [])) > 8 else ''})")
    L += ["", *splits, "",
          "## Validation (on the held-out part of your data)", "",
          "'before' is the starting model, 'after' the saved one, on the same validation set.",
          "",
          "| metric | before | after |", "|---|---|---|"]
    keys = [*after, *(k for k in before if k not in after)]
    keys.sort(key=lambda k: (_MAIN.index(k) if k in _MAIN else len(_MAIN), k))
    for k in keys:
        L.append(f"| {k} | {_fmt(before.get(k))} | {_fmt(after.get(k))} |")
    hw = sorted({x.get("hardware", "?") for x in card.get("sessions", [])})
    L += ["", f"Hardware: {'; '.join(hw) or 'not recorded'}.", ""]
    return "\n".join(L)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    try:
        return f"{float(v):.4f}"
    except (TypeError, ValueError):
        return str(v)
