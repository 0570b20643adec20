"""Orientation of radiology volumes in a napari viewer: letters at the canvas edges (R/L, A/P,
S/I), one-click axial / coronal / sagittal views, radiological or neurological convention.

The rules are in :mod:`napari_medenhance.core.orientation`; this module applies them to a
viewer (``dims.order``, ``camera.orientation2d``, four canvas text overlays) and offers a small
dock widget. Nothing here changes world coordinates: layers, points and measurements stay in
patient mm whatever the view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_medenhance.core.orientation import (
    CONVENTIONS,
    VIEWS,
    camera_orientation,
    edge_labels,
    view_axes,
)

if TYPE_CHECKING:
    import napari

__all__ = [
    "OrientationWidget",
    "current_edge_labels",
    "has_patient_layer",
    "install_orientation_labels",
    "set_labels_visible",
    "set_view",
]

#: canvas overlay key -> (edge, napari canvas position)
_OVERLAYS = {
    "medenhance_orientation_top": ("top", "top_center"),
    "medenhance_orientation_bottom": ("bottom", "bottom_center"),
    "medenhance_orientation_left": ("left", "middle_left"),
    "medenhance_orientation_right": ("right", "middle_right"),
}
# Set on a viewer once its labels follow it (so installing twice connects nothing twice).
_INSTALLED = "_medenhance_orientation_installed"
# Set on a viewer whose user switched the letters off (refreshes keep them off).
_HIDDEN = "_medenhance_orientation_hidden"


def _camera(viewer: napari.Viewer) -> Any:
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def has_patient_layer(viewer: napari.Viewer) -> bool:
    """True when a layer was read in patient space (a NIfTI or DICOM volume)."""
    from napari_medenhance._io_napari import META_KEY

    for layer in viewer.layers:
        info = layer.metadata.get(META_KEY) if isinstance(layer.metadata, dict) else None
        if isinstance(info, dict) and (info.get("meta") or {}).get("patient_space"):
            return True
    return False


def current_edge_labels(viewer: napari.Viewer) -> dict[str, str] | None:
    """The letters the canvas edges should show now, or None when none apply (3-D display,
    fewer than three axes, a non-spatial axis on screen)."""
    dims = viewer.dims
    if dims.ndisplay != 2 or dims.ndim < 3:
        return None
    spatial0 = dims.ndim - 3
    vertical, horizontal = (int(a) - spatial0 for a in dims.order[-2:])
    if not (0 <= vertical < 3 and 0 <= horizontal < 3):
        return None
    return edge_labels(vertical, horizontal, tuple(str(o) for o in _camera(viewer).orientation2d))


def _update(viewer: napari.Viewer) -> None:
    from napari.components.overlays import TextOverlay

    wanted = has_patient_layer(viewer) and not getattr(viewer, _HIDDEN, False)
    labels = current_edge_labels(viewer) if wanted else None
    overlays = viewer.canvas.overlays
    for key, (edge, position) in _OVERLAYS.items():
        if key not in overlays:
            overlays[key] = TextOverlay(position=position, font_size=14, color="yellow")
        overlay = overlays[key]
        overlay.text = labels[edge] if labels else ""
        overlay.visible = labels is not None


def install_orientation_labels(viewer: napari.Viewer) -> None:
    """Show R/L, A/P, S/I at the canvas edges of ``viewer`` and keep them right.

    They follow the dims order (axial / coronal / sagittal, napari's transpose and roll
    buttons), the camera orientation (radiological / neurological) and the layers (shown while
    a patient-space layer is open, in 2-D display). Calling it again only refreshes them.
    """
    if not getattr(viewer, _INSTALLED, False):
        def refresh(_event: Any = None) -> None:
            _update(viewer)

        viewer.dims.events.order.connect(refresh)
        viewer.dims.events.ndisplay.connect(refresh)
        viewer.dims.events.ndim.connect(refresh)
        _camera(viewer).events.orientation.connect(refresh)
        viewer.layers.events.inserted.connect(refresh)
        viewer.layers.events.removed.connect(refresh)
        setattr(viewer, _INSTALLED, True)
    _update(viewer)


def set_labels_visible(viewer: napari.Viewer, visible: bool) -> None:
    """Switch the orientation letters of ``viewer`` on (while they apply) or off."""
    setattr(viewer, _HIDDEN, not visible)
    install_orientation_labels(viewer)


def set_view(viewer: napari.Viewer, view: str = "axial", convention: str = "radiological") -> None:
    """Show ``view`` (axial, coronal or sagittal) upright in ``convention`` (module
    :mod:`napari_medenhance.core.orientation`), with the orientation labels.

    The spatial axes are the viewer's last three (``z, y, x``); leading axes (time) stay on
    sliders. Raises ``ValueError`` for an unknown view or convention, or fewer than three axes.
    """
    axes = view_axes(view)
    orientation = camera_orientation(view, convention)
    ndim = viewer.dims.ndim
    if ndim < 3:
        raise ValueError(f"a {view} view needs a 3-D volume; the viewer has {ndim} axes")
    lead = ndim - 3
    viewer.dims.ndisplay = 2
    viewer.dims.order = tuple(range(lead)) + tuple(lead + a for a in axes)
    _camera(viewer).orientation2d = orientation
    install_orientation_labels(viewer)


class OrientationWidget(QWidget):
    """Dock widget: axial / coronal / sagittal in one click, and the display convention."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.convention = QComboBox()
        self.convention.addItems(CONVENTIONS)
        self.convention.setToolTip(
            "radiological (default): the patient's right on the screen's left, as radiologists "
            "read; neurological: the patient's right on the right")
        self.buttons: dict[str, QPushButton] = {}
        group = QButtonGroup(self)
        row = QHBoxLayout()
        for view in VIEWS:
            button = QPushButton(view.capitalize())
            button.setCheckable(True)
            button.setToolTip(f"{view} slices on the slider, upright")
            button.clicked.connect(lambda _checked=False, v=view: self.show_view(v))
            group.addButton(button)
            row.addWidget(button)
            self.buttons[view] = button
        self.buttons["axial"].setChecked(True)
        self.labels = QCheckBox("orientation letters at the edges")
        self.labels.setChecked(True)
        self.labels.toggled.connect(lambda on: set_labels_visible(self.viewer, on))
        self.convention.currentTextChanged.connect(lambda _t: self.show_view(self.current_view()))
        self.status = QLabel("World coordinates are patient LPS mm: z superior, y posterior, "
                             "x the patient's left.")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addLayout(row)
        conv = QHBoxLayout()
        conv.addWidget(QLabel("convention"))
        conv.addWidget(self.convention)
        layout.addLayout(conv)
        layout.addWidget(self.labels)
        layout.addWidget(self.status)
        layout.addStretch(1)
        install_orientation_labels(self.viewer)

    def current_view(self) -> str:
        """The view whose button is checked."""
        return next((v for v, b in self.buttons.items() if b.isChecked()), "axial")

    def show_view(self, view: str) -> None:
        """Apply ``view`` in the chosen convention (reports instead of raising)."""
        self.buttons[view].setChecked(True)
        try:
            set_view(self.viewer, view, self.convention.currentText())
        except ValueError as err:
            self.status.setText(str(err))
            return
        self.status.setText(f"{view.capitalize()} view, {self.convention.currentText()} convention.")
