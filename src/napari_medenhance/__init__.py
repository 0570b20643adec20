"""napari-medenhance: deep-learning restoration and quality metrics for medical images in napari.

The public API lives here and in :mod:`napari_medenhance.metrics`; everything under
``napari_medenhance.core`` is Qt- and napari-free so it runs in scripts, tests and workers.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-medenhance")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
