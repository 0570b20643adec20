"""Image-quality metrics: PSNR, SSIM, CIEDE2000 ΔE and LaSSIM (numpy + scikit-image only).

Conventions shared by every public function here:

* **Arrays.** numpy or dask arrays of any real dtype (uint8/uint16/int16/float32/float64...;
  bool is rejected). Shapes ``(..., Y, X)`` for grayscale or ``(..., Y, X, C)`` for colour.
  Any leading axes (Z, T, ...) are treated as independent 2-D planes; dask planes are computed
  one at a time with ``np.asarray(array[index])``.
* **rgb.** ``None`` guesses as napari does: colour when ``ndim >= 3`` and the last axis has
  length 3 (RGB) or 4 (RGBA; alpha is dropped). ``True``/``False`` force it.
* **Stacks.** Scalar functions return the *mean of the per-plane values* (not the metric of
  the stack taken as one image); ``per_plane=True`` returns them as an array shaped like the
  leading axes. On one plane every function equals scikit-image's own (to float precision).
* **data_range** (peak-to-peak intensity, in the image's own units), when not given, is taken
  from the *first* image's dtype (as scikit-image does) and resolved per plane:
  integer dtypes -> ``iinfo.max - iinfo.min`` (255 for uint8, 65535 for uint16 and int16);
  floats whose values (both images) all lie in [0, 1] -> 1.0; other floats -> ``max - min``
  over both images jointly (1.0 if that is 0). Pass it explicitly for a stack-wide scale.
  Note: for signed integers with no negative values scikit-image's PSNR would use
  ``iinfo.max`` instead; here one rule serves every metric so they stay comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Any

import numpy as np
from skimage.color import deltaE_ciede2000, gray2rgb, rgb2gray, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from .jobs import drive
from .pyramid import laplacian_band, pyramid_shape

__all__ = [
    "psnr",
    "ssim",
    "delta_e",
    "lassim",
    "ssim_map",
    "lassim_map",
    "iter_metric_maps",
    "max_lassim_level",
    "plane_metrics",
    "iter_stack_metrics",
]

#: scikit-image's default SSIM window (7x7, uniform); also the smallest plane SSIM accepts.
SSIM_WIN = 7

PlaneIndex = tuple[int, ...]


# --------------------------------------------------------------------------- validation
def _check_array(a: Any, name: str, rgb: bool | None) -> tuple[Any, bool]:
    """Validate one input; return it (numpy or dask, not computed) and the resolved rgb flag."""
    if not (hasattr(a, "shape") and hasattr(a, "dtype")):
        a = np.asarray(a)
    dtype = np.dtype(a.dtype)
    if dtype.kind == "b":
        raise ValueError(
            f"{name} is a boolean array (a mask?); metrics need intensities. "
            "Convert it first, e.g. .astype(np.uint8)."
        )
    if dtype.kind not in "uif":
        raise ValueError(f"{name} has dtype {dtype}; expected a real integer or float image.")
    shape = tuple(int(s) for s in a.shape)
    if 0 in shape:
        raise ValueError(f"{name} is empty (shape {shape}).")
    if rgb is None:
        rgb = len(shape) >= 3 and shape[-1] in (3, 4)
    if rgb and (len(shape) < 3 or shape[-1] not in (3, 4)):
        raise ValueError(
            f"{name} has shape {shape} but rgb=True needs a last axis of length 3 or 4."
        )
    yx = shape[-3:-1] if rgb else shape[-2:]
    if len(yx) < 2:
        raise ValueError(f"{name} has shape {shape}; expected at least a 2-D (Y, X) image.")
    if min(yx) < 2:
        raise ValueError(
            f"{name} planes are {yx[0]}x{yx[1]} pixels; each plane needs at least 2x2 "
            "(SSIM and LaSSIM need 7x7)."
        )
    if isinstance(a, np.ndarray):  # cheap to count everywhere at once; dask: per plane
        _check_finite(a, name)
    return a, bool(rgb)


def _check_finite(a: np.ndarray, name: str, where: str = "") -> None:
    if a.dtype.kind != "f":
        return
    n_nan = int(np.count_nonzero(np.isnan(a)))
    n_inf = int(np.count_nonzero(np.isinf(a)))
    if n_nan or n_inf:
        raise ValueError(
            f"{name} contains {n_nan} NaN and {n_inf} infinite value(s){where}; "
            "replace or mask them first (e.g. np.nan_to_num)."
        )


def _check_pair(
    a: Any, b: Any, names: tuple[str, str], rgb: bool | None
) -> tuple[Any, Any, bool]:
    a, rgb_a = _check_array(a, names[0], rgb)
    b, _ = _check_array(b, names[1], rgb_a)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{names[0]} has shape {tuple(a.shape)} but {names[1]} has shape "
            f"{tuple(b.shape)}; they must match (crop or resample one of them)."
        )
    return a, b, rgb_a


def _check_level(level: Any) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
        raise ValueError(f"level must be a non-negative int, got {level!r}.")
    if level < 0:
        raise ValueError(f"level must be >= 0 (0 = full resolution), got {level}.")
    return int(level)


def _check_data_range(data_range: Any) -> float | None:
    if data_range is None:
        return None
    dr = float(data_range)
    if not np.isfinite(dr) or dr <= 0:
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}.")
    return dr


def _lead_shape(shape: tuple[int, ...], rgb: bool) -> tuple[int, ...]:
    return tuple(shape[:-3] if rgb else shape[:-2])


def _plane(a: Any, idx: PlaneIndex, rgb: bool, name: str) -> np.ndarray:
    """One (Y, X) or (Y, X, 3) plane as numpy (computes just that plane of a dask array)."""
    p = np.asarray(a[idx] if idx else a)
    if rgb:
        p = p[..., :3]  # drop alpha
    if not isinstance(a, np.ndarray):
        _check_finite(p, name, f" in plane {idx}")
    return p


def _single_plane(a: Any, name: str, rgb: bool) -> None:
    lead = _lead_shape(tuple(a.shape), rgb)
    if lead:
        raise ValueError(
            f"{name} has shape {tuple(a.shape)}: plane_metrics takes one 2-D plane "
            "(Y, X) or (Y, X, 3); use iter_stack_metrics for stacks."
        )


# --------------------------------------------------------------------------- per-plane kernels
def _data_range(ref: np.ndarray, img: np.ndarray, data_range: float | None) -> float:
    if data_range is not None:
        return data_range
    if ref.dtype.kind in "ui":
        info = np.iinfo(ref.dtype)
        return float(info.max) - float(info.min)
    lo = min(float(ref.min()), float(img.min()))
    hi = max(float(ref.max()), float(img.max()))
    if lo >= 0.0 and hi <= 1.0:
        return 1.0
    return (hi - lo) or 1.0


def _psnr_plane(ref: np.ndarray, img: np.ndarray, data_range: float | None) -> float:
    if np.array_equal(ref, img):
        return float("inf")  # MSE = 0; skimage would warn and divide by zero
    dr = _data_range(ref, img, data_range)
    return float(peak_signal_noise_ratio(ref, img, data_range=dr))


def _check_ssim_size(shape_yx: tuple[int, ...], what: str) -> None:
    if min(shape_yx) < SSIM_WIN:
        raise ValueError(
            f"{what} is {shape_yx[0]}x{shape_yx[1]} pixels; SSIM needs at least "
            f"{SSIM_WIN}x{SSIM_WIN} (its window size)."
        )


def _ssim_plane(
    a: np.ndarray, b: np.ndarray, rgb: bool, data_range: float | None, full: bool = False
) -> Any:
    _check_ssim_size(a.shape[:2], "the plane")
    dr = _data_range(a, b, data_range)
    return structural_similarity(
        a, b, data_range=dr, channel_axis=-1 if rgb else None, full=full
    )


def _delta_e_plane(
    ref: np.ndarray, img: np.ndarray, rgb: bool, data_range: float | None
) -> float:
    # Scale both to [0, 1] with one (offset, range) so colour differences are comparable;
    # x * (1/range) is how img_as_float scales uint8, so uint8 matches rgb2lab(uint8) exactly.
    dr = _data_range(ref, img, data_range)
    lo = min(float(ref.min()), float(img.min()))
    hi = max(float(ref.max()), float(img.max()))
    minmax_range = data_range is None and ref.dtype.kind == "f" and not (lo >= 0 and hi <= 1)
    offset = lo if (lo < 0.0 or minmax_range) else 0.0
    r = (ref.astype(np.float64) - offset) * (1.0 / dr)
    i = (img.astype(np.float64) - offset) * (1.0 / dr)
    if not rgb:
        r, i = gray2rgb(r), gray2rgb(i)
    return float(np.mean(deltaE_ciede2000(rgb2lab(r), rgb2lab(i))))


def _gray(p: np.ndarray, rgb: bool) -> np.ndarray:
    if not rgb:
        return p.astype(np.float64)
    if p.dtype.kind == "f":
        p = p.astype(np.float64)
    # integers: rgb2gray rescales by the dtype (img_as_float), giving [0, 1]
    return np.asarray(rgb2gray(p), dtype=np.float64)


def max_lassim_level(shape_yx: tuple[int, int]) -> int:
    """Deepest LaSSIM level defined on a plane of shape ``(Y, X)`` (pixels).

    The level-``l`` band has the shape of Gaussian level ``l`` (each pyrDown halves a side,
    rounding up) and must be at least 7x7 for the SSIM window. Returns -1 when even level 0
    does not fit (plane smaller than 7x7).
    """
    if len(shape_yx) != 2:
        raise ValueError(f"shape_yx must be (Y, X), got {tuple(shape_yx)}.")
    level = -1
    while min(pyramid_shape(shape_yx, level + 1)) >= SSIM_WIN:
        level += 1
        if level > 64:  # cannot happen for real arrays; guards against absurd shapes
            break
    return level


def _lassim_plane(
    a: np.ndarray, b: np.ndarray, level: int, rgb: bool, full: bool = False
) -> Any:
    shape_yx = tuple(a.shape[:2])
    if min(pyramid_shape(shape_yx, level)) < SSIM_WIN:
        fit = max_lassim_level(shape_yx)
        hint = (
            f"the deepest level that fits is {fit} (use level={fit})"
            if fit >= 0
            else f"no level fits: the plane must be at least {SSIM_WIN}x{SSIM_WIN}"
        )
        raise ValueError(
            f"plane of {shape_yx[0]}x{shape_yx[1]} pixels is too small for LaSSIM level "
            f"{level}: its band would be {pyramid_shape(shape_yx, level)} but SSIM needs "
            f"at least {SSIM_WIN}x{SSIM_WIN}; {hint}."
        )
    la = laplacian_band(_gray(a, rgb), level)
    lb = laplacian_band(_gray(b, rgb), level)
    lo = min(la.min(), lb.min())
    hi = max(la.max(), lb.max())
    if hi == lo:  # both bands flat and equal: identical structure, SSIM would be 0/0
        return (1.0, np.ones_like(la)) if full else 1.0
    return structural_similarity(la, lb, data_range=float(hi - lo), full=full)


# --------------------------------------------------------------------------- stack driver
# Planes handed to the kernels are (Y, X) or (Y, X, 3), so ``plane.ndim == 3`` means colour.
def _per_plane(
    kernel: Callable[[np.ndarray, np.ndarray], float],
    a: Any,
    b: Any,
    names: tuple[str, str],
    rgb: bool | None,
    per_plane: bool,
) -> float | np.ndarray:
    a, b, rgb = _check_pair(a, b, names, rgb)
    lead = _lead_shape(tuple(a.shape), rgb)
    values = np.empty(lead, dtype=np.float64)
    for idx in np.ndindex(*lead):
        values[idx] = kernel(_plane(a, idx, rgb, names[0]), _plane(b, idx, rgb, names[1]))
    return values if per_plane else float(values.mean())


def _iter_maps(
    kernel: Callable[[np.ndarray, np.ndarray], np.ndarray],
    a: Any,
    b: Any,
    names: tuple[str, str],
    rgb: bool | None,
    cancel: Callable[[], bool] | None = None,
) -> Generator[tuple[int, int], None, np.ndarray | None]:
    """Yield ``(done, total)`` per plane; return the stacked maps, or None if cancelled."""
    a, b, rgb = _check_pair(a, b, names, rgb)
    lead = _lead_shape(tuple(a.shape), rgb)
    total = int(np.prod(lead, dtype=np.int64))
    out: np.ndarray | None = None
    for done, idx in enumerate(np.ndindex(*lead), start=1):
        if cancel is not None and cancel():
            return None  # no half-made map
        m = kernel(_plane(a, idx, rgb, names[0]), _plane(b, idx, rgb, names[1]))
        if out is None:
            out = np.empty(lead + m.shape, dtype=np.float64)
        out[idx] = m
        yield done, total
    return out


def _maps(
    kernel: Callable[[np.ndarray, np.ndarray], np.ndarray],
    a: Any,
    b: Any,
    names: tuple[str, str],
    rgb: bool | None,
) -> np.ndarray:
    return drive(_iter_maps(kernel, a, b, names, rgb))


def _ssim_map_kernel(dr: float | None) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        s = _ssim_plane(x, y, x.ndim == 3, dr, full=True)[1]
        return s.mean(axis=-1) if x.ndim == 3 else s

    return kernel


def _lassim_map_kernel(level: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return lambda x, y: _lassim_plane(x, y, level, x.ndim == 3, full=True)[1]


# --------------------------------------------------------------------------- public API
def psnr(
    reference: Any,
    image: Any,
    *,
    data_range: float | None = None,
    rgb: bool | None = None,
    per_plane: bool = False,
) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range**2 / MSE)``.

    ``reference`` and ``image``: same shape, ``(..., Y, X)`` or ``(..., Y, X, 3|4)``. Colour
    planes use the MSE over all channels (scikit-image's ``peak_signal_noise_ratio``).
    Identical planes give ``inf``. Returns the mean over planes (``per_plane=True``: an array
    shaped like the leading axes). See the module docstring for ``data_range`` and ``rgb``.
    """
    dr = _check_data_range(data_range)
    return _per_plane(
        lambda r, i: _psnr_plane(r, i, dr), reference, image, ("reference", "image"),
        rgb, per_plane,
    )


def ssim(
    image0: Any,
    image1: Any,
    *,
    data_range: float | None = None,
    rgb: bool | None = None,
    per_plane: bool = False,
) -> float | np.ndarray:
    """Mean structural similarity (scikit-image defaults: 7x7 uniform window, K1=0.01,
    K2=0.03, sample covariance), in [-1, 1], 1 = identical.

    Shapes as :func:`psnr`; colour planes average the per-channel SSIM (``channel_axis=-1``).
    Planes must be at least 7x7 pixels. Returns the mean over planes, or per plane.
    """
    dr = _check_data_range(data_range)
    return _per_plane(
        lambda x, y: float(_ssim_plane(x, y, x.ndim == 3, dr)), image0, image1,
        ("image0", "image1"), rgb, per_plane,
    )


def delta_e(
    reference: Any,
    image: Any,
    *,
    data_range: float | None = None,
    rgb: bool | None = None,
    per_plane: bool = False,
) -> float | np.ndarray:
    """Mean CIEDE2000 colour difference ΔE00 (CIELAB units; ~1 = just noticeable, 0 = equal).

    Both images are scaled to [0, 1] with one offset and ``data_range`` (the offset is 0
    unless values are negative, or the range was defaulted to ``max - min`` for floats, in which
    case it is the joint minimum), read as sRGB (D65), converted with ``rgb2lab`` and compared
    with ``deltaE_ciede2000``. Grayscale planes are replicated to RGB first. uint8 input gives
    exactly ``deltaE_ciede2000(rgb2lab(reference), rgb2lab(image)).mean()``.
    """
    dr = _check_data_range(data_range)
    return _per_plane(
        lambda r, i: _delta_e_plane(r, i, r.ndim == 3, dr), reference, image,
        ("reference", "image"), rgb, per_plane,
    )


def lassim(
    image: Any,
    enhanced: Any,
    *,
    level: int = 3,
    rgb: bool | None = None,
    per_plane: bool = False,
) -> float | np.ndarray:
    """Laplacian SSIM (LaSSIM, Nguyen et al.): structure preserved by an enhancement, no
    clean reference needed. 1 = identical structure.

    Per plane: colour -> ``skimage.color.rgb2gray`` (float in [0, 1]; integers rescaled by
    their dtype), grayscale used as it is (float64, so both images must share one intensity
    scale); Laplacian band ``L_l = G_l - pyrUp(G_(l+1))`` with OpenCV pyrDown/pyrUp semantics
    (:mod:`.pyramid`); SSIM of the two bands with scikit-image defaults and
    ``data_range = max - min`` over both bands (1.0 when both bands are flat and equal).

    ``level`` (default 3 = 1/8 resolution): the level-``l`` band, of shape
    ``ceil(Y / 2**l) x ceil(X / 2**l)`` (pyrDown rounding), must be at least 7x7; see
    :func:`max_lassim_level`. Returns the mean over planes, or per plane.
    """
    level = _check_level(level)
    return _per_plane(
        lambda x, y: float(_lassim_plane(x, y, level, x.ndim == 3)), image, enhanced,
        ("image", "enhanced"), rgb, per_plane,
    )


def ssim_map(
    image0: Any, image1: Any, *, data_range: float | None = None, rgb: bool | None = None
) -> np.ndarray:
    """Per-pixel SSIM map, float64, shape ``(..., Y, X)`` (colour: mean over channels, so the
    channel axis is dropped). The scalar :func:`ssim` is the mean of this map without its
    3-pixel border (scikit-image crops ``(win_size - 1) // 2``)."""
    return _maps(_ssim_map_kernel(_check_data_range(data_range)), image0, image1, ("image0", "image1"), rgb)


def lassim_map(
    image: Any, enhanced: Any, *, level: int = 3, rgb: bool | None = None
) -> np.ndarray:
    """Per-pixel SSIM map of the level-``l`` Laplacian bands (see :func:`lassim`), float64,
    shape ``(..., h_l, w_l)`` with ``(h_l, w_l)`` the band shape (1/2**l of the plane,
    rounded up). Scale it by ``2**l`` to overlay it on the image."""
    return _maps(_lassim_map_kernel(_check_level(level)), image, enhanced, ("image", "enhanced"), rgb)


def iter_metric_maps(
    image: Any,
    enhanced: Any,
    *,
    kind: str = "ssim",
    level: int = 3,
    rgb: bool | None = None,
    data_range: float | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Generator[tuple[int, int], None, np.ndarray | None]:
    """:func:`ssim_map` (``kind="ssim"``) or :func:`lassim_map` (``kind="lassim"``) of a whole
    stack, one plane at a time: yields ``(done, total)`` after each plane and returns the maps
    (same shapes as those functions), or ``None`` when ``cancel()`` turned true first.
    A LaSSIM map pixel ``i`` is centred on input pixel ``2**level * i`` (pyramid levels keep the
    even rows and columns), so scaling Y/X by ``2**level`` overlays it exactly."""
    if kind == "ssim":
        kernel = _ssim_map_kernel(_check_data_range(data_range))
    elif kind == "lassim":
        kernel = _lassim_map_kernel(_check_level(level))
    else:
        raise ValueError(f"kind must be 'ssim' or 'lassim', not {kind!r}.")
    return (yield from _iter_maps(kernel, image, enhanced, ("image", "enhanced"), rgb, cancel))


def _plane_dict(
    inp: np.ndarray,
    out: np.ndarray,
    ref: np.ndarray | None,
    rgb: bool,
    level: int,
    data_range: float | None,
) -> dict[str, float]:
    d = {
        "lassim": float(_lassim_plane(inp, out, level, rgb)),
        "ssim": float(_ssim_plane(inp, out, rgb, data_range)),
    }
    if ref is not None:
        d["psnr"] = _psnr_plane(ref, out, data_range)
        d["ssim_ref"] = float(_ssim_plane(ref, out, rgb, data_range))
        d["delta_e"] = _delta_e_plane(ref, out, rgb, data_range)
    return d


def plane_metrics(
    input: Any,
    output: Any,
    reference: Any = None,
    *,
    level: int = 3,
    rgb: bool | None = None,
    data_range: float | None = None,
) -> dict[str, float]:
    """All metrics for ONE plane, ``(Y, X)`` or ``(Y, X, 3|4)``.

    Keys: ``"lassim"`` (at ``level``) and ``"ssim"`` compare ``output`` with ``input``; with a
    ``reference`` also ``"psnr"`` (dB), ``"ssim_ref"`` and ``"delta_e"`` (ΔE00) compare
    ``output`` with ``reference``. Same conventions as the individual functions.
    """
    level = _check_level(level)
    dr = _check_data_range(data_range)
    inp, out, rgb_ = _check_pair(input, output, ("input", "output"), rgb)
    _single_plane(inp, "input", rgb_)
    ref = None
    if reference is not None:
        ref, _, _ = _check_pair(reference, out, ("reference", "output"), rgb_)
        ref = _plane(ref, (), rgb_, "reference")
    return _plane_dict(
        _plane(inp, (), rgb_, "input"), _plane(out, (), rgb_, "output"), ref, rgb_, level, dr
    )


def iter_stack_metrics(
    input: Any,
    output: Any,
    reference: Any = None,
    *,
    level: int = 3,
    rgb: bool | None = None,
    data_range: float | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Iterator[tuple[PlaneIndex, int, int, dict[str, float]]]:
    """Metrics of every 2-D plane of two (or three) stacks, one plane at a time.

    Shapes ``(..., Y, X)`` or ``(..., Y, X, 3|4)``, all equal; numpy or dask (each dask plane
    is computed only when reached). Yields ``(plane_index, done, total, metrics)`` where
    ``plane_index`` indexes the leading axes (``()`` for a single plane), ``done`` counts
    planes finished (1..total) and ``metrics`` is :func:`plane_metrics`'s dict. ``cancel`` is
    called before each plane; when it returns True the generator stops.
    """
    level = _check_level(level)
    dr = _check_data_range(data_range)
    inp, out, rgb_ = _check_pair(input, output, ("input", "output"), rgb)
    ref = None
    if reference is not None:
        ref, _, _ = _check_pair(reference, out, ("reference", "output"), rgb_)
    lead = _lead_shape(tuple(inp.shape), rgb_)
    total = int(np.prod(lead, dtype=np.int64))
    for done, idx in enumerate(np.ndindex(*lead), start=1):
        if cancel is not None and cancel():
            return
        d = _plane_dict(
            _plane(inp, idx, rgb_, "input"),
            _plane(out, idx, rgb_, "output"),
            None if ref is None else _plane(ref, idx, rgb_, "reference"),
            rgb_, level, dr,
        )
        yield idx, done, total, d
