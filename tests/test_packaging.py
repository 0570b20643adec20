"""The plugin is installable, its manifest validates and napari finds widgets and sample data."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "napari_medenhance"


def test_manifest_validates_with_npe2():
    npe2 = Path(sys.executable).with_name("npe2")
    res = subprocess.run([str(npe2), "validate", "napari-medenhance"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in (res.stdout + res.stderr).lower()


def test_napari_lists_widgets_and_samples():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-medenhance")
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert "Quality metrics" in widgets
    assert "Denoise" in widgets
    assert "Enhance" in widgets
    samples = {s.key for s in manifest.contributions.sample_data}
    assert {"ct", "mr", "nuclei", "ihc"} <= samples
    # every command resolves to an importable callable
    for cmd in manifest.contributions.commands:
        module, _, attr = cmd.python_name.partition(":")
        mod = __import__(module, fromlist=[attr])
        assert callable(getattr(mod, attr)), cmd.python_name


def test_packaged_manifest_is_the_top_level_one():
    assert (PKG / "napari.yaml").read_bytes() == (ROOT / "napari.yaml").read_bytes()


def test_wheel_ships_manifest_and_sample_data(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    (wheel,) = tmp_path.glob("napari_medenhance-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert zf.read("napari_medenhance/napari.yaml") == (ROOT / "napari.yaml").read_bytes()
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "napari_medenhance:napari.yaml" in zf.read(entry).decode()
    for f in ("ct_slice.tif", "mr_slice.tif", "nuclei_stack.tif", "ihc_rgb.tif", "samples.json", "NOTICE.md"):
        assert f"napari_medenhance/sample_data/{f}" in names
    # shipped weights and their cards live in the top-level models/ (symlinked into the package)
    shipped = [f.relative_to(ROOT / "models").as_posix() for f in (ROOT / "models").rglob("*")
               if f.is_file() and "__pycache__" not in f.parts]
    assert "README.md" in shipped
    for f in shipped:
        assert f"napari_medenhance/models/{f}" in names, f
    # PyPI refuses files over 100 MB (its default limit): the wheel with every model must fit
    size = wheel.stat().st_size
    assert size < 100 * 1000**2, f"{wheel.name} is {size / 1e6:.1f} MB, over PyPI's 100 MB limit"
    # installed from the wheel (not the editable tree), npe2 reads the manifest from the package
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = (
        "import npe2, napari_medenhance, sys; m = npe2.PluginManifest.from_distribution('napari-medenhance');"
        "print(napari_medenhance.__file__); print(m.display_name, len(m.contributions.sample_data))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert first.startswith(str(target))
    assert second == "MedEnhance 4"
    # the installed package alone (run outside the source tree) denoises a bundled sample with
    # its shipped model, keeping the sample's dtype
    code = (
        "import sys, numpy as np, tifffile; from napari_medenhance.cli import main;"
        "from napari_medenhance.core import zoo; import napari_medenhance.sample_data as sd;"
        "info = zoo.get_model('dran'); print(info.source, info.path);"
        "src = sd.__path__[0] + '/ct_slice.tif';"
        "rc = main(['denoise', src, 'out.tif']); a, b = tifffile.imread(src), tifffile.imread('out.tif');"
        "print(rc, a.dtype == b.dtype, a.shape == b.shape)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    source, path = lines[0].split(" ", 1)
    assert source == "shipped" and path.startswith(str(target)), lines
    assert lines[-1] == "0 True True", lines


QT_OR_NAPARI = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy")


@pytest.mark.parametrize("path", sorted((PKG / "core").rglob("*.py")), ids=lambda p: p.name)
def test_core_has_no_qt_or_napari_imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in QT_OR_NAPARI, f"{path.name} imports {name}"


def test_core_and_metrics_import_without_qt_or_napari():
    code = (
        "import sys, pkgutil, importlib, napari_medenhance.core as c, napari_medenhance.metrics;"
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(c.__path__, c.__name__ + '.')];"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {QT_OR_NAPARI!r}]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sorted(p for p in PKG.rglob("*.py") if p.name != "engine.py"),
                         ids=lambda p: str(p.relative_to(PKG)))
def test_no_module_reaches_into_the_engines_private_helpers(path):
    # The input rules, tiling and devices are public (core.intensity, core.tiling, core.device):
    # a preview, a volume on disk and a stack in memory must follow the engine's own rules.
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and isinstance(node.value, ast.Name) and node.value.id == "engine"):
            pytest.fail(f"{path.name}:{node.lineno} uses engine.{node.attr}")
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("engine"):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{path.name}:{node.lineno} imports {private} from the engine"
