"""One inference engine for every model: n-D slicing, tiling with overlap blending, intensity
mapping in and out, dtype round trip, device and precision, progress and cancel.

The engine is a generator (:func:`iter_apply`) that yields a :class:`Progress` after every tile,
so a napari ``thread_worker`` can render progress and ``quit()`` it between tiles; :func:`apply`
drives it for the CLI, tests and scripts.

Conventions
-----------
* **Arrays.** numpy or dask, shape ``(..., Y, X)`` (grayscale) or ``(..., Y, X, C)`` with C = 3
  (RGB) or 4 (RGBA: alpha is passed through untouched, nearest-neighbour enlarged when
  ``scale > 1``). Leading axes (Z, T, C...) are independent 2-D planes, read one at a time with
  ``np.asarray(image[index])`` so a dask stack is never computed whole.
* **Intensities.** Floats whose values all lie in [0, 1] go to the network as they are.
  Anything else is mapped linearly to [0, 1] with ``lo, hi`` = min and max of the *whole* array
  (one rule for every plane of a stack) or ``data_range=(lo, hi)``; the output is mapped back,
  clipped to ``[lo, hi]``, rounded for integer dtypes and cast to the input dtype.
* **Stretched input.** A model trained on contrast-stretched images (``input_percentiles``,
  e.g. DPE's ``(2, 98)``) sees its [0, 1] input with those percentiles of the whole array
  mapped to 0 and 1, clipped; its output is mapped back as above (to ``[lo, hi]``), so the
  result keeps the input's units and range.
* **Self-ensemble** (``ensemble=True``): every tile goes through the network in its 8 rotations
  and flips, each output turned back and the 8 averaged (geometric self-ensemble: R. Timofte,
  R. Rothe, L. Van Gool, "Seven ways to improve example-based single image super resolution",
  CVPR 2016; B. Lim et al., EDSR+, CVPRW 2017). 8× the time for a better estimate
  (benchmarks/results_ensemble.md); progress and cancel come after every view.
* **Image edges** (``border``): a network whose output suffers at the edges of what it sees
  (DRAN: dark blots along some edges of small planes, worth up to 3 dB on a 64² MR slice) gets
  every plane grown by ``border`` mirrored pixels on each side, and the output cropped back; a
  network's class asks for it with ``reflect_border`` (:mod:`.runtime`).
* **Networks.** ``net`` maps a float tensor ``(B, net_channels, h, w)`` in [0, 1] to
  ``(B, C_out, h * scale, w * scale)``. With ``net_channels=3`` grayscale planes are replicated
  to three channels and the outputs averaged back; with ``net_channels=1`` the colour channels of
  an RGB plane go through as a batch of three.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .device import cpu_has_bf16, device_choices, resolve_device
from .intensity import as_array, check_dtype, input_stretch, intensity_range, resolve_rgb
from .jobs import drive
from .tiling import AUTO_TILE, AUTO_WHOLE_PLANE_PIXELS, DEFAULT_OVERLAP, plan, window_1d

__all__ = [
    "AUTO_TILE",
    "AUTO_WHOLE_PLANE_PIXELS",
    "ENSEMBLE_VIEWS",
    "Cancelled",
    "Progress",
    "apply",
    "cpu_has_bf16",
    "device_choices",
    "input_stretch",
    "iter_apply",
    "plane_tiles",
    "resolve_device",
    "views",
]


@dataclass(frozen=True)
class Progress:
    """One unit of work finished: ``done`` of ``total`` tiles (counted over all planes).

    ``stage`` names where the engine is, e.g. ``"plane 3/24"``.
    """

    done: int
    total: int
    stage: str


#: Network passes per tile with ``ensemble=True``: the 4 rotations, each unflipped and flipped.
ENSEMBLE_VIEWS = 8


def plane_tiles(
    height: int, width: int, tile: int | None, overlap: int = DEFAULT_OVERLAP, border: int = 0
) -> list[tuple[int, int, int, int]]:
    """The tiles ``(y0, x0, th, tw)`` the engine runs for one ``height × width`` plane: over the
    plane grown by ``border`` mirrored pixels on every side. ``tile=None`` decides by the plane's
    own size (whole up to :data:`AUTO_WHOLE_PLANE_PIXELS`, the border included)."""
    if tile is None and height * width <= AUTO_WHOLE_PLANE_PIXELS:
        tile = max(height, width) + 2 * border
    return plan(height + 2 * border, width + 2 * border, tile, overlap)


def views(ensemble: bool) -> int:
    """Network passes per tile (progress events per tile): 8 with ``ensemble``, else 1."""
    return ENSEMBLE_VIEWS if ensemble else 1


def _dihedral(x: torch.Tensor, view: int) -> torch.Tensor:
    """View ``view`` (0–7) of a ``(..., H, W)`` tensor: rotated by ``view % 4`` quarter turns,
    then mirrored left–right when ``view >= 4``; view 0 is ``x`` itself."""
    x = torch.rot90(x, view % 4, (-2, -1)) if view % 4 else x
    return x.flip(-1) if view >= 4 else x


def _undihedral(y: torch.Tensor, view: int) -> torch.Tensor:
    """The inverse of :func:`_dihedral`: a network's output on view ``view`` turned back."""
    y = y.flip(-1) if view >= 4 else y
    return torch.rot90(y, -(view % 4), (-2, -1)) if view % 4 else y


class Cancelled(Exception):
    """The caller's ``cancel()`` returned True; no partial result is returned."""


# --------------------------------------------------------------------------------------------
# network call


def _autocast(dev: torch.device, half: bool) -> contextlib.AbstractContextManager:
    if not half:
        return contextlib.nullcontext()
    if dev.type == "cpu":
        # bf16, not fp16: CPUs compute bf16 natively (fp16 convolutions are slow there), and its
        # fp32-sized exponent cannot overflow.
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    if available is not None and not available(dev.type):
        raise ValueError(f"half=True: fp16 autocast is not available on {dev}; use half=False")
    return torch.autocast(device_type=dev.type, dtype=torch.float16)


def _forward(
    net: torch.nn.Module,
    xb: torch.Tensor,
    dev: torch.device,
    half: bool,
    tile_hw: tuple[int, int],
) -> torch.Tensor:
    """``net(xb)`` without autograd; the result as float32 on the CPU.

    Inference and autocast modes are entered per call (never across a ``yield``), so the
    caller's thread is never left in inference mode while the generator is suspended.
    """
    if dev.type == "cpu" and xb.dim() == 4:
        # oneDNN's convolutions are fastest on channels-last activations, which the layers
        # then pass on: 1.4-2.4x faster than NCHW for every bundled model on a 2-core AVX2
        # CPU, same output to one grey level (benchmarks/results_layout.md).
        xb = xb.contiguous(memory_format=torch.channels_last)
    try:
        with torch.inference_mode(), _autocast(dev, half):
            y = net(xb)
            if not isinstance(y, torch.Tensor):
                raise TypeError(
                    f"the network returned {type(y).__name__}; the engine needs one tensor "
                    "(B, C, H, W)"
                )
            return y.float().cpu()
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            h, w = tile_hw
            raise RuntimeError(
                f"out of memory on {dev} while processing a {h}x{w} tile; pass a smaller "
                f"tile (e.g. tile={max(64, min(h, w) // 2)}) or device='cpu'"
            ) from e
        raise


def _net_dtype(net: torch.nn.Module) -> torch.dtype:
    p = next(iter(net.parameters()), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


# --------------------------------------------------------------------------------------------
# engine


def iter_apply(
    image: Any,
    net: torch.nn.Module,
    *,
    scale: int = 1,
    rgb: bool | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    half: bool | None = None,
    data_range: Sequence[float] | None = None,
    net_channels: int = 3,
    pad_multiple: int = 1,
    cancel: Callable[[], bool] | None = None,
    cpu_bf16: bool = False,
    input_percentiles: Sequence[float] | None = None,
    stretch_range: Sequence[float] | None = None,
    ensemble: bool = False,
    border: int = 0,
) -> Generator[Progress, None, np.ndarray]:
    """Run ``net`` over every 2-D plane of ``image``, tile by tile; a generator.

    Args:
        image: numpy or dask array ``(..., Y, X)`` or ``(..., Y, X, 3|4)``; never modified.
        net: module mapping ``(B, net_channels, h, w)`` in [0, 1] to
            ``(B, C_out, h * scale, w * scale)``. It is moved to ``device`` and put in eval
            mode while it runs; the training flags of its modules are restored afterwards.
        scale: integer upscaling factor of the network (1 for enhancement / denoising).
        rgb: colour image with channels last; None guesses as napari does (last axis 3 or 4
            and ``ndim >= 3``).
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"``, ``"mps"`` or a ``torch.device``.
        tile: tile edge in input pixels; None processes planes of up to 1024² pixels whole and
            larger ones in 512-pixel tiles.
        overlap: overlap between neighbouring tiles in input pixels. The outer quarter of
            it is discarded and the rest cross-faded, so tiling reproduces the whole-plane
            result exactly when the network's receptive-field radius is <= ``overlap // 4``
            (and approximately, without seams, beyond).
        half: reduced-precision autocast (fp16 on GPUs, bf16 on the CPU); None uses it on CUDA,
            and on a CPU with native bf16 instructions when ``cpu_bf16`` is set.
        cpu_bf16: the model was validated in bf16 (its card says what it costs: < 0.05 dB
            PSNR for the shipped models); with ``half=None`` it then runs in bf16 on CPUs that
            have bf16 instructions (AVX-512 BF16 / AMX), about 1.5–2× faster there.
        data_range: ``(lo, hi)`` in the image's units mapped to [0, 1]; None uses the array's
            min and max (or [0, 1] for floats already inside it).
        net_channels: input channels of the network, 3 or 1.
        pad_multiple: tiles are reflect-padded (bottom / right) to a multiple of this before
            the network sees them and cropped back after.
        cancel: called before every tile; returning True raises :class:`Cancelled`.
        input_percentiles: ``(p_lo, p_hi)`` (0–100): the network sees its input stretched so
            that these percentiles of the whole array (:func:`input_stretch`) become 0 and 1,
            clipped (module docstring); None: the input as mapped above.
        stretch_range: those two values in the image's units, when they were computed over
            more than ``image`` (the whole stack of a previewed plane, a volume processed
            block by block); needs ``input_percentiles``.
        ensemble: run every tile in its 8 rotations and flips and average the outputs turned
            back (module docstring): 8× the time; ``cancel`` is polled before every view.
        border: grow every plane by this many mirrored pixels on each side before the network
            and crop them off its output (module docstring); tiles cover the grown plane.

    Yields:
        :class:`Progress` after each tile (each view of a tile with ``ensemble``); ``total``
        counts them over all planes.

    Returns:
        (via ``StopIteration.value``) a numpy array of the input dtype, shaped like the input
        with Y and X multiplied by ``scale``.

    Raises:
        ValueError: NaN / inf values, bool or non-real dtype, empty array, planes under 2x2,
            bad arguments, unknown or unavailable device.
        Cancelled: ``cancel()`` returned True.
        RuntimeError: out of device memory (with advice to use a smaller ``tile``).
    """
    arr, is_dask = as_array(image)
    dtype = np.dtype(arr.dtype)
    check_dtype(dtype)
    if arr.ndim < 2:
        raise ValueError(f"expected an image with at least 2 dimensions (Y, X); got {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"the image is empty (shape {arr.shape})")
    is_rgb, has_alpha = resolve_rgb(tuple(arr.shape), rgb)
    plane_nd = 3 if is_rgb else 2
    lead = tuple(arr.shape[:-plane_nd])
    height, width = (int(s) for s in arr.shape[-plane_nd:][:2])
    if height < 2 or width < 2:
        raise ValueError(
            f"planes must be at least 2x2 pixels; got {height}x{width} (shape {arr.shape}"
            f"{', rgb' if is_rgb else ''})"
        )
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer; got {scale!r}")
    scale = int(scale)
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0; got {overlap}")
    if border < 0:
        raise ValueError(f"border must be >= 0; got {border}")
    if tile is not None:
        if tile < 2:
            raise ValueError(f"tile must be >= 2 pixels; got {tile}")
        if tile <= overlap and max(height, width) + 2 * border > tile:
            raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    if pad_multiple < 1:
        raise ValueError(f"pad_multiple must be >= 1; got {pad_multiple}")
    if net_channels not in (1, 3):
        raise ValueError(f"net_channels must be 1 or 3; got {net_channels}")
    dev = resolve_device(device)
    if half is None:
        use_half = dev.type == "cuda" or (dev.type == "cpu" and cpu_bf16 and cpu_has_bf16())
    else:
        use_half = bool(half)

    lo, hi = intensity_range(arr, has_alpha, data_range, is_dask)
    # A constant image has hi == lo: any span maps it to 0 and the clip maps it back exactly.
    span = hi - lo if hi > lo else 1.0
    if stretch_range is not None and input_percentiles is None:
        raise ValueError("stretch_range needs input_percentiles (the model's stretch)")
    stretch: tuple[float, float] | None = None
    if input_percentiles is not None:
        s_lo, s_hi = (stretch_range if stretch_range is not None
                      else input_stretch(arr, input_percentiles, rgb=is_rgb))
        if s_hi > s_lo:  # a flat image has nothing to stretch
            stretch = ((s_lo - lo) / span, (s_hi - s_lo) / span)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        clip_lo, clip_hi = max(lo, float(info.min)), min(hi, float(info.max))
    else:
        clip_lo, clip_hi = lo, hi

    tiles = plane_tiles(height, width, tile, overlap, border)
    n_planes = int(np.prod(lead)) if lead else 1
    n_views = views(ensemble)
    total = n_planes * len(tiles) * n_views
    n_color = 3 if is_rgb else 1
    # The network's plane: the image's, grown by the mirrored border.
    grown_h, grown_w = height + 2 * border, width + 2 * border
    out_h, out_w = grown_h * scale, grown_w * scale

    # Windows are separable: keep the 1-D factors (tiny) and form each 2-D window per tile, so
    # memory stays bounded by the tile and the plane, not by the number of tiles.
    win_y = {y0: window_1d(y0, th, grown_h, overlap, scale) for (y0, _, th, _) in tiles}
    win_x = {x0: window_1d(x0, tw, grown_w, overlap, scale) for (_, x0, _, tw) in tiles}
    # float64 keeps the blended identity exact at scale 1; at scale > 1 the output planes are
    # scale² larger and float32 halves their memory at no visible cost.
    acc_dtype = np.float64 if scale == 1 else np.float32
    wsum = np.zeros((out_h, out_w), dtype=acc_dtype)
    for y0, x0, th, tw in tiles:
        wsum[y0 * scale : (y0 + th) * scale, x0 * scale : (x0 + tw) * scale] += np.outer(
            win_y[y0], win_x[x0]
        )

    keep = (slice(None), slice(border * scale, (border + height) * scale),
            slice(border * scale, (border + width) * scale))
    out = np.empty(lead + ((height * scale, width * scale, arr.shape[-1]) if is_rgb
                           else (height * scale, width * scale)), dtype)
    modes = [(m, m.training) for m in net.modules()]
    net.to(dev)
    net.eval()
    in_dtype = _net_dtype(net)
    try:
        done = 0
        for p, index in enumerate(np.ndindex(*lead)):
            stage = f"plane {p + 1}/{n_planes}"
            # One plane at a time: for dask this computes only that plane's chunks.
            plane = np.asarray(arr[index])
            color = plane[..., :3] if has_alpha else plane
            color64 = color.astype(np.float64)
            if is_rgb:
                color64 = np.moveaxis(color64, -1, 0)  # (3, Y, X)
            else:
                color64 = color64[None]  # (1, Y, X)
            x32 = ((color64 - lo) / span).astype(np.float32)
            x_net = x32 if stretch is None else np.clip(
                (x32 - np.float32(stretch[0])) / np.float32(stretch[1]), 0.0, 1.0)
            if border:
                x_net = np.pad(x_net, ((0, 0), (border, border), (border, border)), mode="reflect")
            acc = np.zeros((n_color, out_h, out_w), dtype=acc_dtype)
            unit = "views" if n_views > 1 else "tiles"
            for y0, x0, th, tw in tiles:
                y = None
                for view in range(n_views):
                    if cancel is not None and cancel():
                        raise Cancelled(f"cancelled after {done} of {total} {unit}")
                    yv = _run_tile(
                        net, x_net, y0, x0, th, tw, scale, pad_multiple, is_rgb, net_channels,
                        dev, use_half, in_dtype, view,
                    )
                    y = yv if y is None else y + yv
                    done += 1
                    if view < n_views - 1:
                        yield Progress(done, total, stage)
                win = np.outer(win_y[y0], win_x[x0])
                if n_views > 1:
                    win = win / n_views
                acc[:, y0 * scale : (y0 + th) * scale, x0 * scale : (x0 + tw) * scale] += y * win
                yield Progress(done, total, stage)
            res = (acc / wsum)[keep]
            if scale == 1:
                # Add the network's change to the original values instead of mapping its output
                # back: identical up to the float32 rounding of the input, which this restores,
                # so an identity network returns every dtype (float64 too) bit for bit.
                res = color64 + (res - x32) * span
            else:
                res = res * span + lo
            np.clip(res, clip_lo, clip_hi, out=res)
            if dtype.kind in "iu":
                np.rint(res, out=res)
            res = res.astype(dtype)
            if is_rgb:
                res = np.moveaxis(res, 0, -1)
                if has_alpha:
                    alpha = plane[..., 3]
                    if scale > 1:
                        alpha = np.repeat(np.repeat(alpha, scale, axis=0), scale, axis=1)
                    res = np.concatenate([res, alpha[..., None].astype(dtype)], axis=-1)
            else:
                res = res[0]
            out[index] = res
        return out
    finally:
        for m, training in modes:
            m.training = training


def _run_tile(
    net: torch.nn.Module,
    x32: np.ndarray,
    y0: int,
    x0: int,
    th: int,
    tw: int,
    scale: int,
    pad_multiple: int,
    is_rgb: bool,
    net_channels: int,
    dev: torch.device,
    half: bool,
    in_dtype: torch.dtype,
    view: int = 0,
) -> np.ndarray:
    """Network output for one tile, ``(n_color, th * scale, tw * scale)``, float, in [0, 1]:
    run on the tile's :func:`_dihedral` ``view`` and turned back."""
    t = x32[:, y0 : y0 + th, x0 : x0 + tw]
    ph, pw = (-th) % pad_multiple, (-tw) % pad_multiple
    if ph or pw:
        t = np.pad(t, ((0, 0), (0, ph), (0, pw)), mode="reflect")
    xt = torch.from_numpy(np.ascontiguousarray(t))
    if net_channels == 3:
        xb = (xt if is_rgb else xt.expand(3, -1, -1))[None]  # (1, 3, h, w)
    else:
        xb = xt[:, None]  # (n_color, 1, h, w): RGB channels as a batch
    xb = _dihedral(xb.to(device=dev, dtype=in_dtype), view)
    y = _undihedral(_forward(net, xb, dev, half, tuple(xb.shape[-2:])), view)
    exp_hw = ((th + ph) * scale, (tw + pw) * scale)
    if y.ndim != 4 or y.shape[0] != xb.shape[0] or tuple(y.shape[-2:]) != exp_hw:
        raise ValueError(
            f"the network turned a {tuple(xb.shape)} tile into {tuple(y.shape)}; expected "
            f"({xb.shape[0]}, C, {exp_hw[0]}, {exp_hw[1]}) for scale={scale}"
        )
    if is_rgb and net_channels == 3:
        if y.shape[1] != 3:
            raise ValueError(f"an RGB image needs a 3-channel network output; got {y.shape[1]}")
        y = y[0]
    elif is_rgb:
        if y.shape[1] != 1:
            raise ValueError(f"net_channels=1 needs a 1-channel network output; got {y.shape[1]}")
        y = y[:, 0]
    else:
        # Gray: average the replicated channels back, in float64 so that averaging three equal
        # values returns that value exactly.
        y = y[0].double().mean(dim=0, keepdim=True)
    return y[:, : th * scale, : tw * scale].numpy()


def apply(
    image: Any,
    net: torch.nn.Module,
    *,
    progress: Callable[[Progress], None] | None = None,
    **kw: Any,
) -> np.ndarray:
    """Run :func:`iter_apply` to the end and return its result.

    ``progress`` (optional) is called with every :class:`Progress`; the other keywords are
    those of :func:`iter_apply`. Output: the input dtype, Y and X multiplied by ``scale``.
    """
    return drive(iter_apply(image, net, **kw), progress)
