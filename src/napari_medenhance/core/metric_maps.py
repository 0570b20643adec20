"""Per-pixel SSIM / LaSSIM maps of whole stacks, computed plane by plane with progress."""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np

from napari_medenhance.core import metrics


def iter_metric_maps(
    image,
    enhanced,
    *,
    kind: str = "ssim",
    level: int = 3,
    rgb: bool | None = None,
    data_range: float | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Generator[tuple[int, int], None, np.ndarray | None]:
    """Yield ``(done, total)`` after each 2-D plane; return the stacked map (float32).

    Returns ``None`` when ``cancel()`` turned true before the last plane.

    ``kind="ssim"``: shape ``leading + (Y, X)``; ``kind="lassim"``: the level-``level`` band
    resolution, ``leading + (Y_l, X_l)``, whose pixel ``i`` is centred on input pixel ``2**level * i``.
    Numpy or dask inputs of any leading dims; RGB (last axis 3 or 4) when ``rgb`` says so
    (``None``: napari's guess). Planes are read one at a time, so dask stacks stay lazy.
    """
    if kind not in ("ssim", "lassim"):
        raise ValueError(f"kind must be 'ssim' or 'lassim', not {kind!r}")
    if image.shape != enhanced.shape:
        raise ValueError(f"Shapes differ: {image.shape} vs {enhanced.shape}.")
    if rgb is None:
        rgb = image.ndim >= 3 and image.shape[-1] in (3, 4)
    lead = image.shape[: image.ndim - (3 if rgb else 2)]
    total = int(np.prod(lead, dtype=int))
    planes = []
    for done, idx in enumerate(np.ndindex(*lead), start=1):
        if cancel is not None and cancel():
            break
        a, b = np.asarray(image[idx]), np.asarray(enhanced[idx])
        if kind == "ssim":
            m = metrics.ssim_map(a, b, data_range=data_range, rgb=rgb)
        else:
            m = metrics.lassim_map(a, b, level=level, rgb=rgb)
        planes.append(np.asarray(m, dtype=np.float32))
        yield done, total
    if len(planes) < total:
        return None  # cancelled: no half-made map
    return np.stack(planes).reshape(lead + planes[0].shape)
