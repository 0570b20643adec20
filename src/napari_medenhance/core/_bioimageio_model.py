"""The network of a BioImage.IO package: a restoration net inside napari-medenhance's
intensity mapping, so any consumer gets what the plugin's engine gives (in the image's units).

This file is also the tail of the package's architecture source (``medenhance_arch.py``,
written by :mod:`napari_medenhance.core.bioimageio`): there the network classes are defined
above it in the same module, here they are imported (the block between the ``bundle:`` marks
is left out of the package). It needs only torch and must stay TorchScript-able.

Intensity mapping (``napari_medenhance.core.engine``, one plane): ``lo, hi`` = min and max of
the sample over its channels and pixels (a float image already inside [0, 1] keeps [0, 1]);
``x01 = (x - lo) / (hi - lo)``; the network maps x01 to y01 in [0, 1]; the output is
``x + (y01 - x01) · (hi - lo)`` at scale 1 (the engine adds the network's change, which keeps
an identity network exact) or ``lo + y01 · (hi - lo)`` when it upscales, clipped to
``[lo, hi]``. Gray input to a 3-channel network is replicated to three channels and the
outputs averaged; networks that read [-1, 1] (DPE) get ``2·x01 - 1`` and give back ``(y + 1)/2``.
A model trained on contrast-stretched input (``stretch = [p_lo, p_hi]``) sees x01 with those
percentiles of the sample mapped to 0 and 1, clipped; the output mapping is unchanged.
"""

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

# bundle: leave out -- in the package the classes are defined above, in the same module
from napari_medenhance.core.nets.dpe import DPE  # noqa: F401
from napari_medenhance.core.nets.dran import DRAN  # noqa: F401
from napari_medenhance.core.nets.srresnet import MSGANGenerator, SRResNet  # noqa: F401

# bundle: end

#: architecture key (``napari_medenhance.core.nets.ARCHITECTURES``) -> class name
NET_CLASSES = {"dran": "DRAN", "dpe": "DPE", "msgan": "MSGANGenerator", "srresnet": "SRResNet"}


class _Denoise(nn.Module):
    """A residual-noise network's clean estimate (DRAN: ``forward`` predicts the noise)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.denoise(x)


class _Signed(nn.Module):
    """A network that reads and writes [-1, 1] (DPE), run on [0, 1] values."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net(x * 2.0 - 1.0) + 1.0) * 0.5


class _Plain(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MedEnhanceModel(nn.Module):
    """``(B, C, H, W)`` float32 in the image's own units -> ``(B, C, H·scale, W·scale)``.

    Args:
        arch: architecture key (``dran``, ``dpe``, ``msgan``, ``srresnet``).
        config: the network's constructor keywords.
        mode: ``"denoise"`` (output ``net.denoise(x)``), ``"signed"`` (a [-1, 1] network) or
            ``"plain"``.
        net_channels: channels the network takes (3 or 1).
        scale: its upscaling factor.
        pad_multiple: input sides are reflect-padded (bottom, right) to a multiple of it and
            the output cropped back, as the engine does.
        border: mirrored pixels added on every side before the network and cropped off its
            output, as the engine does for a network with ``reflect_border`` (DRAN: 16).
        stretch: ``[p_lo, p_hi]`` (0–100) for a model trained on contrast-stretched input,
            else None.
    """

    def __init__(self, arch: str, config: Dict[str, Any], mode: str = "plain",
                 net_channels: int = 3, scale: int = 1, pad_multiple: int = 1,
                 stretch: Optional[List[float]] = None, border: int = 0) -> None:
        super().__init__()
        self.stretched = stretch is not None
        self.p_lo = float(stretch[0]) / 100.0 if stretch is not None else 0.0
        self.p_hi = float(stretch[1]) / 100.0 if stretch is not None else 1.0
        net = globals()[NET_CLASSES[arch]](**config)
        if mode == "denoise":
            self.run = _Denoise(net)
        elif mode == "signed":
            self.run = _Signed(net)
        else:
            self.run = _Plain(net)
        self.net_channels = int(net_channels)
        self.scale = int(scale)
        self.pad_multiple = int(pad_multiple)
        self.border = int(border)
        self.eval()

    def _network(self, x01: torch.Tensor) -> torch.Tensor:
        # Sizes come from the tensors themselves (no Python arithmetic on them where it can
        # be avoided), so a traced copy of this module works for every input size.
        c = x01.shape[1]
        b = self.border
        if b > 0:
            x01 = F.pad(x01, [b, b, b, b], mode="reflect")
        h, w = x01.shape[2], x01.shape[3]
        ph = (self.pad_multiple - h % self.pad_multiple) % self.pad_multiple
        pw = (self.pad_multiple - w % self.pad_multiple) % self.pad_multiple
        padded = ph > 0 or pw > 0
        if padded:
            x01 = F.pad(x01, [0, pw, 0, ph], mode="reflect")
        if self.net_channels == 3 and c == 1:
            y = self.run(x01.expand(-1, 3, -1, -1)).mean(dim=1, keepdim=True)
        elif self.net_channels == 1 and c != 1:  # colour channels as a batch of gray planes
            y = self.run(x01.flatten(0, 1).unsqueeze(1))
            y = y.reshape(x01.shape[0], c, y.shape[2], y.shape[3])
        else:
            y = self.run(x01)
        if padded:
            y = y[:, :, : h * self.scale, : w * self.scale]
        if b > 0:
            y = y[:, :, b * self.scale : (h - b) * self.scale, b * self.scale : (w - b) * self.scale]
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        lo = flat.min(dim=1).values[:, None, None, None]
        hi = flat.max(dim=1).values[:, None, None, None]
        unit = (lo >= 0.0) & (hi <= 1.0)  # already in the networks' range: used as it is
        lo = torch.where(unit, torch.zeros_like(lo), lo)
        hi = torch.where(unit, torch.ones_like(hi), hi)
        span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))  # a constant image
        x01 = (x - lo) / span
        seen = x01
        if self.stretched:
            flat01 = x01.flatten(1)
            # torch.quantile takes at most 2**24 values: a regular subsample beyond that
            step = (flat01.shape[1] + (1 << 24) - 1) // (1 << 24)
            q = torch.tensor([self.p_lo, self.p_hi], dtype=x01.dtype, device=x01.device)
            qs = torch.quantile(flat01[:, ::step], q, dim=1)
            s_lo = qs[0][:, None, None, None]
            s_w = (qs[1] - qs[0])[:, None, None, None]
            ok = s_w > 0  # a flat sample has nothing to stretch
            safe = torch.where(ok, s_w, torch.ones_like(s_w))
            seen = torch.where(ok, torch.clamp((x01 - s_lo) / safe, 0.0, 1.0), x01)
        y01 = self._network(seen)
        if self.scale == 1:
            out = x + (y01 - x01) * span
        else:
            out = lo + y01 * span
        return torch.maximum(torch.minimum(out, hi), lo)
