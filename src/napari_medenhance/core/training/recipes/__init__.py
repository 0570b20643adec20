"""Training recipes: everything task-specific about training, behind one small protocol.

The loop (:func:`napari_medenhance.core.training.train`) never changes when a task is added; a
new task is a new recipe module here. A recipe says which network to build, how to draw a batch
of (input, target) pairs, the loss, how to validate, and what to do before each step.
The recipes here share :class:`~.base.RecipeBase` (the network's config from its constructor's
signature, ``build()``, the evaluation guard, validation helpers); the loop only needs
:class:`Recipe`.

Optional members, for recipes that train more than the network (a GAN's discriminator):

* ``build_extras() -> {name: nn.Module}``: further modules, built after the network from the
  same seeded torch RNG; each gets its own Adam (betas and learning-rate schedule as the
  network's) and is saved in, and restored from, every checkpoint. An empty mapping means none.
* ``losses(net, extras, inputs, targets) -> ({"net": loss, name: loss, ...}, logs)``: called
  instead of ``loss`` when there are extras. Each loss updates only its own module's
  parameters (``"net"``: the network); all of a step's losses are computed before any update.
* ``objective``: a JSON-serialisable description of the loss switches; a checkpoint written
  with one objective is refused by a run with another (it joins :func:`recipe_identity`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .base import RecipeBase
from .denoise import DenoiseRecipe
from .enhance import EnhanceRecipe
from .lamegan import LaMEGANRecipe, export_generator
from .paired import PairedRecipe
from .sr import SRRecipe

__all__ = [
    "DenoiseRecipe",
    "EnhanceRecipe",
    "LaMEGANRecipe",
    "PairedRecipe",
    "Recipe",
    "RecipeBase",
    "SRRecipe",
    "export_generator",
    "recipe_identity",
]


@runtime_checkable
class Recipe(Protocol):
    """What the training loop needs from a task.

    Attributes:
        task: e.g. ``"denoise"``; recorded in checkpoints and in the best weights file.
        arch: architecture name in :data:`napari_medenhance.core.nets.ARCHITECTURES`.
        config: JSON-serialisable constructor arguments of the network.
        primary_metric: the validation metric that picks ``best.safetensors`` (e.g. ``"psnr"``).
        higher_is_better: direction of ``primary_metric``.
    """

    task: str
    arch: str
    config: Mapping[str, Any]
    primary_metric: str
    higher_is_better: bool

    def build(self) -> torch.nn.Module:
        """A freshly initialised network (the loop seeds torch before calling this)."""
        ...

    def sample_batch(
        self, rng: np.random.Generator, batch: int, patch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)``: CPU tensors, e.g. ``batch×3×patch×patch``.

        All randomness must come from ``rng`` (or torch's global RNG): the loop checkpoints
        both, which is what makes resumed runs identical to uninterrupted ones.
        """
        ...

    def loss(
        self, net: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``(scalar loss to minimise, {name: value} to report)``."""
        ...

    def validate(
        self, net: torch.nn.Module, device: torch.device
    ) -> tuple[dict[str, float], np.ndarray | None]:
        """``(metrics, preview)`` on a FIXED validation set; ``net`` is in eval mode and
        gradients are off. Must not consume the training RNG streams. ``preview``: float32
        [0, 1] ``Y×X`` or ``Y×X×3`` (or None)."""
        ...

    def on_step(self, net: torch.nn.Module, step: int, total: int) -> None:
        """Called before training step ``step`` (0-based) of ``total``."""
        ...


def recipe_identity(recipe: Recipe) -> dict[str, Any]:
    """``{"recipe": class name, "task", "arch", "config"}``, the key a checkpoint must match,
    plus ``"objective"`` for recipes that declare one.

    ``config`` (and ``objective``) go through JSON so that tuples and lists compare equal to
    what a checkpoint stores.
    """
    identity = {
        "recipe": type(recipe).__name__,
        "task": str(recipe.task),
        "arch": str(recipe.arch),
        "config": json.loads(json.dumps(dict(recipe.config), sort_keys=True)),
    }
    objective = getattr(recipe, "objective", None)
    if objective is not None:
        identity["objective"] = json.loads(json.dumps(objective, sort_keys=True))
    return identity
