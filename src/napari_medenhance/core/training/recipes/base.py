"""What every training recipe repeats, in one place.

:class:`RecipeBase` is the common base of the recipes (denoise, enhance, SR, LaMEGAN, paired);
the interface the loop relies on stays the :class:`~napari_medenhance.core.training.recipes.Recipe`
protocol. The base holds the network's configuration from its constructor's signature
(:func:`network_config`: defaults, unknown keys refused, JSON-normalised), ``build()``, a no-op
``on_step``, the evaluation guard (:func:`evaluating`: eval mode and no gradients, the mode
restored afterwards; every recipe's ``evaluate`` runs under it, because the training scripts,
benchmarks and tests call ``evaluate`` directly, outside the loop's own guard) and the small
helpers of validation and ``describe()``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from ...nets import build as _build

__all__ = [
    "RecipeBase",
    "constructor_defaults",
    "evaluating",
    "json_normalised",
    "modality_mean",
    "network_config",
    "plane_ids",
]


def constructor_defaults(ctor: Any) -> dict[str, Any]:
    """The keyword defaults of a network's constructor (its full config)."""
    return {
        name: p.default
        for name, p in inspect.signature(ctor).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def json_normalised(value: Any) -> Any:
    """JSON-normalised copy (tuples → lists), the form checkpoints and headers store."""
    return json.loads(json.dumps(value, sort_keys=True))


def network_config(
    ctor: Any,
    given: Mapping[str, Any] | None,
    what: str,
    *,
    fixed: Mapping[str, Any] | None = None,
    normalise: bool = True,
) -> dict[str, Any]:
    """``ctor``'s keyword defaults overridden by ``given``, then by ``fixed``.

    Args:
        ctor: the network class (or factory) whose signature holds the defaults.
        given: the caller's overrides; a key the constructor does not take raises
            ``ValueError("unknown <what> config keys [...]; known: [...]")``.
        what: the network's name in that message (e.g. ``"DPE"``, ``"critic"``).
        fixed: values the recipe imposes whatever ``given`` says.
        normalise: return the JSON-normalised copy (:func:`json_normalised`).
    """
    defaults = constructor_defaults(ctor)
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {what} config keys {unknown}; known: {sorted(defaults)}")
    config = {**defaults, **dict(given or {}), **dict(fixed or {})}
    return json_normalised(config) if normalise else config


@contextlib.contextmanager
def evaluating(net: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``with evaluating(net):`` eval mode and no gradients; the mode is restored afterwards."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            yield net
    finally:
        net.train(was_training)


def modality_mean(
    rows: Iterable[Mapping[str, Any]], key: str, keep: Callable[[Mapping[str, Any]], bool]
) -> float:
    """Mean over modalities of the per-modality means of ``key`` over the rows ``keep``
    accepts (so many small planes of one modality do not outweigh another); NaN when none."""
    by_mod: dict[str, list[float]] = {}
    for r in rows:
        if keep(r):
            by_mod.setdefault(r["modality"], []).append(float(r[key]))
    if not by_mod:
        return float("nan")
    return float(np.mean([np.mean(v) for v in by_mod.values()]))


def plane_ids(planes: Iterable[Any]) -> list[str]:
    """``["modality:name", ...]``: how ``describe()`` lists planes."""
    return [f"{p.modality}:{p.name}" for p in planes]


class RecipeBase:
    """The shared part of the recipes (module docstring). A subclass sets ``task``, ``arch``,
    ``config`` (usually from :func:`network_config`), ``primary_metric`` and
    ``higher_is_better``, and defines the data, the loss and the validation."""

    task: str
    arch: str
    config: dict[str, Any]
    #: Raised when the validation starts to measure the same network differently (not when the
    #: network changes): a run resumed across such a change re-measures its best model before
    #: comparing new validations with it (:func:`..loop.train`).
    validation_version: int = 0

    @staticmethod
    def _require_planes(pool: Any, what: str = "") -> None:
        """Refuse a pool without training or without validation planes."""
        name = f"the {what} pool" if what else "the pool"
        if not pool.train:
            raise ValueError(f"{name} has no training planes")
        if not pool.val:
            raise ValueError(f"{name} has no validation planes")

    def build(self) -> torch.nn.Module:
        """A freshly initialised ``arch`` network with :attr:`config`."""
        return _build(self.arch, **self.config)

    def on_step(self, net: torch.nn.Module, step: int, total: int) -> None:
        """Nothing changes during a run (constant objective; the loop owns the rate)."""

    @staticmethod
    def to_plane(chw: np.ndarray, rgb: bool) -> np.ndarray:
        """3×Y×X -> Y×X×3 (RGB) or Y×X (gray: the channel mean, as the engine returns it)."""
        return np.ascontiguousarray(chw.transpose(1, 2, 0)) if rgb else chw.mean(axis=0)

    def validation_items(self) -> list[dict[str, Any]]:
        """The fixed validation set, one dict per plane (per plane and ``draw`` for
        enhancement; ``plane`` and the recipe's arrays: e.g. ``clean`` / ``degraded`` /
        ``inputs`` for enhancement, ``noisy`` for denoising):
        what gates and benchmarks score other methods on. Do not modify them."""
        return list(self._val)
