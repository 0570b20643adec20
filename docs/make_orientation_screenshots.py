"""Screenshots of a real brain volume in patient space: axial, coronal and sagittal, labelled.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_orientation_screenshots.py

Opens the Colin27 T1 volume (``ch2.nii.gz``, RAS, 1 mm; fetched by
``training/fetch_mricron.py``) through the plugin's reader, and the same voxels re-saved as a
FreeSurfer-style LIA file (voxel axes transposed and flipped, the affine changed to match:
every voxel keeps its scanner position). For each file it shows the three views with the
Orientation widget's ``set_view`` (radiological convention) and grabs the canvas with its
orientation letters; then the axial view again in the neurological convention. The panels are
put together, one row per file, a caption on each, into ``docs/screenshot-orientation.png``,
and a whole-window screenshot with the Orientation widget docked into
``docs/screenshot-orientation-window.png``. Both rows must look the same: that is the point.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
from _screens import caption, settle  # noqa: E402
DOCS = ROOT / "docs"
PLUGIN = "napari-medenhance"


def _ch2() -> Path:
    sys.path.insert(0, str(ROOT / "training"))
    from fetch_mricron import template

    return template("ch2")


def _as_lia(src: Path, dst: Path) -> Path:
    """The voxels of ``src`` (RAS) in FreeSurfer's LIA layout, at the same scanner positions."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    img = nib.load(src)
    to_lia = ornt_transform(io_orientation(img.affine), axcodes2ornt("LIA"))
    data = nib.orientations.apply_orientation(np.asanyarray(img.dataobj), to_lia)
    affine = img.affine @ inv_ornt_aff(to_lia, img.shape)
    out = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    out.header.set_qform(affine, code=1)
    out.header.set_sform(affine, code=1)
    nib.save(out, dst)
    assert nib.aff2axcodes(nib.load(dst).affine) == ("L", "I", "A")
    return dst


def main() -> None:
    import napari
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from napari_medenhance._widgets.orientation_widget import OrientationWidget, set_view

    ch2 = _ch2()
    tmp = Path(tempfile.mkdtemp(prefix="medenhance-orient-"))
    lia = _as_lia(ch2, tmp / "ch2_LIA.nii.gz")
    rows = []
    for path, label in ((ch2, "ch2 (RAS file)"), (lia, "ch2 as LIA file")):
        viewer = napari.Viewer(show=True)
        viewer.window.resize(900, 860)
        (layer,) = viewer.open(path, plugin=PLUGIN)
        layer.contrast_limits = (0, 110)
        app = QApplication.instance()
        settle(app)
        panels = []
        for view, convention, dims_point in (
            ("axial", "radiological", 18.0),   # world z = 18 mm (superior)
            ("coronal", "radiological", -10.0),  # world y = -10 mm (anterior of the origin)
            ("sagittal", "radiological", 12.0),  # world x = 12 mm (patient's left)
            ("axial", "neurological", 18.0),
        ):
            set_view(viewer, view, convention)
            axis = {"axial": 0, "coronal": 1, "sagittal": 2}[view]
            viewer.dims.set_point(axis, dims_point)
            viewer.reset_view()
            settle(app)
            shot = viewer.screenshot(canvas_only=True, flash=False)
            where = {"axial": f"z = {dims_point:g} mm", "coronal": f"y = {dims_point:g} mm",
                     "sagittal": f"x = {dims_point:g} mm"}[view]
            panels.append(caption(shot, f"{label}: {view}, {where}, {convention}"))
        h = max(p.shape[0] for p in panels)
        rows.append(np.concatenate([np.pad(p, ((0, h - p.shape[0]), (0, 6), (0, 0)))
                                    for p in panels], axis=1))
        if path == ch2:
            widget = OrientationWidget(viewer)
            viewer.window.add_dock_widget(widget, name="Orientation", area="right")
            viewer.window.resize(1500, 950)
            widget.show_view("coronal")
            viewer.dims.set_point(1, -10.0)
            viewer.reset_view()
            settle(app, 40)
            Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(
                DOCS / "screenshot-orientation-window.png")
        viewer.close()
    w = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 6), (0, w - r.shape[1]), (0, 0))) for r in rows])
    out = Image.fromarray(sheet)
    out.thumbnail((2400, 2400))
    out.save(DOCS / "screenshot-orientation.png", optimize=True)
    print(DOCS / "screenshot-orientation.png", out.size)


if __name__ == "__main__":
    main()
