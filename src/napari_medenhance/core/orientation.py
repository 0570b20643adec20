"""How radiology volumes are shown: which patient axis is on the slider, which way the screen's
axes point, and the orientation letters at the canvas edges. Qt- and napari-free.

The world is patient LPS in napari order ``(z, y, x)`` (:mod:`napari_medenhance.core.io.patient`):
``z`` grows superior, ``y`` posterior, ``x`` towards the patient's left. A view is the world
axis on the slider plus the two on screen (vertical, horizontal) and the direction each screen
axis grows in, napari's ``camera.orientation2d`` (``("down", "right")`` is napari's default):

============  ========  ==========  ============  =====================  =====================
view          slider    vertical    horizontal    radiological           neurological
============  ========  ==========  ============  =====================  =====================
axial         z (S/I)   y, A at     x             R on the left (down,   R on the right (down,
                        the top                   right)                 left)
coronal       y (A/P)   z, S at     x             R on the left (up,     R on the right (up,
                        the top                   right)                 left)
sagittal      x (R/L)   z, S at     y             A on the left (up,     the same: L/R is not
                        the top                   right)                 on screen
============  ========  ==========  ============  =====================  =====================

Radiological (the patient's right on the screen's left, as if facing the patient) is the
default: it is how radiologists read CT and MR; neurological (right on the right, as if looking
from behind or above) is the neuroimaging tools' habit.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AXIS_CODES",
    "CONVENTIONS",
    "VIEWS",
    "camera_orientation",
    "edge_labels",
    "view_axes",
    "view_of",
]

VIEWS = ("axial", "coronal", "sagittal")
CONVENTIONS = ("radiological", "neurological")
#: (letter at the low end, letter at the high end) of the world axes z, y, x.
AXIS_CODES = (("I", "S"), ("A", "P"), ("R", "L"))

# (slider, vertical, horizontal) world axes of each view
_VIEW_AXES = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}


def _check(view: str, convention: str = "radiological") -> None:
    if view not in _VIEW_AXES:
        raise ValueError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")


def view_axes(view: str) -> tuple[int, int, int]:
    """``(slider, vertical, horizontal)`` world axes (0 = z, 1 = y, 2 = x) of ``view``.

    In napari terms this is the ``dims.order`` of the three spatial axes (the last two shown).
    """
    _check(view)
    return _VIEW_AXES[view]


def camera_orientation(view: str, convention: str = "radiological") -> tuple[str, str]:
    """napari ``camera.orientation2d`` (vertical, horizontal) that shows ``view`` upright.

    Axial: anterior at the top (``y`` grows down); coronal and sagittal: superior at the top
    (``z`` grows up). Horizontally, ``x`` grows to the right in the radiological convention
    (the patient's right on the screen's left) and to the left in the neurological one; a
    sagittal view has anterior on the left in both.
    """
    _check(view, convention)
    vertical = "down" if view == "axial" else "up"
    if view == "sagittal":
        return vertical, "right"
    return vertical, "right" if convention == "radiological" else "left"


def edge_labels(vertical_axis: int, horizontal_axis: int,
                orientation2d: Sequence[str] = ("down", "right")) -> dict[str, str]:
    """The patient direction at each canvas edge: ``{"top", "bottom", "left", "right"}``.

    Args:
        vertical_axis, horizontal_axis: world axes on screen (0 = z, 1 = y, 2 = x).
        orientation2d: napari's camera ``orientation2d``: which way the vertical axis grows
            (``"down"``/``"up"``) and the horizontal one (``"right"``/``"left"``).
    """
    low_v, high_v = AXIS_CODES[vertical_axis]
    low_h, high_h = AXIS_CODES[horizontal_axis]
    down = str(orientation2d[0]).lower() == "down"
    right = str(orientation2d[1]).lower() == "right"
    return {
        "top": low_v if down else high_v,
        "bottom": high_v if down else low_v,
        "left": low_h if right else high_h,
        "right": high_h if right else low_h,
    }


def view_of(vertical_axis: int, horizontal_axis: int) -> str | None:
    """The view whose screen axes these are (either way round), or None."""
    for name, (_, v, h) in _VIEW_AXES.items():
        if {v, h} == {vertical_axis, horizontal_axis}:
            return name
    return None
