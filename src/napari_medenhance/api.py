"""Public restoration functions: the model registry and the inference engine, put together.

Re-exported from the package: ``napari_medenhance.list_models``, ``napari_medenhance.denoise``,
``napari_medenhance.enhance`` and ``napari_medenhance.super_resolve``. Every restoration task is
one thin pair of functions over :func:`_iter_task` (registry lookup for the task, the network's
adapter, the engine); super-resolution adds ROIs (``core.roi``) on top of it.
Qt- and napari-free, so they run in scripts, the CLI, tests and dask workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .core import engine, intensity, runtime, tasks, zoo
from .core.engine import Cancelled, Progress
from .core.jobs import drive
from .core.zoo import ModelInfo

if TYPE_CHECKING:
    import torch

__all__ = [
    "Cancelled", "ModelInfo", "Progress", "denoise", "enhance", "iter_denoise", "iter_enhance",
    "iter_super_resolve", "list_models", "super_resolve",
]


# The default models of the task table (core.tasks), for the signatures below.
_DENOISE = tasks.default_model_name("denoise")
_ENHANCE = tasks.default_model_name("enhance")


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
    model: str | os.PathLike = _DENOISE,
    *,
    rgb: bool | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    data_range: Sequence[float] | None = None,
    cancel: Callable[[], bool] | None = None,
    plane: tuple[int, ...] | None = None,
    ensemble: bool = False,
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
            cancel=cancel, plane=plane, ensemble=ensemble,
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
    ensemble: bool = False,
) -> Generator[Progress, None, np.ndarray]:
    """The body of every ``iter_<task>``: a model of ``task`` run by the engine, tile by tile.

    ``task`` is a :data:`~napari_medenhance.core.zoo.TASKS` name; the registry refuses a model
    of another task, :func:`~napari_medenhance.core.runtime.inference_module` adapts the network's
    value convention and :func:`~napari_medenhance.core.runtime.engine_kwargs` its scale, channels
    and padding, so a new task needs no code here.
    """
    net, info = zoo.load_model(model, device=device, task=task)
    module = runtime.inference_module(net, info)
    kw = runtime.engine_kwargs(info)
    if plane is not None:
        whole = image
        image, data_range = _one_plane(image, plane, rgb, data_range)
        if "input_percentiles" in kw:  # the stretch of the whole stack, as a full run uses
            kw["stretch_range"] = intensity.input_stretch(whole, kw["input_percentiles"], rgb=rgb)
    return (
        yield from engine.iter_apply(
            image, module, rgb=rgb, device=device, tile=tile, data_range=data_range,
            cancel=cancel, ensemble=ensemble, **kw,
        )
    )


def _one_plane(
    image: Any, plane: tuple[int, ...], rgb: bool | None, data_range: Sequence[float] | None
) -> tuple[Any, Sequence[float] | None]:
    """(the plane, the data range of the whole array) for ``iter_<task>(plane=...)``."""
    # The engine's own rules (NaN refusal, [0, 1] floats kept, whole-array min/max), so a
    # preview of one plane matches the whole-stack run.
    arr, is_dask = intensity.as_array(image)
    is_rgb, has_alpha = intensity.resolve_rgb(tuple(arr.shape), rgb)
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
        intensity.check_dtype(np.dtype(arr.dtype))
        lo, hi = intensity.intensity_range(arr, has_alpha, None, is_dask)
        # A constant array: let the engine handle the (then constant) plane on its own.
        data_range = (lo, hi) if hi > lo else None
    return arr[plane], data_range


def denoise(
    image: Any,
    model: str | os.PathLike = _DENOISE,
    *,
    rgb: bool | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    data_range: Sequence[float] | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    ensemble: bool = False,
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
        ensemble: geometric self-ensemble: every tile is denoised in its 8 rotations and
            flips and the results, turned back, are averaged; 8× the time (and 8× the progress
            events) for a better estimate (about +0.1 dB PSNR, benchmarks/results_ensemble.md).

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
        iter_denoise(image, model, rgb=rgb, device=device, tile=tile, data_range=data_range,
                  cancel=cancel, ensemble=ensemble),
        progress,
    )


def iter_enhance(
    image: Any,
    model: str | os.PathLike = _ENHANCE,
    *,
    rgb: bool | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    data_range: Sequence[float] | None = None,
    cancel: Callable[[], bool] | None = None,
    plane: tuple[int, ...] | None = None,
    ensemble: bool = False,
) -> Generator[Progress, None, np.ndarray]:
    """:func:`enhance` as a generator of :class:`Progress` events (one per tile).

    The result is the generator's return value; ``plane`` selects one plane of the leading
    axes, enhanced with the whole array's intensity mapping, exactly as in
    :func:`iter_denoise`. Arguments and errors are those of :func:`enhance`.
    """
    return (
        yield from _iter_task(
            "enhance", image, model, rgb=rgb, device=device, tile=tile, data_range=data_range,
            cancel=cancel, plane=plane, ensemble=ensemble,
        )
    )


def enhance(
    image: Any,
    model: str | os.PathLike = _ENHANCE,
    *,
    rgb: bool | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    data_range: Sequence[float] | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    ensemble: bool = False,
) -> np.ndarray:
    """Perceptually enhance every 2-D plane of an image (DPE); same shape and dtype as the input.

    Args:
        image: numpy or dask array ``(..., Y, X)`` or ``(..., Y, X, 3|4)`` (RGB(A), alpha
            passed through); leading axes (Z, T, ...) are independent planes. Grayscale
            planes are replicated to the network's 3 channels and its output averaged back.
            Never modified.
        model: a registered ``"enhance"`` model name (see :func:`list_models`) or a
            ``.safetensors`` path.
        rgb, device, tile, data_range, progress, cancel, ensemble: as in :func:`denoise`
            (tiles are padded to the network's multiple, 16 px for DPE, and cropped back).

    A model trained on contrast-stretched input (its header has ``input_percentiles``, as
    ``train_dpe.py`` writes by default: 0.1 and 99.9) sees every plane with those percentiles
    of the *whole* array mapped to 0 and 1 (clipped), so what it sees does not depend on how the
    data happen to be scaled (a hot pixel in a 16-bit stack, an offset); its output is mapped
    back to the input's own range (min to max, or ``data_range``).

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
        iter_enhance(image, model, rgb=rgb, device=device, tile=tile, data_range=data_range,
                  cancel=cancel, ensemble=ensemble),
        progress,
    )


# -------------------------------------------------------------------------- super-resolution


def _sr_model(model: str | os.PathLike | None, scale: int) -> str | os.PathLike:
    """The model to use for ``scale`` (the task table's ``msgan-x{scale}`` by default), checked
    to upscale by it."""
    sr = tasks.TASKS["sr"]
    shipped = " and ".join(str(f) for f in sr.scales)
    if int(scale) != scale or scale < 2:
        raise ValueError(f"scale must be an integer >= 2 (the shipped models do {shipped}); got {scale!r}")
    if model is None:
        if scale not in sr.scales:
            raise ValueError(
                f"no default model for scale={scale}: the shipped models are "
                f"{' and '.join(sr.default_models)}; pass scale="
                f"{' or '.join(str(f) for f in sr.scales)}, or model= a ×{scale} model of your own"
            )
        model = sr.default_model_name(scale)
    info = zoo.get_model(model, task="sr")
    if info.scale != scale:
        others = [m.name for m in zoo.list_models("sr") if m.scale == scale]
        raise ValueError(
            f"model {info.name!r} upscales ×{info.scale}, not ×{scale}; pass scale={info.scale}"
            + (f", or one of the ×{scale} models: {', '.join(others)}" if others else "")
        )
    return model


def iter_super_resolve(
    image: Any,
    scale: int = 4,
    model: str | os.PathLike | None = None,
    roi: Any = None,
    *,
    rgb: bool | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    data_range: Sequence[float] | None = None,
    cancel: Callable[[], bool] | None = None,
    planes: tuple[int | slice, ...] | None = None,
    ensemble: bool = False,
) -> Generator[Progress, None, np.ndarray | list[np.ndarray]]:
    """:func:`super_resolve` as a generator of :class:`Progress` events (one per tile, counted
    over all ROIs and planes); the result is the generator's return value.

    ``planes``: a basic index into the leading (non-plane) axes, applied before the ROIs, e.g.
    ``(slice(3, 9),)`` for Z = 3..8 of a ``(Z, Y, X)`` stack (slices keep the axis, integers
    drop it). The intensity mapping is still that of the whole array, so a subset of planes or
    an ROI is mapped exactly as the whole image would be. Other arguments and errors are those
    of :func:`super_resolve`.
    """
    from .core.roi import ROI, check_roi

    model = _sr_model(model, scale)
    arr, is_dask = intensity.as_array(image)
    intensity.check_dtype(np.dtype(arr.dtype))
    is_rgb, has_alpha = intensity.resolve_rgb(tuple(arr.shape), rgb)
    plane_nd = 3 if is_rgb else 2
    if arr.ndim < plane_nd:
        raise ValueError(f"expected an image with at least 2 dimensions (Y, X); got {arr.shape}")
    n_lead = arr.ndim - plane_nd
    height, width = (int(n) for n in arr.shape[n_lead : n_lead + 2])
    single = roi is None or isinstance(roi, ROI) or (
        len(roi) == 4 and all(isinstance(v, (int, float, np.integer, np.floating)) for v in roi)
    )
    boxes = [(0, height, 0, width)] if roi is None else ([roi] if single else list(roi))
    if not boxes:
        raise ValueError("roi is an empty list; give (y0, y1, x0, x1) or a list of them")
    names = [f"ROI {k}" if len(boxes) > 1 else "ROI" for k in range(1, len(boxes) + 1)]
    rois = [check_roi(b, (height, width), n) for b, n in zip(boxes, names)]
    for r, n in zip(rois, names):
        if min(r.shape) < 2:
            raise ValueError(
                f"{n} is {r.shape[0]}×{r.shape[1]} pixels after clipping to the image; "
                "super-resolution needs at least 2×2"
            )
    if data_range is None and (roi is not None or planes is not None):
        # One mapping for the whole array (as for iter_denoise(plane=...)): an ROI's intensities
        # must not be stretched by its own min and max.
        lo, hi = intensity.intensity_range(arr, has_alpha, None, is_dask)
        data_range = (lo, hi) if hi > lo else None
    sub = arr
    if planes is not None:
        planes = tuple(planes)
        if len(planes) > n_lead or not all(isinstance(i, (int, np.integer, slice)) for i in planes):
            raise ValueError(
                f"planes must index the {n_lead} leading axes of an array shaped {arr.shape} "
                f"with integers or slices; got {planes}"
            )
        sub = arr[planes]
        if sub.size == 0:
            raise ValueError(f"planes {planes} select no plane of an array shaped {arr.shape}")
    sub_lead = sub.ndim - plane_nd
    n_planes = int(np.prod(sub.shape[:sub_lead])) if sub_lead else 1
    border = runtime.engine_kwargs(zoo.get_model(model, task="sr")).get("border", 0)
    per_roi = [n_planes * engine.views(ensemble)
               * len(engine.plane_tiles(r.shape[0], r.shape[1], tile, border=border)) for r in rois]
    total, done, results = sum(per_roi), 0, []
    for k, r in enumerate(rois, start=1):
        crop = sub[(Ellipsis, *r.slices()) + ((slice(None),) if is_rgb else ())]
        gen = _iter_task(
            "sr", crop, model, rgb=is_rgb, device=device, tile=tile, data_range=data_range,
            cancel=cancel, plane=None, ensemble=ensemble,
        )
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                results.append(stop.value)
                break
            stage = ev.stage if len(rois) == 1 else f"ROI {k}/{len(rois)}, {ev.stage}"
            yield Progress(done + ev.done, total, stage)
        done += per_roi[k - 1]
    return results[0] if single else results


def super_resolve(
    image: Any,
    scale: int = 4,
    model: str | os.PathLike | None = None,
    roi: Any = None,
    *,
    rgb: bool | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    data_range: Sequence[float] | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    ensemble: bool = False,
) -> np.ndarray | list[np.ndarray]:
    """Super-resolve every 2-D plane of an image, or of regions of interest, by ``scale``.

    Args:
        image: numpy or dask array ``(..., Y, X)`` or ``(..., Y, X, 3|4)``; leading axes are
            independent planes. Never modified.
        scale: the factor Y and X are multiplied by (2 or 4 for the shipped models).
        model: an ``"sr"`` model name or ``.safetensors`` path; None uses ``msgan-x{scale}``.
            The model must upscale by ``scale``.
        roi: None (the whole plane), ``(y0, y1, x0, x1)`` in data pixels (half-open, clipped
            to the image), or a list of such boxes; the box applies to every plane.
        rgb, device, tile, data_range, progress, cancel, ensemble: as in :func:`denoise`.
            With an ROI, the default intensity mapping is that of the whole array, not of the
            ROI.

    Returns:
        The input's dtype and intensity units, shaped like the input with Y and X replaced by
        ``scale × (y1 − y0)`` and ``scale × (x1 − x0)``: one array, or a list (one per box)
        when ``roi`` is a list. Output pixel (i, j) of an ROI is centred at source pixel
        coordinate ``(y0 − 0.5 + (i + 0.5)/scale, x0 − 0.5 + (j + 0.5)/scale)``
        (:func:`napari_medenhance.core.roi.roi_output_affine` places it in napari).

    Raises:
        ValueError: unknown model or one of another task or factor (the message lists the
            models that fit), a malformed, empty or outside ROI, an ROI under 2×2 pixels,
            NaN / inf values, unsupported dtype, unavailable device.
        WeightsError: the weights file is missing, pickled, corrupt or does not fit its network.
        Cancelled: ``cancel()`` returned True.
        RuntimeError: out of device memory (the message suggests a smaller ``tile``).
    """
    return drive(
        iter_super_resolve(image, scale, model, roi, rgb=rgb, device=device, tile=tile,
                           data_range=data_range, cancel=cancel, ensemble=ensemble),
        progress,
    )
