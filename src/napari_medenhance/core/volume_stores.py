"""Where a block-by-block result goes, and how its blocks are read.

Output stores for :func:`~napari_medenhance.core.lazy.iter_process_volume`: each writes under a
hidden temporary name beside the output (:func:`partial_path`) and renames it into place only
when the last block is done (:meth:`Store.commit`), so the final path holds either a complete
result or what it held before. ``.tif`` / ``.tiff`` is a contiguous TIFF filled in place,
``.zarr`` a zarr array (one chunk per plane), and formats that cannot be filled in place (NIfTI,
gzip) go through a ``.npy`` spill file that :func:`~napari_medenhance.core.io.write_volume` then
streams. :func:`read_block` reads one block of an input, handing the pages of a memory-mapped
input back to the kernel afterwards (the runner reads its input and a spill store its spill file
the same way).
"""

from __future__ import annotations

import abc
import contextlib
import mmap
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PARTIAL_SUFFIX", "Store", "full_suffix", "open_store", "partial_path", "read_block",
           "writable_mapping", "with_suffix"]

#: Suffix of the temporary file a result is written to before it is renamed into place.
PARTIAL_SUFFIX = ".medenhance-partial"


def partial_path(output: str | os.PathLike) -> Path:
    """The temporary path a result for ``output`` is written to before the final rename.

    ``DIR/.STEM.medenhance-partial.SUFFIX``: hidden, with the output's suffix (so the format
    is known), and deterministic, so a file left by a killed run is overwritten by the next one
    instead of piling up, and never mistaken for a result.
    """
    p = Path(output)
    suffix = full_suffix(p)
    stem = p.name[: len(p.name) - len(suffix)] if suffix else p.name
    return p.with_name(f".{stem}{PARTIAL_SUFFIX}{suffix}")


def writable_mapping(arr: Any) -> mmap.mmap | None:
    """The shared memory mapping behind a ``np.memmap`` (view), if it is safe to drop pages of.

    Copy-on-write maps (mode ``"c"``) are left alone: dropping their pages would discard the
    caller's in-memory changes.
    """
    obj = arr
    while isinstance(obj, np.ndarray):
        if isinstance(obj, np.memmap):
            m = getattr(obj, "_mmap", None)
            if isinstance(m, mmap.mmap) and getattr(obj, "mode", "c") in ("r", "r+", "w+"):
                return m
            if getattr(obj, "mode", None) == "c":
                return None
        obj = obj.base
    return obj if isinstance(obj, mmap.mmap) else None


def release(mapping: mmap.mmap | None) -> None:
    # The kernel keeps the pages in its page cache; the process just stops holding them, so a
    # memory-mapped input does not inflate the resident set (and trip a dask worker's limit).
    if mapping is None or not hasattr(mapping, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    with contextlib.suppress(ValueError, OSError):
        mapping.madvise(mmap.MADV_DONTNEED)


def read_block(arr: Any, key: tuple, mapping: mmap.mmap | None) -> np.ndarray:
    """One block as a numpy array; from a memory map, a copy, and the mapped pages let go."""
    part = arr[key] if key else arr
    if hasattr(part, "compute") and not isinstance(part, np.ndarray):
        return np.asarray(part.compute())
    if mapping is None:
        return np.asarray(part)  # in memory already (numpy) or freshly read (zarr)
    block = np.array(part, copy=True)
    release(mapping)
    return block


class Store(abc.ABC):
    """A result being written under :func:`partial_path`; ``commit`` renames it into place."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.tmp = partial_path(final)
        remove(self.tmp)  # left by a killed run

    @abc.abstractmethod
    def write(self, key: tuple, flat: int, block: np.ndarray) -> None:
        """Write ``block``, the result for the input block ``key`` whose first plane is plane
        ``flat`` of all planes (C order)."""

    def finish(self) -> None:
        """Flush and close (before the rename)."""

    def commit(self) -> Path:
        self.finish()
        replace_atomically(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.finish()
        remove(self.tmp)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def replace_atomically(tmp: Path, final: Path) -> None:
    if tmp.is_dir() and final.exists():
        # A directory (zarr) cannot be renamed over a non-empty one: move the old one aside
        # first, so the final name is never missing for long and never half-written.
        old = final.with_name(f".{final.name}.medenhance-old")
        remove(old)
        os.replace(final, old)
        os.replace(tmp, final)
        remove(old)
    else:
        os.replace(tmp, final)


class FileStore(Store):
    """A contiguous, uncompressed file filled with positioned writes (C order from ``offset``).

    Plain writes instead of writing through a memory map: written pages then live only in the
    kernel's page cache and never count towards this process's resident memory.
    """

    def _open(self, offset: int, dtype: np.dtype, plane_bytes: int) -> None:
        self.offset, self.dtype, self.plane_bytes = offset, dtype, plane_bytes
        self.fh = open(self.tmp, "r+b")  # noqa: SIM115 - closed in finish()

    def write(self, key: tuple, flat: int, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block, dtype=self.dtype)
        self.fh.seek(self.offset + flat * self.plane_bytes)
        self.fh.write(memoryview(data).cast("B"))

    def finish(self) -> None:
        fh = getattr(self, "fh", None)
        if fh is not None and not fh.closed:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()


class TiffStore(FileStore):
    """A TIFF whose pixels are one contiguous run, filled in place.

    Its header comes from :func:`~napari_medenhance.core.io.write_volume` (the same ImageJ /
    resolution / exact-spacing metadata as any TIFF the plugin writes), given an all-zero lazy
    array of the output's shape, or from :func:`tifffile.memmap` with the caller's ``tiff_kwargs``.
    """

    def __init__(self, final: Path, shape: tuple[int, ...], dtype: np.dtype, plane_bytes: int,
                 tiff_kwargs: dict | None, geometry: dict) -> None:
        import tifffile

        super().__init__(final)
        try:
            if tiff_kwargs is not None:
                mm = tifffile.memmap(self.tmp, shape=shape, dtype=dtype, **tiff_kwargs)
            else:
                from .io import write_volume

                write_volume(self.tmp, Zeros(shape, dtype), **geometry)
                mm = tifffile.memmap(self.tmp, mode="r+")
            if mm.size != int(np.prod(shape)) or mm.dtype.newbyteorder("=") != dtype:
                raise ValueError(f"the TIFF holds {mm.shape} {mm.dtype}, not {shape} {dtype}")
            offset, disk = int(mm.offset), mm.dtype
            del mm
        except BaseException:
            remove(self.tmp)
            raise
        self._open(offset, disk, plane_bytes)


class ZarrStore(Store):
    """A zarr array (one chunk per plane) created by ``write_volume``, filled block by block."""

    def __init__(self, final: Path, shape: tuple[int, ...], dtype: np.dtype, geometry: dict) -> None:
        import zarr

        from .io import write_volume

        super().__init__(final)
        try:
            # All-zero chunks are not stored by zarr, so laying out the array costs nothing.
            write_volume(self.tmp, Zeros(shape, dtype), **geometry)
            self.z = zarr.open_array(str(self.tmp), mode="r+")
        except BaseException:
            remove(self.tmp)
            raise

    def write(self, key: tuple, flat: int, block: np.ndarray) -> None:
        self.z[key if key else ...] = block


class SpillReader:
    """A ``.npy`` spill file seen as an array whose blocks are read into fresh memory."""

    def __init__(self, path: Path) -> None:
        self.mm = np.load(path, mmap_mode="r")
        self.shape, self.dtype, self.ndim = self.mm.shape, self.mm.dtype, self.mm.ndim
        self.mapping = writable_mapping(self.mm)

    def __getitem__(self, index: Any) -> np.ndarray:
        return read_block(self.mm, index if isinstance(index, tuple) else (index,), self.mapping)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[()]  # write_volume asks for the whole array when it is small
        return whole if dtype is None else whole.astype(dtype)


class SpillStore(FileStore):
    """Formats that cannot be filled in place (NIfTI, gzip): a ``.npy`` beside the output, then
    :func:`~napari_medenhance.core.io.write_volume` (atomic on its own) reads it block by block."""

    def __init__(self, final: Path, shape: tuple[int, ...], dtype: np.dtype, plane_bytes: int,
                 geometry: dict) -> None:
        super().__init__(final)
        self.tmp = with_suffix(self.tmp, ".npy")
        remove(self.tmp)
        self.geometry = geometry
        mm = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=shape)
        offset = int(mm.offset)
        del mm
        self._open(offset, np.dtype(dtype), plane_bytes)

    def commit(self) -> Path:
        from .io import write_volume

        self.finish()
        try:
            write_volume(self.final, SpillReader(self.tmp), **self.geometry)
        finally:
            remove(self.tmp)
        return self.final


class Zeros:
    """An all-zero array of any size that takes no memory (a broadcast view), for
    ``write_volume`` to lay out an output file before the blocks are written into it."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self._view = np.broadcast_to(np.zeros((), self.dtype), self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self._view[index]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self._view if dtype is None else self._view.astype(dtype)


def full_suffix(path: Path) -> str:
    name = path.name.lower()
    return path.name[-7:] if name.endswith(".nii.gz") else path.suffix


def with_suffix(path: Path, suffix: str) -> Path:
    old = full_suffix(path)
    return path.with_name(path.name[: len(path.name) - len(old)] + suffix)


def open_store(out_path: Path, shape: tuple[int, ...], dtype: np.dtype, plane_bytes: int,
               tiff_kwargs: dict | None, geometry: dict) -> Store:
    """The store for ``out_path``'s format: TIFF (filled in place), zarr, or a spill file.

    ``geometry``: the ``write_volume`` keywords (``like``, ``spacing``, ``rgb``) that give the
    output the input's geometry; ``tiff_kwargs`` replace the TIFF metadata they would derive.
    """
    suffix = full_suffix(out_path).lower()
    if suffix in (".tif", ".tiff"):
        return TiffStore(out_path, shape, dtype, plane_bytes, tiff_kwargs, geometry)
    if suffix == ".zarr":
        return ZarrStore(out_path, shape, dtype, geometry)
    return SpillStore(out_path, shape, dtype, plane_bytes, geometry)
