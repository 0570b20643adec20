"""Radiology volumes in patient space: every voxel at its scanner position (LPS mm, napari order
z, y, x), axial slices on the slider, files written back exactly, orientation letters.

Files are made here, in every orientation that matters (RAS, LAS, LPS, FreeSurfer's LIA,
oblique; DICOM axial, sagittal, coronal, oblique), from real image content: the shipped nuclei
stack and CT slice.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_medenhance.core.io import read_volume, write_volume
from napari_medenhance.core.io.patient import world_matrix
from napari_medenhance.core.orientation import camera_orientation, edge_labels, view_axes, view_of

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from test_io import CT_SPACING, _ct_raw, _write_dcm  # noqa: E402  (helpers, not tests)

ZOOMS = (0.8, 0.7, 1.9)  # voxel sizes along i, j, k (mm): anisotropic, all different


def _rot(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    r = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affine(codes: str, rotation: np.ndarray | None = None) -> np.ndarray:
    """Voxel -> RAS affine whose voxel axes point along ``codes`` (e.g. "LIA"), then rotated."""
    from nibabel.orientations import axcodes2ornt

    lin = np.zeros((3, 3))
    for i, (axis, sign) in enumerate(axcodes2ornt(codes)):
        lin[int(axis), i] = sign * ZOOMS[i]
    if rotation is not None:
        lin = rotation @ lin
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = (-31.5, 12.25, -7.0)
    return aff


ORIENTATIONS = {
    "RAS": _affine("RAS"),
    "LAS": _affine("LAS"),
    "LPS": _affine("LPS"),
    "LIA": _affine("LIA"),  # FreeSurfer's conformed volumes: slices along the voxel k are coronal
    "oblique": _affine("RAS", _rot(2, 25.0) @ _rot(0, -12.0)),
    "oblique LIA": _affine("LIA", _rot(1, 17.0) @ _rot(2, -8.0)),
}


@pytest.fixture(scope="module")
def voxels(nuclei) -> np.ndarray:
    """(i, j, k) = (56, 40, 6) int16 voxels of the real nuclei stack, all axes different."""
    return np.asfortranarray(nuclei[8:14, 100:140, 90:146].T.astype(np.int16))


def _nifti(path, voxels, affine):
    img = nib.Nifti1Image(voxels, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return path


def _world_of_voxels(vol) -> tuple[np.ndarray, np.ndarray]:
    """(N×3 world (z, y, x) of every data index, N values) from the volume's own geometry."""
    w = world_matrix(vol.spacing, vol.origin, vol.direction)
    data = np.asarray(vol.data)
    idx = np.indices(data.shape).reshape(3, -1).astype(float)
    return (w[:3, :3] @ idx).T + w[:3, 3], data.reshape(-1)


def _check_voxels_at(vol, world: np.ndarray, values: np.ndarray, atol: float) -> None:
    """Each of ``values`` is the voxel of ``vol`` whose centre is at ``world`` (N×3, z y x),
    one voxel for each (a bijection onto the whole array)."""
    w = world_matrix(vol.spacing, vol.origin, vol.direction)
    idx = (np.linalg.inv(w) @ np.c_[world, np.ones(len(world))].T).T[:, :3]
    near = np.rint(idx).astype(int)
    np.testing.assert_allclose((w[:3, :3] @ near.T).T + w[:3, 3], world, atol=atol)
    shape = np.asarray(vol.data.shape)
    assert ((near >= 0) & (near < shape)).all()
    assert len(np.unique(np.ravel_multi_index(near.T, tuple(shape)))) == shape.prod() == len(world)
    np.testing.assert_array_equal(np.asarray(vol.data)[tuple(near.T)], values)


def _lps_to_world(lps: np.ndarray) -> np.ndarray:
    return np.asarray(lps)[..., ::-1]


# ---- NIfTI -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ORIENTATIONS))
@pytest.mark.parametrize(("lazy", "orient"), [(True, True), (False, True), (True, False)])
def test_nifti_voxels_sit_at_their_scanner_position(tmp_path, voxels, name, lazy, orient):
    """Turned (as napari shows it) or in the file's own planes (``orient=False``, what the
    CLI processes), every voxel's world position is its scanner position."""
    path = _nifti(tmp_path / "v.nii.gz", voxels, ORIENTATIONS[name])
    affine = nib.load(path).affine  # as stored (float32)
    vol = read_volume(path, lazy=lazy, orient=orient)
    assert vol.meta["patient_space"] and vol.units == "mm"
    # the scanner position of each file voxel, by nibabel, in the LPS world
    ijk = np.indices(voxels.shape).reshape(3, -1).T
    ras = nib.affines.apply_affine(affine, ijk)
    _check_voxels_at(vol, _lps_to_world(ras * [-1, -1, 1]), voxels[tuple(ijk.T)], atol=1e-4)
    if not orient:
        np.testing.assert_array_equal(np.asarray(vol.data), voxels.T)  # the file's planes
        return
    # axial slices on the slider: data axis 0 is the voxel axis nearest superior, and so on
    w = world_matrix(vol.spacing, vol.origin, vol.direction)[:3, :3]
    assert (np.abs(w).argmax(axis=0) == [0, 1, 2]).all() and (np.diag(w) > 0).all()
    if "oblique" not in name:
        assert vol.direction is None  # scale and translate alone place it


@pytest.mark.parametrize("name", list(ORIENTATIONS))
@pytest.mark.parametrize(("suffix", "orient"), [(".nii", True), (".nii.gz", True), (".nii.gz", False)])
def test_nifti_written_back_reproduces_the_file(tmp_path, voxels, name, suffix, orient):
    src_path = _nifti(tmp_path / f"src{suffix}", voxels, ORIENTATIONS[name])
    vol = read_volume(src_path, orient=orient)
    out = write_volume(tmp_path / f"copy{suffix}", vol.data, like=vol)
    src, dst = nib.load(src_path), nib.load(out)
    assert np.array_equal(dst.affine, src.affine)  # bit for bit
    assert dst.header.binaryblock == src.header.binaryblock
    np.testing.assert_array_equal(np.asanyarray(dst.dataobj), voxels)
    # a result of another dtype made in patient space (e.g. denoised) lands voxel for voxel
    result = np.asarray(vol.data, dtype=np.float32) * 0.5
    out = write_volume(tmp_path / f"f{suffix}", result, like=vol)
    assert np.array_equal(nib.load(out).affine, src.affine)
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), voxels * np.float32(0.5))


def test_nifti_without_orientation_keeps_the_voxel_grid(tmp_path, voxels):
    """qform_code = sform_code = 0: no patient orientation to honour (the spec's method 1)."""
    img = nib.Nifti1Image(voxels, None)
    img.header.set_zooms(ZOOMS)
    assert int(img.header["qform_code"]) == int(img.header["sform_code"]) == 0
    nib.save(img, tmp_path / "plain.nii")
    vol = read_volume(tmp_path / "plain.nii", lazy=False)
    assert "patient_space" not in vol.meta and vol.direction is None
    np.testing.assert_array_equal(vol.data, voxels.T)  # voxel axes reversed, nothing else
    assert vol.spacing == pytest.approx(ZOOMS[::-1], rel=1e-6)


def test_tiff_and_zarr_data_written_to_nifti_come_back_in_place(tmp_path, voxels):
    """A volume with only spacing and origin (from a TIFF) is written in the LPS world, so
    reading the NIfTI back gives the same array, spacing and origin (as ITK writes NIfTI)."""
    data = np.ascontiguousarray(voxels.T)
    out = write_volume(tmp_path / "t.nii.gz", data, spacing=(2.0, 0.5, 0.25), origin=(4.0, -3.0, 9.0),
                       units="mm")
    vol = read_volume(out, lazy=False)
    np.testing.assert_array_equal(vol.data, data)
    assert vol.spacing == (2.0, 0.5, 0.25) and vol.origin == (4.0, -3.0, 9.0) and vol.direction is None
    assert nib.aff2axcodes(nib.load(out).affine) == ("L", "P", "S")


def test_super_resolved_result_keeps_the_affine_columns_it_should(tmp_path, voxels):
    """×2 finer in-plane on an LIA file: the voxel columns that are in-plane on screen (i: L/R
    and k: A/P) are halved, j (I/S) is not, and the file's voxel 0 stays put."""
    src_path = _nifti(tmp_path / "lia.nii.gz", voxels, ORIENTATIONS["LIA"])
    vol = read_volume(src_path, orient=True)
    assert vol.data.shape == (40, 6, 56)  # (S<-j, P<-k, L<-i)
    sp = (vol.spacing[0], vol.spacing[1] / 2, vol.spacing[2] / 2)
    sr = np.zeros((40, 12, 112), np.float32)
    out = write_volume(tmp_path / "sr.nii.gz", sr, like=vol, spacing=sp)
    aff, src = nib.load(out).affine, nib.load(src_path).affine
    np.testing.assert_allclose(aff[:3, :3], src[:3, :3] @ np.diag([0.5, 1.0, 0.5]), rtol=1e-6)
    np.testing.assert_allclose(aff[:3, 3], src[:3, 3])
    assert nib.load(out).shape == (112, 40, 12)


# ---- DICOM ---------------------------------------------------------------------------------


def _oriented_series(folder, raw, row_cos, col_cos, origin=(-120.0, -110.0, -50.0)):
    """Slices of ``raw`` at IPP = origin + k · step · (row × col), in LPS."""
    folder.mkdir(parents=True, exist_ok=True)
    normal = np.cross(row_cos, col_cos)
    for k in range(len(raw)):
        ipp = np.asarray(origin) + k * CT_SPACING[0] * normal
        _write_dcm(folder / f"IM{k:04d}.dcm", raw[k], position=tuple(ipp),
                   orientation=tuple(float(v) for v in (*row_cos, *col_cos)), instance=k + 1)
    return normal


SERIES = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
    # DICOM decimal strings hold 16 characters: cosines to 8 decimals
    "oblique": (tuple(np.round(_rot(2, 20.0) @ [1, 0, 0], 8)),
                tuple(np.round(_rot(2, 20.0) @ _rot(0, 15.0) @ [0, 1, 0], 8))),
}


@pytest.mark.parametrize("name", list(SERIES))
def test_dicom_voxels_sit_at_their_patient_position(tmp_path, name):
    raw = _ct_raw(4)  # (slice, row, column)
    row_cos, col_cos = (np.asarray(v, dtype=float) for v in SERIES[name])
    normal = _oriented_series(tmp_path / name, raw, row_cos, col_cos)
    vol = read_volume(tmp_path / name, lazy=False, orient=True)
    # patient position of pixel (column c, row r) of slice k, from the tags' definition
    k, r, c = np.indices(raw.shape).reshape(3, -1)
    lps = (np.array([-120.0, -110.0, -50.0]) + np.outer(c * CT_SPACING[2], row_cos)
           + np.outer(r * CT_SPACING[1], col_cos) + np.outer(k * CT_SPACING[0], normal))
    # ImagePositionPatient is stored with 4 decimals
    _check_voxels_at(vol, _lps_to_world(lps), raw.reshape(-1).astype(np.int16) - 1024, atol=2e-3)
    w = world_matrix(vol.spacing, vol.origin, vol.direction)[:3, :3]
    assert (np.abs(w).argmax(axis=0) == [0, 1, 2]).all() and (np.diag(w) > 0).all()
    if name == "axial":  # most series: already facing the world, nothing turned
        assert vol.meta["reorient"] == {"perm": [0, 1, 2], "flip": [False, False, False]}
    # to NIfTI: nibabel puts every voxel where the DICOM tags put it (RAS = LPS with x, y negated)
    out = write_volume(tmp_path / f"{name}.nii.gz", vol.data, like=vol)
    img = nib.load(out)
    assert int(img.header["sform_code"]) == 1  # scanner
    back = read_volume(out, lazy=False)
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(world_matrix(back.spacing, back.origin, back.direction),
                               world_matrix(vol.spacing, vol.origin, vol.direction), atol=1e-4)


# ---- the display convention ------------------------------------------------------------------


def test_views_and_edge_letters():
    # axial, radiological (napari's default camera): anterior at the top, the patient's right
    # on the screen's left
    assert view_axes("axial") == (0, 1, 2)
    assert camera_orientation("axial") == ("down", "right")
    assert edge_labels(1, 2, ("down", "right")) == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert edge_labels(1, 2, camera_orientation("axial", "neurological"))["left"] == "L"
    # coronal and sagittal: superior at the top; sagittal has anterior on the left
    _, v, h = view_axes("coronal")
    assert edge_labels(v, h, camera_orientation("coronal")) == {"top": "S", "bottom": "I", "left": "R", "right": "L"}
    assert edge_labels(v, h, camera_orientation("coronal", "neurological"))["left"] == "L"
    _, v, h = view_axes("sagittal")
    for convention in ("radiological", "neurological"):
        assert edge_labels(v, h, camera_orientation("sagittal", convention)) == {
            "top": "S", "bottom": "I", "left": "A", "right": "P"}
    assert view_of(2, 0) == "coronal" and view_of(0, 1) == "sagittal" and view_of(1, 1) is None
    with pytest.raises(ValueError, match="unknown view"):
        view_axes("oblique")
    with pytest.raises(ValueError, match="unknown convention"):
        camera_orientation("axial", "upside-down")


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")
def test_napari_shows_patient_space_with_letters_and_keeps_it_in_results(
        make_napari_viewer, tmp_path, voxels):
    from napari_medenhance._widgets._layers import transform_kwargs
    from napari_medenhance._widgets.orientation_widget import (
        OrientationWidget, current_edge_labels, set_labels_visible, set_view)

    viewer = make_napari_viewer()
    src_path = _nifti(tmp_path / "lia.nii.gz", voxels, ORIENTATIONS["oblique LIA"])
    (layer,) = viewer.open(src_path, plugin="napari-medenhance")
    affine = nib.load(src_path).affine
    # napari's own data -> world puts file voxel (i, j, k) at its scanner position
    vol = read_volume(src_path, lazy=False, orient=True)
    world = _world_of_voxels(vol)[0]
    for ijk in ((0, 0, 0), (55, 39, 5), (13, 21, 2)):
        lps = nib.affines.apply_affine(affine, ijk) * [-1, -1, 1]
        (flat,) = np.flatnonzero(np.isclose(world, _lps_to_world(lps), atol=1e-4).all(axis=1))
        index = np.unravel_index(flat, vol.data.shape)
        np.testing.assert_allclose(layer.data_to_world(index), _lps_to_world(lps), atol=1e-4)
        assert np.asarray(layer.data)[tuple(index)] == voxels[ijk]

    overlays = viewer.canvas.overlays
    texts = {edge: overlays[f"medenhance_orientation_{edge}"].text for edge in ("top", "bottom", "left", "right")}
    assert texts == {"top": "A", "bottom": "P", "left": "R", "right": "L"}  # radiological axial
    set_view(viewer, "coronal")
    assert tuple(viewer.dims.order) == (1, 0, 2) and current_edge_labels(viewer)["top"] == "S"
    assert overlays["medenhance_orientation_left"].text == "R"
    set_view(viewer, "axial", "neurological")
    assert overlays["medenhance_orientation_left"].text == "L"
    set_labels_visible(viewer, False)
    assert not overlays["medenhance_orientation_left"].visible
    set_labels_visible(viewer, True)
    viewer.dims.ndisplay = 3
    assert not overlays["medenhance_orientation_top"].visible  # letters are 2-D only
    viewer.dims.ndisplay = 2
    widget = OrientationWidget(viewer)
    widget.buttons["sagittal"].click()
    assert tuple(viewer.dims.order) == (2, 0, 1) and overlays["medenhance_orientation_left"].text == "A"

    # a derived layer (what the widgets add) overlays exactly and is saved where it is shown
    result = viewer.add_image(np.asarray(layer.data, dtype=np.float32) * 2, name="result",
                              **transform_kwargs(layer))
    for index in ((0, 0, 0), (20, 3, 40)):
        np.testing.assert_allclose(result.data_to_world(index), layer.data_to_world(index), atol=1e-9)
    viewer.layers.selection = {result}
    viewer.layers.save(str(tmp_path / "result.nii.gz"), selected=True, plugin="napari-medenhance")
    saved = read_volume(tmp_path / "result.nii.gz", lazy=False)
    np.testing.assert_array_equal(saved.data, np.asarray(result.data))
    np.testing.assert_allclose(world_matrix(saved.spacing, saved.origin, saved.direction),
                               world_matrix(vol.spacing, vol.origin, vol.direction), atol=1e-5)
    # and the source layer itself saves back to the file, bit for bit
    viewer.layers.selection = {layer}
    viewer.layers.save(str(tmp_path / "same.nii.gz"), selected=True, plugin="napari-medenhance")
    assert nib.load(tmp_path / "same.nii.gz").header.binaryblock == nib.load(src_path).header.binaryblock


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")
@pytest.mark.parametrize("name", ["LAS", "LIA", "oblique LIA"])
def test_sr_roi_on_a_turned_volume_lands_at_scanner_positions(tmp_path, voxels, name):
    """An ROI drawn in world on an axial plane of a turned (and oblique) volume gives the
    pixels under it, and its ×4 output pixels sit at the scanner positions of the sub-voxel
    points they stand for (by nibabel, from the file's own affine)."""
    from napari.layers import Image
    from napari.utils.transforms import CompositeAffine

    from napari_medenhance._io_napari import layer_data
    from napari_medenhance.core.io.patient import Reorientation
    from napari_medenhance.core.roi import ROI, roi_output_affine, rois_from_shapes

    path = _nifti(tmp_path / "v.nii.gz", voxels, ORIENTATIONS[name])
    vol = read_volume(path, orient=True)
    data, kwargs, _ = layer_data(vol)
    layer = Image(data, **{k: v for k, v in kwargs.items()
                           if k in ("scale", "translate", "rotate", "affine")})
    lin = CompositeAffine(scale=layer.scale, translate=layer.translate, rotate=layer.rotate,
                          shear=layer.shear, ndim=3)
    i2w = np.asarray(layer.affine.affine_matrix) @ lin.affine_matrix
    plane, roi, f = 3, ROI(2, 5, 10, 30), 4
    edges = np.array([[plane, y, x] for y, x in ((1.5, 9.5), (1.5, 29.5), (4.5, 29.5), (4.5, 9.5))])
    drawn = (i2w @ np.c_[edges, np.ones(4)].T).T[:, :3]  # a 3-D Shapes layer, no transform
    (got,) = rois_from_shapes([drawn], data.shape[1:], shapes_to_world=np.eye(4), image_to_world=i2w)
    assert got == roi
    o2w = roi_output_affine(i2w, roi, f, offset=(plane,))
    turned = Reorientation.from_meta(vol.meta["reorient"])
    to_natural = turned.index_matrix(voxels.shape[::-1])  # data index -> (k, j, i)
    affine = nib.load(path).affine
    for i, j in ((0, 0), (f * 3 - 1, f * 20 - 1), (5, 37)):
        world = (o2w @ [0, i, j, 1])[:3]
        src = [plane, roi.y0 - 0.5 + (i + 0.5) / f, roi.x0 - 0.5 + (j + 0.5) / f, 1]
        kji = (to_natural @ src)[:3]
        ras = nib.affines.apply_affine(affine, kji[::-1])
        np.testing.assert_allclose(world, _lps_to_world(ras * [-1, -1, 1]), atol=1e-4)


def test_4d_volume_turns_its_spatial_axes_only_and_writes_back(tmp_path, voxels):
    """(i, j, k, t) LIA: the time axis stays first, the three spatial axes turn as in 3-D."""
    series = np.stack([voxels, voxels[::-1] // 2, voxels // 3], axis=-1)  # (i, j, k, t)
    affine = ORIENTATIONS["LIA"]
    img = nib.Nifti1Image(np.asfortranarray(series), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_zooms((*ZOOMS, 2.5))
    nib.save(img, tmp_path / "t.nii.gz")
    vol = read_volume(tmp_path / "t.nii.gz", lazy=False, orient=True)
    three = read_volume(_nifti(tmp_path / "v.nii.gz", voxels, affine), lazy=False, orient=True)
    assert vol.data.shape == (3, *three.data.shape) and vol.axis_labels == ("t", "z", "y", "x")
    assert vol.spacing == (2.5, *three.spacing) and vol.origin[1:] == pytest.approx(three.origin)
    np.testing.assert_array_equal(vol.data[0], three.data)
    out = write_volume(tmp_path / "copy.nii.gz", vol.data, like=vol)
    assert nib.load(out).header.binaryblock == nib.load(tmp_path / "t.nii.gz").header.binaryblock
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), series)
