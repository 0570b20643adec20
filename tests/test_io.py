"""Volume I/O: NIfTI, TIFF, DICOM series and zarr keep voxels, dtype and physical geometry;
the napari reader/writer contributions use them.

Test files are built here from real image content (the shipped nuclei stack and CT slice), small
enough to keep the whole file fast; no network, no data caches.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from napari_medenhance.core import io
from napari_medenhance.core.io import read_volume, streaming, write_volume
from napari_medenhance.sample_data import load

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")


# ---- helpers -------------------------------------------------------------------------------


def _oblique_affine(zooms=(0.26, 0.3, 0.9)) -> np.ndarray:
    """A rotated (30° about z, 10° about x), anisotropic, translated voxel-to-RAS affine."""
    a, b = np.deg2rad(30), np.deg2rad(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag(zooms)
    aff[:3, 3] = (-12.5, 30.25, 7.0)
    return aff


@pytest.fixture(scope="module")
def nuclei_small(nuclei) -> np.ndarray:
    """(6, 40, 56) uint16 of the real nuclei stack (napari order z, y, x; non-square planes)."""
    return np.ascontiguousarray(nuclei[8:14, 100:140, 90:146])


@pytest.fixture()
def nifti_file(tmp_path, nuclei_small):
    """A .nii.gz of the nuclei crop with an oblique anisotropic affine (qform and sform set)."""
    vox = np.asfortranarray(nuclei_small.T)  # NIfTI voxel axes (i, j, k) = napari (x, y, z)
    img = nib.Nifti1Image(vox, _oblique_affine())
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=2)
    img.header.set_xyzt_units("micron")
    path = tmp_path / "nuclei.nii.gz"
    nib.save(img, path)
    return path


CT_SPACING = (2.5, 0.7, 0.6)  # slice step, PixelSpacing rows, columns (mm)


def _write_dcm(path, raw, *, series="1.2.826.0.1.3680043.8.498.1", position=(-120.0, -110.0, -50.0),
               orientation=(1, 0, 0, 0, 1, 0), slope="1", intercept="-1024", instance=1,
               pixels=True) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.7"
    ds.SeriesInstanceUID = series
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [str(v) for v in orientation]
    ds.PixelSpacing = [str(CT_SPACING[1]), str(CT_SPACING[2])]
    ds.SliceThickness = str(CT_SPACING[0])
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixels:
        ds.PixelData = raw.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _ct_raw(n=5, shape=(48, 64)) -> np.ndarray:
    """``n`` different crops of the real CT slice as 12-bit stored values (HU + 1024)."""
    ct = load("ct_slice")
    crops = [ct[200 + 20 * k: 200 + 20 * k + shape[0], 150 + 15 * k: 150 + 15 * k + shape[1]]
             for k in range(n)]
    return np.clip(np.stack(crops).astype(np.int32) + 1024, 0, 4095).astype(np.uint16)


def _series(folder, raw, **kw) -> list:
    """Write slice k at z = -50 + 2.5 k, in shuffled file and InstanceNumber order."""
    folder.mkdir(parents=True, exist_ok=True)
    order = list(range(len(raw)))
    random.Random(7).shuffle(order)
    paths = []
    for name_index, k in enumerate(order):
        path = folder / f"IM{name_index:04d}.dcm"
        _write_dcm(path, raw[k], position=(-120.0, -110.0, -50.0 + CT_SPACING[0] * k),
                   instance=order[(name_index + 2) % len(order)] + 1, **kw)
        paths.append(path)
    return paths


# ---- NIfTI ---------------------------------------------------------------------------------


def test_nifti_axes_spacing_and_lazy_read(nifti_file, nuclei_small):
    vol = read_volume(nifti_file)  # lazy by default
    assert hasattr(vol.data, "dask")  # gzip: a dask array, nothing read yet
    assert vol.format == "nifti" and vol.axis_labels == ("z", "y", "x") and vol.units == "µm"
    # napari axes are the voxel axes reversed: (k, j, i); spacing = header zooms reversed
    zooms = nib.load(nifti_file).header.get_zooms()
    assert vol.spacing == tuple(float(z) for z in zooms[::-1])
    assert vol.spacing == pytest.approx((0.9, 0.3, 0.26), rel=1e-6)
    # origin: voxel 0 in the patient world, LPS in napari order (z, y, x) = (z, -y, -x) of RAS
    assert vol.origin == (7.0, -30.25, 12.5)
    assert vol.direction is not None and vol.meta["patient_space"]  # oblique: a direction
    assert vol.data.dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(vol.data[3]), nuclei_small[3])  # one plane only
    np.testing.assert_array_equal(read_volume(nifti_file, lazy=False).data, nuclei_small)
    # turned to face the world (as napari shows it): this affine's i points right and j
    # anterior, so x and y are reversed
    turned = read_volume(nifti_file, orient=True)
    assert turned.meta["reorient"] == {"perm": [0, 1, 2], "flip": [False, True, True]}
    assert turned.spacing == vol.spacing
    ras0 = nib.affines.apply_affine(nib.load(nifti_file).affine, [55, 39, 0])  # its voxel 0
    assert turned.origin == pytest.approx((ras0[2], -ras0[1], -ras0[0]), abs=1e-9)
    np.testing.assert_array_equal(np.asarray(turned.data), nuclei_small[:, ::-1, ::-1])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_is_exact(tmp_path, nifti_file, nuclei_small, suffix):
    vol = read_volume(nifti_file)
    out = write_volume(tmp_path / f"copy{suffix}", vol.data, like=vol)
    src, dst = nib.load(nifti_file), nib.load(out)
    assert np.array_equal(dst.affine, src.affine)  # bit for bit, oblique and anisotropic
    assert dst.header.binaryblock == src.header.binaryblock  # qform, sform, codes, units...
    assert dst.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(np.asanyarray(dst.dataobj), np.asanyarray(src.dataobj))
    back = read_volume(out, lazy=False)
    np.testing.assert_array_equal(back.data, nuclei_small)
    if suffix == ".nii":  # uncompressed and unscaled: memory-mapped, not loaded
        assert isinstance(read_volume(out).data, np.memmap)


def test_nifti_write_follows_data_dtype_and_new_spacing(tmp_path, nifti_file):
    vol = read_volume(nifti_file, lazy=False)
    result = vol.data.astype(np.float32) / 7  # e.g. a restored image
    out = write_volume(tmp_path / "float.nii.gz", result, like=vol)
    img = nib.load(out)
    assert img.get_data_dtype() == np.float32
    assert np.array_equal(img.affine, nib.load(nifti_file).affine)
    np.testing.assert_array_equal(read_volume(out, lazy=False).data, result)
    # twice finer in-plane (super-resolution): voxel columns scale, voxel 0 stays put
    sr = np.zeros((6, 80, 112), np.float32)
    out = write_volume(tmp_path / "sr.nii", sr, like=vol, spacing=(0.9, 0.15, 0.13))
    aff, src = nib.load(out).affine, nib.load(nifti_file).affine
    np.testing.assert_allclose(aff[:3, :3], src[:3, :3] @ np.diag([0.5, 0.5, 1.0]), rtol=1e-6)
    np.testing.assert_allclose(aff[:3, 3], src[:3, 3])
    assert read_volume(out).spacing == pytest.approx((0.9, 0.15, 0.13), rel=1e-6)


def test_nifti_4d_and_scaling(tmp_path, nuclei_small):
    raw = (nuclei_small[:4, :20, :24] // 256).astype(np.uint8)  # (4, 20, 24) napari
    vol4 = np.stack([raw, raw + 1, raw + 2])  # (t, z, y, x)
    img = nib.Nifti1Image(np.asfortranarray(vol4.T), np.diag([0.5, 0.6, 2.0, 1.0]))
    img.header.set_zooms((0.5, 0.6, 2.0, 1.5))
    img.header.set_slope_inter(2.0, -100.0)  # physical = stored * 2 - 100
    nib.save(img, tmp_path / "t.nii")
    vol = read_volume(tmp_path / "t.nii")
    assert vol.data.shape == (3, 4, 20, 24) and vol.axis_labels == ("t", "z", "y", "x")
    assert vol.spacing == (1.5, 2.0, 0.6000000238418579, 0.5)  # pixdim is float32
    assert vol.data.dtype == np.int16  # integer slope/intercept, every uint8 lands in int16
    np.testing.assert_array_equal(np.asarray(vol.data), vol4.astype(np.int32) * 2 - 100)
    # int16 stored + 1024 could overflow int16 for some stored values: float32, still exact
    img = nib.Nifti1Image(np.asfortranarray(vol4.T.astype(np.int16)), np.eye(4))
    img.header.set_slope_inter(1.0, 1024.0)
    nib.save(img, tmp_path / "f.nii.gz")
    assert read_volume(tmp_path / "f.nii.gz").data.dtype == np.float32
    np.testing.assert_array_equal(read_volume(tmp_path / "f.nii.gz", lazy=False).data,
                                  vol4.astype(np.float32) + 1024)
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, tmp_path / "h.nii.gz")
    np.testing.assert_array_equal(read_volume(tmp_path / "h.nii.gz", lazy=False).data,
                                  (vol4 * 0.5 + 10).astype(np.float32))


# ---- TIFF ----------------------------------------------------------------------------------


def test_tiff_imagej_spacing_round_trip(tmp_path, nuclei_small):
    import tifffile

    out = write_volume(tmp_path / "n.tif", nuclei_small, spacing=(0.29, 0.26, 0.25), units="µm")
    vol = read_volume(out)
    assert isinstance(vol.data, np.memmap)
    assert vol.spacing == (0.29, 0.26, 0.25) and vol.units == "µm"
    assert vol.axis_labels == ("z", "y", "x")
    np.testing.assert_array_equal(vol.data, nuclei_small)
    # the standard tags alone (what Fiji and other readers see) give the same geometry
    with tifffile.TiffFile(out) as tif:
        ij = tif.imagej_metadata
        x, y = (tif.pages.first.tags[t].value for t in ("XResolution", "YResolution"))
    assert ij["spacing"] == 0.29 and ij["unit"] == "micron"
    assert x[1] / x[0] == pytest.approx(0.25, rel=1e-9) and y[1] / y[0] == pytest.approx(0.26, rel=1e-9)
    # rewritten like the input (e.g. a denoised result) keeps the raw resolution rationals
    again = write_volume(tmp_path / "n2.tif", nuclei_small // 2, like=vol)
    with tifffile.TiffFile(again) as tif:
        assert tif.pages.first.tags["XResolution"].value == x
    assert read_volume(again).spacing == vol.spacing


def test_tiff_int16_mm_spacing_origin_round_trip(tmp_path):
    import tifffile

    hu = (_ct_raw(3).astype(np.int16) - 1024)
    out = write_volume(tmp_path / "ct.tiff", hu, spacing=CT_SPACING, origin=(-50, -110, -120), units="mm")
    vol = read_volume(out, lazy=False)
    assert vol.data.dtype == np.int16 and isinstance(vol.data, np.ndarray)
    np.testing.assert_array_equal(vol.data, hu)
    assert vol.spacing == CT_SPACING and vol.units == "mm" and vol.origin == (-50, -110, -120)
    with tifffile.TiffFile(out) as tif:  # standard TIFF resolution, pixels per centimetre
        tags = tif.pages.first.tags
        assert int(tags["ResolutionUnit"].value) == 3
        num, den = tags["XResolution"].value
        assert num / den == pytest.approx(10 / CT_SPACING[2], rel=1e-9)


def test_tiff_write_streams_blocks_of_planes(tmp_path, nuclei_small, monkeypatch):
    class Recorder:  # an array-like that records how much is asked for at once
        def __init__(self, arr):
            self.arr, self.shape, self.dtype, self.ndim, self.biggest = arr, arr.shape, arr.dtype, arr.ndim, 0

        def __getitem__(self, index):
            block = self.arr[index]
            self.biggest = max(self.biggest, block.size)
            return block

    plane = nuclei_small[0].size
    monkeypatch.setattr(streaming, "BLOCK_BYTES", 2 * plane * nuclei_small.itemsize)
    rec = Recorder(nuclei_small)
    write_volume(tmp_path / "s.tif", rec, spacing=(1, 1, 1))
    assert 0 < rec.biggest <= 2 * plane
    rec = Recorder(nuclei_small)
    write_volume(tmp_path / "s.nii.gz", rec)
    assert 0 < rec.biggest <= 2 * plane
    np.testing.assert_array_equal(read_volume(tmp_path / "s.tif").data, nuclei_small)
    np.testing.assert_array_equal(read_volume(tmp_path / "s.nii.gz", lazy=False).data, nuclei_small)


def test_zarr_round_trip_from_dask(tmp_path, nuclei_small):
    import dask.array as da

    lazy = da.from_array(nuclei_small, chunks=(2, 40, 56))
    out = write_volume(tmp_path / "n.zarr", lazy, spacing=(0.29, 0.26, 0.26), units="µm")
    vol = read_volume(out)
    assert hasattr(vol.data, "dask") and vol.data.chunks[0] == (1,) * 6  # one chunk per plane
    assert vol.spacing == (0.29, 0.26, 0.26) and vol.units == "µm"
    np.testing.assert_array_equal(vol.data.compute(), nuclei_small)


# ---- DICOM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("lazy", [True, False])
def test_dicom_series_sorted_in_hounsfield_units(tmp_path, lazy):
    raw = _ct_raw()
    _series(tmp_path / "ct", raw)
    vol = read_volume(tmp_path / "ct", lazy=lazy)
    assert hasattr(vol.data, "dask") == lazy
    assert vol.format == "dicom" and vol.data.shape == (5, 48, 64)
    assert vol.spacing == pytest.approx(CT_SPACING, rel=1e-9) and vol.units == "mm"
    assert vol.origin == pytest.approx((-50.0, -110.0, -120.0))
    assert vol.data.dtype == np.int16  # 12-bit stored values - 1024 fit int16 exactly
    # sorted by position: slice k is the k-th crop, in HU = raw * slope + intercept
    np.testing.assert_array_equal(np.asarray(vol.data), raw.astype(np.float64) * 1 - 1024)
    assert vol.meta["modality"] == "CT" and "PatientName" not in str(vol.meta)


def test_dicom_fractional_slope_gives_float32(tmp_path):
    raw = _ct_raw(3)
    _series(tmp_path / "s", raw, slope="0.5", intercept="-1000.25")
    vol = read_volume(tmp_path / "s", lazy=False)
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, (raw * 0.5 - 1000.25).astype(np.float32))


def test_dicom_to_nifti_puts_voxels_at_their_patient_position(tmp_path):
    raw = _ct_raw()
    _series(tmp_path / "ct", raw)
    vol = read_volume(tmp_path / "ct")
    out = write_volume(tmp_path / "ct.nii.gz", vol.data, like=vol)
    img = nib.load(out)
    i, j, k = 7, 11, 3  # column, row, slice
    lps = np.array([-120.0 + i * CT_SPACING[2], -110.0 + j * CT_SPACING[1], -50.0 + k * CT_SPACING[0]])
    ras = nib.affines.apply_affine(img.affine, [i, j, k])
    np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-6)
    assert np.asanyarray(img.dataobj)[i, j, k] == int(raw[k, j, i]) - 1024


def test_dicom_single_file_is_2d(tmp_path):
    raw = _ct_raw(1)[0]
    _write_dcm(tmp_path / "one.dcm", raw)
    vol = read_volume(tmp_path / "one.dcm")
    assert vol.data.shape == (48, 64) and vol.axis_labels == ("y", "x")
    assert vol.spacing == (CT_SPACING[1], CT_SPACING[2]) and vol.origin == (-110.0, -120.0)
    np.testing.assert_array_equal(vol.data, raw.astype(np.int16) - 1024)


def test_dicom_mixed_and_broken_series_are_refused(tmp_path):
    raw = _ct_raw(3)
    mixed = tmp_path / "mixed"
    _series(mixed, raw)
    _write_dcm(mixed / "other.dcm", raw[0], series="1.2.826.0.1.3680043.8.498.2", position=(0, 0, 99))
    with pytest.raises(ValueError, match="2 DICOM series.*own folder"):
        read_volume(mixed)

    sizes = tmp_path / "sizes"
    _series(sizes, raw)
    _write_dcm(sizes / "scout.dcm", raw[0, :20], position=(0, 0, 99))
    with pytest.raises(ValueError, match="different sizes"):
        read_volume(sizes)

    dup = tmp_path / "dup"
    _series(dup, raw)
    _write_dcm(dup / "again.dcm", raw[1], position=(-120.0, -110.0, -50.0 + CT_SPACING[0]))
    with pytest.raises(ValueError, match="same position.*one folder per volume"):
        read_volume(dup)

    tilt = tmp_path / "tilt"
    _series(tilt, raw)
    _write_dcm(tilt / "sag.dcm", raw[0], orientation=(0, 1, 0, 0, 0, -1), position=(0, 0, 99))
    with pytest.raises(ValueError, match="different orientations"):
        read_volume(tilt)

    broken = tmp_path / "broken"
    _series(broken, raw)
    (broken / "notes.dcm").write_text("this is not a DICOM file\n" * 10)
    with pytest.raises(ValueError, match="notes.dcm is not a DICOM file"):
        read_volume(broken)

    _write_dcm(tmp_path / "nopix.dcm", raw[0], pixels=False)
    with pytest.raises(ValueError, match="has no pixel data"):
        read_volume(tmp_path / "nopix.dcm")


def test_missing_unknown_and_unwritable_paths_say_what_is_supported(tmp_path):
    with pytest.raises(ValueError, match=r"no such file.*\.nii\.gz.*DICOM"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "image.xyz").write_bytes(b"12345")
    with pytest.raises(ValueError, match=r"unknown file type '\.xyz'.*\.tif.*\.nii"):
        read_volume(tmp_path / "image.xyz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no DICOM files"):
        read_volume(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"writing DICOM is not supported.*\.nii\.gz"):
        write_volume(tmp_path / "out.dcm", np.zeros((4, 4), np.int16))
    with pytest.raises(ValueError, match="RGB.*tif"):
        write_volume(tmp_path / "rgb.nii", np.zeros((4, 4, 3), np.uint8), rgb=True)
    assert set(io.supported_suffixes()) >= {".tif", ".tiff", ".nii", ".nii.gz", ".dcm", ".zarr"}


# ---- damaged files -------------------------------------------------------------------------


def _cut_to_half(path) -> None:
    """Truncate ``path`` to half its size, as an interrupted copy or download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["imagej", "shaped", "zlib"])
@pytest.mark.parametrize("lazy", [True, False])
def test_truncated_tiff_is_refused_by_name(tmp_path, nuclei_small, kind, lazy):
    import tifffile

    path = tmp_path / f"cut_{kind}.tif"
    if kind == "imagej":  # uint16: ImageJ hyperstack metadata
        write_volume(path, nuclei_small, spacing=(1.0, 0.26, 0.26), units="µm")
    elif kind == "shaped":  # int16: tifffile's JSON shape metadata
        write_volume(path, nuclei_small.astype(np.int16))
    else:  # compressed strips, no memory map possible
        tifffile.imwrite(path, nuclei_small, compression="zlib")
    assert read_volume(path, lazy=lazy).data.shape == nuclei_small.shape
    _cut_to_half(path)
    # Before: the first plane alone (ImageJ), IndexError, or an error only when pixels are read.
    with pytest.raises(ValueError, match=rf"{path.name}.*truncated or corrupt"):
        vol = read_volume(path, lazy=lazy)
        np.asarray(vol.data)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("lazy", [True, False])
def test_truncated_nifti_is_refused_by_name(tmp_path, nifti_file, suffix, lazy):
    path = tmp_path / f"cut{suffix}"
    write_volume(path, read_volume(nifti_file, lazy=False).data)
    _cut_to_half(path)
    # Lazily, the voxels are only read later: the cut must be found before that.
    with pytest.raises(ValueError, match=rf"{path.name}.*truncated or corrupt"):
        read_volume(path, lazy=lazy)


def test_multi_member_gzip_nifti_is_not_taken_for_a_cut_one(tmp_path, nuclei_small):
    import gzip

    plain = write_volume(tmp_path / "plain.nii", nuclei_small)
    data = plain.read_bytes()
    two = tmp_path / "two.nii.gz"  # as bgzip or concatenated gzip files are: several members
    two.write_bytes(gzip.compress(data[:5000]) + gzip.compress(data[5000:]))
    np.testing.assert_array_equal(np.asarray(read_volume(two).data), nuclei_small)


@pytest.mark.parametrize("lazy", [True, False])
def test_garbage_and_truncated_dicom_are_refused_by_name(tmp_path, lazy):
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="garbage.dcm is not a DICOM file"):
        read_volume(garbage, lazy=lazy)

    raw = _ct_raw(3)
    cut = tmp_path / "cut.dcm"
    _write_dcm(cut, raw[0])
    _cut_to_half(cut)
    with pytest.raises(ValueError, match="cut.dcm looks truncated or corrupt"):
        read_volume(cut, lazy=lazy)

    # One cut file in a series is reported when the series is opened, not when its slice is
    # reached in a lazy read (and not as a missing decoder).
    paths = _series(tmp_path / "series", raw)
    _cut_to_half(paths[-1])
    with pytest.raises(ValueError, match=rf"{paths[-1].name} looks truncated or corrupt"):
        read_volume(tmp_path / "series", lazy=lazy)


# ---- napari --------------------------------------------------------------------------------


def test_reader_hook_claims_only_its_files(tmp_path, nifti_file):
    from napari_medenhance._io_napari import get_reader

    assert get_reader(str(nifti_file)) is not None
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.txt").write_text("x")
    assert get_reader(str(tmp_path / "plain")) is None  # folders without DICOM: not ours
    assert get_reader(str(tmp_path / "x.png")) is None
    _series(tmp_path / "ct", _ct_raw(2))
    assert get_reader(str(tmp_path / "ct")) is not None


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")  # the oblique file's 10° tilt
def test_napari_opens_and_saves_with_geometry(make_napari_viewer, tmp_path, nifti_file, nuclei_small):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(nifti_file, plugin="napari-medenhance")
    vol = read_volume(nifti_file, orient=True)  # napari shows volumes in patient space
    assert tuple(layer.scale) == pytest.approx(vol.spacing, rel=1e-12)
    assert tuple(layer.translate) == pytest.approx(vol.origin)
    assert tuple(layer.axis_labels) == ("z", "y", "x") and str(layer.units[0]) == "micrometer"
    # patient space: turned as in test_nifti_axes_spacing_and_lazy_read
    np.testing.assert_array_equal(np.asarray(layer.data), nuclei_small[:, ::-1, ::-1])

    # saved through the plugin's writer: header and affine come back unchanged
    viewer.layers.save(str(tmp_path / "saved.nii.gz"), selected=False, plugin="napari-medenhance")
    saved, src = nib.load(tmp_path / "saved.nii.gz"), nib.load(nifti_file)
    assert np.array_equal(saved.affine, src.affine)
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), np.asanyarray(src.dataobj))
    np.testing.assert_array_equal(read_volume(tmp_path / "saved.nii.gz", lazy=False).data, nuclei_small)

    # a CT series: HU contrast limits, scale = spacing; saved as TIFF, read back identical
    _series(tmp_path / "ct", _ct_raw())
    (ct,) = viewer.open(tmp_path / "ct", plugin="napari-medenhance")
    assert tuple(ct.scale) == pytest.approx(CT_SPACING)
    assert tuple(ct.contrast_limits) == (-160.0, 240.0)  # soft-tissue window
    viewer.layers.selection = {ct}
    viewer.layers.save(str(tmp_path / "ct.tif"), selected=True, plugin="napari-medenhance")
    back = read_volume(tmp_path / "ct.tif")
    np.testing.assert_array_equal(back.data, np.asarray(ct.data))
    assert back.spacing == pytest.approx(CT_SPACING, rel=1e-12) and back.units == "mm"
