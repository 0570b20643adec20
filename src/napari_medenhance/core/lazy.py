"""Volumes larger than memory: the engine run block by block, each block written as it is done.

:func:`iter_process_volume` reads a block of planes (a few planes of a memory-mapped TIFF, one
chunk row of a dask or zarr array), runs it through :func:`~napari_medenhance.core.engine.iter_apply`
(which tiles inside each plane with the overlap the network needs) and writes the result into
the output store straight away, so peak memory follows the block size, not the volume:

* **one intensity mapping for the whole volume.** Before any network call, one pass over the
  blocks computes min / max (and counts NaN / inf) block by block; the engine's own rule then
  turns them into ``(lo, hi)`` (floats in [0, 1] are kept as they are), and every block is run
  with that ``data_range``. The result is therefore the same as the in-memory
  :func:`~napari_medenhance.core.engine.apply` of the whole array.
* **outputs.** ``.tif`` / ``.tiff``: a contiguous TIFF whose header (ImageJ spacing, resolution,
  exact spacing and origin) is written by :func:`napari_medenhance.core.io.write_volume`, then
  filled with plain file writes at the planes' offsets; ``.zarr``: a zarr array with one chunk
  per plane, filled block by block. ``.nii`` / ``.nii.gz`` cannot be filled in place: the
  blocks go to a temporary ``.npy`` beside the output, which ``write_volume`` then streams into
  the NIfTI (keeping the input's header and affine). An upscaled result (``scale > 1``) gets
  Y / X spacing divided by the factor and its origin (NIfTI / DICOM affine) moved so its pixels
  tile the input's (:func:`upscaled_like`, the geometry ``medenhance sr`` writes).
* **atomic.** Everything is written under a temporary name beside the output
  (``.STEM.medenhance-partial.SUFFIX``) and renamed over ``NAME`` only when the last block is done;
  on cancel or error the temporary file is removed, so the final path holds either a complete
  result or whatever it held before.
* **memory-mapped inputs.** Pages of a memory-mapped input that were read are handed back to
  the kernel after each block (``madvise(MADV_DONTNEED)``; the data stay in the page cache), so
  the process's resident set does not grow to the size of the file either.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import engine, intensity, volume_stores
from .engine import Cancelled, Progress
from .jobs import drive
from .volume_stores import PARTIAL_SUFFIX, partial_path

if TYPE_CHECKING:
    import torch

    from .io import Volume

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "PARTIAL_SUFFIX",
    "iter_process_volume",
    "partial_path",
    "upscaled_like",
    "volume_range",
]

#: Input bytes read per block when the input has no chunks of its own (numpy, memmap).
DEFAULT_BLOCK_BYTES = 64 * 2**20
# --------------------------------------------------------------------------------------------
# layout and blocks


@dataclass(frozen=True)
class _Layout:
    lead: tuple[int, ...]  # leading (plane) axes
    height: int
    width: int
    is_rgb: bool
    has_alpha: bool

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.lead)) if self.lead else 1


def _layout(arr: Any, rgb: bool | None) -> _Layout:
    shape = tuple(int(s) for s in arr.shape)
    intensity.check_dtype(np.dtype(arr.dtype))
    if len(shape) < 2:
        raise ValueError(f"expected an image with at least 2 dimensions (Y, X); got {shape}")
    if 0 in shape:
        raise ValueError(f"the image is empty (shape {shape})")
    is_rgb, has_alpha = intensity.resolve_rgb(shape, rgb)
    nd = 3 if is_rgb else 2
    return _Layout(shape[:-nd], shape[-nd], shape[-nd + 1], is_rgb, has_alpha)


def _chunk_bounds(arr: Any, axis: int) -> list[int] | None:
    """Chunk boundaries of a dask or zarr array along ``axis``, or None (no chunks)."""
    chunks = getattr(arr, "chunks", None)
    if chunks is None or axis >= len(chunks):
        return None
    c = chunks[axis]
    size = int(arr.shape[axis])
    if isinstance(c, tuple):  # dask: the sizes of every chunk
        return list(np.cumsum((0, *c)))
    c = int(c)  # zarr: one chunk size
    return list(range(0, size, c)) + [size]


def _blocks(arr: Any, lay: _Layout, block_bytes: int) -> list[tuple]:
    """Keys ``outer + (slice(b0, b1),)`` covering the leading axes, in C order.

    Chunked inputs are cut at their chunk boundaries (a chunk is read once per pass, never in
    pieces), merging neighbouring chunks while they fit in ``block_bytes``; unchunked ones get
    as many planes as fit in ``block_bytes`` (at least one).
    """
    if not lay.lead:
        return [()]
    axis = len(lay.lead) - 1
    n = lay.lead[-1]
    plane_bytes = max(1, int(np.prod(arr.shape[axis + 1 :])) * np.dtype(arr.dtype).itemsize)
    per_block = max(1, int(block_bytes) // plane_bytes)
    bounds = _chunk_bounds(arr, axis)
    if bounds is None:
        bounds = list(range(0, n, per_block)) + [n]
    else:
        merged = [bounds[0]]
        for b in bounds[1:]:
            if len(merged) > 1 and b - merged[-2] <= per_block:
                merged[-1] = b  # the current block still fits: extend it
            else:
                merged.append(b)
        bounds = merged
    runs = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return [outer + (s,) for outer in np.ndindex(*lay.lead[:-1]) for s in runs]


def _block_planes(key: tuple) -> int:
    return key[-1].stop - key[-1].start if key else 1


def _flat_plane(key: tuple, lead: tuple[int, ...]) -> int:
    """Index of the block's first plane among all planes (C order)."""
    if not key:
        return 0
    return int(np.ravel_multi_index(key[:-1] + (key[-1].start,), lead))


# --------------------------------------------------------------------------------------------
# intensity range


def _iter_range(
    arr: Any,
    lay: _Layout,
    keys: list[tuple],
    mapping: mmap.mmap | None,
    total_tiles: int,
    cancel: Callable[[], bool] | None,
) -> Generator[Progress, None, tuple[float, float]]:
    lo, hi = np.inf, -np.inf
    is_float = np.dtype(arr.dtype).kind == "f"
    for i, key in enumerate(keys):
        if cancel is not None and cancel():
            raise Cancelled(f"cancelled while scanning intensities (block {i + 1}/{len(keys)})")
        block = volume_stores.read_block(arr, key, mapping)
        color = block[..., :3] if lay.has_alpha else block
        if is_float:
            n_nan, n_inf = int(np.count_nonzero(np.isnan(block))), int(np.count_nonzero(np.isinf(block)))
            if n_nan or n_inf:
                # Stop at the first bad block: scanning gigabytes more only to count is no help.
                first = _flat_plane(key, lay.lead)
                where = f"planes {first}-{first + _block_planes(key) - 1} of {lay.n_planes}" if key else "the image"
                raise ValueError(
                    f"image contains {n_nan} NaN and {n_inf} infinite value(s) in {where}; "
                    "replace them first, e.g. with np.nan_to_num"
                )
        lo, hi = min(lo, float(color.min())), max(hi, float(color.max()))
        del block, color
        # done = 0 tiles: the scan is a stage of its own, and a point where workers can stop.
        yield Progress(0, total_tiles, f"intensity range: block {i + 1}/{len(keys)}")
    # The engine's own rule on the (min, max) pair, so [0, 1] floats are kept as they are.
    return intensity.intensity_range(np.array([lo, hi], dtype=arr.dtype), False, None, False)


def volume_range(
    image: Any,
    *,
    rgb: bool | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    cancel: Callable[[], bool] | None = None,
) -> tuple[float, float]:
    """``(lo, hi)`` the engine maps to [0, 1] for ``image``, computed block by block.

    The same value as the in-memory engine uses for the whole array (min and max of the colour
    channels; ``(0, 1)`` for floats already inside [0, 1]), reading at most one block (about
    ``block_bytes`` bytes, or one chunk row) at a time.

    Raises:
        ValueError: NaN / inf values, unsupported dtype, empty array.
        Cancelled: ``cancel()`` returned True.
    """
    arr = _as_array(image)
    lay = _layout(arr, rgb)
    return drive(_iter_range(arr, lay, _blocks(arr, lay, block_bytes), volume_stores.writable_mapping(arr), 0, cancel))


def _spacing_for(
    like: Volume | None, spacing: Sequence[float] | None, n_axes: int, scale: int
) -> tuple[float, ...] | None:
    """Output spacing (napari scale order, no RGB axis) when it differs from ``like``'s:
    ``spacing`` if given, and Y / X divided by ``scale``; None = keep ``like``'s."""
    if spacing is None and scale == 1:
        return None
    sp = spacing if spacing is not None else (getattr(like, "spacing", None) if like is not None else None)
    if sp is None:
        return None
    sp = tuple(float(v) for v in sp)
    if len(sp) != n_axes:
        raise ValueError(
            f"spacing needs one value per non-colour axis ({n_axes}); got {len(sp)}: {sp}"
        )
    if not all(np.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"spacing values must be finite and positive; got {sp}")
    if scale > 1:
        sp = sp[:-2] + (sp[-2] / scale, sp[-1] / scale)
    return sp


def upscaled_like(vol: Volume, roi: Any, factor: int, z0: int = 0, drop_z: bool = False) -> Volume:
    """``vol`` re-described for the ×``factor`` super-resolved output of ``roi`` from plane ``z0``.

    ``roi``: the :class:`~napari_medenhance.core.roi.ROI` of ``vol``'s planes that was upscaled
    (the whole plane for a whole image). Y / X spacing are divided by ``factor`` and the origin
    is moved so that output pixel (i, j) lies at source data ``(y0 − 0.5 + (i + 0.5)/f,
    x0 − 0.5 + (j + 0.5)/f)``: the f × f output pixels of a source pixel tile exactly its area
    (:func:`napari_medenhance.core.roi.roi_output_affine`); plane k is source plane ``z0 + k``.
    ``drop_z``: a 3-D input's single plane ``z0`` written as a 2-D image. A NIfTI header's
    sform/qform and a DICOM series' LPS affine get the same local transform, so
    ``write_volume(like=...)`` writes the output where it lies in the scanner's world
    (``write_volume`` itself keeps those affines' voxel 0 in place and ignores ``origin``).
    The input's TIFF keywords (resolution tags) are dropped: they describe the input's grid.
    """
    import dataclasses

    from .roi import roi_output_affine

    n = len(vol.spacing)
    offset = [0.0] * (n - 2)
    if offset:
        offset[-1] = float(z0)  # planes are taken along Z, the last leading axis
    local = roi_output_affine(np.eye(n + 1), roi, factor, offset)  # output index → source index
    spacing = tuple(s * local[a, a] for a, s in enumerate(vol.spacing))
    shift = np.array([s * local[a, n] for a, s in enumerate(vol.spacing)])
    if vol.direction is not None:  # an oblique volume: the shift turns with its axes
        shift[-3:] = np.asarray(vol.direction) @ shift[-3:]
    origin = tuple(float(o + d) for o, d in zip(vol.origin, shift))
    meta = dict(vol.meta)
    meta.pop("tiff_kw", None)  # the input's resolution tags: write_tiff would reuse them
    header = meta.get("nifti_header") if vol.format == "nifti" else None
    if header is not None:
        m = min(n, 3)  # NIfTI voxel axis a is napari axis n - 1 - a
        vox = np.eye(4)
        for a in range(m):
            vox[a, a] = local[n - 1 - a, n - 1 - a]
            vox[a, 3] = local[n - 1 - a, n]
        hdr = header.copy()
        forms = [("sform", int(hdr["sform_code"])), ("qform", int(hdr["qform_code"]))]
        if not any(code > 0 for _, code in forms):  # Analyze-style: only the zooms place it
            forms = [("sform", 2)]
            hdr.set_sform(np.asarray(vol.meta["affine"], dtype=np.float64), code=2)
        for form, code in forms:
            if code > 0:
                getattr(hdr, f"set_{form}")(getattr(hdr, f"get_{form}")() @ vox, code=code)
        hdr.set_zooms(spacing[::-1])
        meta["nifti_header"] = hdr
        meta["affine"] = np.asarray(vol.meta["affine"], dtype=np.float64) @ vox
    if vol.format == "dicom" and "affine_lps" in meta and n in (2, 3):
        zyx = np.eye(4)  # napari (z, y, x, 1) indices; a 2-D image is the z = 0 plane
        zyx[3 - n :, 3 - n :] = local
        meta["affine_lps"] = (np.asarray(meta["affine_lps"], dtype=np.float64) @ zyx).tolist()
    if drop_z:  # Z (axis 0 of a 3-D input) is gone; its position is in the affines above
        spacing, origin = spacing[1:], origin[1:]
        labels = vol.axis_labels[1:] if len(vol.axis_labels) == 3 else ()
        return dataclasses.replace(vol, spacing=spacing, origin=origin, axis_labels=labels,
                                   meta=meta, direction=None)
    return dataclasses.replace(vol, spacing=spacing, origin=origin, meta=meta)


# --------------------------------------------------------------------------------------------
# the job


def _as_array(image: Any) -> Any:
    """Arrays (numpy, memmap, dask, zarr) as they are; other array-likes through numpy."""
    if hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__"):
        return image
    return np.asarray(image)


def iter_process_volume(
    image: Any,
    net: torch.nn.Module,
    output: str | os.PathLike,
    *,
    like: Volume | None = None,
    spacing: Sequence[float] | None = None,
    rgb: bool | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    overlap: int = 32,
    half: bool | None = None,
    data_range: Sequence[float] | None = None,
    scale: int = 1,
    net_channels: int = 3,
    pad_multiple: int = 1,
    tiff_kwargs: dict | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    cancel: Callable[[], bool] | None = None,
    cpu_bf16: bool = False,
    input_percentiles: Sequence[float] | None = None,
    ensemble: bool = False,
    border: int = 0,
) -> Generator[Progress, None, Path]:
    """Run ``net`` over a volume block by block, writing each block to ``output`` as it is done.

    Args:
        image: the input, ``(..., Y, X)`` or ``(..., Y, X, 3|4)``: a numpy array, an
            ``np.memmap`` (e.g. ``tifffile.memmap``), a dask array, a zarr array, or a
            :class:`~napari_medenhance.core.io.Volume` (its ``data``; it is also ``like``
            unless one is given). Never modified, never loaded whole.
        net: the network, as for :func:`~napari_medenhance.core.engine.iter_apply`.
        output: ``.tif`` / ``.tiff`` or ``.zarr`` (filled in place as blocks are done), or
            ``.nii`` / ``.nii.gz`` (spilled to a temporary ``.npy`` first, then written by
            :func:`~napari_medenhance.core.io.write_volume`). Replaced atomically at the end;
            the header / attributes are ``write_volume``'s, so spacing, origin, units and a
            NIfTI input's affine come through as for any file the plugin writes.
        like: the input's :class:`~napari_medenhance.core.io.Volume`: the output keeps its
            spacing (and, written by ``write_volume``, its kind of file, e.g. a NIfTI affine).
            With ``scale > 1`` it is placed as :func:`upscaled_like` says: Y / X spacing
            divided by ``scale``, origin (NIfTI sform/qform, DICOM affine) moved so the output
            pixels tile the input pixels they come from, as ``medenhance sr`` writes them.
        spacing: physical pixel size per non-colour axis in napari order (e.g. ``(dz, dy,
            dx)``), overriding ``like``'s (voxel 0 stays where ``like`` puts it); with
            ``scale > 1``, Y and X are divided by it (without ``like``, the origin is then
            placed in these units, or in input pixels when no spacing is given).
        rgb, device, tile, overlap, half, scale, net_channels, pad_multiple, cpu_bf16,
            input_percentiles, ensemble, border: as for the engine (the stretch of ``input_percentiles`` is
            that of the whole volume, read on a grid, not of each block).
        data_range: ``(lo, hi)`` mapped to [0, 1]; None scans the volume once, block by block,
            for the same range the in-memory engine would use.
        tiff_kwargs: :func:`tifffile.imwrite` keywords that replace the TIFF metadata
            ``write_volume`` would derive from ``like`` / ``spacing`` (e.g. an input's own
            ImageJ metadata, kept as it was).
        block_bytes: input bytes per block for unchunked inputs (numpy, memmap); chunked
            inputs (dask, zarr) are read a chunk row at a time (neighbouring chunks merged up
            to this size). Peak memory is about ten times a block (float work arrays).
        cancel: polled before every block and every tile; True raises :class:`Cancelled`.

    Yields:
        :class:`~napari_medenhance.core.engine.Progress`: ``done`` / ``total`` count tiles (their
        views with ``ensemble``) over all planes; during the intensity scan ``done`` is 0 and ``stage`` says
        ``"intensity range: block i/n"``, then ``stage`` is ``"plane p/P"``.

    Returns:
        (``StopIteration.value``) the output path.

    Raises:
        ValueError: as the engine (NaN / inf, dtype, tile...), an output path equal to the
            input file, bad ``spacing``, an unsupported output suffix.
        Cancelled: ``cancel()`` returned True; nothing is left at ``output`` (or its old
            content is kept) and the temporary file is removed.
    """
    if hasattr(image, "data") and hasattr(image, "spacing") and hasattr(image, "format"):
        like = image if like is None else like
        image = image.data
    arr = _as_array(image)
    lay = _layout(arr, rgb)
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer; got {scale!r}")
    scale = int(scale)
    out_path = Path(output).expanduser()
    src_file = getattr(arr, "filename", None)
    if src_file and Path(src_file).resolve() == out_path.resolve():
        raise ValueError(f"output {out_path} is the input file; choose a different output path")
    suffix = volume_stores.full_suffix(out_path).lower()
    from .io import writable_suffixes

    if suffix not in writable_suffixes():
        raise ValueError(
            f"cannot write {out_path.name!r}: use one of {', '.join(writable_suffixes())}"
        )
    if not out_path.parent.is_dir():
        raise ValueError(f"the output folder {out_path.parent} does not exist; create it first")
    out_plane = (lay.height * scale, lay.width * scale) + ((int(arr.shape[-1]),) if lay.is_rgb else ())
    out_shape = lay.lead + out_plane
    dtype = np.dtype(arr.dtype)
    n_axes = len(lay.lead) + 2
    if scale == 1:
        sp = _spacing_for(like, spacing, n_axes, scale)
    else:
        # The output pixels tile the input pixels they come from: Y / X spacing divided by
        # scale and voxel 0 (origin; NIfTI / DICOM affines) moved to the first output pixel's
        # centre. Without ``like`` (or with one of other dimensions), in ``spacing`` or pixels.
        from .io import Volume
        from .roi import ROI

        if like is None or len(like.spacing) != n_axes:
            own = _spacing_for(None, spacing, n_axes, 1)
            like = Volume(data=arr, spacing=own or (1.0,) * n_axes, axis_labels=(),
                          units=getattr(like, "units", None))
            spacing = None  # now like's
        like = upscaled_like(like, ROI(0, lay.height, 0, lay.width), scale)
        # A spacing given beside like overrides the voxel size; voxel 0 stays where like puts it.
        sp = _spacing_for(None, spacing, n_axes, scale)

    keys = _blocks(arr, lay, block_bytes)
    mapping = volume_stores.writable_mapping(arr)
    tiles_per_plane = (len(engine.plane_tiles(lay.height, lay.width, tile, overlap, border))
                       * engine.views(ensemble))
    total = lay.n_planes * tiles_per_plane

    # Check the arguments the engine would refuse before the (possibly long) intensity scan.
    if tile is not None and tile < 2:
        raise ValueError(f"tile must be >= 2 pixels; got {tile}")
    engine.resolve_device(device)

    if data_range is None:
        lo, hi = yield from _iter_range(arr, lay, keys, mapping, total, cancel)
        # A constant volume: each (then constant) block maps itself exactly, as in memory.
        dr: Sequence[float] | None = (lo, hi) if hi > lo else None
    else:
        dr = data_range
    stretch = (intensity.input_stretch(arr, input_percentiles, rgb=lay.is_rgb)
               if input_percentiles is not None else None)

    plane_bytes = int(np.prod(out_plane)) * dtype.itemsize
    # What write_volume needs to give the output the input's geometry and kind of file.
    geometry = {"like": like, "spacing": sp, "rgb": lay.is_rgb}
    store = volume_stores.open_store(out_path, out_shape, dtype, plane_bytes, tiff_kwargs, geometry)

    try:
        done = 0
        for key in keys:
            if cancel is not None and cancel():
                raise Cancelled(f"cancelled after {done} of {total} tiles")
            first = _flat_plane(key, lay.lead)
            block = volume_stores.read_block(arr, key, mapping)
            job = engine.iter_apply(
                block, net, scale=scale, rgb=lay.is_rgb, device=device, tile=tile,
                overlap=overlap, half=half, data_range=dr, net_channels=net_channels,
                pad_multiple=pad_multiple, cancel=cancel, cpu_bf16=cpu_bf16,
                input_percentiles=input_percentiles, stretch_range=stretch, ensemble=ensemble,
                border=border,
            )
            while True:
                try:
                    ev = next(job)
                except StopIteration as stop:
                    result = stop.value
                    break
                local = (ev.done - 1) // tiles_per_plane
                yield Progress(done + ev.done, total, f"plane {first + local + 1}/{lay.n_planes}")
            del block
            store.write(key, first, result)
            done += _block_planes(key) * tiles_per_plane
            del result
        return store.commit()
    except BaseException:
        store.abort()
        raise
