"""ROI geometry (``core.roi``): Shapes / Labels → image pixel boxes across layer transforms, the
planes of a stack, and the world placement of an ROI's super-resolved output.

napari's own layers (no viewer, no Qt) are the reference for data→world: every matrix used here
is first checked against ``layer.data_to_world``.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels
from napari.utils.transforms import CompositeAffine

from napari_medenhance.core.roi import (
    ROI,
    check_roi,
    roi_output_affine,
    rois_from_labels,
    rois_from_shapes,
    select_planes,
)

SCALE = (0.7, 0.5)  # anisotropic, mm
TRANSLATE = (10.0, -5.0)
ROTATE = 30.0  # degrees


def _matrix(layer) -> np.ndarray:
    """Homogeneous data→world matrix of a napari layer, checked against napari itself."""
    lin = CompositeAffine(scale=layer.scale, translate=layer.translate, rotate=layer.rotate,
                          shear=layer.shear, ndim=layer.ndim)
    m = np.asarray(layer.affine.affine_matrix) @ lin.affine_matrix
    rng = np.random.default_rng(0)
    for p in rng.uniform(-50, 50, size=(5, layer.ndim)):
        np.testing.assert_allclose(m @ np.append(p, 1.0), np.append(layer.data_to_world(p), 1.0),
                                   atol=1e-9)
    return m


def _apply(m: np.ndarray, pts) -> np.ndarray:
    pts = np.atleast_2d(np.asarray(pts, dtype=float))
    return (m @ np.hstack([pts, np.ones((len(pts), 1))]).T).T[:, :-1]


def _inv(m: np.ndarray, pts) -> np.ndarray:
    return _apply(np.linalg.inv(m), pts)


@pytest.fixture
def image() -> Image:
    return Image(np.zeros((60, 80), np.float32), scale=SCALE, translate=TRANSLATE, rotate=ROTATE)


def _edges(y0, y1, x0, x1):
    """The four pixel-edge corners of the box [y0, y1) × [x0, x1) in data coordinates."""
    return np.array([[y0 - 0.5, x0 - 0.5], [y0 - 0.5, x1 - 0.5], [y1 - 0.5, x1 - 0.5],
                     [y1 - 0.5, x0 - 0.5]])


# ------------------------------------------------------------------------------ shapes


def test_shapes_in_their_own_coordinates_map_to_the_image_pixels(image):
    """A region drawn on pixel edges of a scaled, translated, rotated image, stored in a Shapes
    layer with a different transform, comes back as exactly those pixels."""
    shapes = Image(np.zeros((2, 2)), scale=(2.0, 1.5), translate=(3.0, 4.0))  # any layer's transform
    s2w, i2w = _matrix(shapes), _matrix(image)
    boxes = [(10, 30, 20, 50), (0, 5, 70, 80)]
    data = [_inv(s2w, _apply(i2w, _edges(*b))) for b in boxes]  # polygons in shapes-data
    rois = rois_from_shapes(data, (60, 80), shapes_to_world=s2w, image_to_world=i2w,
                            shape_types=["polygon", "rectangle"])
    assert [r.as_tuple() for r in rois] == boxes
    # a region inside one pixel is that pixel; one across pixel centres takes every pixel touched
    inner = _inv(s2w, _apply(i2w, [[12.1, 22.2], [12.3, 22.4]]))
    across = _inv(s2w, _apply(i2w, [[9.8, 19.9], [30.2, 49.6]]))
    got = rois_from_shapes([inner, across], (60, 80), shapes_to_world=s2w, image_to_world=i2w)
    assert [r.as_tuple() for r in got] == [(12, 13, 22, 23), (10, 31, 20, 51)]


def test_shapes_are_clipped_and_outside_or_lineal_shapes_refused(image):
    i2w = _matrix(image)
    eye = np.eye(3)
    world = _apply(i2w, _edges(-5, 10, 70, 95))  # sticks out at the top and the right
    (roi,) = rois_from_shapes([world], (60, 80), shapes_to_world=eye, image_to_world=i2w)
    assert roi.as_tuple() == (0, 10, 70, 80)
    far = _apply(i2w, _edges(100, 120, 0, 10))
    with pytest.raises(ValueError, match="shape 2 .*outside the image"):
        rois_from_shapes([world, far], (60, 80), shapes_to_world=eye, image_to_world=i2w)
    with pytest.raises(ValueError, match="shape 1 is a line"):
        rois_from_shapes([world[:2]], (60, 80), shapes_to_world=eye, image_to_world=i2w,
                         shape_types=["line"])
    with pytest.raises(ValueError, match="no shapes"):
        rois_from_shapes([], (60, 80), shapes_to_world=eye, image_to_world=i2w)


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")
def test_2d_shapes_over_a_3d_image():
    """A 2-D ROI layer maps onto a 3-D image when Z does not mix into Y and X (the usual
    anisotropic stack), and is refused with a reason when a 3-D rotation mixes them."""
    stack = Image(np.zeros((5, 60, 80)), scale=(2.0, *SCALE), translate=(7.0, *TRANSLATE))
    i2w = _matrix(stack)
    world_yx = _apply(i2w, np.c_[np.full(4, 3.0), _edges(10, 30, 20, 50)])[:, 1:]
    (roi,) = rois_from_shapes([world_yx], (60, 80), shapes_to_world=np.eye(3), image_to_world=i2w)
    assert roi.as_tuple() == (10, 30, 20, 50)
    tilted = Image(np.zeros((5, 60, 80)), scale=(2.0, *SCALE), rotate=(0.0, 20.0, 0.0))
    with pytest.raises(ValueError, match="mixes its leading axes into Y and X"):
        rois_from_shapes([world_yx], (60, 80), shapes_to_world=np.eye(3),
                         image_to_world=_matrix(tilted))
    # a 3-D ROI layer over the tilted stack is fine: every vertex has its Z
    v3 = _apply(_matrix(tilted), np.c_[np.full(4, 2.0), _edges(10, 30, 20, 50)])
    (roi,) = rois_from_shapes([v3], (60, 80), shapes_to_world=np.eye(4),
                              image_to_world=_matrix(tilted))
    assert roi.as_tuple() == (10, 30, 20, 50)


# ------------------------------------------------------------------------------ labels


def test_labels_boxes_with_margin_and_their_own_transform(image):
    """A half-resolution Labels layer over the rotated image: label pixel i is centred on image
    pixel 2i, so its edges fall on image pixel centres and the ROI takes the half-covered
    pixels too (every pixel the label's box overlaps), then the margin, then the clip."""
    lab = np.zeros((30, 40), np.uint8)
    lab[5:10, 8:12] = 1
    lab[0:2, 37:40] = 3  # at the corner: the margin is clipped
    labels = Labels(lab, scale=(2 * SCALE[0], 2 * SCALE[1]), translate=TRANSLATE, rotate=ROTATE)
    l2w, i2w = _matrix(labels), _matrix(image)
    np.testing.assert_allclose(_inv(i2w, _apply(l2w, [[5.0, 8.0]])), [[10.0, 16.0]], atol=1e-9)
    got = rois_from_labels(lab, (60, 80), labels_to_world=l2w, image_to_world=i2w, margin=3)
    # rows 5..9 → image edges 9 .. 19 → pixels 9 .. 19; cols 8..11 → edges 15 .. 23
    assert got == [(1, ROI(9 - 3, 20 + 3, 15 - 3, 24 + 3)), (3, ROI(0, 7, 70, 80))]
    with pytest.raises(ValueError, match="no labelled pixels"):
        rois_from_labels(np.zeros_like(lab), (60, 80), labels_to_world=l2w, image_to_world=i2w)
    with pytest.raises(ValueError, match="margin"):
        rois_from_labels(lab, (60, 80), labels_to_world=l2w, image_to_world=i2w, margin=-1)
    far = Labels(lab, translate=(500.0, 0.0))
    with pytest.raises(ValueError, match="label 1 .*outside the image"):
        rois_from_labels(lab, (60, 80), labels_to_world=_matrix(far), image_to_world=i2w)


def test_3d_labels_one_plane_or_all():
    lab = np.zeros((4, 30, 40), np.int32)
    lab[1, 5:10, 5:10] = 2
    lab[3, 20:25, 30:35] = 2
    eye = np.eye(4)
    (only,) = rois_from_labels(lab, (30, 40), labels_to_world=eye, image_to_world=eye, index=(1,))
    assert only == (2, ROI(5, 10, 5, 10))
    (both,) = rois_from_labels(lab, (30, 40), labels_to_world=eye, image_to_world=eye)
    assert both == (2, ROI(5, 25, 5, 35))
    with pytest.raises(ValueError, match="plane \\(0,\\)"):
        rois_from_labels(lab, (30, 40), labels_to_world=eye, image_to_world=eye, index=(0,))


# ------------------------------------------------------------------------------ boxes, planes


def test_check_roi_clips_and_explains():
    assert check_roi((-3, 5, 10, 500), (60, 80)) == ROI(0, 5, 10, 80)
    assert check_roi(np.array([1.0, 3.0, 2.0, 4.0]), (60, 80)) == ROI(1, 3, 2, 4)
    with pytest.raises(ValueError, match="empty"):
        check_roi((5, 5, 0, 10), (60, 80))
    with pytest.raises(ValueError, match="outside the image.*\\[0, 60\\) × \\[0, 80\\)"):
        check_roi((60, 70, 0, 10), (60, 80))
    with pytest.raises(ValueError, match="four integers"):
        check_roi((0.5, 3, 0, 4), (60, 80))
    with pytest.raises(ValueError, match="y0, y1, x0, x1"):
        check_roi("abc", (60, 80))


def test_select_planes():
    assert select_planes((), "range") == ((), ())
    assert select_planes((10,), "all") == ((slice(None),), (0,))
    assert select_planes((10,), "current", (4,)) == ((slice(4, 5),), (4,))
    assert select_planes((3, 10), "range", (1, 4), 2, 7) == ((slice(1, 2), slice(2, 7)), (1, 2))
    with pytest.raises(ValueError, match="0 <= start < stop <= 10"):
        select_planes((10,), "range", (4,), 5, 11)
    with pytest.raises(ValueError, match="current plane"):
        select_planes((10,), "current", (10,))
    with pytest.raises(ValueError, match="unknown plane mode"):
        select_planes((10,), "some")


# ------------------------------------------------------------------------------ placement


@pytest.mark.parametrize("factor", [2, 4])
def test_output_pixels_lie_exactly_over_the_roi_in_world(image, factor):
    """Under anisotropic scale, translate and rotation: every output pixel centre is at the
    world position of source data (y0 - 0.5 + (i + 0.5)/f, x0 - 0.5 + (j + 0.5)/f), and the
    output's outer pixel corners are the ROI's outer pixel corners."""
    roi = ROI(11, 24, 30, 47)
    i2w = _matrix(image)
    out = Image(np.zeros((factor * 13, factor * 17)), affine=roi_output_affine(i2w, roi, factor))
    o2w = _matrix(out)
    ii, jj = np.meshgrid(np.arange(factor * 13), np.arange(factor * 17), indexing="ij")
    centres = np.c_[ii.ravel(), jj.ravel()].astype(float)
    src = np.c_[roi.y0 - 0.5 + (centres[:, 0] + 0.5) / factor, roi.x0 - 0.5 + (centres[:, 1] + 0.5) / factor]
    np.testing.assert_allclose(_apply(o2w, centres), _apply(i2w, src), atol=1e-9)
    out_corners = _edges(0, factor * 13, 0, factor * 17)
    np.testing.assert_allclose(_apply(o2w, out_corners), _apply(i2w, _edges(*roi.as_tuple())),
                               atol=1e-9)
    # and the same through napari's own layer objects
    np.testing.assert_allclose(out.data_to_world((-0.5, -0.5)), image.data_to_world((10.5, 29.5)),
                               atol=1e-9)
    # one output pixel is 1/f of a source pixel in world, along each (rotated) axis
    step = np.linalg.norm(_apply(o2w, [[1, 0]]) - _apply(o2w, [[0, 0]]))
    assert step == pytest.approx(SCALE[0] / factor)


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")
def test_placement_with_shear_affine_and_planes():
    """Exact for any source transform (shear and an extra affine included), and the leading
    offset puts output plane k on source plane z0 + k."""
    extra = np.eye(4)
    extra[1:3, 1:3] = [[0.9, 0.2], [-0.1, 1.1]]
    extra[:3, 3] = [1.0, -2.0, 3.0]
    src = Image(np.zeros((6, 40, 50)), scale=(3.0, *SCALE), translate=(2.0, *TRANSLATE),
                rotate=(ROTATE, 0, 0), shear=(0.0, 0.0, 0.3), affine=extra)
    i2w = _matrix(src)
    roi, f = ROI(5, 15, 20, 32), 4
    out = Image(np.zeros((3, 40, 48)), affine=roi_output_affine(i2w, roi, f, offset=(2,)))
    o2w = _matrix(out)
    for k in range(3):
        for i, j in ((0, 0), (39, 47), (17, 5)):
            expect = src.data_to_world((2 + k, roi.y0 - 0.5 + (i + 0.5) / f, roi.x0 - 0.5 + (j + 0.5) / f))
            np.testing.assert_allclose(out.data_to_world((k, i, j)), expect, atol=1e-9)
    with pytest.raises(ValueError, match="offset needs 1"):
        roi_output_affine(i2w, roi, f, offset=(1, 2))


# ------------------------------------------------------------------------------ flips, permutations

# In-plane flips and axis swaps, as a file's voxel grid can have them relative to the world
# (rows running right to left, columns running from the feet...). Each is applied after the
# anisotropic scale and before the translate.
FLIPS_AND_PERMUTATIONS = {
    "flip y": [[-1, 0], [0, 1]],
    "flip x": [[1, 0], [0, -1]],
    "flip both": [[-1, 0], [0, -1]],
    "swap y and x": [[0, 1], [1, 0]],
    "swap and flip": [[0, -1], [1, 0]],
    "swap and flip both": [[0, -1], [-1, 0]],
}


def _flipped_image(name: str, shape=(60, 80)) -> Image:
    aff = np.eye(3)
    aff[:2, :2] = np.asarray(FLIPS_AND_PERMUTATIONS[name], dtype=float) @ np.diag(SCALE)
    aff[:2, 2] = TRANSLATE
    return Image(np.zeros(shape, np.float32), affine=aff)


@pytest.mark.parametrize("name", list(FLIPS_AND_PERMUTATIONS))
@pytest.mark.parametrize("factor", [2, 4])
def test_rois_and_outputs_under_flips_and_permutations(name, factor):
    """A region drawn in world over the pixel edges of a flipped or axis-swapped image gives
    exactly those pixels, and the SR output of the ROI lies exactly over them: every output
    pixel centre at its source sub-pixel position, the outer corners on the ROI's corners."""
    image = _flipped_image(name)
    i2w = _matrix(image)
    roi = ROI(11, 24, 30, 47)
    drawn = _apply(i2w, _edges(*roi.as_tuple()))  # a Shapes layer with no transform: world
    (got,) = rois_from_shapes([drawn], (60, 80), shapes_to_world=np.eye(3), image_to_world=i2w,
                              shape_types=["rectangle"])
    assert got == roi
    out = Image(np.zeros((factor * 13, factor * 17)), affine=roi_output_affine(i2w, roi, factor))
    o2w = _matrix(out)
    ii, jj = np.meshgrid(np.arange(factor * 13), np.arange(factor * 17), indexing="ij")
    centres = np.c_[ii.ravel(), jj.ravel()].astype(float)
    src = np.c_[roi.y0 - 0.5 + (centres[:, 0] + 0.5) / factor,
                roi.x0 - 0.5 + (centres[:, 1] + 0.5) / factor]
    np.testing.assert_allclose(_apply(o2w, centres), _apply(i2w, src), atol=1e-9)
    np.testing.assert_allclose(_apply(o2w, _edges(0, factor * 13, 0, factor * 17)),
                               _apply(i2w, _edges(*roi.as_tuple())), atol=1e-9)
    # the output is flipped / swapped like its source: its first row runs where the ROI's does
    np.testing.assert_allclose(out.data_to_world((0, 0)), image.data_to_world(src[0]), atol=1e-9)


@pytest.mark.parametrize("name", list(FLIPS_AND_PERMUTATIONS))
def test_labels_and_planes_under_flips_and_permutations(name):
    """A half-resolution Labels layer that is *not* flipped, over a stack whose slices run
    towards the feet and whose planes are flipped or swapped: each label pixel covers 2×2 image
    pixels, so the ROI is exactly the image pixels under the label's box, and the output of
    plane 4 lies exactly on image plane 4."""
    flip = np.asarray(FLIPS_AND_PERMUTATIONS[name], dtype=float)
    iso = 0.6  # a swap maps rows to columns: whole pixels only line up when they are square
    plane = np.eye(4)
    plane[1:3, 1:3] = flip * iso
    plane[0, 0] = -2.5  # slices run towards the feet
    plane[:3, 3] = (40.0, *TRANSLATE)
    stack = Image(np.zeros((6, 60, 80), np.float32), affine=plane)
    i2w = _matrix(stack)
    # labels -> image index: z kept, (a, b) -> 2·flip⁻¹·(a, b) + shift, half-integer shifts so
    # that label pixel edges fall on image pixel edges, and reversed axes start at the far end
    g = np.eye(4)
    g[1:3, 1:3] = 2 * np.linalg.inv(flip)
    g[1:3, 3] = [size - 1.5 if row.sum() < 0 else 0.5 for row, size in zip(g[1:3, 1:3], (60, 80))]
    labels = Labels(np.zeros((6, 30, 30), np.uint8), affine=i2w @ g)
    l2w = _matrix(labels)
    assert np.allclose(np.diag(l2w)[1:3], 2 * iso)  # the labels' plane is not flipped in world
    lab = np.zeros((6, 30, 30), np.uint8)
    lab[4, 10:15, 3:6] = 7
    ((value, roi),) = rois_from_labels(lab, (60, 80), labels_to_world=l2w, image_to_world=i2w,
                                       index=(4,))
    edges = (g @ np.c_[np.full(4, 4.0), _edges(10, 15, 3, 6), np.ones(4)].T).T[:, 1:3]
    lo, hi = edges.min(axis=0), edges.max(axis=0)
    assert value == 7
    assert roi.as_tuple() == (int(lo[0] + 0.5), int(hi[0] + 0.5), int(lo[1] + 0.5), int(hi[1] + 0.5))
    assert roi.shape in ((10, 6), (6, 10))  # 5 × 3 label pixels, each 2 × 2 image pixels
    index, offset = select_planes((6,), "current", current=(4,))
    out = Image(np.zeros((1, 4 * roi.shape[0], 4 * roi.shape[1])),
                affine=roi_output_affine(i2w, roi, 4, offset=offset))
    for i, j in ((0, 0), (4 * roi.shape[0] - 1, 4 * roi.shape[1] - 1), (13, 8)):
        expect = stack.data_to_world((4, roi.y0 - 0.5 + (i + 0.5) / 4, roi.x0 - 0.5 + (j + 0.5) / 4))
        np.testing.assert_allclose(out.data_to_world((0, i, j)), expect, atol=1e-9)
