"""``medenhance enhance IN OUT``: file and folder modes with a small, untrained DPE.

These check the plumbing shared with ``medenhance denoise`` (dtype, geometry, folder summary,
exit codes), not enhancement quality: no trained DPE weights exist yet.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_models import save_tiny_dpe

import napari_medenhance as me
from napari_medenhance.cli import main
from napari_medenhance.core import batch, zoo
from napari_medenhance.core.io import read_volume, write_volume
from napari_medenhance.core.nets.dran import DRAN
from napari_medenhance.core.weights import save_weights
from napari_medenhance.sample_data import load

nib = pytest.importorskip("nibabel")

SPACING = (0.29, 0.26, 0.26)  # z, y, x in µm
AFFINE = np.array([[0.0, 0.0, 2.5, -40.0], [0.0, 0.8, 0.0, 12.0], [-0.8, 0.0, 0.0, 7.5], [0, 0, 0, 1]])


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """(user, shipped) model folders, both empty: no 'dpe' model is installed."""
    user, shipped = tmp_path / "user", tmp_path / "shipped"
    user.mkdir()
    monkeypatch.setenv(zoo.MODELS_DIR_ENV, str(user))
    monkeypatch.setattr(zoo, "shipped_models_dir", lambda: shipped)
    zoo.clear_cache()
    yield user, shipped
    zoo.clear_cache()


@pytest.fixture
def tiny(folders):
    """A small DPE registered as the user's enhance model 'tiny'."""
    return save_tiny_dpe(folders[0] / "tiny.safetensors")


@pytest.fixture
def images(tmp_path, nuclei):
    """An input folder: a uint16 ImageJ stack with µm spacing, an int16 CT NIfTI with an affine."""
    src = tmp_path / "in"
    src.mkdir()
    write_volume(src / "stack.tif", nuclei[8:11, 40:104, 30:102], spacing=SPACING, units="µm")
    ct = load("ct_slice")[100:164, 150:214]
    vol = np.stack([ct, ct[::-1], ct[:, ::-1]]).astype(np.int16)  # (z, y, x) in HU
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.T), AFFINE), src / "ct.nii.gz")
    return src


def _expected(path):
    """What the Python API gives for the same pixels and model."""
    return me.enhance(np.asarray(read_volume(path, lazy=False).data), "tiny", device="cpu")


def test_file_mode_keeps_dtype_and_geometry_like_the_api(tiny, images, tmp_path, capsys):
    dst = tmp_path / "out" / "stack.tif"
    assert main(["enhance", str(images / "stack.tif"), str(dst), "--model", "tiny", "--device", "cpu"]) == 0
    assert f"wrote {dst} (uint16, shape (3, 64, 72))" in capsys.readouterr().out
    src, out = read_volume(images / "stack.tif", lazy=False), read_volume(dst, lazy=False)
    assert out.data.dtype == np.uint16 and out.data.shape == src.data.shape
    assert out.spacing == pytest.approx(SPACING, rel=1e-9) and out.units == "µm"
    np.testing.assert_array_equal(out.data, _expected(images / "stack.tif"))
    assert np.any(out.data != src.data)  # the network ran

    nii = tmp_path / "out" / "ct.nii.gz"
    assert main(["enhance", str(images / "ct.nii.gz"), str(nii), "--model", "tiny", "--device", "cpu"]) == 0
    img = nib.load(nii)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(img.affine, nib.load(images / "ct.nii.gz").affine)  # float32 header
    np.testing.assert_array_equal(np.asarray(img.dataobj).T, _expected(images / "ct.nii.gz"))


def test_folder_mode_writes_every_output_and_resumes(tiny, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["enhance", str(images), str(out), "--model", "tiny", "--device", "cpu"]) == 0
    assert "2 file(s): 2 written, 0 skipped (output already there), 0 failed" in capsys.readouterr().out
    for name in ("stack.tif", "ct.nii.gz"):
        written = read_volume(out / name, lazy=False)
        assert written.data.dtype == read_volume(images / name).data.dtype
        np.testing.assert_array_equal(written.data, _expected(images / name))
    assert main(["enhance", str(images), str(out), "--model", "tiny", "--device", "cpu"]) == 0
    assert "0 written, 2 skipped" in capsys.readouterr().out


def test_without_a_dpe_model_exit_2_with_the_registry_message(folders, images, tmp_path, capsys):
    # No 'dpe' ships yet: the default model is missing, in both modes, before anything is read.
    for src, dst in ((images / "stack.tif", tmp_path / "o.tif"), (images, tmp_path / "o")):
        assert main(["enhance", str(src), str(dst), "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("medenhance enhance: unknown enhance model 'dpe'") and "\n" not in err
        assert "medenhance models --add" in err
        assert not dst.exists()


def test_a_denoising_model_is_refused(folders, images, tmp_path, capsys):
    tiny_dran = {"features": 8, "blocks": 1, "layers_per_block": 1, "kernels": 2}
    torch.manual_seed(0)
    path = folders[0] / "dran.safetensors"
    save_weights(path, DRAN(**tiny_dran), arch="dran", config=tiny_dran, meta={"task": "denoise"})
    assert main(["enhance", str(images / "stack.tif"), str(tmp_path / "o.tif"), "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medenhance enhance:") and "is a 'denoise' model, not a 'enhance' model" in err


@pytest.mark.parametrize("task", ["denoise", "enhance"])
def test_help_names_the_tasks_default_model(task, capsys):
    with pytest.raises(SystemExit):
        main([task, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert f"(default {batch.TASKS[task].default_model};" in text
