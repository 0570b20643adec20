"""Discriminators for adversarial training.

:class:`SwishDiscriminator` is the DPE discriminator (Sharif et al., "Deep Perceptual
Enhancement for Medical Image Analysis", IEEE JBHI 2022, section II-B): nine convolutions,

::

    conv3×3 in→64 s1                       swish
    conv3×3 64→64 s2     BN                swish
    conv3×3 64→128 s1    BN                swish
    conv3×3 128→128 s2   BN                swish
    conv3×3 128→256 s1   BN                swish
    conv3×3 256→256 s2   BN                swish
    conv3×3 256→512 s1   BN                swish
    conv3×3 512→512 s2   BN                swish
    conv1×1 512→1  → global average pool → sigmoid      → B×1, the probability "real"

Choices and why
---------------
- The last 1×1 conv has no padding. The authors' code gives it ``padding=1``, which only adds a
  one-pixel ring of bias-only values to the map that is then averaged: a bug, not a design.
- ``in_channels`` is 3 for the authors' unconditional discriminator and 6 for the conditional
  one the paper describes (eq. 10, a cGAN): the image to judge concatenated with the degraded
  input it was made from. The DPE recipe uses the conditional form (see
  :mod:`napari_medenhance.core.training.recipes.enhance`).
- ``forward`` ends in a sigmoid (a probability), as the paper and the authors' code;
  :meth:`SwishDiscriminator.logits` stops before it, so that losses can use the numerically
  stable log-sigmoid (``core.training.losses.bce_with_logits``, which also accepts the
  authors' noisy real labels above 1 that current ``torch.nn.BCELoss`` refuses).
- Any input of at least 1×1 pixel works (global pooling); 128² crops give an 8×8 map.

:class:`WGANCritic` is the critic of the super-resolution recipe's WGAN-GP (Gulrajani et al.
2017; Zhu, Yang, Lio, ISBI 2019 compare WGAN-GP for lesion-focused SR): the same conv stack, but

- **no batch normalisation**: the gradient penalty constrains the gradient norm of the critic
  *per sample*, and BN makes each sample's score depend on the rest of the batch, which breaks
  that (the WGAN-GP paper's own advice); ``norm="layer"`` (default) normalises each sample on
  its own (``GroupNorm(1, C)``: layer norm over C×H×W with a per-channel affine, defined at any
  size), ``norm="none"`` uses no normalisation;
- LeakyReLU(0.2) activations (the WGAN-GP / SRGAN critics') instead of swish;
- an unbounded score (no sigmoid): a Wasserstein critic outputs a real number, higher = more
  like the real high-resolution images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SwishDiscriminator", "WGANCritic"]


class SwishDiscriminator(nn.Module):
    """The DPE discriminator (module docstring): B×in_channels×H×W → B×1 in (0, 1).

    Parameters
    ----------
    in_channels:
        3 (judge an image alone) or 6 (conditional: image and degraded input, concatenated).
    widths:
        Output widths of the eight 3×3 convs (64, 64, 128, 128, 256, 256, 512, 512); the even
        ones (2nd, 4th, ...) have stride 2, all but the first are batch-normalised.
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, ...] | list[int] = (64, 64, 128, 128, 256, 256, 512, 512),
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must list positive conv widths, e.g. (64, 64, 128, ...); got {widths}")
        self.in_channels = int(in_channels)
        convs, norms = [], []
        prev = self.in_channels
        for i, w in enumerate(widths):
            convs.append(nn.Conv2d(prev, w, 3, stride=2 if i % 2 else 1, padding=1))
            norms.append(nn.BatchNorm2d(w) if i > 0 else nn.Identity())
            prev = w
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.head = nn.Conv2d(prev, 1, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid score of each image: B×C×H×W → B×1 (the mean of the 1×1 conv's map)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"the discriminator expects B×{self.in_channels}×H×W; got {tuple(x.shape)}"
            )
        for conv, norm in zip(self.convs, self.norms):
            x = F.silu(norm(conv(x)))  # swish(x) = x·sigmoid(x)
        return self.head(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probability that each image is real: B×C×H×W → B×1 in (0, 1)."""
        return torch.sigmoid(self.logits(x))


class WGANCritic(nn.Module):
    """WGAN-GP critic (module docstring): B×in_channels×H×W → B×1 real-valued scores.

    ::

        conv3×3 in→w1 s1                       LeakyReLU(0.2)
        conv3×3 w1→w2 s2     LN                LeakyReLU(0.2)
        ... (widths alternate stride 1 / 2; LN on all but the first)
        conv1×1 w8→1  → global average pool    → B×1

    Parameters
    ----------
    in_channels:
        Channels of the judged image (3).
    widths:
        Output widths of the 3×3 convs (default 64, 64, 128, 128, 256, 256, 512, 512).
    norm:
        ``"layer"`` (per-sample layer norm, ``GroupNorm(1, C)``) or ``"none"``; never batch
        norm (it would break the per-sample gradient penalty).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, ...] | list[int] = (64, 64, 128, 128, 256, 256, 512, 512),
        norm: str = "layer",
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must list positive conv widths, e.g. (64, 64, 128, ...); got {widths}")
        if norm not in ("layer", "none"):
            raise ValueError(
                f"norm must be 'layer' or 'none' (a WGAN-GP critic must not use batch norm); got {norm!r}"
            )
        self.in_channels = int(in_channels)
        self.norm = norm
        convs, norms = [], []
        prev = self.in_channels
        for i, w in enumerate(widths):
            convs.append(nn.Conv2d(prev, w, 3, stride=2 if i % 2 else 1, padding=1))
            norms.append(nn.GroupNorm(1, w) if i > 0 and norm == "layer" else nn.Identity())
            prev = w
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.head = nn.Conv2d(prev, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Critic score of each image: B×C×H×W → B×1 (unbounded)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"the critic expects B×{self.in_channels}×H×W; got {tuple(x.shape)}")
        for conv, norm in zip(self.convs, self.norms):
            x = F.leaky_relu(norm(conv(x)), 0.2)
        return self.head(x).mean(dim=(2, 3))
