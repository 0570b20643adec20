"""SRResNet and the MS-GAN generator: single-image super-resolution (J. Zhu, G. Yang,
P. Lio, "How can we make GAN perform better in single medical image super-resolution? A lesion
focused multi-scale approach", ISBI 2019).

Both work in the inference engine's value range, [0, 1], on B×3×h×w tensors (grayscale is
replicated to three channels by the engine and averaged back), are fully convolutional and take
any h, w >= 1 (odd too): nothing in them halves a size, so no padding is needed.

SRResNet (Ledig et al. 2017, as used by the LFSR paper)
-------------------------------------------------------
::

    x (B×3×h×w)
    head    conv9×9 3→F, PReLU                                  = s
    body    `blocks` × ResBlock(F), conv3×3 F→F, + s            (long skip)
    up      log2(scale) × [conv3×3 F→4F, pixel shuffle ×2, PReLU]
    tail    conv9×9 F→3                                         + bicubic(x, ×scale)

ResBlock(F) = x + conv3×3(PReLU(conv3×3(x))).

MS-GAN generator (the paper's section 2.2.2: ×2 first, ×4 from it)
-------------------------------------------------------------------
::

    trunk   head + body of SRResNet at the input resolution            (features t)
    up1     conv3×3 F→4F, pixel shuffle ×2, PReLU                       f2  (×2 features)
    out×2   conv9×9 F→3 (f2)          + bicubic(x, ×2)                  = y2
    stage 2 `blocks_x2` × ResBlock(F) on f2, conv3×3, + f2              (at ×2 resolution)
    up2     conv3×3 F→4F, pixel shuffle ×2, PReLU                       f4  (×4 features)
    out×4   conv9×9 F→3 (f4)          + bicubic(y2, ×2)                 = y4

so the ×4 image is built from the ×2 features and refines the ×2 image, and both are trained
(MSE(y2, HR↓2) + MSE(y4, HR) + ...; ``core/training/recipes/sr.py``).

``output_scale`` (config) says what ``forward`` returns, and therefore what a registered model
is: 2 → y2 (the ``msgan-x2`` model; stage 2 is not even built, so its file holds only the
trunk, up1 and out×2 weights), 4 → y4 (``msgan-x4``). Both files come from ONE trained
network. :meth:`MSGANGenerator.forward_multi` returns ``(y2, y4)`` for training.

Choices and why
---------------
- **No batch normalisation** by default (``batch_norm=False``). SRGAN's SRResNet has BN, but BN
  statistics learnt on lesion-focused training patches do not describe a whole plane or an
  arbitrary ROI, and EDSR (Lim et al. 2017, the paper's ref. [10]) showed that removing BN
  improves SR and removes its artefacts. ``batch_norm=True`` restores Ledig's blocks.
- **Global bicubic residual** (``global_residual=True``): the network predicts the difference
  to a bicubic enlargement (VDSR-style residual learning), which converges much faster and
  starts training at the bicubic baseline rather than at a blank image. ``False`` gives the
  plain SRResNet output.
- **ICNR initialisation** of the convolutions in front of each pixel shuffle (Aitken et al.
  2017): every ×2 sub-pixel group starts with the same kernel, i.e. as a nearest-neighbour
  upsampling, which avoids the checkerboard artefacts of a random init.
- One PReLU slope per layer (torch's default, as in SRGAN's public implementations).
- Output values are not clipped (the loss sees them as they are; the engine clips to the
  input's range).

Parameter counts (default F = 64): SRResNet ×4 with 16 blocks 1,545,238; MS-GAN generator
(16 + 4 blocks) ×4 1,893,149 and its ×2 part alone (``output_scale=2``) 1,397,525
(``tests/test_sr.py`` pins them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSGANGenerator", "ResBlock", "SRResNet", "Upsample2", "bicubic_up"]


def _check_input(x: torch.Tensor, channels: int, what: str) -> None:
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{what} expects B×{channels}×H×W; got shape {tuple(x.shape)}")


def bicubic_up(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic enlargement by an integer factor (``align_corners=False``: pixel centres of the
    output sit at ``(i + 0.5) / factor - 0.5`` input pixels, the placement the ROI output uses).

    B×C×h×w → B×C×(h·factor)×(w·factor). Edges replicate (torch's bicubic border rule).
    """
    return F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)


class ResBlock(nn.Module):
    """``x + conv3×3(PReLU(conv3×3(x)))`` (with BN after each conv when ``batch_norm``).

    Shapes: B×F×H×W → B×F×H×W.
    """

    def __init__(self, features: int, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(features, features, 3, padding=1)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(features))
        layers += [nn.PReLU(), nn.Conv2d(features, features, 3, padding=1)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(features))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _icnr_(weight: torch.Tensor, factor: int = 2) -> None:
    """ICNR: the conv in front of a pixel shuffle starts as one kernel per output channel,
    repeated over its ``factor²`` sub-pixel positions (a nearest-neighbour upsampler)."""
    out_c, in_c, kh, kw = weight.shape
    sub = torch.empty(out_c // factor**2, in_c, kh, kw)
    nn.init.kaiming_normal_(sub)
    with torch.no_grad():
        weight.copy_(sub.repeat_interleave(factor**2, dim=0))


class Upsample2(nn.Module):
    """×2 sub-pixel upsampling: conv3×3 F→4F, pixel shuffle, PReLU. B×F×H×W → B×F×2H×2W."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(features, 4 * features, 3, padding=1)
        _icnr_(self.conv.weight, 2)
        nn.init.zeros_(self.conv.bias)
        self.shuffle = nn.PixelShuffle(2)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shuffle(self.conv(x)))


class _Trunk(nn.Module):
    """SRResNet's head and residual body at the input resolution: B×C×h×w → B×F×h×w."""

    def __init__(self, in_channels: int, features: int, blocks: int, batch_norm: bool) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(in_channels, features, 9, padding=4), nn.PReLU())
        self.blocks = nn.Sequential(*[ResBlock(features, batch_norm) for _ in range(blocks)])
        tail: list[nn.Module] = [nn.Conv2d(features, features, 3, padding=1)]
        if batch_norm:
            tail.append(nn.BatchNorm2d(features))
        self.tail = nn.Sequential(*tail)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.head(x)
        return s + self.tail(self.blocks(s))


def _check_common(in_channels: int, features: int, blocks: int) -> None:
    if in_channels < 1 or features < 1 or blocks < 0:
        raise ValueError(
            f"in_channels and features must be >= 1 and blocks >= 0; got in_channels="
            f"{in_channels}, features={features}, blocks={blocks}"
        )


class SRResNet(nn.Module):
    """SRResNet (module docstring): B×3×h×w in [0, 1] → B×3×(h·scale)×(w·scale).

    Args:
        in_channels: input (and output) channels; 3 (gray is replicated by the engine).
        features: width F of every conv (64 in SRGAN).
        blocks: residual blocks at the input resolution (16 in SRGAN).
        scale: 2, 4 or 8: one ×2 pixel-shuffle stage per factor 2.
        batch_norm: BN inside the blocks, as SRGAN (default off, module docstring).
        global_residual: add a bicubic enlargement of the input to the output (default on).
    """

    def __init__(
        self,
        in_channels: int = 3,
        features: int = 64,
        blocks: int = 16,
        scale: int = 4,
        batch_norm: bool = False,
        global_residual: bool = True,
    ) -> None:
        super().__init__()
        _check_common(in_channels, features, blocks)
        if scale not in (2, 4, 8):
            raise ValueError(f"SRResNet scale must be 2, 4 or 8 (×2 pixel-shuffle stages); got {scale}")
        self.in_channels = int(in_channels)
        self.scale = int(scale)
        self.global_residual = bool(global_residual)
        self.trunk = _Trunk(in_channels, features, blocks, batch_norm)
        self.ups = nn.Sequential(*[Upsample2(features) for _ in range(int(math.log2(scale)))])
        self.out = nn.Conv2d(features, in_channels, 9, padding=4)

    @staticmethod
    def scale_from_config(config: Mapping[str, Any]) -> int:
        """The upscaling factor a saved ``config`` builds (read by the model registry)."""
        return int(config.get("scale", 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×h×w → B×3×(h·scale)×(w·scale)."""
        _check_input(x, self.in_channels, "SRResNet")
        y = self.out(self.ups(self.trunk(x)))
        return y + bicubic_up(x, self.scale) if self.global_residual else y


class MSGANGenerator(nn.Module):
    """The MS-GAN generator (module docstring): ×2 image, then ×4 from the ×2 features.

    Args:
        in_channels: input (and output) channels; 3.
        features: width F of every conv (64).
        blocks: residual blocks of the trunk at the input resolution (16, as SRResNet).
        blocks_x2: residual blocks of stage 2, at ×2 resolution (4: each costs four trunk
            blocks there).
        output_scale: 2 or 4, what ``forward`` returns (the registered model's factor); with 2
            stage 2 is not built.
        batch_norm, global_residual: as :class:`SRResNet`.
    """

    def __init__(
        self,
        in_channels: int = 3,
        features: int = 64,
        blocks: int = 16,
        blocks_x2: int = 4,
        output_scale: int = 4,
        batch_norm: bool = False,
        global_residual: bool = True,
    ) -> None:
        super().__init__()
        _check_common(in_channels, features, blocks)
        if blocks_x2 < 0:
            raise ValueError(f"blocks_x2 must be >= 0; got {blocks_x2}")
        if output_scale not in (2, 4):
            raise ValueError(
                f"output_scale must be 2 (the ×2 head, model msgan-x2) or 4 (msgan-x4); got "
                f"{output_scale}"
            )
        self.in_channels = int(in_channels)
        self.scale = int(output_scale)
        self.global_residual = bool(global_residual)
        self.trunk = _Trunk(in_channels, features, blocks, batch_norm)
        self.up1 = Upsample2(features)
        self.out2 = nn.Conv2d(features, in_channels, 9, padding=4)
        if self.scale == 4:
            self.stage2 = _Stage(features, blocks_x2, batch_norm)
            self.up2 = Upsample2(features)
            self.out4 = nn.Conv2d(features, in_channels, 9, padding=4)

    @staticmethod
    def scale_from_config(config: Mapping[str, Any]) -> int:
        """The upscaling factor a saved ``config`` builds (read by the model registry)."""
        return int(config.get("output_scale", 4))

    def _x2(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f2 = self.up1(self.trunk(x))
        y2 = self.out2(f2)
        if self.global_residual:
            y2 = y2 + bicubic_up(x, 2)
        return f2, y2

    def forward_x2(self, x: torch.Tensor) -> torch.Tensor:
        """The ×2 image y2 alone (any ``output_scale``): B×3×h×w → B×3×2h×2w."""
        _check_input(x, self.in_channels, "MSGANGenerator")
        return self._x2(x)[1]

    def forward_multi(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y2, y4)``: B×3×2h×2w and B×3×4h×4w (needs ``output_scale=4``)."""
        _check_input(x, self.in_channels, "MSGANGenerator")
        if self.scale != 4:
            raise ValueError("forward_multi needs the ×4 stage: build with output_scale=4")
        f2, y2 = self._x2(x)
        y4 = self.out4(self.up2(self.stage2(f2)))
        if self.global_residual:
            y4 = y4 + bicubic_up(y2, 2)
        return y2, y4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The ``output_scale`` image: B×3×h×w → B×3×(h·s)×(w·s), s = ``output_scale``."""
        if self.scale == 2:
            return self.forward_x2(x)
        return self.forward_multi(x)[1]


class _Stage(nn.Module):
    """Residual blocks at ×2 resolution with a long skip: B×F×H×W → B×F×H×W."""

    def __init__(self, features: int, blocks: int, batch_norm: bool) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ResBlock(features, batch_norm) for _ in range(blocks)])
        self.tail = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.tail(self.blocks(x))
