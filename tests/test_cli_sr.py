"""``medenhance sr IN OUT --scale F [--roi ...] [--planes ...]`` with a tiny untrained MS-GAN
registered as the user's ×2 and ×4 models, on crops of the real sample images.

These check the plumbing (shapes, dtype, equality with ``super_resolve``, where the output lies
in physical space for TIFF, NIfTI and DICOM inputs, exit codes), not SR quality: no trained
MS-GAN weights ship yet.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_io import _ct_raw, _series

import napari_medenhance as me
from napari_medenhance.cli import main
from napari_medenhance.core.io import read_volume, write_volume
from napari_medenhance.sample_data import load

from _tiny_models import save_tiny_msgan_pair

nib = pytest.importorskip("nibabel")

SPACING, ORIGIN = (0.7, 0.5), (10.0, -5.0)  # y, x in mm
# voxel (i, j, k) -> world: a permutation with a flip, so NIfTI axes are not napari's
AFFINE = np.array([[0.0, 0.0, 2.5, -40.0], [0.0, 0.8, 0.0, 12.0], [-0.8, 0.0, 0.0, 7.5], [0, 0, 0, 1]])
CPU = ["--device", "cpu"]


@pytest.fixture
def models(isolated_models):
    """Tiny ×2 and ×4 models (one network, as train_sr.py exports them), no shipped models."""
    save_tiny_msgan_pair(isolated_models)
    return isolated_models


@pytest.fixture
def no_models(isolated_models):
    return isolated_models


@pytest.fixture
def mr_tif(tmp_path):
    """A crop of the real 12-bit MR slice (uint16) with mm spacing and an origin."""
    mr = load("mr_slice")[300:356, 420:468]
    return write_volume(tmp_path / "mr.tif", mr, spacing=SPACING, origin=ORIGIN, units="mm")


def _source_point(roi, f, i, j):
    """Source data (y, x) of the centre of output pixel (i, j) (core/roi.py's convention)."""
    y0, _, x0, _ = roi
    return y0 - 0.5 + (i + 0.5) / f, x0 - 0.5 + (j + 0.5) / f


def _check_placement(src, out, roi, f, z0=0):
    """Output voxel centres lie at the source data positions they come from, in world units."""
    n = len(src.spacing)
    shape = out.data.shape
    for idx in [(0,) * n, tuple(s - 1 for s in shape), tuple(s // 3 for s in shape)]:
        y, x = _source_point(roi, f, idx[-2], idx[-1])
        source = np.array([*idx[:-3], *([idx[-3] + z0] if n > 2 else []), y, x], dtype=float)
        world_src = np.add(src.origin, np.multiply(src.spacing, source))
        world_out = np.add(out.origin, np.multiply(out.spacing, idx))
        np.testing.assert_allclose(world_out, world_src, rtol=0, atol=1e-9)


def test_whole_image_x2_like_the_api(models, mr_tif, tmp_path, capsys):
    dst = tmp_path / "out" / "mr_x2.tif"
    assert main(["sr", str(mr_tif), str(dst), "--scale", "2", "--model", "tiny-x2", *CPU]) == 0
    assert f"wrote {dst} (uint16, shape (112, 96))" in capsys.readouterr().out
    src, out = read_volume(mr_tif, lazy=False), read_volume(dst, lazy=False)
    assert out.data.dtype == np.uint16 and out.data.shape == (112, 96) and out.units == "mm"
    assert out.spacing == pytest.approx((0.35, 0.25), rel=1e-12)
    np.testing.assert_array_equal(out.data, me.super_resolve(src.data, 2, "tiny-x2", device="cpu"))
    _check_placement(src, out, (0, 56, 0, 48), 2)
    # the f × f output pixels of source pixel (0, 0) tile its area: edges coincide
    assert out.origin[0] - out.spacing[0] / 2 == pytest.approx(src.origin[0] - src.spacing[0] / 2)


def test_two_rois_x4_each_in_its_own_file_over_its_pixels(models, mr_tif, tmp_path, capsys):
    rois = [(10, 30, 5, 21), (40, 52, 30, 48)]
    dst = tmp_path / "lesion.tif"
    assert main(["sr", str(mr_tif), str(dst), "--scale", "4", "--model", "tiny-x4", *CPU,
                 "--roi", "10,30,5,21", "--roi", "40,52,30,48"]) == 0
    assert "from ROI 40,52,30,48" in capsys.readouterr().out
    assert not dst.exists()
    src = read_volume(mr_tif, lazy=False)
    expected = me.super_resolve(src.data, 4, "tiny-x4", roi=rois, device="cpu")
    for k, (roi, exp) in enumerate(zip(rois, expected), start=1):
        out = read_volume(tmp_path / f"lesion_roi{k}.tif", lazy=False)
        assert out.data.shape == (4 * (roi[1] - roi[0]), 4 * (roi[3] - roi[2]))
        assert out.data.dtype == np.uint16
        np.testing.assert_array_equal(out.data, exp)
        assert out.spacing == pytest.approx((0.175, 0.125), rel=1e-12)
        y0, x0 = roi[0], roi[2]
        assert out.origin == pytest.approx((10.0 + 0.7 * (y0 - 0.5 + 0.125), -5.0 + 0.5 * (x0 - 0.5 + 0.125)))
        _check_placement(src, out, roi, 4)

    # one ROI: exactly OUTPUT; --roi A B is the same as --roi A --roi B
    assert main(["sr", str(mr_tif), str(dst), "--scale", "4", "--model", "tiny-x4", *CPU,
                 "--roi", "10,30,5,21"]) == 0
    np.testing.assert_array_equal(read_volume(dst, lazy=False).data, expected[0])
    assert main(["sr", str(mr_tif), str(tmp_path / "b.tif"), "--scale", "4", "--model", "tiny-x4",
                 *CPU, "--roi", "10,30,5,21", "40,52,30,48"]) == 0
    assert (tmp_path / "b_roi1.tif").exists() and (tmp_path / "b_roi2.tif").exists()


def test_planes_of_a_stack(models, nuclei, tmp_path):
    stack = nuclei[6:10, 40:64, 30:58]  # real 16-bit fluorescence planes
    src_path = write_volume(tmp_path / "n.tif", stack, spacing=(0.29, 0.26, 0.26),
                            origin=(1.0, 2.0, 3.0), units="µm")
    src = read_volume(src_path, lazy=False)
    roi = (3, 15, 4, 20)
    full = me.super_resolve(stack, 2, "tiny-x2", roi=[roi], device="cpu")[0]
    for planes, z0, z1 in (("1:3", 1, 3), ("2:", 2, 4), ("all", 0, 4)):
        dst = tmp_path / f"n_{z0}.tif"
        assert main(["sr", str(src_path), str(dst), "--scale", "2", "--model", "tiny-x2", *CPU,
                     "--roi", "3,15,4,20", "--planes", planes]) == 0
        out = read_volume(dst, lazy=False)
        assert out.data.shape == (z1 - z0, 24, 32) and out.data.dtype == np.uint16
        np.testing.assert_array_equal(out.data, full[z0:z1])  # whole-stack intensity mapping
        assert out.spacing == pytest.approx((0.29, 0.13, 0.13))
        assert out.origin[0] == pytest.approx(1.0 + 0.29 * z0)
        _check_placement(src, out, roi, 2, z0)
    # one plane: a 2-D image, over the ROI in Y and X
    assert main(["sr", str(src_path), str(tmp_path / "one.tif"), "--scale", "2", "--model",
                 "tiny-x2", *CPU, "--roi", "3,15,4,20", "--planes", "2"]) == 0
    out = read_volume(tmp_path / "one.tif", lazy=False)
    np.testing.assert_array_equal(out.data, full[2])
    assert out.spacing == pytest.approx((0.13, 0.13)) and out.axis_labels == ("y", "x")
    assert out.origin == pytest.approx((2.0 + 0.26 * (3 - 0.25), 3.0 + 0.26 * (4 - 0.25)))


@pytest.mark.parametrize("qform_code", [0, 1])
def test_nifti_roi_lies_at_its_world_position(models, tmp_path, qform_code):
    ct = load("ct_slice")[120:150, 160:188]
    vol = np.stack([ct, ct[::-1], ct[:, ::-1]]).astype(np.int16)  # (z, y, x) in HU
    img = nib.Nifti1Image(np.ascontiguousarray(vol.T), AFFINE)
    img.header.set_qform(AFFINE, code=qform_code)
    src_path = tmp_path / "ct.nii.gz"
    nib.save(img, src_path)
    roi, f = (4, 14, 6, 20), 2
    dst = tmp_path / "ct_sr.nii.gz"
    assert main(["sr", str(src_path), str(dst), "--scale", "2", "--model", "tiny-x2", *CPU,
                 "--roi", "4,14,6,20", "--planes", "1:3"]) == 0
    out = nib.load(dst)
    assert out.get_data_dtype() == np.int16 and out.shape == (28, 20, 2)  # NIfTI (i, j, k)
    np.testing.assert_allclose(out.header.get_zooms(), (0.4, 0.4, 2.5), rtol=1e-6)
    expected = me.super_resolve(vol, 2, "tiny-x2", roi=[roi], device="cpu")[0][1:3]
    np.testing.assert_array_equal(np.asarray(out.dataobj).T, expected)
    # world of output voxel (i, j, k) == world of source voxel (x, y, z) it comes from
    i, j, k = np.meshgrid([0, 13, 27], [0, 7, 19], [0, 1], indexing="ij")
    y, x = _source_point(roi, f, j, i)
    ijk = np.stack([i, j, k], -1).reshape(-1, 3)
    src_vox = np.stack([x, y, k + 1], -1).reshape(-1, 3)
    want = nib.affines.apply_affine(AFFINE, src_vox)
    forms = [out.header.get_sform()] + ([out.header.get_qform()] if qform_code else [])
    for form in forms:
        np.testing.assert_allclose(nib.affines.apply_affine(form, ijk), want, atol=1e-4)
    assert int(out.header["sform_code"]) == 2 and int(out.header["qform_code"]) == qform_code
    # one plane: a 2-D NIfTI whose affine still puts it at that plane's world position
    one = tmp_path / "one.nii.gz"
    assert main(["sr", str(src_path), str(one), "--scale", "2", "--model", "tiny-x2", *CPU,
                 "--roi", "4,14,6,20", "--planes", "2"]) == 0
    out = nib.load(one)
    assert out.shape == (28, 20)
    np.testing.assert_array_equal(np.asarray(out.dataobj).T,
                                  me.super_resolve(vol, 2, "tiny-x2", roi=[roi], device="cpu")[0][2])
    ij0 = np.c_[ijk[:, :2], np.zeros(len(ijk))]
    src_vox = np.c_[src_vox[:, :2], np.full(len(ijk), 2.0)]
    np.testing.assert_allclose(nib.affines.apply_affine(out.affine, ij0),
                               nib.affines.apply_affine(AFFINE, src_vox), atol=1e-4)


def test_dicom_series_to_nifti_roi_at_its_patient_position(models, tmp_path):
    raw = _ct_raw(3, (24, 28))
    _series(tmp_path / "ct", raw, orientation=(0.8, 0.6, 0, -0.6, 0.8, 0))  # tilted in-plane
    src = read_volume(tmp_path / "ct")
    dst = tmp_path / "roi.nii.gz"
    assert main(["sr", str(tmp_path / "ct"), str(dst), "--scale", "2", "--model", "tiny-x2", *CPU,
                 "--roi", "2,12,3,17"]) == 0
    out = nib.load(dst)
    lps = np.asarray(src.meta["affine_lps"])  # napari (z, y, x, 1) -> LPS
    for i, j, k in [(0, 0, 0), (27, 19, 2), (5, 11, 1)]:
        y, x = _source_point((2, 12, 3, 17), 2, j, i)
        want = (lps @ [k, y, x, 1])[:3] * [-1, -1, 1]  # LPS -> RAS
        np.testing.assert_allclose(nib.affines.apply_affine(out.affine, [i, j, k]), want, atol=1e-4)


def test_without_an_sr_model_exit_2_with_the_registry_message(no_models, mr_tif, tmp_path, capsys):
    dst = tmp_path / "o.tif"
    assert main(["sr", str(mr_tif), str(dst), "--scale", "2", *CPU]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medenhance sr: unknown sr model 'msgan-x2'") and "\n" not in err
    assert "medenhance models --add" in err and not dst.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--roi", "100,120,0,10"], "lies outside the image"),
        (["--roi", "5,5,0,10"], "is empty"),
        (["--roi", "0,1,0,10"], "at least 2×2"),
        (["--roi", "0,10,0,10", "100,120,0,10"], "ROI 2 (y0, y1, x0, x1) = (100, 120, 0, 10) lies outside"),
        (["--planes", "0"], "--planes applies to 3-D inputs"),
        (["--scale", "4"], "upscales ×2, not ×4"),
    ],
)
def test_bad_rois_planes_and_models_exit_2(models, mr_tif, tmp_path, capsys, extra, message):
    dst = tmp_path / "o.tif"
    args = ["sr", str(mr_tif), str(dst), "--scale", "2", "--model", "tiny-x2", *CPU, *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medenhance sr: ") and message in err, err
    assert not dst.exists() and not list(tmp_path.glob("o_roi*"))


def test_bad_syntax_and_files_exit_2(models, mr_tif, nuclei, tmp_path, capsys):
    base = ["sr", str(mr_tif), str(tmp_path / "o.tif")]
    for bad in (["--scale", "2", "--roi", "1,2,3"], ["--scale", "2", "--roi", "a,b,c,d"],
                ["--scale", "2", "--planes", "x"], ["--scale", "3"], []):
        with pytest.raises(SystemExit) as e:  # argparse: usage and the error, exit 2
            main(base + bad)
        assert e.value.code == 2
    assert "Y0,Y1,X0,X1" in capsys.readouterr().err
    assert main(["sr", str(tmp_path / "missing.tif"), str(tmp_path / "o.tif"), "--scale", "2"]) == 2
    assert main(["sr", str(mr_tif), str(tmp_path / "o.png"), "--scale", "2"]) == 2
    stack = write_volume(tmp_path / "s.tif", nuclei[:4, :20, :20])
    assert main(["sr", str(stack), str(tmp_path / "o.tif"), "--scale", "2", "--model", "tiny-x2",
                 *CPU, "--planes", "3:6"]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "cannot write 'o.png'" in err and "Z = 0..3" in err


# ------------------------------------------------------------------------------ folder mode

FOLDER = ["a.tif", "b.tif", "ct.nii.gz"]


@pytest.fixture
def sr_folder(tmp_path, nuclei):
    """Two small TIFF stacks (exact spacing and origin; ImageJ metadata) and a NIfTI volume
    whose affine permutes and flips the axes (sform and qform both set)."""
    import tifffile

    src = tmp_path / "in"
    src.mkdir()
    write_volume(src / "a.tif", nuclei[2:5, 40:64, 30:58], spacing=(0.29, 0.26, 0.26),
                 origin=(1.0, 2.0, 3.0), units="µm")
    tifffile.imwrite(src / "b.tif", nuclei[8:10, 100:120, 60:92], imagej=True,
                     resolution=(1 / 0.26, 1 / 0.26), metadata={"axes": "ZYX", "spacing": 0.29, "unit": "um"})
    ct = load("ct_slice")[120:150, 160:188]
    img = nib.Nifti1Image(np.ascontiguousarray(np.stack([ct, ct[::-1]]).astype(np.int16).T), AFFINE)
    img.header.set_qform(AFFINE, code=1)
    nib.save(img, src / "ct.nii.gz")
    return src


def _stamps(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.mark.parametrize("f", [2, 4])
def test_folder_gives_what_the_single_file_command_gives_and_resumes(models, sr_folder, tmp_path,
                                                                      capsys, f):
    out = tmp_path / "out"
    args = ["--scale", str(f), "--model", f"tiny-x{f}", *CPU]
    assert main(["sr", str(sr_folder), str(out), *args]) == 0
    assert "3 file(s): 3 written, 0 skipped (output already there), 0 failed" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == FOLDER  # no partial files left
    for name in FOLDER:
        one = tmp_path / "one" / name
        assert main(["sr", str(sr_folder / name), str(one), *args]) == 0
        got, want = read_volume(out / name, lazy=False), read_volume(one, lazy=False)
        src = read_volume(sr_folder / name, lazy=False)
        assert got.data.dtype == want.data.dtype == src.data.dtype, name
        assert got.data.shape == want.data.shape == (*src.data.shape[:-2], *(f * n for n in src.data.shape[-2:]))
        np.testing.assert_array_equal(got.data, want.data, err_msg=name)
        assert got.spacing == pytest.approx(want.spacing, rel=1e-12), name
        assert got.origin == pytest.approx(want.origin, rel=1e-12, abs=1e-12), name
        assert got.units == want.units, name
        if name.endswith(".tif"):
            assert got.spacing[-2:] == pytest.approx((0.26 / f, 0.26 / f), rel=1e-12)
            _check_placement(src, got, (0, src.data.shape[-2], 0, src.data.shape[-1]), f)
    a, b = nib.load(out / "ct.nii.gz"), nib.load(tmp_path / "one" / "ct.nii.gz")
    np.testing.assert_array_equal(a.affine, b.affine)
    for form in ("sform", "qform"):
        np.testing.assert_array_equal(getattr(a.header, f"get_{form}")(), getattr(b.header, f"get_{form}")())
        assert int(a.header[f"{form}_code"]) == int(b.header[f"{form}_code"]) > 0
    assert a.header.get_zooms() == b.header.get_zooms() == pytest.approx((0.8 / f, 0.8 / f, 2.5))
    # output voxel (i, j, k) lies at input voxel ((i + 0.5)/f − 0.5, (j + 0.5)/f − 0.5, k)
    ijk = np.array([[0, 0, 0], [28 * f - 1, 30 * f - 1, 1], [5, 9, 1]], dtype=float)
    src_vox = np.c_[(ijk[:, :2] + 0.5) / f - 0.5, ijk[:, 2]]
    for form in (a.header.get_sform(), a.header.get_qform()):
        np.testing.assert_allclose(nib.affines.apply_affine(form, ijk),
                                   nib.affines.apply_affine(AFFINE, src_vox), atol=1e-4)

    # a second run finds every output finished and leaves them alone; a bad file fails alone
    stamps = _stamps(out)
    assert main(["sr", str(sr_folder), str(out), *args]) == 0
    assert "3 file(s): 0 written, 3 skipped" in capsys.readouterr().out
    assert _stamps(out) == stamps
    (sr_folder / "broken.tif").write_bytes(b"not a tiff")
    assert main(["sr", str(sr_folder), str(out), *args]) == 1
    assert "4 file(s): 0 written, 3 skipped (output already there), 1 failed" in capsys.readouterr().out
    assert _stamps(out) == stamps


def test_folder_refuses_a_model_of_another_scale_and_rois_before_anything_runs(models, sr_folder,
                                                                               tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sr", str(sr_folder), str(out), "--scale", "4", "--model", "tiny-x2", *CPU]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medenhance sr: sr model 'tiny-x2' upscales ×2, not ×4") and "\n" not in err
    assert "tiny-x4" in err  # the ×4 model to use instead
    # no --model: the default follows --scale
    for f in (2, 4):
        assert main(["sr", str(sr_folder), str(out), "--scale", str(f), *CPU]) == 2
        assert capsys.readouterr().err.startswith(f"medenhance sr: unknown sr model 'msgan-x{f}'")
    for extra in (["--roi", "0,8,0,8"], ["--planes", "0:1"]):
        assert main(["sr", str(sr_folder), str(out), "--scale", "2", "--model", "tiny-x2", *CPU,
                     *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err == ("medenhance sr: --roi and --planes apply when INPUT is a file; in folder "
                       "mode every file is super-resolved whole")
    assert not out.exists()
    # and the folder options need a folder
    assert main(["sr", str(sr_folder / "a.tif"), str(tmp_path / "a.tif"), "--scale", "2",
                 "--model", "tiny-x2", "--pattern", "*.tif"]) == 2
    assert "--pattern, --scheduler and --workers apply when INPUT is a folder" in capsys.readouterr().err
    assert not (tmp_path / "a.tif").exists()
