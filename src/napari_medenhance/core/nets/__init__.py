"""Registry of restoration network architectures (PyTorch).

Each architecture is one module in this package and one entry in
:data:`ARCHITECTURES`, mapping a short name to a constructor that takes keyword
configuration and returns an ``nn.Module``. The networks that serve a task (``dran``,
``dpe``, ``msgan``, ``srresnet``) come from the task table
(:mod:`napari_medenhance.core.tasks`), where a new one is one line (or one
``register_architecture`` call); the networks trained beside them are listed here.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .. import tasks
from .cycle import CycleGenerators
from .discriminators import SwishDiscriminator, WGANCritic
from .patchgan import PatchGAN

__all__ = ["ARCHITECTURES", "build"]

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    # The task networks (dran, dpe, msgan, srresnet): the task table's, in its order.
    **{name: tasks.resolve(tasks.architecture(name).constructor) for name in tasks.architectures()},
    # Trained next to a generator, never shipped as a model on its own.
    "dpe_discriminator": SwishDiscriminator,
    # The WGAN-GP critic of the SR recipe: trained next to a generator, never shipped.
    "wgan_critic": WGANCritic,
    # LaMEGAN: G (LQ -> HQ, its forward) and F (HQ -> LQ), two DPEs trained together.
    "cycle_dpe": CycleGenerators,
    # LaMEGAN's 70x70 discriminators: trained next to the generators, never shipped.
    "patchgan": PatchGAN,
}


def build(arch: str, **config: Any) -> nn.Module:
    """Build architecture ``arch`` (case-insensitive) with keyword ``config``.

    Raises ``KeyError`` naming the known architectures when ``arch`` is unknown.
    """
    key = arch.lower()
    if key not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise KeyError(f"unknown architecture {arch!r}; known: {known}")
    return ARCHITECTURES[key](**config)
