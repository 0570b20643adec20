"""The engine's CPU inference as it was before it went channels-last, for side-by-side timings."""

from __future__ import annotations

import torch


class Nchw(torch.nn.Module):
    """Runs ``inner`` on NCHW (contiguous) activations whatever layout the engine passes in."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.contiguous())
