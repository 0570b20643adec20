"""napari-medenhance: deep-learning restoration and quality metrics for medical images in napari.

The public API lives here and in :mod:`napari_medenhance.metrics`; everything under
``napari_medenhance.core`` is Qt- and napari-free so it runs in scripts, tests and workers.

``list_models``, ``denoise``, ``enhance`` and ``super_resolve`` (from
:mod:`napari_medenhance.api`) are imported on first use, so ``import napari_medenhance`` (done by
napari for every plugin) does not import torch.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("napari-medenhance")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from .api import denoise, enhance, list_models, super_resolve

_API = ("denoise", "enhance", "list_models", "super_resolve")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API))
