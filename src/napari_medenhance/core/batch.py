"""Restoring every image in a folder: resumable, failure-tolerant, in-process or on dask.

:func:`iter_batch` finds the inputs (glob patterns), skips those whose output already exists,
and restores the rest one file at a time — in this process, or as one task per file on a dask
cluster (:mod:`.cluster`). Each file goes through :func:`.lazy.iter_process_volume`, so a file
larger than memory is read and written block by block, and its output appears under its final
name only when complete (written as ``.NAME.medenhance-partial``, then renamed). That is what
makes a batch resumable: an output that exists is finished; a partial file left by a killed run
is never taken for one and is overwritten when the file is done again.

A file that fails (unreadable, NaN values, out of memory, its worker died...) is reported with a
one-line reason and the batch goes on; the generator returns a :class:`BatchSummary`.

Tasks: :data:`TASKS` is the task table (:mod:`.tasks`: each task's default model and scale).
All tasks go through the model registry (:mod:`.zoo`: ``load_model``, ``inference_module``,
``engine_kwargs``), so a new task is one entry in that table. ``scale`` (super-resolution: 2 or 4) picks the task's
default model and is checked against the model's own factor; an upscaled output keeps the
input's geometry with its pixels tiling the input's (:func:`.lazy.upscaled_like`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import lazy, runtime, tasks, volume_stores, zoo
from .engine import Cancelled, Progress
from .jobs import drive

if TYPE_CHECKING:
    import torch

    from .io import Volume

__all__ = [
    "DEFAULT_PATTERNS",
    "TASKS",
    "BatchSummary",
    "Failure",
    "FileEvent",
    "FileJob",
    "FileResult",
    "LoadedModel",
    "TaskSpec",
    "batch",
    "find_inputs",
    "iter_batch",
    "iter_process_file",
    "load_task_model",
    "model_loads",
    "output_path",
    "resolve_model",
    "run_job",
    "task_spec",
]

#: Inputs a folder batch picks up when no pattern is given.
DEFAULT_PATTERNS: tuple[str, ...] = ("*.tif", "*.tiff", "*.nii", "*.nii.gz")


# --------------------------------------------------------------------------------------------
# tasks


#: How a task finds and runs its model: the task table's :class:`~.tasks.Task` (``name``,
#: ``default_model`` with ``{scale}`` for the factor asked for, ``default_scale``...).
TaskSpec = tasks.Task

#: Tasks a batch can run: the task table (its models come from the registry).
TASKS: dict[str, TaskSpec] = tasks.TASKS


def task_spec(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``task``.

    Raises:
        ValueError: unknown task.
    """
    spec = TASKS.get(task)
    if spec is not None:
        return spec
    raise ValueError(f"unknown task {task!r}; available tasks: {', '.join(sorted(TASKS))}")


def _default_name(spec: TaskSpec, model: str | os.PathLike | None, scale: int | None) -> str | os.PathLike:
    """``model``, or the task's default model for ``scale`` (the task's own default scale)."""
    if scale is not None and (isinstance(scale, bool) or int(scale) != scale or scale < 1):
        raise ValueError(f"scale must be a positive integer; got {scale!r}")
    if model is not None:
        return model
    return spec.default_model_name(scale)


def resolve_model(
    task: str, model: str | os.PathLike | None = None, scale: int | None = None
) -> zoo.ModelInfo:
    """The registry entry of the model ``task`` runs, checked before anything is read.

    ``model``: a registered name or a weights path; None = the task's default for ``scale``
    (``msgan-x2`` for ``task="sr", scale=2``). ``scale``: the upscaling factor asked for;
    None = the model's own (the default model's: :attr:`TaskSpec.default_scale`).

    Raises:
        ValueError / WeightsError: unknown task or model (the message lists the available
            ones), a model of another task, bad weights, or a model whose factor is not
            ``scale``.
    """
    spec = task_spec(task)
    info = zoo.get_model(_default_name(spec, model, scale), spec.name)
    if scale is not None and info.scale != int(scale):
        others = [m.name for m in zoo.list_models(spec.name) if m.scale == int(scale)]
        raise ValueError(
            f"{spec.name} model {info.name!r} upscales ×{info.scale}, not ×{int(scale)}: use a "
            f"×{int(scale)} model" + (f" ({', '.join(others)})" if others else "")
            + f" or scale {info.scale}"
        )
    return info


#: A model ready for the engine (the registry's :class:`~.runtime.RunnableModel`).
LoadedModel = runtime.RunnableModel


def load_task_model(
    task: str,
    model: str | os.PathLike | None,
    device: str | torch.device,
    scale: int | None = None,
) -> LoadedModel:
    """The model of ``task``, ready for the engine: a registered name or a weights path, or
    the task's default for ``scale`` (see :func:`resolve_model`). Loaded once per process and
    file (the registry's cache, :func:`~.runtime.load_runnable`): a dask worker given many files
    builds each network once.

    Raises:
        ValueError / WeightsError: unknown task, unknown model (the message lists the
            available ones), a model for another task or of another scale, bad weights, bad
            device.
    """
    spec = task_spec(task)
    name = _default_name(spec, model, scale)
    resolve_model(task, name, scale)  # the scale check, before building the network
    return runtime.load_runnable(name, device=device, task=spec.name)


def model_loads() -> int:
    """How many networks this process has built (for tests and benchmarks)."""
    return zoo.network_loads()


# --------------------------------------------------------------------------------------------
# one file


def iter_process_file(
    src: str | os.PathLike | Volume,
    dst: str | os.PathLike,
    *,
    task: str = "denoise",
    model: str | os.PathLike | None = None,
    scale: int | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    rgb: bool | None = None,
    block_bytes: int = lazy.DEFAULT_BLOCK_BYTES,
    cancel: Callable[[], bool] | None = None,
    ensemble: bool = False,
) -> Generator[Progress, None, int]:
    """Restore one file into ``dst`` block by block; a generator of engine :class:`Progress`.

    ``src`` is a path :func:`~napari_medenhance.core.io.read_volume` reads (TIFF, NIfTI,
    DICOM, zarr) or a :class:`~napari_medenhance.core.io.Volume` already read; the format of
    ``dst`` follows its suffix. The output keeps the input's dtype, shape and spacing; a TIFF
    written from a TIFF keeps the input's own TIFF metadata (ImageJ keys, resolution tags bit
    for bit), a NIfTI its header and affine. It appears at ``dst`` only once complete.

    ``ensemble`` runs every tile in its 8 rotations and flips and averages them
    (:func:`~napari_medenhance.core.engine.iter_apply`). ``scale`` picks and checks the model
    as :func:`resolve_model` does. An upscaling model
    (``task="sr"``) multiplies Y and X by its factor; the output's spacing and origin (NIfTI /
    DICOM affine) are then those :func:`.lazy.upscaled_like` gives, the same geometry as
    ``medenhance sr IN OUT --scale F`` writes.

    Returns:
        (``StopIteration.value``) the number of 2-D planes processed.

    Raises:
        ValueError / WeightsError / OSError: unreadable input, bad model, NaN values, ...
        Cancelled: ``cancel()`` returned True (no output is left at ``dst``).
    """
    from .io import read_volume

    loaded = load_task_model(task, model, device, scale)
    vol = src if hasattr(src, "data") and hasattr(src, "meta") else read_volume(src, lazy=True)
    if rgb is None:
        rgb = bool(vol.rgb)
    tiff_kwargs = None
    same_grid = int(loaded.engine_kwargs.get("scale", 1)) == 1
    if vol.format == "tiff" and same_grid and volume_stores.full_suffix(Path(dst)).lower() in (".tif", ".tiff"):
        tiff_kwargs = dict(vol.meta.get("tiff_kw") or {})
        photometric = vol.meta.get("photometric")
        if photometric is not None:  # keep the input's own colour interpretation
            tiff_kwargs["photometric"] = "rgb" if int(photometric) == 2 else "minisblack"
    yield from lazy.iter_process_volume(
        vol, loaded.module, dst, rgb=rgb, device=device, tile=tile, block_bytes=block_bytes,
        tiff_kwargs=tiff_kwargs, cancel=cancel, ensemble=ensemble, **loaded.engine_kwargs,
    )
    shape = tuple(int(n) for n in vol.data.shape)
    return math.prod(shape[: len(shape) - (3 if rgb else 2)])


@dataclass(frozen=True)
class FileJob:
    """One file of a batch, as sent to a worker (plain values only, so it pickles cheaply)."""

    src: str
    dst: str
    task: str
    model: str  # a weights path, resolved (and its scale checked) on the client: no registry
    device: str
    tile: int | None = None
    rgb: bool | None = None
    block_bytes: int = lazy.DEFAULT_BLOCK_BYTES
    torch_threads: int | None = None  # set on the worker before its first job
    ensemble: bool = False


@dataclass(frozen=True)
class FileResult:
    """What became of one file.

    ``status`` is ``"written"``, ``"skipped"`` (its output existed), ``"failed"`` (``reason``
    says why, in one line) or ``"cancelled"``. ``worker`` names the process that ran it
    (``host:pid``) and ``model_loads`` is how many models that process had loaded by then.
    """

    src: str
    dst: str
    status: str
    reason: str | None = None
    planes: int = 0
    seconds: float = 0.0
    worker: str | None = None
    model_loads: int = 0


def _reason(e: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    line = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _in_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def _worker_name() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def run_job(job: FileJob, cancel: Callable[[], bool] | None = None) -> FileResult:
    """Process one :class:`FileJob`; never raises for a bad file (the result says why).

    This is the unit of work on a dask worker. Exceptions become ``status="failed"``;
    :class:`Cancelled` becomes ``status="cancelled"`` (the partial output is already removed).
    """
    t0 = time.perf_counter()
    if job.torch_threads:
        import torch

        if torch.get_num_threads() != job.torch_threads:
            torch.set_num_threads(job.torch_threads)
    try:
        import dask

        # On a worker, one dask thread = one job: dask inputs (zarr...) are read in that thread
        # instead of starting a thread pool of their own beside the worker's.
        sync = dask.config.set(scheduler="synchronous") if _in_worker() else contextlib.nullcontext()
        with sync:
            planes = drive(iter_process_file(
                job.src, job.dst, task=job.task, model=job.model, device=job.device,
                tile=job.tile, rgb=job.rgb, block_bytes=job.block_bytes, cancel=cancel,
                ensemble=job.ensemble,
            ))
        status, reason = "written", None
    except Cancelled:
        status, reason, planes = "cancelled", "cancelled", 0
    except Exception as e:  # a bad file must not stop the batch
        status, reason, planes = "failed", _reason(e), 0
    return FileResult(job.src, job.dst, status, reason, planes, time.perf_counter() - t0,
                      _worker_name(), model_loads())


# --------------------------------------------------------------------------------------------
# a folder


def find_inputs(
    input_dir: str | os.PathLike,
    pattern: str | Sequence[str] = DEFAULT_PATTERNS,
    *,
    exclude: str | os.PathLike | None = None,
) -> list[Path]:
    """Files in ``input_dir`` matching any glob ``pattern`` (``"**/*.tif"`` recurses), sorted.

    ``.zarr`` folders count as files; hidden names (``.NAME``, e.g. partial outputs) and
    anything under ``exclude`` (the output folder, when it lies inside the input folder) are
    left out. A comma-separated string is several patterns.
    """
    root = Path(input_dir)
    patterns = [p.strip() for p in pattern.split(",")] if isinstance(pattern, str) else list(pattern)
    patterns = [p for p in patterns if p]
    if not patterns:
        raise ValueError("pattern is empty; give at least one glob pattern such as '*.tif'")
    ex = Path(exclude).resolve() if exclude is not None else None
    found: set[Path] = set()
    for pat in patterns:
        for p in root.glob(pat):
            if p.name.startswith("."):  # hidden, e.g. a partial output (.NAME.medenhance-partial...)
                continue
            if not (p.is_file() or (p.is_dir() and p.suffix.lower() == ".zarr")):
                continue
            if ex is not None and (p.resolve() == ex or ex in p.resolve().parents):
                continue
            found.add(p)
    return sorted(found)


def output_path(
    src: Path, input_dir: Path, output_dir: Path, suffix: str | None = None
) -> Path:
    """Where the result of ``src`` goes: the same relative path under ``output_dir`` (with
    ``suffix`` instead of the input's, when given, e.g. ``".zarr"``)."""
    rel = src.relative_to(input_dir)
    if suffix is None:
        return output_dir / rel
    old = volume_stores.full_suffix(rel)
    stem = rel.name[: len(rel.name) - len(old)] if old else rel.name
    return output_dir / rel.parent / (stem + (suffix if suffix.startswith(".") else "." + suffix))


@dataclass(frozen=True)
class Failure:
    """A file that could not be processed, with a one-line reason."""

    path: Path
    reason: str


@dataclass(frozen=True)
class FileEvent:
    """Progress of a batch: one per file, in completion order.

    ``done`` of ``total`` files are finished (written, skipped or failed); ``status``,
    ``reason``, ``planes``, ``seconds``, ``worker`` and ``model_loads`` describe this file
    (see :class:`FileResult`).
    """

    done: int
    total: int
    input: Path
    output: Path
    status: str
    reason: str | None = None
    planes: int = 0
    seconds: float = 0.0
    worker: str | None = None
    model_loads: int = 0


@dataclass
class BatchSummary:
    """What a batch did. ``ok`` is True when no file failed."""

    total: int = 0
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    planes: int = 0
    seconds: float = 0.0
    where: str = "in-process"

    @property
    def ok(self) -> bool:
        return not self.failed

    def format(self) -> str:
        """A few lines for a terminal: counts, throughput, then one line per failure."""
        rate = f", {self.planes / self.seconds:.2f} planes/s" if self.seconds > 0 and self.planes else ""
        lines = [
            f"{self.total} file(s): {len(self.written)} written, {len(self.skipped)} skipped "
            f"(output already there), {len(self.failed)} failed — {self.seconds:.1f} s "
            f"{self.where}{rate}"
        ]
        lines += [f"  FAILED {f.path}: {f.reason}" for f in self.failed]
        return "\n".join(lines)


def iter_batch(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    task: str = "denoise",
    model: str | os.PathLike | None = None,
    scale: int | None = None,
    pattern: str | Sequence[str] = DEFAULT_PATTERNS,
    device: str = "auto",
    tile: int | None = None,
    rgb: bool | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    memory_limit: str | int | float | None = "auto",
    suffix: str | None = None,
    overwrite: bool = False,
    block_bytes: int = lazy.DEFAULT_BLOCK_BYTES,
    cancel: Callable[[], bool] | None = None,
    ensemble: bool = False,
) -> Generator[FileEvent, None, BatchSummary]:
    """Restore every matching file of ``input_dir`` into ``output_dir``; a generator.

    Args:
        input_dir: folder of inputs (TIFF, NIfTI, DICOM, zarr: what ``read_volume`` reads).
        output_dir: folder for the results (created), one per input at the same relative path
            and name (``suffix`` changes the format, e.g. ``".zarr"``). Must differ from
            ``input_dir``.
        task: ``"denoise"``, ``"enhance"`` or ``"sr"`` (see :data:`TASKS`).
        model: registered model name or ``.safetensors`` path; None = the task's default
            (for ``scale``: ``msgan-x2`` / ``msgan-x4``).
        scale: upscaling factor (``"sr"``: 2 or 4); the model must upscale by it. None = the
            model's own. Outputs are ``scale`` times larger in Y and X, with the geometry of
            :func:`.lazy.upscaled_like` (the same as ``medenhance sr IN OUT --scale F``).
        pattern: glob pattern(s), relative to ``input_dir``; default ``*.tif, *.tiff, *.nii,
            *.nii.gz``.
        device, tile, rgb, ensemble: as for :func:`napari_medenhance.denoise` (per worker on a
            cluster).
        scheduler: None runs in this process; ``"local"`` starts a ``LocalCluster`` of
            ``n_workers`` processes (1 thread each, ``memory_limit`` each); an address
            (``"tcp://host:8786"``) or a ``distributed.Client`` uses that cluster. Workers read
            the inputs and write the outputs themselves, so both folders must be reachable from
            them under the same paths.
        overwrite: redo files whose output exists (default: skip them, which resumes a batch).
        block_bytes: see :func:`.lazy.iter_process_volume`.
        cancel: polled between tiles (in-process) or while waiting (cluster); True stops the
            batch with :class:`Cancelled`, removing the partial output of the current file(s).

    Yields:
        :class:`FileEvent` per file (skipped files first), as each finishes.

    Returns:
        :class:`BatchSummary` (``StopIteration.value``).

    Raises:
        ValueError: missing input folder, output folder equal to the input folder, no matching
            files is *not* an error (an empty summary), unknown task / model / device, a model
            of another scale, bad scheduler.
        Cancelled: ``cancel()`` returned True.
    """
    from . import cluster

    t0 = time.perf_counter()
    src_dir, out_dir = Path(input_dir).expanduser(), Path(output_dir).expanduser()
    if not src_dir.is_dir():
        raise ValueError(f"input folder {src_dir} does not exist or is not a folder")
    if out_dir.resolve() == src_dir.resolve():
        raise ValueError(
            f"the output folder is the input folder ({src_dir}); give another output folder "
            "(results keep the input file names)"
        )
    spec = task_spec(task)
    info = resolve_model(spec.name, model, scale)
    if scheduler is None or scheduler == "local":
        from .engine import resolve_device

        resolve_device(device)  # a remote cluster's workers check the device themselves
    files = find_inputs(src_dir, pattern, exclude=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    summary = BatchSummary(total=len(files), where=cluster.cluster_label(scheduler))
    done = 0

    def record(res: FileResult) -> FileEvent:
        nonlocal done
        done += 1
        src = Path(res.src)
        if res.status == "written":
            summary.written.append(src)
            summary.planes += res.planes
        elif res.status == "skipped":
            summary.skipped.append(src)
        else:
            summary.failed.append(Failure(src, res.reason or res.status))
        return FileEvent(done, len(files), src, Path(res.dst), res.status, res.reason,
                         res.planes, res.seconds, res.worker, res.model_loads)

    jobs: list[FileJob] = []
    for src in files:
        dst = output_path(src, src_dir, out_dir, suffix)
        if dst.exists() and not overwrite:
            yield record(FileResult(str(src), str(dst), "skipped"))
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        jobs.append(FileJob(str(src), str(dst), spec.name, str(info.path), str(device), tile, rgb,
                            block_bytes, ensemble=ensemble))

    if scheduler is None:
        for job in jobs:
            if cancel is not None and cancel():
                raise Cancelled(f"batch cancelled after {done} of {len(files)} files")
            res = run_job(job, cancel)
            if res.status == "cancelled":
                raise Cancelled(f"batch cancelled after {done} of {len(files)} files")
            yield record(res)
    elif jobs:
        if scheduler == "local":
            n = n_workers if n_workers is not None else min(os.cpu_count() or 1, len(jobs))
            # Each worker gets its share of the cores for torch (dask sets OMP threads to 1).
            threads = max(1, (os.cpu_count() or 1) // max(1, n))
            jobs = [_with_threads(j, threads) for j in jobs]
        else:
            n = n_workers
        with cluster.open_client(scheduler, n_workers=n, memory_limit=memory_limit) as client:
            for job, res, err in cluster.iter_on_cluster(client, run_job, jobs, cancel=cancel):
                if err is not None:
                    res = FileResult(job.src, job.dst, "failed", _reason(err))
                yield record(res)
    summary.seconds = time.perf_counter() - t0
    return summary


def _with_threads(job: FileJob, threads: int) -> FileJob:
    from dataclasses import replace

    return replace(job, torch_threads=threads)


def batch(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    progress: Callable[[FileEvent], None] | None = None,
    **kw: Any,
) -> BatchSummary:
    """Run :func:`iter_batch` to the end (``progress`` gets each :class:`FileEvent`)."""
    return drive(iter_batch(input_dir, output_dir, **kw), progress)
