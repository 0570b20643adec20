"""Public restoration functions: the model registry and the inference engine, put together.

Re-exported from the package: ``napari_medenhance.list_models``, ``napari_medenhance.denoise``
and ``napari_medenhance.enhance``. Every restoration task is one thin pair of functions over
:func:`_iter_task` (registry lookup for the task, the network's adapter, the engine).
Qt- and napari-free, so they run in scripts, the CLI, tests and dask workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .core import engine, zoo
from .core.engine import Cancelled, Progress
from .core.jobs import drive
from .core.zoo import ModelInfo

if TYPE_CHECKING:
    import torch

__all__ = [
    "Cancelled", "ModelInfo", "Progress", "denoise", "enhance", "iter_denoise", "iter_enhance",
    "list_models",
]


def list_models(task: str | None = None) -> list[ModelInfo]:
    """The installed models (shipped, then the user's own), optionally of one task.

    Returns :class:`~napari_medenhance.core.zoo.ModelInfo` objects rather than dicts: they
    carry ``name``, ``task``, ``arch``, ``config``, ``scale``, ``channels``, ``source``
    (``"shipped"`` / ``"user"``), ``path`` and ``card``, and ``dataclasses.asdict(info)`` gives
    a dict when one is needed. ``task`` is ``"denoise"``, ``"enhance"``, ``"sr"`` or None (all).
    """
    return zoo.list_models(task)


def iter_denoise(
    image: Any,
    model: str | os.PathLike = "dran",
    *,
    rgb: bool | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    data_range: Sequence[float] | None = None,
    cancel: Callable[[], bool] | None = None,
    plane: tuple[int, ...] | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """:func:`denoise` as a generator of :class:`Progress` events (one per tile).

    For thread workers that stop between tiles (napari's ``worker.quit()``); the result is the
    generator's return value (``StopIteration.value``, or ``yield from``).

    ``plane``: index into the leading (non-plane) axes, e.g. ``(12,)`` for Z = 12 of a
    ``(Z, Y, X)`` stack; only that plane is denoised and returned, shaped ``(Y, X)`` (or
    ``(Y, X, C)``), with the intensity mapping of the whole array, so it equals that plane of
    the whole-stack result.

    Arguments and errors are those of :func:`denoise`.
    """
    return (
        yield from _iter_task(
            "denoise", image, model, rgb=rgb, device=device, tile=tile, data_range=data_range,
            cancel=cancel, plane=plane,
        )
    )


def _iter_task(
    task: str,
    image: Any,
    model: str | os.PathLike,
    *,
    rgb: bool | None,
    device: str | torch.device,
    tile: int | None,
    data_range: Sequence[float] | None,
    cancel: Callable[[], bool] | None,
    plane: tuple[int, ...] | None,
) -> Generator[Progress, None, np.ndarray]:
    """The body of every ``iter_<task>``: a model of ``task`` run by the engine, tile by tile.

    ``task`` is a :data:`~napari_medenhance.core.zoo.TASKS` name; the registry refuses a model
    of another task, :func:`~napari_medenhance.core.zoo.inference_module` adapts the network's
    value convention and :func:`~napari_medenhance.core.zoo.engine_kwargs` its scale, channels
    and padding, so a new task needs no code here.
    """
    net, info = zoo.load_model(model, device=device, task=task)
    module = zoo.inference_module(net, info)
    if plane is not None:
        image, data_range = _one_plane(image, plane, rgb, data_range)
    return (
        yield from engine.iter_apply(
            image, module, rgb=rgb, device=device, tile=tile, data_range=data_range,
            cancel=cancel, **zoo.engine_kwargs(info),
        )
    )


def _one_plane(
    image: Any, plane: tuple[int, ...], rgb: bool | None, data_range: Sequence[float] | None
) -> tuple[Any, Sequence[float] | None]:
    """(the plane, the data range of the whole array) for ``iter_<task>(plane=...)``."""
    # The engine's own rules (NaN refusal, [0, 1] floats kept, whole-array min/max), so a
    # preview of one plane matches the whole-stack run.
    arr, is_dask = engine._as_array(image)
    is_rgb, has_alpha = engine._resolve_rgb(tuple(arr.shape), rgb)
    n_lead = arr.ndim - (3 if is_rgb else 2)
    plane = tuple(int(i) for i in plane)
    if len(plane) != n_lead:
        raise ValueError(
            f"plane must index the {n_lead} leading axes of an array shaped {arr.shape}; "
            f"got {plane}"
        )
    for i, n in zip(plane, arr.shape):
        if not 0 <= i < n:
            raise ValueError(f"plane {plane} is outside an array shaped {arr.shape}")
    if data_range is None:
        engine._check_dtype(np.dtype(arr.dtype))
        lo, hi = engine._intensity_range(arr, has_alpha, None, is_dask)
        # A constant array: let the engine handle the (then constant) plane on its own.
        data_range = (lo, hi) if hi > lo else None
    return arr[plane], data_range


def denoise(
    image: Any,
    model: str | os.PathLike = "dran",
    *,
    rgb: bool | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    data_range: Sequence[float] | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Denoise every 2-D plane of an image; same shape and dtype as the input.

    Args:
        image: numpy or dask array ``(..., Y, X)`` or ``(..., Y, X, 3|4)`` (RGB(A), alpha
            passed through); leading axes (Z, T, ...) are independent planes. Never modified.
        model: a registered model name (see :func:`list_models`) or a ``.safetensors`` path.
        rgb: colour image with channels last; None guesses as napari does (last axis 3 or 4).
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda[:N]"`` or ``"mps"``.
        tile: tile edge in pixels; None whole planes up to 1024², else 512-pixel tiles.
        data_range: ``(lo, hi)`` intensities mapped to the network's [0, 1]; None: floats in
            [0, 1] as they are, other data by the whole array's min and max.
        progress: called with a :class:`Progress` after every tile (``total`` tiles in all).
        cancel: polled before every tile; returning True raises :class:`Cancelled`.

    Returns:
        numpy array of the input's shape and dtype, in the input's intensity units.

    Raises:
        ValueError: unknown model (the message lists the available ones), a model for another
            task, NaN / inf values, unsupported dtype, unavailable device.
        WeightsError: the weights file is missing, pickled, corrupt or does not fit its network.
        Cancelled: ``cancel()`` returned True.
        RuntimeError: out of device memory (the message suggests a smaller ``tile``).
    """
    return drive(
        iter_denoise(image, model, rgb=rgb, device=device, tile=tile, data_range=data_range, cancel=cancel),
        progress,
    )


def iter_enhance(
    image: Any,
    model: str | os.PathLike = "dpe",
    *,
    rgb: bool | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    data_range: Sequence[float] | None = None,
    cancel: Callable[[], bool] | None = None,
    plane: tuple[int, ...] | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """:func:`enhance` as a generator of :class:`Progress` events (one per tile).

    The result is the generator's return value; ``plane`` selects one plane of the leading
    axes, enhanced with the whole array's intensity mapping, exactly as in
    :func:`iter_denoise`. Arguments and errors are those of :func:`enhance`.
    """
    return (
        yield from _iter_task(
            "enhance", image, model, rgb=rgb, device=device, tile=tile, data_range=data_range,
            cancel=cancel, plane=plane,
        )
    )


def enhance(
    image: Any,
    model: str | os.PathLike = "dpe",
    *,
    rgb: bool | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    data_range: Sequence[float] | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Perceptually enhance every 2-D plane of an image (DPE); same shape and dtype as the input.

    Args:
        image: numpy or dask array ``(..., Y, X)`` or ``(..., Y, X, 3|4)`` (RGB(A), alpha
            passed through); leading axes (Z, T, ...) are independent planes. Grayscale
            planes are replicated to the network's 3 channels and its output averaged back.
            Never modified.
        model: a registered ``"enhance"`` model name (see :func:`list_models`) or a
            ``.safetensors`` path.
        rgb, device, tile, data_range, progress, cancel: as in :func:`denoise` (tiles are
            padded to the network's multiple, 16 px for DPE, and cropped back).

    Returns:
        numpy array of the input's shape and dtype, in the input's intensity units.

    Raises:
        ValueError: unknown model (the message lists the installed enhance models and how to
            add one), a model for another task, NaN / inf values, unsupported dtype,
            unavailable device.
        WeightsError: the weights file is missing, pickled, corrupt or does not fit its network.
        Cancelled: ``cancel()`` returned True.
        RuntimeError: out of device memory (the message suggests a smaller ``tile``).
    """
    return drive(
        iter_enhance(image, model, rgb=rgb, device=device, tile=tile, data_range=data_range, cancel=cancel),
        progress,
    )
