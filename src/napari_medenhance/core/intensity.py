"""The engine's input rules, public so every path follows the same ones: what counts as an
array, how an RGB(A) image is recognised, which dtypes are refused, how intensities map to the
networks' [0, 1], and the percentiles a model trained on stretched input sees.

Used by :mod:`.engine` (every run), :mod:`.lazy` (volumes block by block), the API's one-plane
previews and the CLI, so a preview, a stack in memory and a volume on disk map intensities the
same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["STRETCH_SAMPLES", "as_array", "check_dtype", "input_stretch", "intensity_range",
           "resolve_rgb"]

def as_array(image: Any) -> tuple[Any, bool]:
    """(array, is_dask). Numpy and dask arrays are kept as they are (no copy, no compute)."""
    if isinstance(image, np.ndarray):
        return image, False
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is a dependency
        da = None
    if da is not None and isinstance(image, da.Array):
        return image, True
    return np.asarray(image), False


def resolve_rgb(shape: tuple[int, ...], rgb: bool | None) -> tuple[bool, bool]:
    """(is_rgb, has_alpha) following napari's guess when ``rgb is None``."""
    guess = len(shape) >= 3 and shape[-1] in (3, 4)
    if rgb is None:
        rgb = guess
    if not rgb:
        return False, False
    if len(shape) < 3 or shape[-1] not in (3, 4):
        raise ValueError(
            f"rgb=True needs an array shaped (..., Y, X, 3) or (..., Y, X, 4); got {shape}"
        )
    return True, shape[-1] == 4


def check_dtype(dtype: np.dtype) -> None:
    if dtype.kind == "b":
        raise ValueError(
            "boolean images cannot be enhanced; convert them first, e.g. image.astype(np.uint8)"
        )
    if dtype.kind not in "uif":
        raise ValueError(
            f"unsupported dtype {dtype}: expected an integer or real floating-point image"
        )


def intensity_range(
    arr: Any, has_alpha: bool, data_range: Sequence[float] | None, is_dask: bool
) -> tuple[float, float]:
    """(lo, hi) of the mapping to [0, 1]; refuses NaN / inf.

    Statistics cover the whole array so every plane of a stack is mapped the same way; for
    dask they are computed in one pass over the data.
    """
    is_float = arr.dtype.kind == "f"
    color = arr[..., :3] if has_alpha else arr
    need_stats = data_range is None
    if is_dask:
        import dask
        import dask.array as da

        todo: list[Any] = []
        if is_float:
            todo += [da.isnan(arr).sum(), da.isinf(arr).sum()]
        if need_stats:
            todo += [color.min(), color.max()]
        got = list(dask.compute(*todo)) if todo else []
    else:
        got = []
        if is_float:
            got += [np.count_nonzero(np.isnan(arr)), np.count_nonzero(np.isinf(arr))]
        if need_stats:
            got += [color.min(), color.max()]
    if is_float:
        n_nan, n_inf = int(got.pop(0)), int(got.pop(0))
        if n_nan or n_inf:
            raise ValueError(
                f"image contains {n_nan} NaN and {n_inf} infinite value(s) out of "
                f"{int(np.prod(arr.shape))}; replace them first, e.g. with np.nan_to_num"
            )
    if not need_stats:
        if len(data_range) != 2:
            raise ValueError(f"data_range must be (lo, hi); got {data_range!r}")
        lo, hi = float(data_range[0]), float(data_range[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"data_range must be finite with hi > lo; got {data_range!r}")
        return lo, hi
    lo, hi = float(got[0]), float(got[1])
    if is_float and lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0  # already in the networks' range: use as is
    return lo, hi


#: Most values :func:`input_stretch` reads: a regular grid over a larger array.
STRETCH_SAMPLES = 1 << 22


def input_stretch(
    image: Any, percentiles: Sequence[float], *, rgb: bool | None = None
) -> tuple[float, float]:
    """The ``percentiles`` (``(p_lo, p_hi)``, 0–100) of an image's values, in its own units.

    What :func:`iter_apply` maps to 0 and 1 for a model trained on stretched input. Colour
    images: one pair over the three colour channels (alpha left out), so hues are kept. Arrays
    of more than :data:`STRETCH_SAMPLES` values are read on a regular grid (every k-th plane,
    row and column), which for dask computes only those chunks.

    Raises:
        ValueError: bad percentiles, NaN / inf values.
    """
    p_lo, p_hi = (float(v) for v in percentiles)
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100; got {percentiles!r}")
    arr, _ = as_array(image)
    is_rgb, has_alpha = resolve_rgb(tuple(arr.shape), rgb)
    spatial = arr.ndim - (1 if is_rgb else 0)
    n = int(np.prod(arr.shape[:spatial]))
    step = max(1, math.ceil((n / STRETCH_SAMPLES) ** (1.0 / spatial)))
    grid = arr[tuple(slice(None, None, step) for _ in range(spatial))]
    values = np.asarray(grid[..., :3] if has_alpha else grid, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("image contains NaN or infinite values; replace them first, e.g. "
                         "with np.nan_to_num")
    lo, hi = np.percentile(values, (p_lo, p_hi))
    return float(lo), float(hi)
