"""LaMEGAN: the torch Laplacian pyramid (against the numpy / OpenCV-exact one), the 70×70
PatchGAN, the structure-preserving loss, the recipe in the real training loop on unpaired real
planes (resume, validation metrics) and the export of G as a standard ``dpe`` enhance model.

LQ planes are darkened, flattened versions of sample-data regions; HQ planes are *other*
regions of the same images, so the two pools do not correspond (unpaired).
"""

from __future__ import annotations

import numpy as np
import pytest
import safetensors
import torch
from scipy import ndimage as ndi

import napari_medenhance
from napari_medenhance.core import pyramid, zoo
from napari_medenhance.core.nets import ARCHITECTURES, build
from napari_medenhance.core.nets.cycle import CycleGenerators
from napari_medenhance.core.nets.dpe import DPE
from napari_medenhance.core.nets.patchgan import PatchGAN
from napari_medenhance.core.nets.vgg import VGG16Features
from napari_medenhance.core.training import CheckpointError, Plane, Pool, load_checkpoint, train
from napari_medenhance.core.training import laplacian as tlap
from napari_medenhance.core.training.recipes import LaMEGANRecipe, export_generator
from napari_medenhance.core.training.recipes.lamegan import StructureLoss
from napari_medenhance.core.weights import WeightsError, read_header, save_weights
from napari_medenhance.sample_data import load

TINY = {"widths": [8, 12, 16, 20, 24]}
TINY_D = {"widths": [8, 16, 16, 16]}
RUN = {"batch": 2, "patch": 48, "lr": 2e-4, "device": "cpu"}


def _norm(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = np.percentile(a, (0.1, 99.9))
    return np.clip((a - lo) / (hi - lo), 0, 1)


def _degrade(a: np.ndarray) -> np.ndarray:
    """Low quality: blurred, darker and flatter (contrast × 0.45 around a 0.15 floor)."""
    sigma = (1.5, 1.5, 0) if a.ndim == 3 else 1.5
    return np.clip(0.15 + 0.45 * ndi.gaussian_filter(a, sigma), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    return _norm(load("ct_slice"))


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    return load("ihc_rgb").astype(np.float32) / 255


@pytest.fixture(scope="module")
def pools(ct, ihc) -> tuple[Pool, Pool]:
    """(LQ, HQ): left halves degraded vs right halves clean; val = other rows again."""
    lq = Pool(
        train=[Plane("ct[:256, :256]", "CT", _degrade(ct[:256, :256])),
               Plane("ihc[:256, :256]", "colour", _degrade(ihc[:256, :256]))],
        val=[Plane("ct[256:, :256]", "CT", _degrade(ct[256:, :256])),
             Plane("ihc[256:, :256]", "colour", _degrade(ihc[256:, :256]))],
    )
    hq = Pool(
        train=[Plane("ct[:256, 256:]", "CT", ct[:256, 256:]),
               Plane("ihc[:256, 256:]", "colour", ihc[:256, 256:])],
        val=[Plane("ct[256:, 256:]", "CT", ct[256:, 256:]),
             Plane("ihc[256:, 256:]", "colour", ihc[256:, 256:])],
    )
    return lq, hq


@pytest.fixture(scope="module")
def vgg() -> VGG16Features:
    return VGG16Features(("pool2",))


@pytest.fixture(scope="module")
def recipe(pools, vgg) -> LaMEGANRecipe:
    lq, hq = pools
    return LaMEGANRecipe(lq, hq, config=TINY, disc_config=TINY_D, features=vgg, val_crop=64)


def _run(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


# ------------------------------------------------------------------------ Laplacian pyramid


@pytest.mark.parametrize("crop", [(256, 256), (251, 187), (97, 130)])
def test_torch_laplacian_band_matches_numpy_on_real_images(ct, ihc, crop):
    """Every level 0-3, gray CT and each IHC channel, odd and even sizes: float64 to 1e-12,
    float32 to 1e-6 of the numpy band (which the LaSSIM tests pin to OpenCV)."""
    h, w = crop
    planes = [ct[100:100 + h, 50:50 + w]] + [ihc[:h, :w, c] for c in range(3)]
    x64 = torch.from_numpy(np.stack(planes).astype(np.float64))[None]  # 1×4×h×w
    for level in range(4):
        ref = np.stack([pyramid.laplacian_band(p, level) for p in planes])
        got64 = tlap.laplacian_band(x64, level)[0].numpy()
        got32 = tlap.laplacian_band(x64.float(), level)[0].double().numpy()
        assert got64.shape == ref.shape == (4, *tlap.band_shape(crop, level))
        assert np.abs(got64 - ref).max() < 1e-12
        assert np.abs(got32 - ref).max() < 1e-6
        assert np.abs(ref).max() > 1e-3  # a real band, not two zeros agreeing


def test_torch_pyramid_primitives_match_numpy(ct):
    a = ct[200:237, 300:345].astype(np.float64)  # 37×45: odd sides
    t = torch.from_numpy(a)[None, None]
    assert np.abs(tlap.pyr_down(t)[0, 0].numpy() - pyramid.pyr_down(a)).max() < 1e-12
    for dst in [(74, 90), (73, 91), (75, 89)]:  # 2n, 2n∓1 and 2n±1 (OpenCV's asymmetric rule)
        got = tlap.pyr_up(t, dst)[0, 0].numpy()
        assert np.abs(got - pyramid.pyr_up(a, dst)).max() < 1e-12
    with pytest.raises(ValueError, match="not 2"):
        tlap.pyr_up(t, (76, 90))
    tiny = np.array([[0.3, 0.7]])  # sides of 1 and 2: reflect-101 still defined
    assert np.allclose(tlap.pyr_down(torch.from_numpy(tiny)[None, None])[0, 0].numpy(),
                       pyramid.pyr_down(tiny))


def test_torch_laplacian_band_is_differentiable():
    x = torch.rand(1, 1, 19, 22, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: tlap.laplacian_band(t, 2), (x,))


# -------------------------------------------------------------------------------- PatchGAN


def test_patchgan_layout_and_output_shape():
    assert ARCHITECTURES["patchgan"] is PatchGAN
    d = build("patchgan")
    assert sum(p.numel() for p in d.parameters()) == 2_764_737  # CycleGAN's n_layers=3 D
    assert d.receptive_field() == 70 and d.min_input() == 24
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in d.modules()) == 3
    assert not list(d.buffers())  # no running statistics: same in train and eval
    small = PatchGAN(widths=(8, 16, 16, 16))
    with torch.no_grad():
        assert small(torch.zeros(2, 3, 256, 256)).shape == (2, 1, 30, 30)
        assert small(torch.zeros(1, 3, 70, 70)).shape == (1, 1, 6, 6)
        assert small(torch.zeros(1, 3, 24, 40)).shape == (1, 1, 1, 3)
    with pytest.raises(ValueError, match="at least 24"):
        small(torch.zeros(1, 3, 23, 64))


def test_patchgan_output_pixel_sees_exactly_a_70x70_window():
    """Back-propagate one output pixel: the input pixels with a non-zero gradient form exactly
    the 70×70 window the geometry says (without instance norm, whose statistics are global)."""
    torch.manual_seed(0)
    d = PatchGAN(widths=(4, 8, 8, 8), norm="none").double()
    x = torch.randn(1, 3, 160, 160, dtype=torch.float64, requires_grad=True)
    out = d(x)
    i, j = 9, 12
    out[0, 0, i, j].backward()
    support = x.grad[0].abs().sum(0) > 0
    rows, cols = np.nonzero(support.numpy())
    # total padding offset: 1 (conv1) + 2 + 4 + 8 + 8 (each pad of 1, at the input scale)
    assert (rows.min(), rows.max()) == (8 * i - 23, 8 * i - 23 + 69)
    assert (cols.min(), cols.max()) == (8 * j - 23, 8 * j - 23 + 69)
    assert support.sum() == 70 * 70


# ------------------------------------------------------------------------- structure loss


def _signed(a: np.ndarray) -> torch.Tensor:
    chw = a.transpose(2, 0, 1) if a.ndim == 3 else np.broadcast_to(a, (3, *a.shape))
    return torch.from_numpy(np.ascontiguousarray(chw) * 2 - 1)[None].float()


def test_structure_loss_zero_for_identical_positive_for_changed_structure(ct, ihc, vgg):
    loss = StructureLoss(vgg, level=3)
    assert loss.min_size() == 25
    x = torch.cat([_signed(ct[150:214, 150:214]), _signed(ihc[300:364, 100:164])])
    assert float(loss(x, x)) == 0.0
    # A brightness shift leaves every Laplacian band unchanged: free. Blur changes structure.
    assert float(loss(x + 0.2, x)) < 1e-5
    blurred = torch.from_numpy(ndi.gaussian_filter(x.numpy(), (0, 0, 4, 4)))
    changed = float(loss(blurred, x))
    assert changed > 0.01
    y = blurred.clone().requires_grad_(True)
    loss(y, x).backward()
    assert y.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 25"):
        loss(x[..., :24, :24], x[..., :24, :24])


# ------------------------------------------------------------------------ recipe and loop


def test_batches_are_unpaired_lq_and_hq_patches(recipe):
    x, y = recipe.sample_batch(np.random.default_rng(0), 6, 48)
    assert x.shape == y.shape == (6, 3, 48, 48) and x.dtype == torch.float32
    assert -1 <= float(x.min()) and float(x.max()) <= 1
    assert float(x.std()) < float(y.std())  # LQ is the flattened domain
    x2, y2 = recipe.sample_batch(np.random.default_rng(0), 6, 48)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match="patch >= 25"):
        recipe.sample_batch(np.random.default_rng(0), 2, 24)


def test_validation_of_the_identity_map_scores_zero(recipe):
    """Doing nothing keeps all structure (LaSSIM 1) and closes none of the LQ → HQ gap."""
    m, preview = recipe.validate(torch.nn.Identity())
    assert m["lassim"] == pytest.approx(1.0)
    assert m["hq_distance"] == pytest.approx(m["input_hq_distance"])
    assert m["input_hq_distance"] > 0.05
    assert m["score"] == pytest.approx(0.0, abs=1e-9)
    assert m["mean_diff"] < 0 and m["std_diff"] < 0  # LQ: darker and flatter than HQ
    assert preview.shape == (64, 64) and preview.dtype == np.float32


def test_tiny_run_resumes_exactly_and_exports_an_enhance_model(recipe, ct, tmp_path, monkeypatch):
    n, k = 4, 2
    events_a, res = _run(train(recipe, steps=n, out_dir=tmp_path / "a", val_every=2,
                               ckpt_every=0, **RUN))
    steps = [e for e in events_a if e.kind == "step"]
    assert [e.step for e in steps] == [1, 2, 3, 4]
    assert {"adv", "cycle", "structure", "g_total", "d_hq", "d_lq"} <= set(steps[-1].losses)
    assert all(np.isfinite(v) for e in steps for v in e.losses.values())
    val = [e for e in events_a if e.kind == "validation"]
    assert [e.step for e in val] == [0, 2, 4]
    assert {"score", "lassim", "hq_distance", "input_hq_distance", "mean_diff",
            "std_diff"} <= set(val[-1].metrics)
    assert res.metric == "score" and res.best_path is not None

    # stop after k steps, resume: the step count continues and the result is bit-identical
    done = []
    for ev in train(recipe, steps=n, out_dir=tmp_path / "b", val_every=2, ckpt_every=0,
                    cancel=lambda: len(done) >= k, **RUN):
        if ev.kind == "step":
            done.append(ev.step)
    ck = load_checkpoint(tmp_path / "b" / "last.safetensors")
    assert ck.step == k and ck.extras.keys() == {"d_hq", "d_lq"}
    assert ck.identity["arch"] == "cycle_dpe" and ck.identity["objective"]["cycle_weight"] == 10
    assert ck.optimizer["param_groups"][0]["betas"] == (0.5, 0.999)
    events_b, _ = _run(train(recipe, steps=n, out_dir=tmp_path / "b", val_every=2,
                             ckpt_every=0, **RUN))
    assert [e.step for e in events_b if e.kind == "step"] == [3, 4]
    with safetensors.safe_open(str(tmp_path / "a" / "last.safetensors"), framework="pt") as fa, \
            safetensors.safe_open(str(tmp_path / "b" / "last.safetensors"), framework="pt") as fb:
        assert set(fa.keys()) == set(fb.keys())
        assert any(key.startswith("extra/d_lq/optim/") for key in fa.keys())
        for key in fa.keys():
            assert torch.equal(fa.get_tensor(key), fb.get_tensor(key)), key

    # export G from the checkpoint and from best.safetensors: standard dpe enhance models
    net = CycleGenerators(**recipe.config)
    net.load_state_dict(load_checkpoint(tmp_path / "a" / "last.safetensors").model)
    out = export_generator(tmp_path / "a" / "last.safetensors", tmp_path / "g.safetensors",
                           name="lamegan-test", meta={"data": "sample CT / IHC"})
    header = read_header(out, expected_arch="dpe")
    assert header["config"] == recipe.config and header["meta"]["task"] == "enhance"
    assert header["meta"]["name"] == "lamegan-test" and header["meta"]["lamegan"]["step"] == n
    assert not any(t.startswith(("g.", "f.")) for t in header["tensors"])
    best = export_generator(res.best_path, tmp_path / "g_best.safetensors", dtype=torch.float16)
    assert "metrics" in read_header(best)["meta"]["lamegan"]

    monkeypatch.setenv(zoo.MODELS_DIR_ENV, str(tmp_path / "models"))
    zoo.clear_cache()
    model, info = zoo.load_model(out, task="enhance")
    assert isinstance(model, DPE) and info.arch == "dpe" and info.name == "lamegan-test"
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), net.g(x))  # the exported file is G, exactly
    image = (ct[100:157, 200:271] * 4095).astype(np.uint16)
    enhanced = napari_medenhance.enhance(image, model=out, device="cpu")
    assert enhanced.shape == image.shape and enhanced.dtype == np.uint16
    assert not np.array_equal(enhanced, image)
    # best.safetensors itself (both generators, forward = G) also runs as an enhance model
    both = napari_medenhance.enhance(image, model=res.best_path, device="cpu")
    assert both.shape == image.shape
    zoo.clear_cache()


def test_checkpoint_of_another_objective_is_refused(pools, vgg, recipe, tmp_path):
    _run(train(recipe, steps=1, out_dir=tmp_path, val_every=0, **RUN))
    lq, hq = pools
    other = LaMEGANRecipe(lq, hq, config=TINY, disc_config=TINY_D, features=vgg, val_crop=64,
                          structure_weight=0.0)
    with pytest.raises(CheckpointError, match="objective"):
        next(train(other, steps=2, out_dir=tmp_path, **RUN))


def test_init_generator_and_export_sources(pools, vgg, tmp_path):
    torch.manual_seed(1)
    g = DPE(**TINY)
    save_weights(tmp_path / "start.safetensors", g, arch="dpe", config=TINY,
                 meta={"task": "enhance"})
    lq, hq = pools
    r = LaMEGANRecipe(lq, hq, config=TINY, disc_config=TINY_D, features=vgg, val_crop=64,
                      init_generator=tmp_path / "start.safetensors")
    net = r.build()
    for a, b in zip(net.g.state_dict().values(), g.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.equal(net.f.head.weight, g.head.weight)  # F starts fresh
    header = read_header(export_generator(net, tmp_path / "n.safetensors"))
    assert header["arch"] == "dpe" and header["config"] == r.config
    read_header(export_generator(net.g, tmp_path / "g.safetensors"), expected_arch="dpe")
    with pytest.raises(ValueError, match="enhance"):
        export_generator(net, tmp_path / "x.safetensors", meta={"task": "denoise"})
    with pytest.raises(ValueError, match="CycleGenerators"):
        export_generator(torch.nn.Conv2d(3, 3, 1), tmp_path / "x.safetensors")
    save_weights(tmp_path / "d.safetensors", PatchGAN(**TINY_D), arch="patchgan", config=TINY_D)
    with pytest.raises(WeightsError, match="LaMEGAN"):
        export_generator(tmp_path / "d.safetensors", tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="unknown DPE config"):
        LaMEGANRecipe(lq, hq, config={"width": 8}, features=vgg)
    with pytest.raises(ValueError, match="no validation planes"):
        LaMEGANRecipe(lq, Pool(train=hq.train, val=[]), features=vgg)
