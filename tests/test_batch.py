"""Folder batches (``core.batch``), on dask (``core.cluster``) and from ``medenhance denoise DIR``.

A small untrained DRAN saved as a weights file stands in for a trained model (plumbing, not
quality). The inputs are real images (the nuclei stack, the CT slice) in TIFF and NIfTI files.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import tifffile
import torch
from _images import write_ct_series
from _tiny_models import save_tiny_msgan_pair

import napari_medenhance as me
from napari_medenhance.cli import main
from napari_medenhance.core import batch, lazy, zoo
from napari_medenhance.core.engine import Cancelled
from napari_medenhance.core.io import read_volume
from napari_medenhance.core.jobs import drive
from napari_medenhance.core.nets.dran import DRAN
from napari_medenhance.core.weights import save_weights
from napari_medenhance.sample_data import load

nib = pytest.importorskip("nibabel")

TINY = {"features": 8, "blocks": 1, "layers_per_block": 1, "kernels": 2}
AFFINE = np.array([[0.0, 0.0, 2.5, -40.0], [0.0, 0.8, 0.0, 12.0], [-0.8, 0.0, 0.0, 7.5], [0, 0, 0, 1]])


@pytest.fixture
def weights(tmp_path, monkeypatch):
    """A small DRAN saved as a weights file and registered as the user's model 'tiny'."""
    user, shipped = tmp_path / "user", tmp_path / "shipped"
    user.mkdir()
    monkeypatch.setenv(zoo.MODELS_DIR_ENV, str(user))
    monkeypatch.setattr(zoo, "shipped_models_dir", lambda: shipped)
    zoo.clear_cache()
    torch.manual_seed(0)
    path = user / "tiny.safetensors"
    save_weights(path, DRAN(**TINY), arch="dran", config=TINY, meta={"task": "denoise", "name": "tiny"})
    yield path
    zoo.clear_cache()


@pytest.fixture
def folder(tmp_path, nuclei):
    """An input folder: ImageJ TIFF stacks, a plain 2-D int16 TIFF, a NIfTI volume, a text file."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        tifffile.imwrite(src / f"stack{i}.tif", nuclei[4 * i : 4 * i + 3, 40:104, 30:110], imagej=True,
                         resolution=(1 / 0.26, 1 / 0.26), metadata={"axes": "ZYX", "spacing": 0.29, "unit": "um"})
    ct = load("ct_slice")[100:164, 150:222]
    tifffile.imwrite(src / "ct.tiff", ct, resolution=(1 / 0.0479, 1 / 0.0479), resolutionunit="CENTIMETER")
    vol = nuclei[10:14, 60:108, 70:126]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.T), AFFINE), src / "vol.nii.gz")
    (src / "notes.txt").write_text("not an image")
    return src


def _expected(path, model):
    return me.denoise(np.asarray(read_volume(path, lazy=False).data), model, device="cpu")


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------ in-process


def test_batch_writes_every_file_like_denoise_keeping_dtype_and_geometry(weights, folder, tmp_path):
    out = tmp_path / "out"
    events = []
    summary = batch.batch(folder, out, model=weights, device="cpu", progress=events.append)
    names = ["ct.tiff", "stack0.tif", "stack1.tif", "stack2.tif", "vol.nii.gz"]
    assert [e.input.name for e in events] == names  # one event per file, notes.txt not picked up
    assert [e.done for e in events] == [1, 2, 3, 4, 5] and {e.total for e in events} == {5}
    assert {e.status for e in events} == {"written"} and summary.ok
    assert [p.name for p in summary.written] == names and summary.planes == 1 + 3 * 3 + 4
    assert _files(out) == names  # nothing else (no partial files) in the output folder
    for name in names:
        src, dst = read_volume(folder / name), read_volume(out / name)
        got = np.asarray(dst.data)
        assert got.dtype == src.data.dtype and got.shape == src.data.shape
        np.testing.assert_array_equal(got, _expected(folder / name, weights), err_msg=name)
        assert dst.spacing == pytest.approx(src.spacing) and dst.units == src.units, name
    with tifffile.TiffFile(folder / "stack0.tif") as a, tifffile.TiffFile(out / "stack0.tif") as b:
        assert b.is_imagej and b.imagej_metadata["unit"] == a.imagej_metadata["unit"]
        assert b.pages.first.tags["XResolution"].value == a.pages.first.tags["XResolution"].value
    np.testing.assert_array_equal(nib.load(out / "vol.nii.gz").affine, nib.load(folder / "vol.nii.gz").affine)


def test_rerun_skips_finished_files_and_never_trusts_partial_ones(weights, folder, tmp_path):
    out = tmp_path / "out"
    assert batch.batch(folder, out, model=weights, device="cpu").ok
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = batch.batch(folder, out, model=weights, device="cpu")
    assert len(again.skipped) == 5 and not again.written and again.ok
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

    # A run killed while writing stack1.tif left only its partial file: redone, partial replaced.
    (out / "stack1.tif").unlink()
    lazy.partial_path(out / "stack1.tif").write_bytes(b"half a file")
    events = []
    third = batch.batch(folder, out, model=weights, device="cpu", progress=events.append)
    assert [p.name for p in third.written] == ["stack1.tif"] and len(third.skipped) == 4
    assert [e.status for e in events] == ["skipped"] * 4 + ["written"]  # skipped ones first
    assert _files(out) == sorted(stamps)
    np.testing.assert_array_equal(tifffile.imread(out / "stack1.tif"),
                                  _expected(folder / "stack1.tif", weights))


def test_cancel_mid_file_leaves_no_output_for_it_and_the_next_run_resumes(weights, folder, tmp_path):
    out = tmp_path / "out"
    events = []
    seen = []

    def cancel():  # stop in the middle of the third file (stack1.tif, 3 planes)
        seen.append(1)
        return len(events) == 2 and len(seen) > 12

    with pytest.raises(Cancelled):
        batch.batch(folder, out, model=weights, device="cpu", progress=events.append, cancel=cancel)
    assert _files(out) == ["ct.tiff", "stack0.tif"]
    resumed = batch.batch(folder, out, model=weights, device="cpu")
    assert [p.name for p in resumed.written] == ["stack1.tif", "stack2.tif", "vol.nii.gz"]


def test_bad_files_are_reported_with_a_reason_and_the_others_finish(weights, folder, tmp_path, nuclei):
    (folder / "broken.tif").write_bytes(b"not a tiff")
    (folder / "truncated.tif").write_bytes((folder / "stack0.tif").read_bytes()[:6])
    nan = nuclei[:2, :32, :32].astype(np.float32)
    nan[1, 5, 5] = np.nan
    tifffile.imwrite(folder / "nan.tif", nan)
    out = tmp_path / "out"
    summary = batch.batch(folder, out, model=weights, device="cpu")
    assert not summary.ok and len(summary.written) == 5
    reasons = {f.path.name: f.reason for f in summary.failed}
    assert sorted(reasons) == ["broken.tif", "nan.tif", "truncated.tif"]
    assert "not a readable TIFF" in reasons["broken.tif"] and "NaN" in reasons["nan.tif"]
    assert all(r and "\n" not in r for r in reasons.values())
    text = summary.format()
    assert "8 file(s): 5 written, 0 skipped" in text and "3 failed" in text
    assert f"FAILED {folder / 'nan.tif'}: ValueError: image contains 1 NaN" in text
    assert _files(out) == ["ct.tiff", "stack0.tif", "stack1.tif", "stack2.tif", "vol.nii.gz"]


def test_patterns_subfolders_and_output_inside_input(weights, folder, tmp_path, nuclei):
    (folder / "sub").mkdir()
    tifffile.imwrite(folder / "sub" / "deep.tif", nuclei[:2, :32, :32])
    lazy.partial_path(folder / "x.tif").write_bytes(b"")  # hidden: never an input
    assert [p.name for p in batch.find_inputs(folder)] == [
        "ct.tiff", "stack0.tif", "stack1.tif", "stack2.tif", "vol.nii.gz"]
    assert [p.name for p in batch.find_inputs(folder, "*.nii.gz, *.tiff")] == ["ct.tiff", "vol.nii.gz"]
    out = folder / "results"  # inside the input folder: its files are never inputs
    summary = batch.batch(folder, out, model=weights, device="cpu", pattern="**/*.tif")
    assert sorted(str(p.relative_to(folder)) for p in summary.written) == [
        "stack0.tif", "stack1.tif", "stack2.tif", os.path.join("sub", "deep.tif")]
    assert (out / "sub" / "deep.tif").is_file()
    assert batch.batch(folder, out, model=weights, device="cpu", pattern="**/*.tif").skipped
    # a different output format
    zs = batch.batch(folder, tmp_path / "z", model=weights, device="cpu", pattern="stack0.tif", suffix=".zarr")
    np.testing.assert_array_equal(np.asarray(read_volume(tmp_path / "z" / "stack0.zarr").data),
                                  _expected(folder / "stack0.tif", weights))
    assert zs.ok


def test_tasks_and_arguments_are_checked_before_anything_runs(weights, folder, tmp_path):
    with pytest.raises(ValueError, match="unknown task 'deblur'.*available tasks: denoise, enhance, sr"):
        batch.batch(folder, tmp_path / "o", task="deblur")
    # sr: the default model follows the scale; the model's own factor must be the one asked for
    with pytest.raises(ValueError, match="unknown sr model 'msgan-x2'"):
        batch.batch(folder, tmp_path / "o", task="sr", scale=2)
    with pytest.raises(ValueError, match="unknown sr model 'msgan-x4'"):
        batch.batch(folder, tmp_path / "o", task="sr")
    with pytest.raises(ValueError, match="is a 'denoise' model, not a 'sr' model"):
        batch.batch(folder, tmp_path / "o", task="sr", model=weights)
    with pytest.raises(ValueError, match="denoise model 'tiny' upscales ×1, not ×2"):
        batch.batch(folder, tmp_path / "o", model=weights, scale=2)
    save_tiny_msgan_pair(weights.parent)
    with pytest.raises(ValueError, match=r"sr model 'tiny-x2' upscales ×2, not ×4: use a ×4 model \(tiny-x4\)"):
        batch.batch(folder, tmp_path / "o", task="sr", model="tiny-x2", scale=4)
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        batch.batch(folder, tmp_path / "o", task="sr", model="tiny-x2", scale=1.5)
    assert batch.resolve_model("sr", "tiny-x4").scale == 4  # no scale asked: the model's own
    with pytest.raises(ValueError, match="unknown denoise model 'nope'.*tiny"):
        batch.batch(folder, tmp_path / "o", model="nope")
    with pytest.raises(ValueError, match="is the input folder"):
        batch.batch(folder, folder, model=weights)
    with pytest.raises(ValueError, match="does not exist"):
        batch.batch(tmp_path / "missing", tmp_path / "o", model=weights)
    assert not (tmp_path / "o").exists()
    # a task is one entry: the lookup gives the module and the engine keywords of its model
    loaded = batch.load_task_model("denoise", weights, "cpu")
    assert loaded.engine_kwargs == {"scale": 1, "net_channels": 3, "pad_multiple": 1, "border": 16}
    n = batch.model_loads()
    assert batch.load_task_model("denoise", weights, "cpu") is loaded and batch.model_loads() == n
    assert batch.load_task_model("sr", "tiny-x4", "cpu", scale=4).engine_kwargs["scale"] == 4


# ------------------------------------------------------------------------------ dask


def test_local_cluster_with_two_workers_equals_the_single_process_run(weights, folder, tmp_path):
    (folder / "broken.tif").write_bytes(b"not a tiff at all")
    single = batch.batch(folder, tmp_path / "single", model=weights, device="cpu")
    events = []
    dist = batch.batch(folder, tmp_path / "dist", model=weights, device="cpu", scheduler="local",
                       n_workers=2, memory_limit="1GB", progress=events.append)
    assert dist.where == "a local cluster"
    assert [p.name for p in sorted(dist.written)] == [p.name for p in sorted(single.written)]
    assert [(f.path.name, f.reason) for f in dist.failed] == [(f.path.name, f.reason) for f in single.failed]
    for p in single.written:
        np.testing.assert_array_equal(np.asarray(read_volume(tmp_path / "dist" / p.name).data),
                                      np.asarray(read_volume(tmp_path / "single" / p.name).data),
                                      err_msg=p.name)
    # The workers did the work, each loading the model once whatever number of files it got
    # (5 files on 2 workers: at least one worker ran several).
    ran = [e for e in events if e.status == "written"]
    assert len(ran) == 5 and os.getpid() not in {int(e.worker.rsplit(":", 1)[1]) for e in ran}
    loads: dict[str, set[int]] = {}
    for e in ran:
        loads.setdefault(e.worker, set()).add(e.model_loads)
    assert 1 <= len(loads) <= 2 and all(v == {1} for v in loads.values()), loads
    assert _files(tmp_path / "dist") == _files(tmp_path / "single")


def test_cancel_reaches_running_jobs_on_a_cluster(weights, tmp_path, nuclei):
    distributed = pytest.importorskip("distributed")
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "s0.tif", nuclei[:2, :64, :64])  # done first; the others take longer
    for i in (1, 2, 3):
        tifffile.imwrite(src / f"s{i}.tif", nuclei)
    events: list = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        stop = threading.Event()
        with pytest.raises(Cancelled):
            batch.batch(src, tmp_path / "out", model=weights, device="cpu", scheduler=client,
                        progress=lambda e: (events.append(e), stop.set()), cancel=stop.is_set)
        loads = client.run(batch.model_loads)
    assert len(events) == 1  # cancelled as soon as the first file was reported
    assert sorted(loads.values()) in ([0, 1], [1, 1])  # once per worker that ran anything
    # The job running beside it and the one started next are told to stop and clean up: only
    # the complete output exists, no partial file is left behind.
    written = _files(tmp_path / "out")
    assert written == ["s0.tif"] and events[0].output.name == "s0.tif"
    for name in written:
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / name),
                                      _expected(src / name, weights))


# ------------------------------------------------------------------------------ CLI


def test_cli_folder_mode_summary_and_exit_codes(weights, folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["denoise", str(folder), str(out), "--model", "tiny", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "5 file(s): 5 written, 0 skipped (output already there), 0 failed" in text
    assert main(["denoise", str(folder), str(out), "--model", "tiny", "--device", "cpu"]) == 0
    assert "0 written, 5 skipped" in capsys.readouterr().out

    (folder / "broken.tif").write_bytes(b"garbage")
    assert main(["denoise", str(folder), str(out), "--model", "tiny", "--device", "cpu",
                 "--pattern", "*.tif"]) == 1
    cap = capsys.readouterr()
    assert "4 file(s): 0 written, 3 skipped (output already there), 1 failed" in cap.out
    assert f"FAILED {folder / 'broken.tif'}: ValueError:" in cap.out
    assert f"failed: {folder / 'broken.tif'}" in cap.err

    assert main(["denoise", str(folder), str(out), "--model", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medenhance denoise: unknown denoise model 'nope'") and "\n" not in err
    assert main(["denoise", str(folder), str(out), "--workers", "2"]) == 2
    assert "--workers applies to --scheduler local" in capsys.readouterr().err
    assert main(["denoise", str(folder / "ct.tiff"), str(tmp_path / "x.tif"), "--scheduler", "local"]) == 2
    assert "apply when INPUT is a folder" in capsys.readouterr().err
    assert main(["denoise", str(folder), str(tmp_path / "empty"), "--model", "tiny", "--pattern", "*.png"]) == 0
    assert "no files in" in capsys.readouterr().out


def test_cli_file_mode_writes_nifti_with_its_affine(weights, folder, tmp_path, capsys):
    dst = tmp_path / "o" / "vol.nii.gz"
    assert main(["denoise", str(folder / "vol.nii.gz"), str(dst), "--model", "tiny", "--device", "cpu"]) == 0
    assert "wrote" in capsys.readouterr().out
    img = nib.load(dst)
    np.testing.assert_array_equal(img.affine, nib.load(folder / "vol.nii.gz").affine)
    np.testing.assert_array_equal(np.asarray(img.dataobj).T, _expected(folder / "vol.nii.gz", weights))


def test_cli_takes_a_dicom_series_folder_as_one_volume(weights, tmp_path, capsys):
    pytest.importorskip("pydicom")
    ct = load("ct_slice")
    raw = np.stack([np.clip(ct[200 + 9 * k : 248 + 9 * k, 150:214].astype(np.int32) + 1024, 0, 4095)
                    for k in range(3)]).astype(np.uint16)
    write_ct_series(tmp_path / "series", raw)
    dst = tmp_path / "ct.nii.gz"
    assert main(["denoise", str(tmp_path / "series"), str(dst), "--model", "tiny", "--device", "cpu"]) == 0
    assert "shape (3, 48, 64)" in capsys.readouterr().out
    vol = read_volume(dst)
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.7))
    np.testing.assert_array_equal(np.asarray(vol.data), _expected(tmp_path / "series", weights))


# ------------------------------------------------------------------------------ super-resolution


def test_sr_batch_upscales_and_places_each_file_in_process_zarr_and_on_a_cluster(isolated_models, folder,
                                                                                 tmp_path):
    """``task="sr"`` is one TaskSpec entry: the same batch, outputs ×2 in Y and X in the input's
    dtype, spacing Y/X halved and voxel 0 moved by −0.25 input pixels (NIfTI: in its affine),
    and the same files from a LocalCluster worker (which gets the model as a path)."""
    save_tiny_msgan_pair(isolated_models)
    names = ["ct.tiff", "stack0.tif", "vol.nii.gz"]
    kw = {"task": "sr", "model": "tiny-x2", "scale": 2, "device": "cpu", "pattern": ",".join(names)}
    out = tmp_path / "out"
    summary = batch.batch(folder, out, **kw)
    assert [p.name for p in summary.written] == names and summary.ok and _files(out) == names
    for name in names:
        src, dst = read_volume(folder / name, lazy=False), read_volume(out / name, lazy=False)
        want = me.super_resolve(np.asarray(src.data), 2, "tiny-x2", device="cpu")
        assert dst.data.dtype == src.data.dtype and dst.data.shape == want.shape
        np.testing.assert_array_equal(dst.data, want, err_msg=name)
        sp = src.spacing
        assert dst.spacing == pytest.approx((*sp[:-2], sp[-2] / 2, sp[-1] / 2), rel=1e-12), name
        assert dst.units == src.units
        if name.endswith(".nii.gz"):
            continue  # a permuted affine: placement checked in voxel coordinates below
        shift = np.array([0.0] * (len(sp) - 2) + [-0.25, -0.25])
        assert dst.origin == pytest.approx(np.add(src.origin, np.multiply(sp, shift))), name
    # NIfTI: output voxel (i, j, k) lies at input voxel ((i + 0.5) / 2 − 0.5, (j + 0.5) / 2 − 0.5, k)
    ijk = np.array([[0, 0, 0], [111, 95, 3], [17, 40, 2]], dtype=float)
    src_vox = np.c_[(ijk[:, :2] + 0.5) / 2 - 0.5, ijk[:, 2]]
    np.testing.assert_allclose(nib.affines.apply_affine(nib.load(out / "vol.nii.gz").affine, ijk),
                               nib.affines.apply_affine(AFFINE, src_vox), atol=1e-5)
    assert nib.load(out / "vol.nii.gz").header.get_zooms() == pytest.approx((0.4, 0.4, 2.5))

    # zarr: the same pixels and geometry as the TIFF
    batch.batch(folder, tmp_path / "z", suffix=".zarr", **{**kw, "pattern": "stack0.tif"})
    z, t = read_volume(tmp_path / "z" / "stack0.zarr", lazy=False), read_volume(out / "stack0.tif", lazy=False)
    np.testing.assert_array_equal(np.asarray(z.data), t.data)
    assert z.spacing == pytest.approx(t.spacing) and z.origin == pytest.approx(t.origin)

    dist = batch.batch(folder, tmp_path / "dist", scheduler="local", n_workers=1, memory_limit="1GB",
                       **{**kw, "pattern": "stack0.tif,vol.nii.gz"})
    assert dist.ok and len(dist.written) == 2
    for name in ("stack0.tif", "vol.nii.gz"):
        assert (tmp_path / "dist" / name).read_bytes() == (out / name).read_bytes(), name


def test_lazy_upscaled_output_without_a_like_is_placed_in_its_spacing_or_in_pixels(isolated_models, nuclei,
                                                                                    tmp_path):
    save_tiny_msgan_pair(isolated_models)
    loaded = batch.load_task_model("sr", "tiny-x2", "cpu", scale=2)
    stack = nuclei[:2, :20, :24]
    for spacing, want_sp, want_origin in (
        ((0.29, 0.26, 0.26), (0.29, 0.13, 0.13), (0.0, -0.065, -0.065)),
        (None, (1.0, 0.5, 0.5), (0.0, -0.25, -0.25)),
    ):
        dst = tmp_path / f"o{spacing is None}.tif"
        drive(lazy.iter_process_volume(stack, loaded.module, dst, spacing=spacing, device="cpu",
                                       **loaded.engine_kwargs))
        out = read_volume(dst, lazy=False)
        assert out.data.shape == (2, 40, 48)
        assert out.spacing == pytest.approx(want_sp) and out.origin == pytest.approx(want_origin)
