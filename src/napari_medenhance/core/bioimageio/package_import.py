"""Import a BioImage.IO package that napari-medenhance exported: read its description and
copy the plugin's own weights file it carries into the user models folder (nothing in the
package is unpickled or executed)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from .export import CONFIG_KEY, PackageError, file_sha256

__all__ = ["import_package", "read_package"]


def read_package(path: str | os.PathLike) -> tuple[dict, zipfile.ZipFile]:
    """``(description, open zip)`` of a BioImage.IO package; the caller closes the zip.

    Raises:
        PackageError: not a zip, no ``rdf.yaml`` / ``bioimageio.yaml``, not a model.
    """
    import yaml

    p = Path(path)
    try:
        zf = zipfile.ZipFile(p)
    except (OSError, zipfile.BadZipFile) as err:
        raise PackageError(f"{p}: not a readable zip ({err}); a BioImage.IO package is a .zip "
                           "with an rdf.yaml") from err
    names = set(zf.namelist())
    rdf_name = next((n for n in ("rdf.yaml", "bioimageio.yaml") if n in names), None)
    if rdf_name is None:
        rdf_name = next((n for n in sorted(names) if n.endswith(("rdf.yaml", "bioimageio.yaml"))), None)
    if rdf_name is None:
        zf.close()
        raise PackageError(f"{p}: no rdf.yaml (or bioimageio.yaml) inside; is it a BioImage.IO "
                           "model package?")
    try:
        rdf = yaml.safe_load(zf.read(rdf_name))
    except yaml.YAMLError as err:
        zf.close()
        raise PackageError(f"{p}: its {rdf_name} is not valid YAML ({err})") from err
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        zf.close()
        raise PackageError(f"{p}: describes a {rdf.get('type') if isinstance(rdf, dict) else '?'!r}, "
                           "not a model")
    return rdf, zf


def import_package(path: str | os.PathLike, name: str | None = None, *,
                   overwrite: bool = False) -> Any:
    """Register the model of a package this plugin exported as the user's model ``name``.

    The package's attached napari-medenhance weights file (safetensors) is what is registered,
    with a model card from the description (name, authors, citations, licence, the exported
    configuration); the TorchScript and pickled state dict are never loaded.

    Returns:
        the new :class:`~napari_medenhance.core.zoo.ModelInfo`.

    Raises:
        PackageError: not a package, not exported by napari-medenhance (no
            ``config.napari-medenhance``), an architecture this version does not know, a
            missing or altered weights file. ValueError: as
            :func:`~napari_medenhance.core.zoo.save_user_model` (name taken...).
    """
    from .. import zoo
    from ..nets import ARCHITECTURES
    from ..weights import read_header

    p = Path(path)
    rdf, zf = read_package(p)
    with zf:
        section = (rdf.get("config") or {}).get(CONFIG_KEY)
        if not isinstance(section, dict):
            weights = ", ".join(sorted((rdf.get("weights") or {}).keys())) or "none"
            raise PackageError(
                f"{p}: not exported by napari-medenhance (its description has no "
                f"config.{CONFIG_KEY} section; weights: {weights}). Only packages this plugin "
                "exported can be added: their architecture is one the plugin knows and their "
                "weights come as a safetensors file, while TorchScript and pickled state dicts "
                "would run code on loading, which the plugin never does")
        arch = str(section.get("arch", "")).lower()
        if arch not in ARCHITECTURES:
            raise PackageError(
                f"{p}: its network is a {section.get('arch')!r}, an architecture this version of "
                f"napari-medenhance does not know (known: {', '.join(sorted(ARCHITECTURES))}); "
                "update napari-medenhance, or use the package with bioimageio.core or deepImageJ")
        weights_name = str(section.get("weights", ""))
        if not weights_name or weights_name not in zf.namelist():
            raise PackageError(f"{p}: the napari-medenhance weights file {weights_name!r} named in "
                               "its description is missing from the zip; export it again")
        expected = next((a.get("sha256") for a in rdf.get("attachments") or []
                         if isinstance(a, dict) and a.get("source") == weights_name), None)
        with tempfile.TemporaryDirectory(prefix="medenhance-import-") as tmp_name:
            tmp = Path(tmp_name) / Path(weights_name).name
            with zf.open(weights_name) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if expected and file_sha256(tmp) != expected:
                raise PackageError(f"{p}: {weights_name} does not match the sha256 in its "
                                   "description (altered or damaged); export it again")
            header_arch = str(read_header(tmp)["arch"]).lower()
            if header_arch != arch:
                raise PackageError(f"{p}: the description says {arch!r} but the weights file is "
                                   f"for {header_arch!r}; export it again")
            card = {
                "imported_from": str(p.resolve()),
                "bioimageio_name": rdf.get("name"),
                "description": rdf.get("description"),
                "authors": rdf.get("authors"),
                "cite": rdf.get("cite"),
                "license": rdf.get("license"),
                "exported_with": section.get("exported_with"),
            }
            model_name = name or _model_name(str(section.get("name") or p.stem))
            return zoo.save_user_model(tmp, model_name, card=card, overwrite=overwrite)


def _model_name(text: str) -> str:
    """A registry name (letters, digits, ``._-``) from ``text``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "imported"
    return name[:64]
