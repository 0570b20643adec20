"""How the engine runs a registered model: the module it calls (value range and output
convention adapted), the engine keywords the model fixes (scale, channels, padding, bf16, the
stretch of a model trained on stretched input), and both cached with the network.

What a network's class may declare (read here, so the engine stays model-agnostic):
``value_range = (-1.0, 1.0)`` when it reads and writes [-1, 1] instead of the engine's [0, 1]
(:func:`inference_module` maps), ``pad_multiple`` when its input sides must be multiples of it
(:func:`engine_kwargs` passes the larger of that and the header's value), ``reflect_border``
when its output suffers at the edges of what it sees (the engine mirrors that many pixels around
every plane and crops them off the output), ``for_inference()``
for a faster copy of itself, and ``denoise()`` for a denoiser that predicts the noise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from . import zoo
from .device import resolve_device
from .nets import ARCHITECTURES
from .weights import WeightsError

__all__ = ["RunnableModel", "engine_kwargs", "inference_module", "input_percentiles",
           "load_runnable"]


@dataclass(frozen=True)
class RunnableModel:
    """A model ready for the engine: the module it runs (:func:`inference_module`), the
    keywords it fixes (:func:`engine_kwargs`) and its registry entry."""

    module: torch.nn.Module
    engine_kwargs: dict
    info: zoo.ModelInfo


def load_runnable(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    task: str | None = None,
) -> RunnableModel:
    """:func:`~.zoo.load_model`, adapted for the engine and cached with it (:func:`~.zoo.cached`):
    repeated calls (a batch of files, a dask worker given many) return the same object until
    the file changes.

    Raises:
        As :func:`~.zoo.load_model`, and WeightsError for a header :func:`engine_kwargs` refuses.
    """
    info = zoo.get_model(name_or_path, task)
    dev = resolve_device(device)

    def make() -> RunnableModel:
        net, loaded = zoo.load_model(name_or_path, device=dev, task=task)
        return RunnableModel(inference_module(net, loaded), engine_kwargs(loaded), loaded)

    return zoo.cached(info, dev, "runnable", make)


class _SignedRange(torch.nn.Module):
    """Adapter: a network working in [-1, 1] (e.g. DPE) run on the engine's [0, 1] values."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net(x * 2.0 - 1.0) + 1.0) * 0.5


class _DenoiseOutput(torch.nn.Module):
    """Adapter: the clean estimate of a residual-noise network (``net.denoise(x)``)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.denoise(x)


def inference_module(net: torch.nn.Module, info: zoo.ModelInfo) -> torch.nn.Module:
    """The module the engine runs for a model: image in [0, 1] -> restored image in [0, 1].

    The one place that knows a network's output convention, so the engine stays
    model-agnostic: a network with a ``for_inference()`` method is replaced by the copy it
    returns (same function, faster: DRAN folds its BatchNorms); a denoiser with a ``denoise`` method (DRAN predicts the noise from
    ``forward``) is wrapped to return ``net.denoise(x)``; a net whose ``value_range`` is
    (-1, 1) (DPE) gets ``2x - 1`` in and ``(y + 1) / 2`` out; every other net is used as it is.
    """
    # A network may offer a faster copy of itself for inference (DRAN folds its BatchNorms).
    prepare = getattr(net, "for_inference", None)
    if callable(prepare):
        net = prepare()
    if info.task == "denoise" and callable(getattr(net, "denoise", None)):
        return _DenoiseOutput(net)
    if tuple(getattr(net, "value_range", (0.0, 1.0))) == (-1.0, 1.0):
        return _SignedRange(net)
    return net


def engine_kwargs(info: zoo.ModelInfo) -> dict[str, Any]:
    """Keywords of :func:`~napari_medenhance.core.engine.iter_apply` that a model fixes.

    ``scale``: the model's upscaling factor (1, or 2 / 4 for SR models: the engine multiplies
    Y and X by it). ``pad_multiple``: the larger of the header's ``pad_multiple`` and the
    architecture class's own (DPE: 16, one factor 2 per stride-2 level). ``border``: the
    architecture class's ``reflect_border`` (DRAN: 16), when it has one. ``cpu_bf16``: the
    header says the model was validated in bf16 at a negligible cost (its card gives it).
    ``input_percentiles``: the header's (a model trained on contrast-stretched input).

    Raises:
        WeightsError: the header's ``input_percentiles`` is not a valid pair.
    """
    try:
        pad = max(1, int(info.card.get("pad_multiple", 1)))
    except (TypeError, ValueError):
        pad = 1
    try:
        pad = max(pad, int(getattr(ARCHITECTURES.get(info.arch), "pad_multiple", 1)))
    except (TypeError, ValueError):
        pass
    kw: dict[str, Any] = {"scale": info.scale, "net_channels": info.channels, "pad_multiple": pad}
    try:
        border = int(getattr(ARCHITECTURES.get(info.arch), "reflect_border", 0))
    except (TypeError, ValueError):
        border = 0
    if border > 0:
        kw["border"] = border
    if info.card.get("cpu_bf16") is True:
        kw["cpu_bf16"] = True
    pct = input_percentiles(info.card, where=str(info.path))
    if pct is not None:
        kw["input_percentiles"] = pct
    return kw


def input_percentiles(meta: dict[str, Any], where: str = "the header") -> tuple[float, float] | None:
    """The percentiles a model was trained to see its input stretched by, from its header
    metadata: the ``input_percentiles`` key, else that of its ``training`` record (a run's
    weights file, a fine-tuned or interim model as the loop wrote it); None: the input as it is.

    Raises:
        WeightsError: the value is not a pair ``0 <= lo < hi <= 100``.
    """
    training = meta.get("training")
    pct = meta.get("input_percentiles")
    if pct is None and isinstance(training, dict):
        pct = training.get("input_percentiles")
    if pct is None:
        return None
    ok = (isinstance(pct, (list, tuple)) and len(pct) == 2
          and all(isinstance(v, (int, float)) for v in pct) and 0 <= pct[0] < pct[1] <= 100)
    if not ok:
        raise WeightsError(f"{where}: its header's input_percentiles {pct!r} is not a pair "
                           "0 <= lo < hi <= 100; re-save the model with the percentiles it was "
                           "trained with")
    return float(pct[0]), float(pct[1])
