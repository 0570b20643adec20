"""How the engine cuts a plane into overlapping tiles and blends them back without seams.

:func:`plan` lists the tiles of one plane; :func:`window_1d` gives each tile's blending weights
along one axis. The API counts tiles with :func:`plan` for its progress totals, the block-wise
volume runner (:mod:`.lazy`) likewise, so every count matches what the engine does.
"""

from __future__ import annotations

import numpy as np

__all__ = ["AUTO_TILE", "AUTO_WHOLE_PLANE_PIXELS", "DEFAULT_OVERLAP", "plan", "tile_starts",
           "window_1d"]

#: Planes up to this many pixels go through the network whole when ``tile=None``.
AUTO_WHOLE_PLANE_PIXELS = 1024 * 1024
#: Tile edge (pixels) used when ``tile=None`` and the plane is larger than the above.
AUTO_TILE = 512
#: Overlap between neighbouring tiles (input pixels) unless a caller asks for another.
DEFAULT_OVERLAP = 32

def tile_starts(size: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Start offsets along one axis and the tile length there (the last tile ends flush)."""
    if size <= tile:
        return [0], size
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return starts, tile


def window_1d(start: int, length: int, size: int, overlap: int, scale: int) -> np.ndarray:
    """Blending weights for one tile along one axis, at output resolution.

    Edges that face another tile fall to zero over their outermost ``overlap // 4`` pixels,
    because the network's output there depends on the padding it saw at the cut rather than on
    the real neighbours; a raised-cosine ramp over the rest of the overlap then cross-fades into
    the neighbouring tile (the two ramps sum to one, so a consistent network shows no seam).
    Edges on the image border keep weight one, so every pixel has positive total weight.
    """
    n = length * scale
    w = np.ones(n, dtype=np.float64)
    if overlap <= 0:
        return w
    margin = (overlap // 4) * scale
    ramp_len = (overlap - 2 * (overlap // 4)) * scale
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp_len) + 0.5) / ramp_len)
    if start > 0:
        w[:margin] = 0.0
        w[margin : margin + ramp_len] = np.minimum(w[margin : margin + ramp_len], ramp)
    if start + length < size:
        w[n - margin :] = 0.0
        seg = slice(n - margin - ramp_len, n - margin)
        w[seg] = np.minimum(w[seg], ramp[::-1])
    return w


def plan(
    height: int, width: int, tile: int | None, overlap: int
) -> list[tuple[int, int, int, int]]:
    """Tiles ``(y0, x0, th, tw)`` covering one ``height x width`` plane."""
    if tile is None:
        tile = max(height, width) if height * width <= AUTO_WHOLE_PLANE_PIXELS else AUTO_TILE
    ys, th = tile_starts(height, tile, overlap)
    xs, tw = tile_starts(width, tile, overlap)
    return [(y0, x0, th, tw) for y0 in ys for x0 in xs]
