"""TIFF: ImageJ, OME and tifffile metadata for the spacing; exact geometry written back."""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .streaming import atomic_file, iter_blocks, read_block
from .volume import CM_PER_UNIT, Volume, damaged, fit, norm_unit, stem

# ImageJ hyperstack metadata worth carrying over: physical spacing, units, timing, display range.
_IMAGEJ_KEYS = ("spacing", "unit", "finterval", "fps", "min", "max")
#: A private TIFF tag (65000-65535 are free for private use) holding write_volume's exact
#: spacing/origin in ImageJ files, whose description belongs to ImageJ.
_PRIVATE_TAG = 65000
_TIFF_LABELS = {"T": "t", "Z": "z", "C": "c", "Y": "y", "X": "x"}


def read_tiff(p: Path, lazy: bool) -> Volume:
    import tifffile

    try:
        tif = tifffile.TiffFile(p)
    except Exception as err:  # tifffile raises its own TiffFileError and struct errors
        raise ValueError(f"{p} is not a readable TIFF file: another format, or it looks "
                         f"truncated or corrupt ({err})") from err
    with tif:
        try:
            _check_complete(tif, p)
        except (IndexError, KeyError, struct.error, OSError, tifffile.TiffFileError) as err:
            raise damaged(p, f"{type(err).__name__}: {err}") from err
        series = tif.series[0]
        axes, shape = series.axes, tuple(series.shape)
        page = tif.pages.first
        tags = page.tags
        kw: dict = {}
        res: dict[str, float] = {}
        res_unit = None
        if "XResolution" in tags and "YResolution" in tags:
            # The raw rationals, so the pixel size is written back bit for bit.
            kw["resolution"] = (tags["XResolution"].value, tags["YResolution"].value)
            for key, (num, den) in zip("XY", kw["resolution"]):
                if num and den:
                    res[key] = den / num  # pixels per unit -> size of a pixel
            if "ResolutionUnit" in tags:
                kw["resolutionunit"] = res_unit = int(tags["ResolutionUnit"].value)
        ij = (tif.imagej_metadata or {}) if tif.is_imagej else None
        if ij is not None:
            kw["imagej"] = True
            kw["metadata"] = {"axes": axes, **{k: ij[k] for k in _IMAGEJ_KEYS if k in ij}}
        shaped = tif.shaped_metadata[0] if tif.is_shaped and tif.shaped_metadata else None
        ome = tif.ome_metadata if tif.is_ome else None
        photometric = int(page.photometric)
        ours = shaped.get("medenhance") if isinstance(shaped, dict) else None
        if ours is None and _PRIVATE_TAG in tags:
            try:
                ours = json.loads(tags[_PRIVATE_TAG].value).get("medenhance")
            except (TypeError, ValueError, AttributeError):
                ours = None

    rgb = (axes.endswith("S") or photometric == 2) and shape[-1] in (3, 4)
    n = len(shape) - int(rgb)
    labels = _tiff_labels(axes[:n])
    spacing = [1.0] * n
    known: list[int] = []  # axes whose spacing the standard metadata gave
    units: str | None = None
    for key, lab in (("X", "x"), ("Y", "y")):
        if key in res and lab in labels:
            spacing[labels.index(lab)] = res[key]
            known.append(labels.index(lab))
    if ij is not None:
        units = norm_unit(ij.get("unit"))
        for key, lab in (("spacing", "z"), ("finterval", "t")):
            if lab in labels and ij.get(key):
                spacing[labels.index(lab)] = float(ij[key])
                known.append(labels.index(lab))
    elif ome:
        units = _ome_spacing(ome, labels, spacing, known) or units
    elif res and res_unit in (2, 3):  # INCH, CENTIMETER: a physical length, given in µm
        factor = 25400.0 if res_unit == 2 else 10000.0
        for i in known:
            spacing[i] *= factor
        units = "µm"
    origin = [0.0] * n
    if isinstance(ours, dict) and len(ours.get("spacing", ())) == n:
        # Written by write_volume: exact floats (no rational rounding) and the origin. Trusted
        # only while they agree with the standard tags, which another program may have edited.
        mine = [float(v) for v in ours["spacing"]]
        u = norm_unit(ours.get("units"))
        conv = 1.0 if units in (None, u) else (
            CM_PER_UNIT[units] / CM_PER_UNIT[u] if units in CM_PER_UNIT and u in CM_PER_UNIT else None)
        if conv is not None and all(math.isclose(mine[i], spacing[i] * conv, rel_tol=1e-5) for i in known):
            spacing, units = mine, u
            origin = fit(ours.get("origin"), n, 0.0)
            if len(ours.get("axis_labels") or ()) == n:
                labels = tuple(ours["axis_labels"])
    data = _tiff_data(p, shape, lazy)
    return Volume(data=data, spacing=tuple(spacing), axis_labels=labels, units=units, rgb=rgb,
                  origin=tuple(origin), format="tiff",
                  meta={"tiff_kw": kw, "photometric": photometric, "axes": axes}, name=stem(p))


def _check_complete(tif: Any, p: Path) -> None:
    """Raise ``damaged`` when the file holds less than its own structure says.

    tifffile reads what it can of a cut file: it stops at the first page whose IFD is missing
    and falls back from ImageJ/tifffile metadata it cannot satisfy, which would silently give
    the first plane of a stack. So check what the file declares against what it holds: the
    IFD chain ends properly, every page's pixels lie inside the file, and the ImageJ plane
    count / tifffile shape are all there.
    """
    if not tif.series or not tif.pages:
        raise damaged(p, "no readable image in it")
    series = tif.series[0]
    end = _chain_end(tif)
    if end:
        raise damaged(p, f"its last page found points on to another at byte {end}, which is "
                         "missing or unreadable")
    contiguous = series.dataoffset
    first = tif.pages.first
    if contiguous is not None:
        needed = contiguous + series.nbytes
        if needed > tif.filehandle.size:
            raise damaged(p, f"its pixels end at byte {needed} but the file has "
                             f"{tif.filehandle.size} bytes")
    else:
        for page in series.pages:
            if page is None:
                continue
            if len(page.dataoffsets) != len(page.databytecounts):
                raise damaged(p, "a page's table of pixel offsets is missing or cut")
            size = page.parent.filehandle.size  # OME series may span several files
            for offset, count in zip(page.dataoffsets, page.databytecounts):
                if offset + count > size:
                    raise damaged(p, f"a page's pixels end at byte {offset + count} but the "
                                     f"file has {size} bytes")
    planes = series.size // max(1, first.size)
    if tif.is_imagej and series.kind != "imagej":  # tifffile rejected the ImageJ metadata
        images = int((tif.imagej_metadata or {}).get("images", 1) or 1)
        if images > planes:
            raise damaged(p, f"ImageJ metadata declares {images} planes, {planes} are there")
    if tif.is_shaped and tif.shaped_metadata:
        declared = tif.shaped_metadata[0].get("shape")
        if declared and math.prod(int(v) for v in declared) > series.size:
            raise damaged(p, f"its metadata declares shape {tuple(declared)}, the pages hold "
                             f"{tuple(series.shape)}")


def _chain_end(tif: Any) -> int:
    """The next-IFD offset stored in the last page tifffile found: 0 for a complete file."""
    if getattr(tif, "is_ndpi", False):  # NDPI stores 64-bit offsets its own way; trust tifffile
        return 0
    pages = tif.pages
    last = pages[len(pages) - 1]  # indexes the whole IFD chain
    fmt, fh = tif.tiff, tif.filehandle
    fh.seek(last.offset)
    tagno = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))[0]
    fh.seek(last.offset + fmt.tagnosize + tagno * fmt.tagsize)
    return int(struct.unpack(fmt.offsetformat, fh.read(fmt.offsetsize))[0])


def _tiff_labels(axes: str) -> tuple[str, ...]:
    labels: list[str | None] = [_TIFF_LABELS.get(a) for a in axes]
    # Unknown axes (tifffile's Q, I...) get the napari defaults, the one nearest the plane first.
    free = [lab for lab in ("z", "t", "c") if lab not in labels]
    for i in reversed(range(len(labels))):
        if labels[i] is None or labels.count(labels[i]) > 1:
            labels[i] = free.pop(0) if free else f"d{i}"
    return tuple(labels)  # type: ignore[arg-type]


def _ome_spacing(ome_xml: str, labels: tuple[str, ...], spacing: list[float],
                 known: list[int]) -> str | None:
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    unit = None
    for lab in ("x", "y", "z"):
        size = pixels.get(f"PhysicalSize{lab.upper()}")
        if size and lab in labels:
            spacing[labels.index(lab)] = float(size)
            known.append(labels.index(lab))
            unit = norm_unit(pixels.get(f"PhysicalSize{lab.upper()}Unit", "µm"))
    return unit


def _tiff_data(p: Path, shape: tuple[int, ...], lazy: bool) -> Any:
    import tifffile

    if not lazy:
        return _imread(p)
    try:
        data = tifffile.memmap(p, mode="r")  # big stacks are read plane by plane
        if data.shape == shape:
            return data
    except ValueError:  # compressed or non-contiguous pixels cannot be memory-mapped
        pass
    try:
        import dask.array as da
        import zarr

        store = tifffile.imread(p, aszarr=True)
        arr = zarr.open(store, mode="r")
        if isinstance(arr, zarr.Array) and tuple(arr.shape) == shape:
            return da.from_zarr(arr)
    except Exception:  # noqa: BLE001 - any failure of the lazy route: read it whole instead
        pass
    return _imread(p)


def _imread(p: Path) -> np.ndarray:
    """All pixels of ``p``; bad compressed data or cut strips raise ``damaged``."""
    import tifffile

    try:
        return tifffile.imread(p)
    except Exception as err:  # noqa: BLE001 - decoders and tifffile raise many types
        raise damaged(p, f"reading its pixels failed: {type(err).__name__}: {err}") from err


_IMAGEJ_DTYPES = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)}
_IMAGEJ_UNIT = {"µm": "micron"}


def write_tiff(p: Path, data: Any, like: Volume | None, sp: tuple[float, ...],
                org: tuple[float, ...], units: str | None, labels: tuple[str, ...],
                rgb: bool) -> None:
    import tifffile

    shape = tuple(int(s) for s in data.shape)
    dtype = np.dtype(data.dtype)
    n = len(shape) - int(rgb)
    axes_map = {"t": "T", "z": "Z", "c": "C", "y": "Y", "x": "X"}
    axes = "".join(axes_map.get(lab, "Q") for lab in labels) + ("S" if rgb else "")
    nbytes = math.prod(shape) * dtype.itemsize
    big = nbytes > 2**32 - 2**25
    order_ok = axes.replace("Q", "") == "".join(a for a in "TZCYXS" if a in axes) and "Q" not in axes
    imagej = (not big and order_ok and n <= 5 and "Y" in axes and "X" in axes
              and dtype in _IMAGEJ_DTYPES and (not rgb or (dtype == np.uint8 and shape[-1] == 3)))
    like_kw = dict(like.meta.get("tiff_kw", {})) if like is not None and like.format == "tiff" else {}
    same_geometry = (like is not None and len(like.spacing) == n and like.units == units
                     and all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(like.spacing, sp)))
    ours = {"spacing": list(sp), "origin": list(org), "units": units, "axis_labels": list(labels)}
    sx = sp[labels.index("x")] if "x" in labels else 1.0
    sy = sp[labels.index("y")] if "y" in labels else 1.0
    kw: dict[str, Any] = {"photometric": "rgb" if rgb else "minisblack", "bigtiff": big}
    if imagej:
        meta: dict[str, Any] = {"axes": axes}
        if same_geometry and like_kw.get("imagej"):
            meta.update({k: v for k, v in like_kw.get("metadata", {}).items() if k != "axes"})
        if "z" in labels:
            meta["spacing"] = sp[labels.index("z")]
        if "t" in labels:
            meta["finterval"] = sp[labels.index("t")]
        if units:
            meta["unit"] = _IMAGEJ_UNIT.get(units, units)
        # ImageJ reads pixels per unit with no TIFF resolution unit
        kw.update(imagej=True, metadata=meta, resolution=(1.0 / sx, 1.0 / sy), resolutionunit=1)
        # ImageJ owns the description; our exact values go into a second, private tag
        kw["extratags"] = [(_PRIVATE_TAG, "s", 0, json.dumps({"medenhance": ours}), True)]
    else:
        kw["metadata"] = {"axes": axes, "medenhance": ours}
        if units in CM_PER_UNIT:  # standard TIFF: pixels per centimetre
            f = CM_PER_UNIT[units]
            kw.update(resolution=(1.0 / (sx * f), 1.0 / (sy * f)), resolutionunit=3)
        else:
            kw.update(resolution=(1.0 / sx, 1.0 / sy), resolutionunit=1)
    if same_geometry and "resolution" in like_kw and like_kw.get("resolutionunit") == kw["resolutionunit"]:
        kw["resolution"] = like_kw["resolution"]  # raw rationals: bit-for-bit
    plane_ndim = 3 if rgb else 2

    def pages() -> Iterator[np.ndarray]:
        for index in iter_blocks(shape, dtype.itemsize, plane_ndim):
            block = read_block(data, index)
            lead = block.shape[: block.ndim - plane_ndim]
            for i in np.ndindex(*lead):
                yield block[i]

    tmp, fh = atomic_file(p)
    fh.close()
    try:
        tifffile.imwrite(tmp, pages(), shape=shape, dtype=dtype, **kw)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
