"""The 70×70 PatchGAN discriminator of pix2pix / CycleGAN (Isola et al. 2017; Zhu et al. 2017).

LaMEGAN (Cap, Fukuda, Iyatomi, "A Practical Framework for Unsupervised Structure
Preservation Medical Image Enhancement") trains "with the same procedures as CycleGAN",
whose discriminators are this network (CycleGAN's ``NLayerDiscriminator`` with ``n_layers=3``,
"C64-C128-C256-C512")::

    conv4×4 in→64   stride 2, pad 1              LeakyReLU(0.2)     (no norm on the first)
    conv4×4 64→128  stride 2, pad 1   InstNorm   LeakyReLU(0.2)
    conv4×4 128→256 stride 2, pad 1   InstNorm   LeakyReLU(0.2)
    conv4×4 256→512 stride 1, pad 1   InstNorm   LeakyReLU(0.2)
    conv4×4 512→1   stride 1, pad 1                                 → B×1×h×w raw scores

Each output pixel scores one 70×70 window of the input (:meth:`PatchGAN.receptive_field`; the
tests check it by back-propagating one output pixel); a 256² input gives a 30×30 map, and the
smallest input that gives any output is 24×24 (:meth:`PatchGAN.min_input`). The scores are raw
(no sigmoid): LaMEGAN uses the least-squares GAN loss on them.

As in CycleGAN: instance norm without affine parameters or running statistics (so the module
has no buffers and behaves the same in train and eval mode), every conv biased, and weights
initialised N(0, 0.02) with zero biases (their ``init_weights(..., "normal", 0.02)``), drawn
from torch's global RNG, which the training loop seeds. 2,764,737 parameters with the default
widths.

Note: instance norm makes each output pixel depend (through the normalisation statistics) on
the whole image; the 70×70 window is that of the convolutions, which is what "70×70 PatchGAN"
names. ``norm="none"`` removes the norm (used by the receptive-field test).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PatchGAN"]


class PatchGAN(nn.Module):
    """70×70 PatchGAN: B×C×H×W → B×1×(H/8 − 2)×(W/8 − 2) raw scores (H, W ≥ 24).

    Parameters
    ----------
    in_channels:
        Channels of the judged image (3).
    widths:
        Output widths of the feature convs (default 64, 128, 256, 512). All but the last have
        stride 2; the last has stride 1 and is followed by the 1-channel score conv. With
        ``n = len(widths)`` the receptive field is ``9 * 2**(n - 1) - 2`` pixels (70 for
        n = 4; :meth:`receptive_field`).
    norm:
        ``"instance"`` (CycleGAN's: InstanceNorm2d, no affine, no running statistics) or
        ``"none"``.
    negative_slope:
        Of the LeakyReLUs (0.2).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, ...] | list[int] = (64, 128, 256, 512),
        norm: str = "instance",
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(
                f"widths must list at least two positive conv widths, e.g. (64, 128, 256, 512); "
                f"got {widths}"
            )
        if norm not in ("instance", "none"):
            raise ValueError(f"norm must be 'instance' or 'none'; got {norm!r}")
        self.in_channels = int(in_channels)
        self.widths = widths
        self.norm = norm
        layers: list[nn.Module] = []
        prev = self.in_channels
        for i, w in enumerate(widths):
            stride = 1 if i == len(widths) - 1 else 2
            layers.append(nn.Conv2d(prev, w, 4, stride=stride, padding=1))
            if i > 0 and norm == "instance":
                layers.append(nn.InstanceNorm2d(w, affine=False, track_running_stats=False))
            layers.append(nn.LeakyReLU(float(negative_slope), inplace=True))
            prev = w
        layers.append(nn.Conv2d(prev, 1, 4, stride=1, padding=1))
        self.body = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def _strides(self) -> list[int]:
        return [m.stride[0] for m in self.body if isinstance(m, nn.Conv2d)]

    def receptive_field(self) -> int:
        """Side (pixels) of the input window one output pixel sees through the convs (70)."""
        r = 1
        for s in reversed(self._strides()):
            r = (r - 1) * s + 4
        return r

    def output_size(self, n: int) -> int:
        """Output side for an input side ``n`` (each 4×4, pad-1 conv: ``(n - 2) // s + 1``)."""
        for s in self._strides():
            n = (n - 2) // s + 1
        return n

    def min_input(self) -> int:
        """Smallest input side that yields at least one output pixel (24 by default)."""
        n = 1
        while self.output_size(n) < 1:
            n += 1
        return n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Realness score of every 70×70 window: B×C×H×W → B×1×h×w (unbounded)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PatchGAN expects B×{self.in_channels}×H×W; got {tuple(x.shape)} "
                "(replicate grayscale images to 3 channels first)"
            )
        if min(x.shape[-2:]) < self.min_input():
            raise ValueError(
                f"PatchGAN needs images of at least {self.min_input()}×{self.min_input()} "
                f"pixels; got {tuple(x.shape[-2:])}: use larger patches"
            )
        return self.body(x)
