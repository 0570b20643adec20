"""Block-by-block processing of volumes larger than memory (``core.lazy``).

The network is a small untrained DRAN (the ``tiny`` fixture, as in test_denoise_api.py) or, for
the memory tests, an identity module: these tests check the plumbing — same result as in memory,
bounded reads and memory, atomic outputs — not denoising quality.
"""

from __future__ import annotations

import mmap
import threading
import tracemalloc

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch

import napari_medenhance as me
from napari_medenhance.core import engine, intensity, lazy, zoo
from napari_medenhance.core.batch import load_task_model
from napari_medenhance.core.engine import Cancelled
from napari_medenhance.core.io import read_volume
from napari_medenhance.core.jobs import drive
from napari_medenhance.core.nets.dran import DRAN
from napari_medenhance.core.weights import save_weights

TINY = {"features": 8, "blocks": 1, "layers_per_block": 1, "kernels": 2}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A small DRAN registered as the user's model 'tiny'; returns (module, engine kwargs)."""
    user, shipped = tmp_path / "user", tmp_path / "shipped"
    user.mkdir()
    monkeypatch.setenv(zoo.MODELS_DIR_ENV, str(user))
    monkeypatch.setattr(zoo, "shipped_models_dir", lambda: shipped)
    zoo.clear_cache()
    torch.manual_seed(0)
    save_weights(user / "tiny.safetensors", DRAN(**TINY), arch="dran", config=TINY,
                 meta={"task": "denoise", "name": "tiny"})
    loaded = load_task_model("denoise", "tiny", "cpu")
    yield loaded.module, loaded.engine_kwargs
    zoo.clear_cache()


class Recording:
    """An array-like that records every region read from it (what dask asks for)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads: list[tuple[int, int]] = []  # (first plane, planes) per read
        self._lock = threading.Lock()

    def __getitem__(self, key):
        z = key[0] if isinstance(key, tuple) else key
        start, stop, _ = z.indices(self.shape[0]) if isinstance(z, slice) else (z, z + 1, 1)
        with self._lock:
            self.reads.append((start, stop - start))
        return self.data[key]


def _run(gen, events=None):
    return drive(gen, None if events is None else events.append)


def test_memmapped_tiff_equals_in_memory_denoise_and_keeps_dtype_and_spacing(tiny, nuclei, tmp_path):
    net, kw = tiny
    stack = nuclei[:7]
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, stack, imagej=True, resolution=(1 / 0.26, 1 / 0.26),
                     metadata={"axes": "ZYX", "spacing": 0.29, "unit": "um"})
    mm = tifffile.memmap(src, mode="r")
    events = []
    plane = stack[0].nbytes
    out = _run(lazy.iter_process_volume(mm, net, dst, device="cpu", spacing=(0.29, 0.26, 0.26),
                                        block_bytes=3 * plane, **kw), events)
    assert out == dst and not lazy.partial_path(dst).exists()
    expected = me.denoise(stack, "tiny", device="cpu")
    with tifffile.TiffFile(dst) as t:
        got = t.asarray()
        assert t.is_imagej and t.imagej_metadata["spacing"] == pytest.approx(0.29)
        assert t.pages.first.resolution == pytest.approx((1 / 0.26, 1 / 0.26))
    assert read_volume(dst).spacing == (0.29, 0.26, 0.26)
    assert got.dtype == np.uint16 and got.shape == stack.shape
    np.testing.assert_array_equal(got, expected)
    # 3 blocks (3 + 3 + 1 planes) scanned for the intensity range, then one event per tile
    scan = [e for e in events if e.stage.startswith("intensity range")]
    tiles = [e for e in events if e.stage.startswith("plane")]
    assert [e.stage for e in scan] == [f"intensity range: block {i}/3" for i in (1, 2, 3)]
    assert all(e.done == 0 and e.total == 7 for e in scan)
    assert [e.done for e in tiles] == list(range(1, 8)) and tiles[-1].stage == "plane 7/7"


def test_dask_input_is_read_chunk_by_chunk_and_equals_in_memory(tiny, nuclei, tmp_path):
    net, kw = tiny
    stack = nuclei[:6, :96, :112]
    rec = Recording(stack)
    lazy_in = da.from_array(rec, chunks=(2, 96, 112))
    dst = tmp_path / "out.zarr"
    _run(lazy.iter_process_volume(lazy_in, net, dst, device="cpu", spacing=(2.0, 0.5, 0.5),
                                  block_bytes=1, **kw))
    out = read_volume(dst)
    np.testing.assert_array_equal(np.asarray(out.data), me.denoise(stack, "tiny", device="cpu"))
    assert out.data.chunksize == (1, 96, 112) and out.spacing == (2.0, 0.5, 0.5)
    # Never more than one chunk (2 planes) at a time; each chunk read once for the intensity
    # range and once for the network, never the whole volume.
    reads = [r for r in rec.reads if r[1] > 0]  # dask also peeks at an empty slice for its meta
    assert max(n for _, n in reads) == 2
    assert sorted(reads) == sorted([(0, 2), (2, 2), (4, 2)] * 2)


def test_chunks_are_merged_up_to_the_block_size(nuclei):
    stack = da.from_array(nuclei[:10, :32, :32], chunks=(1, 32, 32))
    lay = lazy._layout(stack, None)
    keys = lazy._blocks(stack, lay, block_bytes=4 * 32 * 32 * 2)
    assert [(k[0].start, k[0].stop) for k in keys] == [(0, 4), (4, 8), (8, 10)]
    # unchunked (numpy): as many planes as fit, at least one
    keys = lazy._blocks(nuclei[:5, :32, :32], lazy._layout(nuclei[:5, :32, :32], None), 1)
    assert [(k[0].start, k[0].stop) for k in keys] == [(i, i + 1) for i in range(5)]
    # several leading axes: blocks run along the last one, for each index of the others
    arr = np.zeros((2, 3, 8, 8), np.uint8)
    keys = lazy._blocks(arr, lazy._layout(arr, None), 2 * 64)
    assert [(k[0], k[1].start, k[1].stop) for k in keys] == [(0, 0, 2), (0, 2, 3), (1, 0, 2), (1, 2, 3)]


class Identity(torch.nn.Module):
    def forward(self, x):
        return x


def _big_tiff(path, nuclei, planes=200, size=128):
    """A memory-mapped uint16 stack of real data (nuclei crops repeated), ``planes`` deep."""
    base = nuclei[:, :size, :size]
    mm = tifffile.memmap(path, shape=(planes, size, size), dtype=np.uint16)
    for z in range(planes):
        mm[z] = base[z % len(base)]
    mm.flush()
    del mm
    return tifffile.memmap(path, mode="r")


def test_peak_memory_is_bounded_by_the_block_not_the_volume(nuclei, tmp_path):
    vol = _big_tiff(tmp_path / "big.tif", nuclei)  # 200 x 128 x 128 uint16 = 6.25 MiB
    plane = vol[0].nbytes
    tracemalloc.start()
    try:
        _run(lazy.iter_process_volume(vol, Identity(), tmp_path / "out.tif", device="cpu",
                                      block_bytes=4 * plane))
        _, lazy_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        in_memory = engine.apply(vol, Identity(), device="cpu")
        _, memory_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The in-memory engine holds the whole result (so this measure does see a full volume);
    # the lazy run holds a few planes and their float work arrays.
    assert memory_peak > vol.nbytes
    print(f"peak traced memory: lazy {lazy_peak / 2**20:.2f} MiB, in memory {memory_peak / 2**20:.2f} MiB")
    assert lazy_peak < vol.nbytes / 4, (lazy_peak, vol.nbytes)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), in_memory)


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTNEED"), reason="needs madvise (Linux, macOS)")
def test_pages_of_a_memmapped_input_are_given_back(nuclei, tmp_path):
    psutil = pytest.importorskip("psutil")
    vol = _big_tiff(tmp_path / "big.tif", nuclei, planes=1024)  # 32 MiB
    proc = psutil.Process()
    # warm up (torch's and the allocator's first-use growth is not what this test is about)
    _run(lazy.iter_process_volume(np.array(vol[:16]), Identity(), tmp_path / "w.tif", device="cpu"))
    before = proc.memory_info().rss
    _run(lazy.iter_process_volume(vol, Identity(), tmp_path / "out.tif", device="cpu",
                                  block_bytes=8 * vol[0].nbytes))
    grown = proc.memory_info().rss - before
    print(f"resident memory grew by {grown / 2**20:.1f} MiB for a {vol.nbytes / 2**20:.0f} MiB input")
    # Reading every page through the mapping would leave all 32 MiB resident while `vol` lives.
    assert grown < vol.nbytes / 3, (grown, vol.nbytes)
    np.testing.assert_array_equal(np.asarray(vol[5]), tifffile.imread(tmp_path / "out.tif", key=5))


def test_cancel_or_error_leaves_nothing_at_the_final_path(tiny, nuclei, tmp_path):
    net, kw = tiny
    stack = nuclei[:6, :64, :64]
    dst = tmp_path / "out.tif"
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 6  # past the scan, after a few planes were written

    with pytest.raises(Cancelled):
        _run(lazy.iter_process_volume(stack, net, dst, device="cpu", block_bytes=1,
                                      cancel=cancel, **kw))
    assert not dst.exists() and not lazy.partial_path(dst).exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "user"]

    # An existing output is kept as it was when a rerun fails half-way (NaN in the last plane).
    dst.write_bytes(b"old result")
    bad = stack.astype(np.float32)
    bad[-1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _run(lazy.iter_process_volume(bad, net, dst, device="cpu", data_range=(0, 65535),
                                      block_bytes=1, **kw))
    assert dst.read_bytes() == b"old result" and not lazy.partial_path(dst).exists()
    # ... and the scan refuses it before any block is written when no range is given
    with pytest.raises(ValueError, match="1 NaN"):
        _run(lazy.iter_process_volume(bad, net, tmp_path / "o.zarr", device="cpu", **kw))
    assert not (tmp_path / "o.zarr").exists()


def test_stale_partial_file_is_replaced(tiny, nuclei, tmp_path):
    net, kw = tiny
    stack = nuclei[:2, :48, :48]
    dst = tmp_path / "out.tif"
    lazy.partial_path(dst).write_bytes(b"left by a killed run")
    _run(lazy.iter_process_volume(stack, net, dst, device="cpu", **kw))
    assert not lazy.partial_path(dst).exists()
    np.testing.assert_array_equal(tifffile.imread(dst), me.denoise(stack, "tiny", device="cpu"))


def test_same_rules_as_in_memory_for_rgb_constant_and_unit_floats(tiny, tmp_path):
    net, kw = tiny
    rng = np.random.default_rng(1)
    cases = {
        "rgb.tif": rng.integers(0, 255, (3, 40, 48, 3), dtype=np.uint8),
        "const.tif": np.full((4, 32, 32), 1234, np.uint16),
        "unit.zarr": rng.random((3, 32, 40)).astype(np.float32) * 0.5,  # within [0, 1]: as is
        "plane.tif": rng.integers(-1000, 3000, (40, 40)).astype(np.int16),  # one 2-D plane
    }
    for name, arr in cases.items():
        dst = tmp_path / name
        _run(lazy.iter_process_volume(arr, net, dst, device="cpu", block_bytes=1, **kw))
        got = np.asarray(read_volume(dst).data)
        np.testing.assert_array_equal(got, me.denoise(arr, "tiny", device="cpu"), err_msg=name)
        assert got.dtype == arr.dtype


def test_volume_range_matches_the_engine(nuclei):
    lazy_stack = da.from_array(nuclei, chunks=(5, 256, 256))
    assert lazy.volume_range(lazy_stack) == intensity.intensity_range(nuclei, False, None, False)
    assert lazy.volume_range(np.linspace(0, 1, 50, dtype=np.float32).reshape(2, 5, 5)) == (0.0, 1.0)


def test_bad_arguments_are_refused_before_any_work(tiny, nuclei, tmp_path):
    net, kw = tiny
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, nuclei[:2, :32, :32])
    mm = tifffile.memmap(src, mode="r")
    with pytest.raises(ValueError, match="is the input file"):
        next(lazy.iter_process_volume(mm, net, src, device="cpu", **kw))
    with pytest.raises(ValueError, match="does not exist"):
        next(lazy.iter_process_volume(mm, net, tmp_path / "no" / "out.tif", device="cpu", **kw))
    with pytest.raises(ValueError, match="one value per non-colour axis"):
        next(lazy.iter_process_volume(mm, net, tmp_path / "o.tif", spacing=(1, 1), device="cpu", **kw))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "user"]
