"""BioImage.IO packages: export (the spec validates them, bioimageio.core reproduces their test
tensors with both weight formats), import with ``medenhance models --add``, refusals, and the
widgets' export buttons. Small untrained networks: plumbing, not quality."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest
import torch
import yaml

import napari_medenhance as me
from napari_medenhance.cli import main
from napari_medenhance.core import zoo
from napari_medenhance.core.bioimageio import PackageError, export_package, import_package
from napari_medenhance.core.nets.dpe import DPE
from napari_medenhance.core.nets.dran import DRAN
from napari_medenhance.core.nets.srresnet import MSGANGenerator
from napari_medenhance.core.weights import save_weights
from napari_medenhance.sample_data import load

TINY_DRAN = {"features": 8, "blocks": 1, "layers_per_block": 1, "kernels": 2}
TINY_DPE = {"widths": [8, 8, 8]}
TINY_MSGAN_X2 = {"features": 8, "blocks": 1, "blocks_x2": 1, "output_scale": 2}


def _tiny(kind: str, path):
    torch.manual_seed(0)
    if kind == "dran":
        save_weights(path, DRAN(**TINY_DRAN), arch="dran", config=TINY_DRAN,
                     meta={"task": "denoise", "name": "tiny-dran"})
    elif kind == "dpe":
        save_weights(path, DPE(**TINY_DPE), arch="dpe", config=TINY_DPE,
                     meta={"task": "enhance", "name": "tiny-dpe"})
    elif kind == "dpe_stretch":  # trained on contrast-stretched input: the package stretches too
        save_weights(path, DPE(**TINY_DPE), arch="dpe", config=TINY_DPE,
                     meta={"task": "enhance", "name": "tiny-dpe-stretch",
                           "input_percentiles": [2, 98]})
    else:
        save_weights(path, MSGANGenerator(**TINY_MSGAN_X2), arch="msgan", config=TINY_MSGAN_X2,
                     meta={"task": "sr", "name": "tiny-x2"})
    return path


KINDS = ["dran", "msgan-x2", "dpe", "dpe_stretch"]


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """One exported package per kind of network: {kind: (weights path, ExportResult)}."""
    root = tmp_path_factory.mktemp("bioimageio")
    out = {}
    for kind in KINDS:
        weights = _tiny(kind.split("-")[0], root / f"{kind}.safetensors")
        out[kind] = (weights, export_package(weights, root / f"{kind}.zip"))
    return out


def _rdf(zip_path) -> dict:
    with zipfile.ZipFile(zip_path) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("kind", KINDS)
def test_package_contents_and_the_engine_reproduced(packages, kind):
    weights, result = packages[kind]
    with zipfile.ZipFile(result.path) as zf:
        names = set(zf.namelist())
        readme = zf.read("README.md").decode()
        test_in = np.load(zf.open("test_input.npy"))
        test_out = np.load(zf.open("test_output.npy"))
        scripted = torch.jit.load(zf.open("weights_torchscript.pt"))
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "medenhance_arch.py",
            "test_input.npy", "test_output.npy", "cover.png", "README.md"} <= names
    rdf = _rdf(result.path)
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert arch["callable"] == "MedEnhanceModel" and arch["source"] == "medenhance_arch.py"
    assert rdf["license"] == "BSD-3-Clause" and rdf["authors"] and rdf["covers"] == ["cover.png"]
    assert all("doi" in c for c in rdf["cite"])
    section = rdf["config"]["napari-medenhance"]
    assert section["arch"] == kind.split("-")[0].split("_")[0] and f"{section['weights']}" in names
    if kind == "dpe_stretch":
        assert arch["kwargs"]["stretch"] == [2.0, 98.0]
    assert "## Validation" in readme and "differs from the plugin's engine" in readme
    # the test output is the package's network on the test input, and that is the engine's
    lo, hi = result.input_range
    with torch.inference_mode():  # a reloaded TorchScript may fuse ops differently: 1e-6
        np.testing.assert_allclose(scripted(torch.from_numpy(test_in)).numpy(), test_out,
                                   rtol=0, atol=1e-6 * (hi - lo))
    scale = 2 if kind == "msgan-x2" else 1
    assert test_out.shape[-2:] == (test_in.shape[-2] * scale, test_in.shape[-1] * scale)
    assert test_in.shape[1] == (3 if kind.startswith("dpe") else 1)
    assert result.engine_max_abs_diff <= 1e-4 * (hi - lo)
    # the package's numbers are the public API's on the same image (one plane, float32)
    image = np.moveaxis(test_in[0], 0, -1) if kind.startswith("dpe") else test_in[0, 0]
    if kind == "dran":
        api = me.denoise(image, str(weights), device="cpu")
    elif kind.startswith("dpe"):
        api = me.enhance(image, str(weights), device="cpu")
    else:
        api = me.super_resolve(image, 2, str(weights), device="cpu")
    api = np.moveaxis(api, -1, 0)[None] if kind.startswith("dpe") else api[None, None]
    np.testing.assert_allclose(test_out, api, atol=1e-4 * (hi - lo), rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_bioimageio_spec_validates_the_package(packages, kind):
    spec = pytest.importorskip("bioimageio.spec")
    descr = spec.load_description(packages[kind][1].path)
    summary = descr.validation_summary
    errors = [e for d in summary.details for e in d.errors]
    assert summary.status in ("valid-format", "passed"), errors
    assert not errors


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("kind", KINDS)
def test_bioimageio_core_reproduces_the_test_tensors(packages, kind):
    core = pytest.importorskip("bioimageio.core")
    summary = core.test_model(packages[kind][1].path)
    failed = [(d.name, [e.msg[:300] for e in d.errors]) for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    names = " ".join(d.name for d in summary.details)
    assert "(pytorch_state_dict)" in names and "(torchscript)" in names


def test_models_add_imports_an_exported_package(isolated_models, packages, tmp_path, capsys):
    """CLI round trip: export a registered model with a card, add the zip under a new name;
    the imported model gives the original's output bit for bit, and its card travels."""
    weights = packages["dran"][0]
    zoo.save_user_model(weights, "carded", card={"validation": {
        "before": {"metrics": {"psnr": 28.25}}, "after": {"step": 6, "metrics": {"psnr": 31.5, "ssim": 0.875}}},
        "authors": ["Ada Lovelace (Analytical Engines Ltd)"]})
    out = tmp_path / "carded.zip"
    assert main(["export-bioimageio", "carded", str(out), "--license", "MIT"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    rdf = _rdf(out)
    assert rdf["license"] == "MIT"
    assert rdf["authors"] == [{"name": "Ada Lovelace", "affiliation": "Analytical Engines Ltd"}]
    with zipfile.ZipFile(out) as zf:
        readme = zf.read("README.md").decode()
    assert "| after | psnr | 31.5 |" in readme and "| before | psnr | 28.25 |" in readme

    assert main(["models", "--add", str(out), "--name", "from-zip"]) == 0
    assert "added denoise model 'from-zip' from the BioImage.IO package" in capsys.readouterr().out
    info = zoo.get_model("from-zip")
    assert info.source == "user" and info.arch == "dran" and info.card["license"] == "MIT"
    image = load("mr_slice")[300:364, 280:344]
    np.testing.assert_array_equal(me.denoise(image, "from-zip", device="cpu"),
                                  me.denoise(image, "carded", device="cpu"))
    # without --name: the package's model name ('carded', taken: --overwrite replaces it)
    assert main(["models", "--add", str(out)]) == 2
    assert "a user model called 'carded' already exists" in capsys.readouterr().err
    assert main(["models", "--add", str(out), "--overwrite"]) == 0
    assert zoo.get_model("carded").card["bioimageio_name"] == rdf["name"]


def _rewrite(src, dst, change):
    """A copy of package ``src`` whose rdf.yaml went through ``change`` (the rest as it is)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "rdf.yaml":
                rdf = yaml.safe_load(data)
                change(rdf)
                data = yaml.safe_dump(rdf).encode()
            zout.writestr(item, data)
    return dst


def test_import_refuses_what_it_cannot_use_and_says_why(isolated_models, packages, tmp_path, capsys):
    src = packages["dran"][1].path

    def unknown_arch(rdf):
        rdf["config"]["napari-medenhance"]["arch"] = "unet3d"

    def foreign(rdf):
        del rdf["config"]["napari-medenhance"]

    def altered(rdf):
        rdf["attachments"][0]["sha256"] = "0" * 64

    cases = [
        (unknown_arch, "a 'unet3d', an architecture this version of napari-medenhance does not know"),
        (foreign, "not exported by napari-medenhance"),
        (altered, "does not match the sha256"),
    ]
    for change, message in cases:
        bad = _rewrite(src, tmp_path / f"{change.__name__}.zip", change)
        with pytest.raises(PackageError, match=message):
            import_package(bad)
        assert main(["models", "--add", str(bad)]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(PackageError, match="not a readable zip"):
        import_package(tmp_path / "junk.zip")
    assert zoo.list_models() == []  # nothing was registered on the way


def test_export_refuses_unknown_models_and_training_only_networks(isolated_models, tmp_path, capsys):
    assert main(["export-bioimageio", "nope", str(tmp_path / "x.zip")]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x.zip").exists()


def test_widget_buttons_export_the_picked_and_the_trained_model(
        make_napari_viewer, isolated_models, qtbot, tmp_path):
    from napari_medenhance._widgets._bioimageio import EXPORT_TEXT
    from napari_medenhance._widgets.denoise_widget import DenoiseWidget
    from napari_medenhance._widgets.train_widget import TrainWidget
    from napari_medenhance.core.training.loop import BEST

    _tiny("dran", isolated_models / "tiny.safetensors")
    viewer = make_napari_viewer()
    denoise = DenoiseWidget(viewer)
    assert denoise.btn_export.text() == EXPORT_TEXT and denoise.model.value == "tiny"
    worker = denoise.export_model(tmp_path / "picked.zip")
    qtbot.waitUntil(lambda: "Exported" in denoise.status.text() or "failed" in denoise.status.text(),
                    timeout=60_000)
    assert "Exported" in denoise.status.text() and zipfile.is_zipfile(tmp_path / "picked.zip")
    assert worker is not None

    train = TrainWidget(viewer)
    # next to Save model, and only once there is a model to export
    # (the widget's form sits in a scroll area: look for the row wherever it is)
    from qtpy.QtWidgets import QLayout

    rows = train.findChildren(QLayout)
    (row,) = [r for r in rows
              if any(r.itemAt(j).widget() is train.btn_save for j in range(r.count()))]
    assert train.btn_export in [row.itemAt(j).widget() for j in range(row.count())]
    assert train.btn_export.text() == EXPORT_TEXT and not train.btn_export.isEnabled()
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(isolated_models / "tiny.safetensors", run / BEST)
    train._run_dir = run
    train._on_finished()
    assert train.btn_export.isEnabled() and train.btn_save.isEnabled()
    train.export_model(tmp_path / "trained.zip")
    qtbot.waitUntil(lambda: "Exported" in train.status.text() or "failed" in train.status.text(),
                    timeout=60_000)
    assert "Exported" in train.status.text()
    assert _rdf(tmp_path / "trained.zip")["config"]["napari-medenhance"]["arch"] == "dran"
    denoise.close()
    train.close()
