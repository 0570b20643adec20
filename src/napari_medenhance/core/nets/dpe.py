"""DPE: the Deep Perceptual Enhancement generator.

Sharif et al., "Deep Perceptual Enhancement for Medical Image Analysis", IEEE JBHI 2022
(section II-A).

Architecture (defaults; widths as the authors coded them, the paper's "196" is a typo)
--------------------------------------------------------------------------------------
::

    x (B×3×H×W, [-1, 1])
    head   conv3×3 3→64
    level i = 0..3 at widths w_i = 64, 96, 128, 160:
        e_i  = ResBlock(w_i)(h)             conv3×3 → PReLU → conv3×3, + identity, no BN
        g_i  = Gate(w_i)(e_i)               gated skip, paper eq. (4)-(6)
        h    = ReLU(conv3×3 stride 2 w_i→w_(i+1) (e_i))
    bottleneck  h = ResBlock(192)(h)        at 1/16 resolution
    decoder, i = 3..0:
        h = ReLU(ConvTranspose k2 s2 w_(i+1)→w_i (h)) + g_i      (added, not concatenated)
        h = ResBlock(w_i)(h)                for i = 3, 2, 1 (not after the last addition)
    out = tanh(conv1×1 64→3 (h) + x)        global residual, in [-1, 1]

Parameter count (default configuration) = 4,486,987, the paper's figure
-----------------------------------------------------------------------
A residual block at width c has 2·(9c² + c) + 1 parameters (two biased 3×3 convs, one PReLU
slope); a gate 2·(9c² + c); a down conv 9·c·c' + c'; a transpose conv 4·c'·c + c.

- head:                       9·3·64 + 64                                 =     1,792
- encoder ResBlocks 64..160:  73,857 + 166,081 + 295,169 + 461,121        =   996,228
- gates 64..160:              73,856 + 166,080 + 295,168 + 461,120        =   996,224
- downs 64→96→128→160→192:    55,392 + 110,720 + 184,480 + 276,672        =   627,264
- bottleneck ResBlock 192:                                                =   663,937
- transposes 192→160→…→64:    123,040 + 82,048 + 49,248 + 24,640          =   278,976
- decoder ResBlocks 160..96:  461,121 + 295,169 + 166,081                 =   922,371
- output conv1×1:             64·3 + 3                                    =       195
- total                                                                   = 4,486,987

The authors' module also registers a second 64-wide ResBlock after the head, a gate at 192 and
a last 64-wide ResBlock, none of which their forward pass uses; they are left out here (with
them the count would be 5,298,637, not the published figure). The decoder therefore has no
residual block after its last (64-wide) addition, exactly as their forward pass runs.

Choices and why
---------------
- Gate: the paper's eq. (6), ``O = LeakyReLU_0.2(conv_a(x)) ⊙ sigmoid(conv_b(x))``, both
  3×3 with bias; the slope 0.2 is the authors' (the paper gives none). The authors' code
  applies the LeakyReLU after the product instead, ``LeakyReLU(conv_a(x) · σ(conv_b(x)))``;
  that is the same function, not a variant: LeakyReLU is positively homogeneous
  (φ(s·a) = s·φ(a) for s > 0) and the sigmoid is positive, so the two orders agree exactly
  (``tests/test_dpe.py`` checks it). Eq. (6)'s order is used because it is what the paper
  writes.
- Zero padding in every conv, gates included (the authors reflect-pad their gates): the same
  as the other convs here, and defined at any feature-map size.
- Any input size: ``forward`` reflect-pads H and W (bottom / right) to a multiple of
  :attr:`DPE.pad_multiple` = 16 (four stride-2 levels) and crops the output back; the authors'
  code only accepts multiples of 16. The inference engine pads tiles itself
  (``runtime.engine_kwargs`` gives ``pad_multiple=16`` for this architecture), so there the
  padding here is a no-op; 128² training crops need none.
- Values: the network works in [-1, 1] (:attr:`DPE.value_range`), input and output;
  ``runtime.inference_module`` maps the engine's [0, 1] to it and back. Grayscale images are
  replicated to three channels by the engine and averaged back from the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DPE", "ResidualBlock", "ContextGate", "reflect_pad_to_multiple"]


class ResidualBlock(nn.Module):
    """``x + conv3×3(PReLU(conv3×3(x)))`` without normalisation (paper eq. 1).

    Shapes: B×C×H×W → B×C×H×W.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.PReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ContextGate(nn.Module):
    """Gated skip connection, paper eq. (4)-(6): ``LeakyReLU(conv_a(x)) ⊙ sigmoid(conv_b(x))``.

    The sigmoid branch decides, per pixel and channel, how much of the encoder feature reaches
    the decoder, so that noise and artefacts in the skip are pruned instead of copied.
    Shapes: B×C×H×W → B×C×H×W.
    """

    def __init__(self, channels: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.feature = nn.Conv2d(channels, channels, 3, padding=1)
        self.mask = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.feature(x)) * torch.sigmoid(self.mask(x))


def reflect_pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad B×C×H×W at the bottom / right to multiples of ``multiple`` by mirror reflection.

    Returns ``(padded, H, W)`` with the original size, to crop back. Reflection needs a pad
    smaller than the side, so a side smaller than the pad (e.g. 5 pixels padded to 16) is
    reflected repeatedly, the same values numpy's ``np.pad(mode="reflect")`` gives (what the
    inference engine uses); a 1-pixel side, which cannot be reflected, is replicated.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    th, tw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    while x.shape[-2] < th or x.shape[-1] < tw:
        ch, cw = int(x.shape[-2]), int(x.shape[-1])
        ph = min(th - ch, ch - 1) if ch > 1 else th - ch
        pw = min(tw - cw, cw - 1) if cw > 1 else tw - cw
        mode = "reflect" if (ch > 1 or ph == 0) and (cw > 1 or pw == 0) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


class DPE(nn.Module):
    """Deep Perceptual Enhancement generator (module docstring for the layout and choices).

    Parameters
    ----------
    in_channels:
        Image channels in and out (3; grayscale images are replicated to 3 by the caller).
    widths:
        Feature widths of the five levels, full resolution first (64, 96, 128, 160, 192); the
        last is the bottleneck at 1/2^(len(widths) - 1) resolution.
    gate_slope:
        Negative slope of the gates' LeakyReLU (0.2, the authors' value).

    ``forward`` takes B×C×H×W in [-1, 1] of any H, W ≥ 1 and returns the same shape in
    (-1, 1).
    """

    #: Input sides are padded to a multiple of this (one factor 2 per stride-2 level).
    pad_multiple = 16
    #: The value range the network reads and writes (the engine works in [0, 1]).
    value_range = (-1.0, 1.0)

    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, ...] | list[int] = (64, 96, 128, 160, 192),
        gate_slope: float = 0.2,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(
                f"widths must list at least two positive feature widths (full resolution "
                f"first, bottleneck last), e.g. (64, 96, 128, 160, 192); got {widths}"
            )
        self.in_channels = int(in_channels)
        self.widths = widths
        self.levels = len(widths) - 1
        # Instance value: a DPE with other widths has another number of stride-2 levels.
        self.pad_multiple = 2**self.levels
        self.head = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.enc = nn.ModuleList(ResidualBlock(w) for w in widths[:-1])
        self.gates = nn.ModuleList(ContextGate(w, gate_slope) for w in widths[:-1])
        self.downs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1) for i in range(self.levels)
        )
        self.bottleneck = ResidualBlock(widths[-1])
        # ups[i] brings level i+1 back to level i; decs[i] follows the addition at level i
        # for i >= 1 only (the authors' forward has no block after the last addition).
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(self.levels)
        )
        self.decs = nn.ModuleList(ResidualBlock(w) for w in widths[1:-1])
        self.tail = nn.Conv2d(widths[0], in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Enhance ``x``: B×C×H×W in [-1, 1] → B×C×H×W in (-1, 1), any H, W."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"DPE expects a B×{self.in_channels}×H×W tensor; got shape {tuple(x.shape)} "
                "(replicate grayscale images to 3 channels first)"
            )
        xp, h, w = reflect_pad_to_multiple(x, self.pad_multiple)
        f = self.head(xp)
        skips = []
        for enc, gate, down in zip(self.enc, self.gates, self.downs):
            f = enc(f)
            skips.append(gate(f))
            f = F.relu(down(f))
        f = self.bottleneck(f)
        for i in reversed(range(self.levels)):
            f = F.relu(self.ups[i](f)) + skips[i]
            if i >= 1:
                f = self.decs[i - 1](f)
        out = torch.tanh(self.tail(f) + xp)
        if out.shape[-2] != h or out.shape[-1] != w:  # only when padded, so that a traced
            out = out[..., :h, :w]  # copy (BioImage.IO export) keeps no fixed size
        return out
