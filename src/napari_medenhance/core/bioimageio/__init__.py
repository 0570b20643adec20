"""BioImage.IO model packages: export a napari-medenhance model, and import one back.

The model zoo format (bioimage.io, model description format 0.5) is how restoration models
travel between napari, Fiji/deepImageJ, ilastik and the ``bioimageio.core`` Python runner.
:func:`export_package` writes a zip with

* ``rdf.yaml``: the description (inputs, outputs, axes, authors, citations, licence, tags);
* weights twice: ``weights_torchscript.pt`` (TorchScript) and ``weights.pt`` (a PyTorch
  ``state_dict``) with its architecture source ``medenhance_arch.py`` (the network's own
  module(s) and :mod:`napari_medenhance.core._bioimageio_model`, in one file that needs only
  torch);
* the network wrapped in napari-medenhance's intensity mapping (min-max to [0, 1] per sample,
  the network, back to the image's units: :mod:`._bioimageio_model`), so a consumer gets the
  same numbers as the plugin. The description's pre- and post-processing are therefore only
  ``ensure_dtype: float32``: the format's processing steps cannot express the mapping back to
  the input's units (``scale_range`` normalises, nothing undoes a per-sample normalisation);
* ``test_input.npy`` / ``test_output.npy`` from the plugin's real sample data (MR slice with
  Gaussian noise for a denoiser, the IHC colour image for an enhancer, the CT slice for
  super-resolution) and the model's output on it; at export the package's network is checked
  against the plugin's engine on that input (the largest difference is written in the README);
* ``cover.png`` (input | output), ``README.md`` with a "Validation" section (the numbers of the
  model card, when it has some), and ``NAME.safetensors``: the plugin's own weights file, so
  :func:`import_package` (``medenhance models --add PACKAGE.zip``) never unpickles anything.

``bioimageio.spec`` / ``bioimageio.core`` are not needed to export or import (the ``bioimageio``
extra installs them to validate and run packages; the tests do).
"""

from .export import ExportResult, PackageError, architecture_source, export_package
from .package_import import import_package, read_package

__all__ = ["ExportResult", "PackageError", "architecture_source", "export_package",
           "import_package", "read_package"]
