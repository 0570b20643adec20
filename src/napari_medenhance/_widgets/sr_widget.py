"""Super-resolve ROI dock widget: lesion-focused super-resolution of the regions drawn in a
Shapes layer or painted in a Labels layer.

The model picker, Browse…, device, tile, Run / Cancel and the progress bar are the shared
:class:`~._run_widget.RunModelWidget`'s; this widget adds the ROI layer, the factor and the
planes, turns the ROI layer into pixel boxes with :mod:`napari_medenhance.core.roi`, runs
:func:`napari_medenhance.api.iter_super_resolve` and adds one layer per ROI,
``<image> [SR ×f, ROI k]``, whose ``affine`` is the source's data→world matrix composed with the
ROI's scale 1/f and translate (``core.roi.roi_output_affine``), so the output lies exactly on
the ROI for any source scale, translate, rotate, shear and affine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, SpinBox
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils.transforms import CompositeAffine
from qtpy.QtWidgets import QPushButton

from napari_medenhance.api import iter_super_resolve
from napari_medenhance.core import tasks, zoo
from napari_medenhance.core.roi import (
    ROI,
    roi_output_affine,
    rois_from_labels,
    rois_from_shapes,
    select_planes,
)

from ._layers import current_plane_index, plane_axes, surface_runtime_errors
from ._run_widget import Job, RunModelWidget

if TYPE_CHECKING:
    import napari

FACTORS = (("×2", 2), ("×4", 4))


def data_to_world_matrix(layer: napari.layers.Layer) -> np.ndarray:
    """A layer's homogeneous data→world matrix, ``(ndim+1)²``: napari's
    ``affine ∘ (translate + rotate·shear·scale·d)`` from its public transform attributes."""
    linear = CompositeAffine(scale=layer.scale, translate=layer.translate, rotate=layer.rotate,
                             shear=layer.shear, ndim=layer.ndim)
    return np.asarray(layer.affine.affine_matrix, dtype=float) @ linear.affine_matrix


class SuperResolveWidget(RunModelWidget):
    """Dock widget: super-resolve the ROIs of a Shapes or Labels layer over an image layer."""

    TASK = "sr"
    VERB = "Super-resolve"
    DOING = "Super-resolving"
    DONE = "SR"
    NOUN = "super-resolution"
    HELP = (
        "Super-resolve regions of interest (lesions) of an image layer. Draw rectangles or "
        "polygons in a Shapes layer, or paint a Labels layer, pick it as the ROI layer and Run: "
        "each ROI (each shape, each label plus the margin) becomes a new layer ×2 or ×4 finer, "
        "placed exactly over its region. The source is left untouched."
    )

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.roi_layer = ComboBox(label="ROI layer", choices=self._roi_layers,
                                  tooltip="Shapes (each rectangle / polygon / ellipse is an ROI) "
                                          "or Labels (each label's bounding box plus the margin)")
        self.factor = ComboBox(label="factor", choices=FACTORS, value=4,
                               tooltip="Upscaling of Y and X; the model list shows models of "
                                       "this factor")
        self.planes = ComboBox(label="planes", choices=["current", "range", "all"], value="current",
                               tooltip="For stacks: the plane on screen, a range of Z planes, or "
                                       "every plane (ignored for 2-D images)")
        self.z_start = SpinBox(label="from plane", value=0, min=0, max=1_000_000, visible=False,
                               tooltip="First plane of the range (last leading axis, e.g. Z)")
        self.z_stop = SpinBox(label="to plane (excl.)", value=1, min=1, max=1_000_000,
                              visible=False, tooltip="The range ends before this plane")
        self.margin = SpinBox(label="label margin (px)", value=8, min=0, max=4096,
                              tooltip="Image pixels added around each label's bounding box "
                                      "(Labels ROI layers only: a shape is its own ROI)")
        self.btn_new_roi = QPushButton("New ROI layer")
        self.btn_new_roi.setToolTip("Add a Shapes layer over the image (same units and "
                                    "placement) and start drawing rectangles")
        # The base's "current plane only" is replaced by the planes choice.
        self.plane_only.visible = False
        for i, w in enumerate((self.roi_layer, self.factor), start=1):
            self.pickers.insert(i, w)
        at = self.pickers.index(self.model) + 1
        for i, w in enumerate((self.planes, self.z_start, self.z_stop, self.margin)):
            self.pickers.insert(at + i, w)
        self.factor.changed.connect(self.refresh_models)
        self.planes.changed.connect(self._on_planes_mode)
        self.roi_layer.changed.connect(self._on_options_apply)
        self.layer.changed.connect(self._on_options_apply)
        self.btn_new_roi.clicked.connect(self.add_roi_layer)
        self.add_section(self.btn_new_roi)
        self.refresh_models()  # the base listed models before the factor existed
        self._on_options_apply()

    def job(self) -> Job:
        return iter_super_resolve

    # ---------------------------------------------------------------- pickers
    def _roi_layers(self, _widget: Any = None) -> list[Shapes | Labels]:
        return [lay for lay in self.viewer.layers if isinstance(lay, (Shapes, Labels))]

    def _on_layers_changed(self, _event: Any = None) -> None:
        super()._on_layers_changed(_event)
        if hasattr(self, "roi_layer"):
            self.roi_layer.reset_choices()

    def _model_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        factor = self.factor.value if hasattr(self, "factor") else None
        choices = [(f"{m.name} ({m.source})", m.name) for m in zoo.list_models(self.TASK)
                   if factor is None or m.scale == factor]
        choices += [(label, path) for path, label in self._files.items()]
        return choices

    def default_model_name(self) -> str:
        """The shipped model of the chosen factor (``msgan-x2`` for ×2)."""
        factor = self.factor.value if hasattr(self, "factor") else None
        return tasks.default_model_name(self.TASK, factor)

    def _on_planes_mode(self, mode: str) -> None:
        image = self.layer.value
        stack = isinstance(image, Image) and plane_axes(image) > 0
        self.z_start.visible = self.z_stop.visible = mode == "range" and stack

    def _on_options_apply(self, _value: Any = None) -> None:
        """Enable only the options that apply: the label margin to a Labels ROI layer, the
        planes to a stack (a 2-D image has one plane)."""
        self.margin.enabled = isinstance(self.roi_layer.value, Labels)
        image = self.layer.value
        self.planes.enabled = isinstance(image, Image) and plane_axes(image) > 0
        self._on_planes_mode(self.planes.value)

    def add_roi_layer(self) -> Shapes | None:
        """Add a Shapes layer for ROIs over the picked image, in its units and placement (no
        'Inconsistent units' warning over a NIfTI layer in mm), pick it and start drawing."""
        image = self.layer.value
        if not isinstance(image, Image):
            self._fail("Pick the image layer first; the ROI layer is placed over it.")
            return None
        shapes = self.viewer.add_shapes(
            ndim=image.ndim, name=f"{image.name} ROI", units=image.units,
            axis_labels=image.axis_labels, scale=image.scale, translate=image.translate,
            rotate=image.rotate, shear=image.shear, affine=image.affine,
            edge_color="yellow", face_color="transparent",
            edge_width=max(1.0, 0.004 * max(image.data.shape[-3 if image.rgb else -2:])),
        )
        self.roi_layer.reset_choices()
        self.roi_layer.value = shapes
        shapes.mode = "add_rectangle"
        self.status.setText(f"Draw rectangles (or polygons) over the lesions in '{shapes.name}', "
                            "then Run.")
        return shapes

    # -------------------------------------------------------------------- run
    def _rois(self, image: Image, roi_layer: Shapes | Labels) -> list[tuple[str, ROI]]:
        """``(label, ROI)`` per region, in the image's pixels (ValueError says what is wrong)."""
        n = plane_axes(image)
        plane_shape = image.data.shape[n : n + 2]
        i2w = data_to_world_matrix(image)
        if isinstance(roi_layer, Shapes):
            rois = rois_from_shapes(
                roi_layer.data, plane_shape, shapes_to_world=data_to_world_matrix(roi_layer),
                image_to_world=i2w, shape_types=roi_layer.shape_type,
            )
            return [(str(k), r) for k, r in enumerate(rois, start=1)]
        index = None
        if self.planes.value == "current" and roi_layer.ndim > 2:
            index = current_plane_index(self.viewer, roi_layer)
        labelled = rois_from_labels(
            roi_layer.data, plane_shape, labels_to_world=data_to_world_matrix(roi_layer),
            image_to_world=i2w, margin=int(self.margin.value), index=index,
        )
        return [(f"label {v}", r) for v, r in labelled]

    def run(self) -> None:
        """Super-resolve every ROI of the picked ROI layer in a thread worker."""
        if self._worker is not None:
            return
        layer, roi_layer = self.layer.value, self.roi_layer.value
        if layer is None or not isinstance(layer, Image) or isinstance(layer, Labels):
            self._fail("Pick an image layer to super-resolve.")
            return
        if roi_layer is None:
            self._fail("Pick an ROI layer: add a Shapes layer and draw a rectangle over the "
                       "lesion, or paint it in a Labels layer.")
            return
        if layer.multiscale:
            self._fail(f"'{layer.name}' is a multiscale (pyramid) layer; super-resolve its "
                       "full-resolution array instead, e.g. viewer.add_image(layer.data[0]).")
            return
        self.refresh_models()
        model, factor = self.model.value, int(self.factor.value)
        if model is None:
            self._fail(self.no_model_message() + f" (A ×{factor} model is needed; try the other "
                       "factor if you have one of that.)")
            return
        n = plane_axes(layer)
        try:
            rois = self._rois(layer, roi_layer)
            current = current_plane_index(self.viewer, layer) if n else ()
            index, offset = select_planes(layer.data.shape[:n], self.planes.value, current,
                                          self.z_start.value, self.z_stop.value)
        except ValueError as err:
            self._fail(f"Cannot super-resolve: {err}")
            return
        # Taken now, so later edits of the source (data, transforms, display) don't change the
        # result or where it lands.
        data, i2w = layer.data, data_to_world_matrix(layer)
        placements = [(f"{layer.name} [SR ×{factor}, ROI {k}]", roi_output_affine(i2w, r, factor, offset))
                      for k, (_, r) in enumerate(rois, start=1)]
        display: dict[str, Any] = {"rgb": layer.rgb, "contrast_limits": tuple(layer.contrast_limits),
                                   "units": tuple(layer.units), "axis_labels": tuple(layer.axis_labels)}
        if not layer.rgb:
            display["colormap"] = layer.colormap

        worker = create_worker(
            surface_runtime_errors, self.job(), data, factor, model,
            [r.as_tuple() for _, r in rois], rgb=layer.rgb, device=self.device.value,
            tile=self.tile.value or None, planes=index, ensemble=self.ensemble.value,
            _progress={"total": 0, "desc": f"Super-resolve {layer.name}"},
            _ignore_errors=True,  # reported here (notification + status), not re-raised
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda results: self._add_results(results, placements, display))
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._cancelled = False
        self._running = True
        self._unit = "view" if self.ensemble.value else "tile"
        self.btn_run.setEnabled(False)
        self.btn_cancel.setEnabled(True)
        self.status.setText(f"Super-resolving {len(rois)} ROI(s) of '{layer.name}' ×{factor}…")
        worker.start()

    def _add_results(self, results: list[np.ndarray], placements: list[tuple[str, np.ndarray]],
                     display: dict[str, Any]) -> None:
        self._running = False
        if self._cancelled:
            return  # finished just as Cancel was pressed: the user asked for nothing
        for out, (name, affine) in zip(results, placements):
            self.viewer.add_image(out, name=name, affine=affine, **display)
        self.status.setText(f"Added {len(results)} layer(s): "
                            + ", ".join(f"'{name}'" for name, _ in placements))
