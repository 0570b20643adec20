"""Super-resolution: SRResNet and MS-GAN generators, the WGAN-GP critic, the registry's SR
models, the LR simulation, the lesion-focused sampler on a real MR slice, the SR recipe in the
real training loop, and ``napari_medenhance.super_resolve``.

Tiny CPU runs on real planes from the shipped sample data.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_medenhance as me
from napari_medenhance.core import runtime, zoo
from napari_medenhance.core.nets import ARCHITECTURES, build
from napari_medenhance.core.nets.discriminators import WGANCritic
from napari_medenhance.core.nets.srresnet import MSGANGenerator, SRResNet, bicubic_up
from napari_medenhance.core.training import Plane, Pool, load_checkpoint, train
from napari_medenhance.core.training.recipes import SRRecipe
from napari_medenhance.core.training.recipes.sr import (
    MARGIN,
    LesionPatchSampler,
    blur3,
    downsample,
    gradient_penalty,
)
from napari_medenhance.core.weights import WeightsError, read_header, save_weights
from napari_medenhance.sample_data import load

TINY = {"features": 8, "blocks": 1, "blocks_x2": 1}
TINY_C = {"widths": [8, 8, 16, 16]}


def _norm(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = np.percentile(a, (0.1, 99.9))
    return np.clip((a - lo) / (hi - lo), 0, 1)


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    return _norm(load("ct_slice"))


@pytest.fixture(scope="module")
def mr() -> np.ndarray:
    return _norm(load("mr_slice"))


def _run(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


# ------------------------------------------------------------------------------ networks


def test_parameter_counts_and_registry():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(SRResNet()) == 1_545_238
    assert count(MSGANGenerator()) == 1_893_149
    assert count(MSGANGenerator(output_scale=2)) == 1_397_525
    assert ARCHITECTURES["srresnet"] is SRResNet and ARCHITECTURES["msgan"] is MSGANGenerator
    assert isinstance(build("wgan_critic"), WGANCritic)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in SRResNet().modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in SRResNet(batch_norm=True).modules())
    with pytest.raises(ValueError, match="output_scale must be 2"):
        MSGANGenerator(output_scale=3)


@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (17, 9)])
def test_any_size_gives_exactly_2x_and_4x(hw):
    torch.manual_seed(0)
    h, w = hw
    x = torch.rand(2, 3, h, w)
    ms = MSGANGenerator(**TINY).eval()
    with torch.no_grad():
        y2, y4 = ms.forward_multi(x)
        assert y2.shape == (2, 3, 2 * h, 2 * w) and y4.shape == (2, 3, 4 * h, 4 * w)
        torch.testing.assert_close(ms(x), y4)
        for scale in (2, 4):
            sr = SRResNet(features=8, blocks=1, scale=scale).eval()
            assert sr(x).shape == (2, 3, scale * h, scale * w)
    with pytest.raises(ValueError, match="B×3×H×W"):
        ms(torch.zeros(1, 1, 8, 8))


def test_the_x2_model_is_the_x2_head_of_the_x4_network():
    """msgan-x2 = the ×4 network's weights up to its ×2 head (what train_sr.py exports)."""
    torch.manual_seed(0)
    full = MSGANGenerator(**TINY).eval()
    half = MSGANGenerator(**TINY, output_scale=2).eval()
    half.load_state_dict({k: v for k, v in full.state_dict().items() if k in half.state_dict()},
                         strict=True)
    x = torch.rand(1, 3, 11, 6)
    with torch.no_grad():
        torch.testing.assert_close(half(x), full.forward_multi(x)[0])
        torch.testing.assert_close(half(x), full.forward_x2(x))
    with pytest.raises(ValueError, match="output_scale=4"):
        half.forward_multi(x)


def test_critic_has_no_batch_norm_and_scores_any_size():
    c = WGANCritic()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in c.modules())
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in c.modules()) == 7
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in WGANCritic(norm="none").modules())
    small = WGANCritic(widths=TINY_C["widths"])
    for h, w in ((1, 1), (13, 7), (32, 32)):
        assert small(torch.rand(3, 3, h, w)).shape == (3, 1)
    # per-sample scores: a sample's score does not depend on the rest of the batch (no BN)
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(small(x)[:1], small(x[:1]))
    with pytest.raises(ValueError, match="batch norm"):
        WGANCritic(norm="batch")


def test_gradient_penalty_of_a_linear_critic():
    """C(x) = <w, x> has gradient w everywhere: the penalty is (‖w‖ - 1)² exactly."""
    lin = torch.nn.Conv2d(3, 1, 4, bias=False)  # on a 4×4 input: one output = <w, x>
    with torch.no_grad():
        lin.weight.copy_(torch.full_like(lin.weight, 0.25))  # ‖w‖ = 0.25·√48
    critic = torch.nn.Sequential(lin, torch.nn.Flatten())
    gp = gradient_penalty(critic, torch.rand(5, 3, 4, 4), torch.rand(5, 3, 4, 4))
    assert float(gp.detach()) == pytest.approx((0.25 * 48**0.5 - 1) ** 2, rel=1e-5)


# ------------------------------------------------------------------------------ registry


def test_registry_knows_sr_models_and_their_factor(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.MODELS_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(zoo, "shipped_models_dir", lambda: tmp_path / "none")
    zoo.clear_cache()
    torch.manual_seed(0)
    for f in (2, 4):
        cfg = {**TINY, "output_scale": f}
        save_weights(tmp_path / f"m-x{f}.safetensors", MSGANGenerator(**cfg), arch="msgan",
                     config=cfg, meta={"name": f"m-x{f}"})  # no task / scale: read from the arch
    save_weights(tmp_path / "s.safetensors", SRResNet(features=8, blocks=1, scale=2), arch="srresnet",
                 config={"features": 8, "blocks": 1, "scale": 2}, meta={"name": "s"})
    got = {m.name: (m.task, m.scale) for m in zoo.list_models("sr")}
    assert got == {"m-x2": ("sr", 2), "m-x4": ("sr", 4), "s": ("sr", 2)}
    assert runtime.engine_kwargs(zoo.get_model("m-x4"))["scale"] == 4
    assert runtime.engine_kwargs(zoo.get_model("m-x2"))["scale"] == 2
    cfg = {**TINY, "output_scale": 2}
    save_weights(tmp_path / "liar.safetensors", MSGANGenerator(**cfg), arch="msgan", config=cfg,
                 meta={"task": "sr", "scale": 4, "name": "liar"})
    with pytest.raises(WeightsError, match="scale 4 but its 'msgan' config builds a ×2"):
        zoo.get_model("liar")
    zoo.clear_cache()


def test_super_resolve_api(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.MODELS_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(zoo, "shipped_models_dir", lambda: tmp_path / "none")
    zoo.clear_cache()
    torch.manual_seed(0)
    cfg = {**TINY, "output_scale": 2}
    net = MSGANGenerator(**cfg).eval()
    save_weights(tmp_path / "mine.safetensors", net, arch="msgan", config=cfg, meta={"name": "mine"})
    mr = load("mr_slice")  # uint16, 12-bit
    events = []
    outs = me.super_resolve(mr, 2, "mine", roi=[(100, 140, 200, 233), (1000, 1100, 0, 9)],
                            device="cpu", progress=events.append)
    assert [o.shape for o in outs] == [(80, 66), (48, 18)] and outs[0].dtype == np.uint16
    assert events[-1].done == events[-1].total == 2 and "ROI 2/2" in events[-1].stage
    # an ROI is mapped with the whole image's intensity range, not its own: equal to the
    # network run by hand on the crop with that mapping
    lo, hi = float(mr.min()), float(mr.max())
    x = torch.from_numpy(((mr[100:140, 200:233] - lo) / (hi - lo)).astype(np.float32)).expand(3, -1, -1)[None]
    with torch.no_grad():
        y = net(x)[0].double().mean(0).clamp(0, 1).numpy() * (hi - lo) + lo
    np.testing.assert_array_equal(outs[0], np.rint(y).astype(np.uint16))
    single = me.super_resolve(mr[:30, :21], 2, "mine", device="cpu")
    assert single.shape == (60, 42)
    # the self-ensemble: 8 views per tile, counted over the ROIs; each view turned back in place
    events.clear()
    ens = me.super_resolve(mr, 2, "mine", roi=[(100, 140, 200, 233), (1000, 1100, 0, 9)],
                           device="cpu", progress=events.append, ensemble=True)
    assert [e.done for e in events] == list(range(1, 17)) and events[-1].total == 16
    views = []
    for k in range(4):
        for flip in (False, True):
            v = torch.rot90(x, k, (-2, -1))
            v = v.flip(-1) if flip else v
            with torch.no_grad():
                o = net(v)
            o = o.flip(-1) if flip else o
            views.append(torch.rot90(o, -k, (-2, -1))[0].double().mean(0))
    y8 = (sum(views) / 8).clamp(0, 1).numpy() * (hi - lo) + lo
    assert np.abs(ens[0].astype(int) - np.rint(y8)).max() <= 1
    assert np.abs(ens[0].astype(int) - outs[0]).max() > 1
    stack = load("nuclei_stack")[:3, :20, :24]
    sub = me.api.iter_super_resolve(stack, 2, "mine", (2, 12, 4, 10), device="cpu", planes=(slice(1, 3),))
    _, res = _run(sub)
    assert res.shape == (2, 20, 12)
    with pytest.raises(ValueError, match="upscales ×2, not ×4; pass scale=2"):
        me.super_resolve(mr, 4, "mine", device="cpu")
    with pytest.raises(ValueError, match="outside the image"):
        me.super_resolve(mr, 2, "mine", roi=(2000, 2100, 0, 5), device="cpu")
    with pytest.raises(ValueError, match="empty"):
        me.super_resolve(mr, 2, "mine", roi=(5, 5, 0, 5), device="cpu")
    with pytest.raises(ValueError, match="at least 2×2"):
        me.super_resolve(mr, 2, "mine", roi=(0, 1, 0, 5), device="cpu")
    with pytest.raises(ValueError, match="msgan-x4"):
        me.super_resolve(mr, 4, device="cpu")  # the default model is not installed here
    zoo.clear_cache()


# ------------------------------------------------------------------------------ degradation


def test_lr_is_aligned_with_the_bicubic_enlargement():
    """The LR pixel grid is the one the networks' bicubic residual and the ROI placement assume:
    LR pixel i is centred on HR coordinate 4i + 1.5 (antialiased bicubic reproduces a ramp
    there exactly), and enlarging it back leaves no mean offset (torch's a = -0.75 cubic does not
    reproduce ramps exactly, but its error is symmetric; a misaligned grid would leave a
    constant error of slope × shift)."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    ramp = (0.004 * yy + 0.009 * xx)[None, None].expand(1, 3, -1, -1)
    lr = downsample(ramp, 4)
    c = torch.arange(16.0) * 4 + 1.5
    expect = (0.004 * c[:, None] + 0.009 * c[None, :])[None, None]
    torch.testing.assert_close(lr[..., 2:-2, 2:-2], expect[..., 2:-2, 2:-2].expand(1, 3, -1, -1),
                               atol=1e-5, rtol=0)
    err = (bicubic_up(lr, 4) - ramp)[..., 16:-16, 16:-16]
    assert abs(float(err.mean())) < 1e-5 < float(err.abs().max())
    flat = torch.full((1, 3, 8, 8), 0.3)
    torch.testing.assert_close(blur3(flat), flat)
    noisy = ramp + torch.rand_like(ramp)
    assert not torch.equal(downsample(noisy, 4, kernel="blur3"), downsample(noisy, 4))
    with pytest.raises(ValueError, match="multiples of 4"):
        downsample(torch.zeros(1, 3, 10, 12), 4)
    with pytest.raises(ValueError, match="unknown LR kernel 'box'"):
        downsample(ramp, 4, kernel="box")


@pytest.mark.parametrize("factor", [2, 4])
def test_the_gaussian_kernel_is_scikit_images_antialiased_resize(mr, factor):
    """The 'gaussian' LR kernel is what a user's `skimage.transform.resize(..., anti_aliasing=True)`
    makes, plane by plane, and it keeps the grid of the other kernels: on a ramp, LR pixel i is
    centred on HR coordinate f·i + (f − 1)/2."""
    from skimage.transform import resize

    hr = np.ascontiguousarray(mr[400:464, 300:364], np.float32)  # the humeral head: structure
    assert hr.std() > 0.05
    t = torch.from_numpy(np.stack([hr, hr[::-1], hr.T]))[None]
    lr = downsample(t, factor, kernel="gaussian")
    assert lr.shape == (1, 3, 64 // factor, 64 // factor) and lr.dtype == torch.float32
    for c, plane in enumerate((hr, hr[::-1], hr.T)):
        ref = resize(plane, (64 // factor, 64 // factor), anti_aliasing=True)
        np.testing.assert_allclose(lr[0, c].numpy(), ref, atol=1e-6)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    ramp = (0.004 * yy + 0.009 * xx)[None, None]
    c = torch.arange(64.0 / factor) * factor + (factor - 1) / 2
    expect = 0.004 * c[:, None] + 0.009 * c[None, :]
    inner = slice(4 // factor + 1, -(4 // factor + 1))
    torch.testing.assert_close(downsample(ramp, factor, kernel="gaussian")[0, 0][inner, inner],
                               expect[inner, inner], atol=1e-5, rtol=0)
    # a different kernel: same grid, different blur
    assert float((downsample(t, factor) - lr).abs().max()) > 1e-3


# ------------------------------------------------------------------------------ sampling


def test_lesion_focused_sampler_never_returns_background_dominated_patches(mr):
    """On the real MR slice (a shoulder: a third of it is air) every patch is at most half
    background, judged on the raw pixels, while plain random windows often are not."""
    plane = Plane("mr", "MR", mr)
    patch = 64
    sampler = LesionPatchSampler([plane], patch, margin=MARGIN)
    rng = np.random.default_rng(0)

    def air(p):  # raw, unsmoothed: 2 % of the range, as the sampler's level
        return float(np.mean(p <= 0.02))

    drawn = []
    for _ in range(1000):
        _, y0, x0 = sampler.draw(rng)
        drawn.append(air(mr[y0 : y0 + patch, x0 : x0 + patch]))
    assert max(drawn) <= 0.5, max(drawn)
    win = sampler.sample_one(rng)
    assert win.shape == (patch + 2 * MARGIN,) * 2
    # the same test catches random windows: many of them are mostly air
    rand = [air(mr[y : y + patch, x : x + patch])
            for y, x in rng.integers(0, 1024 - patch, size=(300, 2))]
    assert np.mean(np.array(rand) > 0.5) > 0.2
    # structure: centres are on strong gradients, so patches vary more than random ones
    assert np.median([mr[y0 : y0 + patch, x0 : x0 + patch].std()
                      for _, y0, x0 in (sampler.draw(rng) for _ in range(100))]) > \
        np.median([mr[y : y + patch, x : x + patch].std() for y, x in rng.integers(0, 960, (100, 2))])


def test_smooth_share_also_draws_patches_off_the_structure(mr):
    """With ``smooth_share`` some patches come from smooth tissue (what the network must learn
    to leave smooth), still never mostly background; without it the draws are as before."""
    plane = Plane("mr", "MR", mr)
    patch = 64

    def draws(sampler, seed=0, n=400):
        rng = np.random.default_rng(seed)
        return [sampler.draw(rng) for _ in range(n)]

    def grad(d):  # mean gradient magnitude of a drawn patch
        _, y0, x0 = d
        gy, gx = np.gradient(mr[y0 : y0 + patch, x0 : x0 + patch])
        return float(np.hypot(gy, gx).mean())

    edges = LesionPatchSampler([plane], patch, margin=MARGIN)
    mixed = LesionPatchSampler([plane], patch, margin=MARGIN, smooth_share=0.5)
    assert draws(LesionPatchSampler([plane], patch, margin=MARGIN, smooth_share=0.0)) == draws(edges)
    g_edges = [grad(d) for d in draws(edges)]
    g_mixed = [grad(d) for d in draws(mixed)]
    low = np.quantile(g_edges, 0.05)  # smoother than nearly every structure-centred patch
    assert np.mean(np.array(g_mixed) < low) > 0.1
    assert max(float(np.mean(mr[y0 : y0 + patch, x0 : x0 + patch] <= 0.02))
               for _, y0, x0 in draws(mixed)) <= 0.5
    with pytest.raises(ValueError, match="smooth_share"):
        LesionPatchSampler([plane], patch, smooth_share=1.5)


def test_lesion_masks_centre_the_patches(mr):
    mask = np.zeros(mr.shape, np.uint8)
    mask[400:420, 300:330] = 1  # a small "lesion" in the humeral head
    planes = [Plane("mr", "MR", mr), Plane("mr-copy", "MR", mr)]
    sampler = LesionPatchSampler(planes, 48, masks={"mr": mask})
    assert sampler.sources == ["mask", "structure"]
    rng = np.random.default_rng(1)
    on_lesion_plane = 0
    for _ in range(100):
        i, y0, x0 = sampler.draw(rng)
        if i == 0:
            on_lesion_plane += 1
            cy, cx = y0 + 24, x0 + 24
            assert 400 - 8 <= cy < 420 + 8 and 300 - 8 <= cx < 330 + 8  # centre on the lesion
            assert mask[y0 : y0 + 48, x0 : x0 + 48].any()
    assert 30 < on_lesion_plane < 70  # planes of one modality by area, lesion or not
    with pytest.raises(ValueError, match="unknown planes"):
        LesionPatchSampler(planes, 48, masks={"nope": mask})
    with pytest.raises(ValueError, match="no plane has"):
        LesionPatchSampler([Plane("air", "MR", np.zeros((100, 100), np.float32))], 32)


# ------------------------------------------------------------------------------ recipe + loop


@pytest.fixture(scope="module")
def ct_pool(ct) -> Pool:
    """Train on the left half of the real CT slice, validate on the right half."""
    return Pool(train=[Plane("ct[:, :256]", "CT", ct[:, :256])],
                val=[Plane("ct[:, 256:]", "CT", ct[:, 256:])])


def test_batches_are_aligned_lr_hr_pairs(ct_pool):
    r = SRRecipe(ct_pool, mode="srresnet", config={"features": 8, "blocks": 1}, val_crop=64)
    lr, hr = r.sample_batch(np.random.default_rng(0), 6, 32)
    assert lr.shape == (6, 3, 8, 8) and hr.shape == (6, 3, 32, 32)
    assert 0 <= float(hr.min()) and float(hr.max()) <= 1
    assert (hr[:, 0] == hr[:, 2]).all()  # gray replicated
    # LR is the HR's own downsampling (made with real context, so it differs from downsampling
    # the cut patch only near the border)
    inner = downsample(hr, 4)[..., 2:-2, 2:-2]
    torch.testing.assert_close(lr[..., 2:-2, 2:-2], inner, atol=2e-6, rtol=0)
    lr2, _ = r.sample_batch(np.random.default_rng(0), 6, 32)
    assert torch.equal(lr, lr2)
    with pytest.raises(ValueError, match="multiple of 4"):
        r.sample_batch(np.random.default_rng(0), 2, 30)
    assert r.objective["lr"] == "bicubic-antialias/4" and r.build_extras() == {}
    blurred = SRRecipe(ct_pool, mode="srresnet", config={"features": 8, "blocks": 1},
                       val_crop=64, kernels=("blur3",))
    assert blurred.objective != r.objective
    with pytest.raises(ValueError, match="kernels must be a non-empty subset"):
        SRRecipe(ct_pool, mode="srresnet", kernels=("bicubic", "nearest"))
    with pytest.raises(ValueError, match="unknown mode"):
        SRRecipe(ct_pool, mode="esrgan")
    with pytest.raises(ValueError, match="trains at ×4"):
        SRRecipe(ct_pool, config={"output_scale": 2}, critic_config=TINY_C)


def test_a_kernel_mix_draws_each_kernel_per_patch_and_validates_each(ct_pool):
    """With several kernels every LR patch is its own HR patch downsampled by ONE of them (all
    of them used over a batch), and validation reports every kernel, on the windows and, with
    ``whole=True``, on the whole planes too."""
    kernels = ("bicubic", "gaussian", "blur3")
    r = SRRecipe(ct_pool, mode="srresnet", config={"features": 8, "blocks": 1}, val_crop=64,
                 kernels=kernels)
    assert r.objective["lr"].count("|") == 2
    lr, hr = r.sample_batch(np.random.default_rng(1), 12, 32)
    inner = (..., slice(2, -2), slice(2, -2))
    used = []
    for i in range(12):
        err = {k: float((downsample(hr[i : i + 1], 4, kernel=k)[inner] - lr[i : i + 1][inner])
                        .abs().max()) for k in kernels}
        best = min(err, key=err.get)
        assert err[best] < 2e-3 < min(v for k, v in err.items() if k != best), err
        used.append(best)
    assert set(used) == set(kernels)
    rows, _ = r.evaluate(r.build(), whole=True)
    assert {(x["kernel"], x["region"]) for x in rows} == {(k, g) for k in kernels
                                                          for g in ("window", "plane")}
    bic = r.baselines(whole=True)
    assert len(bic) == 2 * len(rows)  # ×2 and ×4 rows for bicubic, ×4 only for srresnet
    # the untrained network is bicubic: equal on every kernel and region
    for k in kernels:
        for g in ("window", "plane"):
            assert r.summarize(rows, "psnr", scale=4, kernel=k, region=g) == pytest.approx(
                r.summarize(bic, "psnr", scale=4, kernel=k, region=g), abs=1e-5)
    plane_rows = [x for x in rows if x["region"] == "plane"]
    assert plane_rows and all(x["name"] == "ct[:, 256:]" for x in plane_rows)
    m, _ = r.validate(r.build())
    assert {f"psnr_{k}" for k in kernels} <= set(m)
    assert m["psnr"] == pytest.approx(np.mean([m[f"psnr_{k}"] for k in kernels]), abs=1e-9)


def test_tiny_srresnet_run_beats_bicubic_on_validation(ct_pool, tmp_path):
    """The untrained network IS bicubic (zero output convs + bicubic residual), so a lower
    validation loss after a short run means the network learnt more than interpolation."""
    r = SRRecipe(ct_pool, mode="srresnet", config={"features": 8, "blocks": 1}, val_crop=64)
    events, res = _run(train(r, steps=300, out_dir=tmp_path, batch=8, patch=32, lr=2e-3,
                             device="cpu", val_every=300, ckpt_every=0))
    val = [e for e in events if e.kind == "validation"]
    first, last = val[0].metrics, val[-1].metrics
    bic = r.baselines()
    assert first["psnr"] == pytest.approx(r.summarize(bic, "psnr", scale=4), abs=1e-6)
    assert last["loss"] < 0.95 * first["loss"], (first, last)
    assert last["psnr"] > first["psnr"] + 0.2
    assert "psnr_x2" not in last and val[-1].preview.shape == (64, 64)
    assert read_header(res.best_path, expected_arch="srresnet")["meta"]["task"] == "sr"


def test_msgan_with_wgan_gp_trains_through_the_loop(ct_pool, tmp_path):
    r = SRRecipe(ct_pool, config=TINY, critic_config=TINY_C, val_crop=64)
    assert r.objective["vgg_layer"] == "pool4" and r.objective["gp_weight"] == 10.0
    assert r.build_extras().keys() == {"critic"}
    events, res = _run(train(r, steps=4, out_dir=tmp_path, batch=2, patch=32, lr=1e-3,
                             device="cpu", val_every=4, ckpt_every=0))
    step = [e for e in events if e.kind == "step"][-1]
    assert {"mse4", "mse2", "vgg", "adv", "c_loss", "gp", "w_dist"} <= set(step.losses)
    assert all(np.isfinite(v) for v in step.losses.values())
    metrics = [e for e in events if e.kind == "validation"][-1].metrics
    assert {"psnr", "ssim", "lassim", "loss", "psnr_x2", "ssim_x2", "lassim_x2"} <= set(metrics)
    # both shipped factors choose the best weights: the mean of the ×2 and ×4 PSNR
    assert r.primary_metric == "psnr_both"
    assert metrics["psnr_both"] == pytest.approx((metrics["psnr"] + metrics["psnr_x2"]) / 2)
    assert SRRecipe(ct_pool, mode="srresnet", config={"features": 8, "blocks": 1},
                    val_crop=64).primary_metric == "psnr"
    ck = load_checkpoint(tmp_path / "last.safetensors")
    assert ck.extras.keys() == {"critic"} and ck.identity["objective"]["adversarial"] == "wgan-gp"
    header = read_header(res.best_path, expected_arch="msgan")
    assert not any(k.startswith("extra") for k in header["tensors"])
    rows = r.baselines()
    assert {(x["method"], x["scale"]) for x in rows} == {("bicubic", 2), ("bicubic", 4)}
    # the untrained generator starts at the bicubic baseline, at ×2 and (from it) at ×4
    net = r.build().eval()
    lr, _ = r.sample_batch(np.random.default_rng(3), 2, 32)
    with torch.no_grad():
        y2, y4 = net.forward_multi(lr)
    torch.testing.assert_close(y2, bicubic_up(lr, 2))
    torch.testing.assert_close(y4, bicubic_up(bicubic_up(lr, 2), 2))


# ------------------------------------------------------------------------- the shipped models


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("kernel", ["bicubic", "gaussian"])
def test_shipped_msgan_super_resolves_real_16_bit_data_better_than_bicubic(factor, kernel):
    """The shipped `msgan-x2` / `msgan-x4` (not an isolated test folder): registered as the
    default of their factor, and on a real 16-bit CT slice shrunk by two different kernels they
    restore it better than a bicubic zoom, in the input's dtype. (The CT sample is from the
    training side of the pool: this checks the product path; the card's numbers come from the
    validation images.)"""
    from skimage.transform import resize

    from napari_medenhance.metrics import psnr

    info = zoo.get_model(f"msgan-x{factor}", task="sr")
    assert info.source == "shipped" and info.arch == "msgan" and info.scale == factor
    assert info.card.get("card_file") and zoo.default_model_name("sr", factor) == info.name
    hr = load("ct_slice")[128:384, 128:384]  # int16 HU around the skull: edges and texture
    if kernel == "gaussian":
        lr = resize(hr.astype(np.float64), (256 // factor,) * 2, anti_aliasing=True)
    else:
        t = torch.from_numpy(hr.astype(np.float32))[None, None]
        lr = downsample(t, factor)[0, 0].numpy()
    lr = np.rint(lr).astype(hr.dtype)
    out = me.super_resolve(lr, factor, device="cpu")  # the default model of the factor
    assert out.dtype == hr.dtype and out.shape == hr.shape
    bic = bicubic_up(torch.from_numpy(lr.astype(np.float32))[None, None], factor)[0, 0].numpy()
    span = float(hr.max()) - float(hr.min())
    gain = psnr(hr, out, data_range=span) - psnr(hr, bic, data_range=span)
    assert gain > 0.3, gain
