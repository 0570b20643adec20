"""The two generators of an unpaired (CycleGAN-style) translation, as one module.

LaMEGAN (Q. H. Cap, A. Fukuda, H. Iyatomi, "A Practical Framework for Unsupervised
Structure Preservation Medical Image Enhancement") learns G: LQ → HQ and F: HQ → LQ together. The training loop trains one
network (plus extra modules that each get their own loss), so both generators live in one
:class:`CycleGenerators` whose ``forward`` is G: validation, previews, ``best.safetensors`` and
the inference engine all see the LQ → HQ direction, and F is trained by the same loss and the
same optimizer, as in CycleGAN (one Adam over both generators).

Both generators are :class:`~napari_medenhance.core.nets.dpe.DPE` networks of one config (the
lighter generator the Enhance widget already runs, instead of the authors' ResNet-9). G alone
is a standard ``dpe`` model: ``core.training.recipes.lamegan.export_generator`` writes it as
one. A ``cycle_dpe`` weights file also runs as an enhance model as it is (``forward`` is G,
same value range and padding), at twice the size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .dpe import DPE

__all__ = ["CycleGenerators"]


class CycleGenerators(nn.Module):
    """G (LQ → HQ, ``forward``) and F (HQ → LQ, :meth:`backward_translate`), two DPEs.

    Parameters are DPE's (``in_channels``, ``widths``, ``gate_slope``), shared by both
    generators. Tensors: B×C×H×W in [-1, 1] in and out, any H, W (DPE pads internally).
    State-dict keys: ``g.*`` (a DPE state dict under ``g.``) and ``f.*``.
    """

    #: The engine pads tiles to a multiple of this (DPE's).
    pad_multiple = DPE.pad_multiple
    #: Values read and written (the engine works in [0, 1]; the zoo maps).
    value_range = DPE.value_range

    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, ...] | list[int] = (64, 96, 128, 160, 192),
        gate_slope: float = 0.2,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "in_channels": int(in_channels),
            "widths": [int(w) for w in widths],
            "gate_slope": float(gate_slope),
        }
        self.g = DPE(**self.config)
        self.f = DPE(**self.config)
        self.pad_multiple = self.g.pad_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """G: translate low-quality images to high quality (B×C×H×W, [-1, 1])."""
        return self.g(x)

    def backward_translate(self, y: torch.Tensor) -> torch.Tensor:
        """F: translate high-quality images to low quality (B×C×H×W, [-1, 1])."""
        return self.f(y)
