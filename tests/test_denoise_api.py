"""``napari_medenhance.denoise`` and ``medenhance denoise`` / ``medenhance models``.

The weights are a real but small, untrained DRAN: these tests check the plumbing (shapes,
dtypes, metadata, progress, cancel, errors), not denoising quality.
"""

from __future__ import annotations

import pickle

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch

import napari_medenhance as me
from napari_medenhance.api import iter_denoise
from napari_medenhance.cli import main
from napari_medenhance.core import zoo
from napari_medenhance.core.engine import Cancelled
from napari_medenhance.core.nets.dran import DRAN
from napari_medenhance.core.weights import WeightsError, save_weights
from napari_medenhance.sample_data import load

TINY = {"features": 8, "blocks": 1, "layers_per_block": 1, "kernels": 2}


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> DRAN:
    """A small DRAN registered as the user's model 'tiny' (in a tmp user folder)."""
    user, shipped = tmp_path / "user", tmp_path / "shipped"
    user.mkdir()
    monkeypatch.setenv(zoo.MODELS_DIR_ENV, str(user))
    monkeypatch.setattr(zoo, "shipped_models_dir", lambda: shipped)
    zoo.clear_cache()
    torch.manual_seed(0)
    net = DRAN(**TINY)
    save_weights(user / "tiny.safetensors", net, arch="dran", config=TINY,
                 meta={"task": "denoise", "name": "tiny"})
    yield net.eval()
    zoo.clear_cache()


def _check_same_kind(out, inp):
    assert isinstance(out, np.ndarray) and out.shape == inp.shape and out.dtype == inp.dtype


def test_uint16_stack_shape_dtype_progress_and_input_untouched(tiny, nuclei):
    stack = nuclei[:6].copy()
    before = stack.copy()
    events = []
    out = me.denoise(stack, "tiny", device="cpu", progress=events.append)
    _check_same_kind(out, stack)
    np.testing.assert_array_equal(stack, before)
    assert [e.done for e in events] == list(range(1, 7)) and {e.total for e in events} == {6}
    assert out.min() >= stack.min() and out.max() <= stack.max()  # the input's intensity scale
    assert np.any(out != stack)  # the network ran (an untrained one: no quality claim)


def test_int16_ct_and_rgb_uint8(tiny):
    ct = load("ct_slice")[100:228, 150:300]
    out = me.denoise(ct, "tiny", device="cpu")
    _check_same_kind(out, ct)
    rgb = load("ihc_rgb")[:96, :80]
    events = []
    out = me.denoise(rgb, "tiny", device="cpu", tile=64, progress=events.append)
    _check_same_kind(out, rgb)
    # 3 x 3 tiles (64 px, overlap 32) over the plane grown by DRAN's 16 mirrored pixels a side
    assert len(events) == events[-1].total == 9


def test_dask_input_matches_numpy(tiny, nuclei):
    stack = nuclei[:4, :128, :128]
    lazy = da.from_array(stack, chunks=(1, 64, 128))
    np.testing.assert_array_equal(me.denoise(lazy, "tiny", device="cpu"),
                                  me.denoise(stack, "tiny", device="cpu"))


def test_one_plane_matches_the_stack_result(tiny, nuclei):
    stack = nuclei[:5, :96, :96]
    full = me.denoise(stack, "tiny", device="cpu")
    gen = iter_denoise(stack, "tiny", device="cpu", plane=(3,))
    events = list(_drain(gen))
    assert len(events) == 1
    np.testing.assert_array_equal(_drain.result, full[3])
    with pytest.raises(ValueError, match="leading axes"):
        next(iter_denoise(stack, "tiny", device="cpu", plane=(1, 2)))


def _drain(gen):
    _drain.result = None
    while True:
        try:
            yield next(gen)
        except StopIteration as stop:
            _drain.result = stop.value
            return


def test_output_is_the_networks_clean_estimate(tiny):
    """... on the plane mirrored by DRAN's ``reflect_border`` on every side, cropped back."""
    img = np.random.default_rng(0).random((40, 56)).astype(np.float32)  # in [0, 1]: used as is
    out = me.denoise(img, "tiny", device="cpu")
    b = DRAN.reflect_border
    assert b == 16 and zoo.get_model("tiny").path  # the engine gets it from the architecture
    x = torch.from_numpy(np.pad(img, b, mode="reflect")).expand(3, -1, -1)[None]
    with torch.no_grad():
        expect = (x - tiny(x))[0, :, b:-b, b:-b].double().mean(0).clamp(0, 1).numpy()
    np.testing.assert_allclose(out, expect, atol=2e-6)


def test_cancel_raises_and_keeps_nothing(tiny, nuclei):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        me.denoise(nuclei[:6], "tiny", device="cpu", cancel=cancel)
    assert len(calls) == 3


def test_models_are_listed_and_unknown_ones_explained(tiny, tmp_path):
    assert [m.name for m in me.list_models("denoise")] == ["tiny"]
    with pytest.raises(ValueError, match=r"unknown denoise model 'dran'; available denoise models: tiny\b"):
        me.denoise(np.zeros((8, 8), np.uint8))  # the default name, not bundled yet
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(pickle.dumps([1, 2, 3], protocol=4))
    with pytest.raises(WeightsError, match="pickled"):
        me.denoise(np.zeros((8, 8), np.uint8), bad)
    nan = np.ones((8, 8), np.float32)
    nan[2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        me.denoise(nan, "tiny", device="cpu")


# ------------------------------------------------------------------------------------ CLI


def test_cli_round_trip_keeps_dtype_and_spacing(tiny, nuclei, tmp_path, capsys):
    stack = nuclei[:3, :64, :80]
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, stack, imagej=True, resolution=(1 / 0.26, 1 / 0.26),
                     metadata={"axes": "ZYX", "spacing": 0.29, "unit": "um"})
    assert main(["denoise", str(src), str(dst), "--model", "tiny", "--device", "cpu"]) == 0
    assert "wrote" in capsys.readouterr().out
    with tifffile.TiffFile(src) as a, tifffile.TiffFile(dst) as b:
        assert b.is_imagej and b.series[0].axes == "ZYX"
        for key in ("spacing", "unit"):
            assert b.imagej_metadata[key] == a.imagej_metadata[key]
        for tag in ("XResolution", "YResolution", "ResolutionUnit"):
            assert b.pages.first.tags[tag].value == a.pages.first.tags[tag].value
        out = b.asarray()
    assert out.dtype == np.uint16 and out.shape == stack.shape
    np.testing.assert_array_equal(out, me.denoise(stack, "tiny", device="cpu"))

    ct = load("ct_slice")[:64, :64]  # a plain (non-ImageJ) TIFF with a physical resolution
    tifffile.imwrite(src, ct, resolution=(1 / 0.0479, 1 / 0.0479), resolutionunit="CENTIMETER")
    assert main(["denoise", str(src), str(dst), "--model", "tiny", "--device", "cpu", "--tile", "48"]) == 0
    with tifffile.TiffFile(dst) as b:
        assert b.pages.first.resolution == pytest.approx((1 / 0.0479, 1 / 0.0479))
        assert b.pages.first.resolutionunit == tifffile.RESUNIT.CENTIMETER
        assert b.asarray().dtype == np.int16


def test_ensemble_through_the_api_the_cli_file_and_folder_modes(tiny, nuclei, tmp_path):
    """``ensemble=True`` / ``--ensemble`` give the same 8-view average whichever way it runs
    (in memory, a file block by block, a folder batch), and it differs from one pass."""
    stack = nuclei[:2, :48, :64]
    ens = me.denoise(stack, "tiny", device="cpu", ensemble=True)
    assert np.abs(ens.astype(int) - me.denoise(stack, "tiny", device="cpu")).max() > 0
    (tmp_path / "in").mkdir()
    src, dst = tmp_path / "in" / "a.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, stack)
    assert main(["denoise", str(src), str(dst), "--model", "tiny", "--device", "cpu", "--ensemble"]) == 0
    np.testing.assert_array_equal(tifffile.imread(dst), ens)
    assert main(["denoise", str(tmp_path / "in"), str(tmp_path / "out"), "--model", "tiny",
                 "--device", "cpu", "--ensemble"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "a.tif"), ens)


def _fails(args, capsys, *needles):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medenhance denoise: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


def test_cli_errors_are_one_line_with_exit_2(tiny, nuclei, tmp_path, capsys):
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, nuclei[:2, :32, :32])
    _fails(["denoise", str(tmp_path / "missing.tif"), str(dst)], capsys, "no such file")
    _fails(["denoise", str(src), str(dst), "--model", "nope"], capsys, "unknown denoise model 'nope'", "tiny")
    bad = tmp_path / "bad.safetensors"
    torch.save(DRAN(**TINY).state_dict(), bad)
    _fails(["denoise", str(src), str(dst), "--model", str(bad)], capsys, "pickled PyTorch checkpoints are refused")
    nan = nuclei[:2, :32, :32].astype(np.float32)
    nan[1, 3, 3] = np.nan
    tifffile.imwrite(src, nan)
    _fails(["denoise", str(src), str(dst), "--model", "tiny", "--device", "cpu"], capsys, "NaN")
    assert not dst.exists()


def test_cli_models_lists_and_adds(tiny, tmp_path, capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "task", "source", "path"]
    assert lines[1].split()[:3] == ["tiny", "denoise", "user"] and lines[1].endswith("tiny.safetensors")
    assert main(["models", "--task", "enhance"]) == 0
    assert "no enhance models installed" in capsys.readouterr().out
    assert main(["models", "--add", str(zoo.get_model("tiny").path), "--name", "copy"]) == 0
    assert [m.name for m in me.list_models()] == ["copy", "tiny"]


# ------------------------------------------------------------------------- the shipped model


@pytest.mark.parametrize("sample", ["nuclei_stack", "ct_slice"])
def test_shipped_dran_loads_and_denoises_real_data(sample):
    """The shipped `dran` (not an isolated test folder): registered, and on real 16-bit
    fluorescence and CT (HU) with σ = 25/255 noise it beats its input by a wide margin, in the
    input's dtype."""
    from napari_medenhance._demo import noisy_copy
    from napari_medenhance.core import zoo
    from napari_medenhance.metrics import psnr
    from napari_medenhance.sample_data import load

    info = zoo.get_model("dran", task="denoise")
    assert info.source == "shipped" and info.arch == "dran"
    assert info.card["storage"] == "fp16" and info.card.get("card_file")
    clean = load(sample)
    clean = clean[10:12] if clean.ndim == 3 else clean
    noisy = noisy_copy(clean, sigma=25.0, seed=3)
    out = me.denoise(noisy)  # the default model
    assert out.dtype == clean.dtype and out.shape == clean.shape
    span = float(clean.max()) - float(clean.min())
    before, after = psnr(clean, noisy, data_range=span), psnr(clean, out, data_range=span)
    assert after > before + 6.0, (before, after)


def test_shipped_dran_denoises_colour_better_through_its_chroma_planes():
    """On a colour photograph that no split uses (scikit-image's ``coffee``), σ 25: the public
    ``denoise()`` (luminance from the colour pass, chroma from the chroma planes as gray images)
    is closer to the clean image than the network's colour pass alone, in uint8."""
    from skimage.data import coffee

    from napari_medenhance.core.training.recipes.denoise import _with_mirrored_border
    from napari_medenhance.metrics import psnr

    clean = coffee()[100:260, 200:360]
    rng = np.random.default_rng(5)
    noisy = np.clip(np.rint(clean + rng.normal(0.0, 25.0, clean.shape)), 0, 255).astype(np.uint8)
    out = me.denoise(noisy)
    assert out.dtype == np.uint8 and out.shape == clean.shape
    net, _ = zoo.load_model("dran", device="cpu", task="denoise")
    x = torch.from_numpy(noisy.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
    with torch.no_grad():
        colour_pass = (x - _with_mirrored_border(net, x)).clamp(0, 1)[0].numpy()
    colour_pass = np.rint(colour_pass.transpose(1, 2, 0) * 255.0).astype(np.uint8)
    gain = psnr(clean, out, data_range=255) - psnr(clean, colour_pass, data_range=255)
    assert gain > 0.2, gain
    assert psnr(clean, out, data_range=255) > psnr(clean, noisy, data_range=255) + 6.0


def test_self_ensemble_of_the_shipped_dran_beats_one_pass_on_real_ct():
    """``ensemble=True`` runs the 8 rotations and flips (8 progress events for the one tile) and
    is closer to the clean CT than one pass, in the input's dtype."""
    from napari_medenhance._demo import noisy_copy
    from napari_medenhance.metrics import psnr

    clean = load("ct_slice")[128:384, 128:384]
    noisy = noisy_copy(clean, sigma=15.0, seed=4)
    span = float(clean.max()) - float(clean.min())
    events = []
    plain = me.denoise(noisy)
    ens = me.denoise(noisy, ensemble=True, progress=events.append)
    assert ens.dtype == clean.dtype and [e.done for e in events] == list(range(1, 9))
    gain = psnr(clean, ens, data_range=span) - psnr(clean, plain, data_range=span)
    assert 0.02 < gain < 1.0, gain
