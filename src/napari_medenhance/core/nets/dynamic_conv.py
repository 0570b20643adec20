"""Dynamic convolution: attention over K convolution kernels (Chen et al., CVPR 2020).

For each sample, a small attention branch looks at the globally pooled input and
produces K weights π_k(x) that sum to one; the layer then convolves that sample
with the aggregated kernel W̃(x) = Σ_k π_k(x) W_k and bias b̃(x) = Σ_k π_k(x) b_k
(DRAN paper, eq. 3). The attention branch is GAP → 1×1 conv (C → C·ratio) →
ReLU → 1×1 conv (→ K) → softmax(z / T), both 1×1 convs without bias.

Departures from the DRAN authors' public code (Sharif et al., Mathematics 2020): the
temperature T is settable (and meant to be annealed 30 → 1 during early training, as the
dynamic-convolution paper does: Chen et al., CVPR 2020) instead of being fixed at 34, and the
per-kernel bias is initialised (theirs is left as uninitialised memory).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DynamicConv2d"]


class DynamicConv2d(nn.Module):
    """Convolution whose kernel is a per-sample, attention-weighted mix of K kernels.

    Parameters
    ----------
    in_channels, out_channels:
        Channels of the input (C_in) and output (C_out).
    kernel_size:
        Square kernel size.
    stride, padding, dilation:
        As in :class:`torch.nn.Conv2d` (zero padding).
    bias:
        Learn one bias vector per kernel bank, aggregated with the same attention.
    kernels:
        Number K of kernel banks.
    ratio:
        Width of the attention's hidden 1×1 conv relative to C_in (0.25 → C_in/4).
    temperature:
        Initial softmax temperature T. Large T → near-uniform attention (all banks
        trained together early on); T = 1 → the plain softmax used at inference.

    Shapes
    ------
    ``forward``: B×C_in×H×W → B×C_out×H'×W' (H' = H, W' = W for stride 1 and
    ``padding = dilation * (kernel_size - 1) // 2``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
        kernels: int = 4,
        ratio: float = 0.25,
        temperature: float = 30.0,
    ) -> None:
        super().__init__()
        if kernels < 1:
            raise ValueError(f"kernels must be >= 1, got {kernels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.kernels = kernels

        hidden = max(1, int(in_channels * ratio))
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, kernels, 1, bias=False),
        )
        self.weight = nn.Parameter(
            torch.empty(kernels, out_channels, in_channels, kernel_size, kernel_size)
        )
        self.bias = nn.Parameter(torch.empty(kernels, out_channels)) if bias else None
        # A persistent buffer so that a checkpoint carries the temperature it was
        # trained to (normally 1), and inference after loading uses that value.
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.set_temperature(temperature)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every bank like a fresh ``nn.Conv2d`` (kaiming-uniform, a=√5).

        Each bank on its own then has the scale of an ordinary conv, so any convex
        mix of them does too, whatever the attention does early in training.
        """
        for k in range(self.kernels):
            nn.init.kaiming_uniform_(self.weight[k], a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size * self.kernel_size
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def set_temperature(self, t: float) -> None:
        """Set the attention softmax temperature T (> 0)."""
        t = float(t)
        if not t > 0 or not math.isfinite(t):
            raise ValueError(f"temperature must be a finite positive number, got {t}")
        self.temperature.fill_(t)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample kernel attention π(x): B×C_in×H×W → B×K, rows sum to 1."""
        logits = self.attention(x).flatten(1)
        return F.softmax(logits / self.temperature, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve each sample with its own aggregated kernel: B×C_in×H×W → B×C_out×H'×W'."""
        b, c, h, w = x.shape
        pi = self.attention_weights(x)  # B×K
        k = self.kernel_size
        weight = (pi @ self.weight.reshape(self.kernels, -1)).reshape(
            b * self.out_channels, c, k, k
        )
        bias = (pi @ self.bias).reshape(-1) if self.bias is not None else None
        if b == 1:
            # One sample (inference, tile by tile): a plain convolution, which keeps the input's
            # memory format (channels-last is what oneDNN runs fastest; the grouped path below
            # would turn it back into NCHW).
            if x.is_contiguous(memory_format=torch.channels_last):
                weight = weight.contiguous(memory_format=torch.channels_last)
            return F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding,
                            dilation=self.dilation)
        # Folding the batch into channels turns B different convolutions into one
        # grouped convolution: group i sees only sample i and uses kernel W̃(x_i).
        out = F.conv2d(
            x.reshape(1, b * c, h, w),
            weight,
            bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=b,
        )
        return out.reshape(b, self.out_channels, out.shape[-2], out.shape[-1])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"kernels={self.kernels}, bias={self.bias is not None}, "
            f"temperature={float(self.temperature):g}"
        )
