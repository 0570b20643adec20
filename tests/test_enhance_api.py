"""``napari_medenhance.enhance`` / ``iter_enhance`` with a small, untrained DPE.

These check the plumbing (the [-1, 1] adapter, shapes, dtypes, padding, planes, progress,
cancel, errors), not enhancement quality: no trained DPE weights exist yet.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch

import napari_medenhance as me
from napari_medenhance import api
from napari_medenhance.api import iter_enhance
from napari_medenhance.core import zoo
from napari_medenhance.core.engine import Cancelled
from napari_medenhance.core.jobs import drive
from napari_medenhance.core.nets.dpe import DPE
from napari_medenhance.core.nets.dran import DRAN
from napari_medenhance.core.weights import save_weights
from napari_medenhance.sample_data import load

from _tiny_models import save_tiny_dpe


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """(user, shipped) model folders, both empty."""
    user, shipped = tmp_path / "user", tmp_path / "shipped"
    user.mkdir()
    monkeypatch.setenv(zoo.MODELS_DIR_ENV, str(user))
    monkeypatch.setattr(zoo, "shipped_models_dir", lambda: shipped)
    zoo.clear_cache()
    yield user, shipped
    zoo.clear_cache()


@pytest.fixture
def tiny(folders) -> DPE:
    """A small DPE registered as the user's enhance model 'tiny'."""
    return save_tiny_dpe(folders[0] / "tiny.safetensors")


def _check_same_kind(out, inp):
    assert isinstance(out, np.ndarray) and out.shape == inp.shape and out.dtype == inp.dtype


def test_exported_lazily_from_the_package():
    assert me.enhance is api.enhance and "enhance" in dir(me)


def test_uint16_stack_shape_dtype_progress_and_input_untouched(tiny, nuclei):
    stack = nuclei[:4, :64, :72].copy()  # 72 is not a multiple of the 16-px padding
    before = stack.copy()
    events = []
    out = me.enhance(stack, "tiny", device="cpu", progress=events.append)
    _check_same_kind(out, stack)
    np.testing.assert_array_equal(stack, before)
    assert [e.done for e in events] == [1, 2, 3, 4] and {e.total for e in events} == {4}
    assert out.min() >= stack.min() and out.max() <= stack.max()  # the input's intensity scale
    assert np.any(out != stack)


def test_int16_ct_and_rgb_uint8(tiny):
    ct = load("ct_slice")[100:164, 150:214]
    assert ct.min() < 0  # Hounsfield units: the signed range must survive
    out = me.enhance(ct, "tiny", device="cpu")
    _check_same_kind(out, ct)
    assert out.min() >= ct.min() and out.max() <= ct.max()
    rgb = load("ihc_rgb")[:96, :80]
    events = []
    out = me.enhance(rgb, "tiny", device="cpu", tile=64, progress=events.append)
    _check_same_kind(out, rgb)
    assert len(events) == events[-1].total == 4  # 2 x 2 tiles (64 px, overlap 32)
    assert np.any(out != rgb)


def test_output_is_the_network_on_minus_one_to_one(tiny):
    """Floats in [0, 1] go in as 2x - 1; the output comes back as (y + 1) / 2, channel-averaged.

    X = 40 is reflect-padded (right) to DPE's multiple of 16 and cropped back, as the engine does.
    """
    img = np.random.default_rng(0).random((48, 40)).astype(np.float32)
    out = me.enhance(img, "tiny", device="cpu")
    x = torch.from_numpy(np.pad(img, ((0, 0), (0, 8)), mode="reflect")).expand(3, -1, -1)[None]
    with torch.no_grad():
        y = ((tiny(x * 2 - 1) + 1) / 2)[0, :, :, :40]
    expect = y.double().mean(0).clamp(0, 1).numpy()
    np.testing.assert_allclose(out, expect, atol=2e-6)


def test_one_plane_matches_the_stack_result_and_dask(tiny, nuclei):
    stack = nuclei[:5, :64, :64]
    full = me.enhance(stack, "tiny", device="cpu")
    gen = iter_enhance(stack, "tiny", device="cpu", plane=(3,))
    events = []
    plane = drive(gen, events.append)
    assert len(events) == 1 and plane.shape == (64, 64)
    np.testing.assert_array_equal(plane, full[3])
    lazy = da.from_array(stack, chunks=(1, 64, 64))
    np.testing.assert_array_equal(me.enhance(lazy, "tiny", device="cpu"), full)
    with pytest.raises(ValueError, match="leading axes"):
        next(iter_enhance(stack, "tiny", device="cpu", plane=(1, 2)))


def test_cancel_raises(tiny, nuclei):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        me.enhance(nuclei[:5, :32, :32], "tiny", device="cpu", cancel=cancel)
    assert len(calls) == 3


def test_missing_dpe_weights_say_how_to_add_a_model(folders):
    user, _ = folders
    with pytest.raises(ValueError) as info:
        me.enhance(np.zeros((16, 16), np.uint8))
    msg = str(info.value)
    assert "unknown enhance model 'dpe'; no enhance models are installed" in msg
    assert "'dpe' weights are not bundled yet" in msg
    assert "medenhance models --add FILE.safetensors --name NAME" in msg and str(user) in msg
    save_tiny_dpe(user / "mine.safetensors")
    with pytest.raises(ValueError, match=r"available enhance models: mine\b"):
        me.enhance(np.zeros((16, 16), np.uint8))


def test_a_denoise_model_is_refused(folders):
    user, _ = folders
    tiny_dran = {"features": 8, "blocks": 1, "layers_per_block": 1, "kernels": 2}
    save_weights(user / "den.safetensors", DRAN(**tiny_dran), arch="dran", config=tiny_dran,
                 meta={"task": "denoise"})
    with pytest.raises(ValueError, match="is a 'denoise' model, not a 'enhance' model"):
        me.enhance(np.zeros((16, 16), np.uint8), "den", device="cpu")
    assert me.list_models("enhance") == []


# ------------------------------------------------------------------------- the shipped model


@pytest.mark.parametrize("sample", ["mr_slice", "ihc_rgb"])
def test_shipped_dpe_enhances_a_degraded_real_image(sample):
    """The shipped `dpe` (not an isolated test folder): registered, and a real 16-bit MR slice
    and the 8-bit IHC image, degraded by Algorithm 1 (noise σ 6/255, contrast 0.4, brightness
    0.5: darker, flatter, noisy) and stored in their own dtype, come back in that dtype far
    closer to the clean image than the degraded input and than the 2–98 % stretch."""
    from napari_medenhance.core import zoo
    from napari_medenhance.core.degrade import Degradation, apply_degradation
    from napari_medenhance.core.training.recipes.enhance import percentile_stretch
    from napari_medenhance.metrics import psnr
    from napari_medenhance.sample_data import load

    info = zoo.get_model("dpe", task="enhance")
    assert info.source == "shipped" and info.arch == "dpe"
    assert info.card.get("card_file")  # its model card beside it
    clean = load(sample)
    rgb = clean.ndim == 3
    # the training pool's intensities: 8-bit colour / 255, anything else its 0.1-99.9 % range
    lo, hi = (0.0, 255.0) if rgb else tuple(float(v) for v in np.percentile(clean, (0.1, 99.9)))
    unit = np.clip((clean.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    d = apply_degradation(unit, Degradation(6 / 255, 0.4, 0.5), np.random.default_rng(0))
    degraded = np.rint(d * (hi - lo) + lo).astype(clean.dtype)
    out = me.enhance(degraded, data_range=(lo, hi))  # the default model
    assert out.dtype == clean.dtype and out.shape == clean.shape

    def score(a: np.ndarray) -> float:
        return psnr(unit, np.clip((a.astype(np.float64) - lo) / (hi - lo), 0, 1),
                    data_range=1.0, rgb=rgb)

    stretched = percentile_stretch(degraded.astype(np.float32)) * (hi - lo) + lo
    before, classical, after = score(degraded), score(stretched), score(out)
    assert after > before + 10.0 and after > classical + 2.0, (before, classical, after)
