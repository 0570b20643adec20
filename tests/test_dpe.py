"""DPE: generator, discriminator, VGG16 loss features, losses, the enhance recipe in the real
training loop (with the discriminator as an extra module), and the registry's DPE adapter.

Tiny CPU runs on real planes from the shipped sample data.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import safetensors
import torch
import torch.nn.functional as F

from napari_medenhance.core import runtime, zoo
from napari_medenhance.core.engine import apply
from napari_medenhance.core.nets import ARCHITECTURES, build
from napari_medenhance.core.nets.discriminators import SwishDiscriminator
from napari_medenhance.core.nets.dpe import DPE, ContextGate
from napari_medenhance.core.nets.vgg import VGG16Features, default_weights_path
from napari_medenhance.core.training import (
    CheckpointError,
    EnhanceRecipe,
    Plane,
    Pool,
    load_checkpoint,
    train,
)
from napari_medenhance.core.training.losses import (
    PerceptualObjective,
    bce_with_logits,
    gradient_l1,
    noisy_labels,
)
from napari_medenhance.core.training.recipes.enhance import INPUT_PERCENTILES, WIDE_STRETCH
from napari_medenhance.core.weights import WeightsError, read_header, save_weights
from napari_medenhance.sample_data import load

TINY = {"widths": [8, 12, 16, 20, 24]}
TINY_D = {"widths": [8, 8, 16, 16, 16, 16, 16, 16]}
RUN = {"batch": 4, "patch": 32, "lr": 3e-3, "device": "cpu"}


def _norm(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = np.percentile(a, (0.1, 99.9))
    return np.clip((a - lo) / (hi - lo), 0, 1)


@pytest.fixture(scope="module")
def vgg() -> VGG16Features:
    return VGG16Features(("conv5_3",))


@pytest.fixture(scope="module")
def pool() -> Pool:
    """Real CT and IHC colour planes; validation = disjoint regions (both bright enough)."""
    ct = _norm(load("ct_slice"))
    ihc = load("ihc_rgb").astype(np.float32) / 255
    return Pool(
        train=[Plane("ct[:, :384]", "CT", ct[:, :384]), Plane("ihc[:256]", "colour", ihc[:256])],
        val=[Plane("ct[:, 384:]", "CT", ct[:, 384:]), Plane("ihc[256:]", "colour", ihc[256:])],
    )


@pytest.fixture(scope="module")
def recipe(pool, vgg) -> EnhanceRecipe:
    return EnhanceRecipe(pool, config=TINY, disc_config=TINY_D, features=vgg, val_crop=64,
                         acceptance_samples=0)


def _run(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


# ------------------------------------------------------------------------------ networks


def test_dpe_has_the_papers_parameter_count():
    net = DPE()
    assert sum(p.numel() for p in net.parameters()) == 4_486_987
    assert ARCHITECTURES["dpe"] is DPE and isinstance(build("dpe"), DPE)
    # the authors' three unused modules are not there: 4 gates, 3 decoder blocks
    assert len(net.gates) == 4 and len(net.decs) == 3 and net.pad_multiple == 16
    assert [m.out_channels for m in net.downs] == [96, 128, 160, 192]


def test_dpe_any_size_matches_reflect_padding():
    torch.manual_seed(0)
    net = DPE().eval()
    for h, w in ((1, 1), (5, 7), (17, 33), (32, 48)):
        x = torch.rand(2, 3, h, w) * 2 - 1
        with torch.no_grad():
            y = net(x)
        assert y.shape == x.shape and y.abs().max() < 1
    # inside forward, an odd size is the crop of the net on the numpy-reflect-padded image (what
    # the inference engine does with pad_multiple=16)
    x = torch.rand(1, 3, 21, 37) * 2 - 1
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (0, 11), (0, 11)), mode="reflect"))
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(padded)[..., :21, :37])
    with pytest.raises(ValueError, match="B×3×H×W"):
        net(torch.zeros(1, 1, 16, 16))


def test_gate_is_equation_6_and_equals_the_authors_order():
    torch.manual_seed(0)
    gate = ContextGate(4)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        a, b = gate.feature(x), gate.mask(x)
        assert (a < 0).any()  # the negative branch of the LeakyReLU is exercised
        torch.testing.assert_close(gate(x), F.leaky_relu(a, 0.2) * torch.sigmoid(b))
        # LeakyReLU after the product (the authors' code) is the same function: φ(s·a) = s·φ(a)
        # for s = σ(b) > 0
        torch.testing.assert_close(gate(x), F.leaky_relu(a * torch.sigmoid(b), 0.2))
        # while another activation order with a non-homogeneous φ would differ
        assert not torch.allclose(gate(x), F.elu(a) * torch.sigmoid(b))


def test_discriminator_layout_and_shape():
    d = SwishDiscriminator(in_channels=6)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 9
    assert [c.stride[0] for c in convs[:8]] == [1, 2] * 4
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512, 1]
    assert convs[-1].kernel_size == (1, 1) and convs[-1].padding == (0, 0)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules()) == 7
    x = torch.rand(3, 6, 128, 128)
    p = d(x)
    assert p.shape == (3, 1) and (0 < p).all() and (p < 1).all()
    torch.testing.assert_close(p, torch.sigmoid(d.logits(x)))
    assert d(torch.rand(2, 6, 1, 1)).shape == (2, 1)
    assert isinstance(build("dpe_discriminator", in_channels=3), SwishDiscriminator)


# ------------------------------------------------------------------------------ VGG16


def test_vgg_matches_the_onnx_reference_stored_with_the_weights():
    """The shipped file reproduces ONNX Runtime's numbers (recorded at conversion) on a real
    crop: weights OIHW, BGR order, 0–255 and mean subtraction all right."""
    path = default_weights_path()
    header = read_header(path, expected_arch="vgg16_features")
    meta = header["meta"]
    assert meta["kind"] == "feature-extractor" and "Simonyan" in meta["attribution"]
    check = meta["check"]
    layers = tuple(check["layers"])
    net = VGG16Features(layers)
    assert not any(p.requires_grad for p in net.parameters())
    img = load("ihc_rgb")[208:304, 208:304].astype(np.float32) / 255.0
    x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        feats = net(x)
        swapped = net(x.flip(1))  # RGB fed as BGR: must be far off
    for name, ref in check["layers"].items():
        f = feats[name][0].numpy()
        assert list(f.shape) == ref["shape"]
        got = np.array([f[c, i, j] for c, i, j in ref["index_chw"]])
        onnx = np.array(ref["onnx"])
        tol = 2 * ref["stored_max_abs_diff"] + 1e-3
        assert tol < 0.01 * np.abs(onnx).max(), name  # fp16 storage: a tight tolerance
        assert np.abs(got - onnx).max() <= tol, name
        bad = swapped[name][0].numpy()
        assert np.abs(np.array([bad[c, i, j] for c, i, j in ref["index_chw"]]) - onnx).max() > 20 * tol


def test_vgg_refuses_unknown_layers_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="unknown VGG16 layer.*conv5_3"):
        VGG16Features(("conv5_4",))
    with pytest.raises(WeightsError, match="convert_vgg16.py"):
        VGG16Features(path=tmp_path / "nope.safetensors")


# ------------------------------------------------------------------------------ losses


def test_loss_terms(vgg):
    torch.manual_seed(0)
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    out = (y + 0.1 * torch.randn_like(y)).clamp(-1, 1).requires_grad_()
    x = y * 0.3
    assert gradient_l1(y, y) == 0
    assert float(gradient_l1(y + 0.2, y)) < 1e-6  # a constant offset has no gradient
    assert float(gradient_l1(y.flip(-1), y)) > 0.1
    obj = PerceptualObjective(vgg)
    rfl, feat, grad = obj.regularized_feature_loss(y, y)
    assert float(rfl) == 0 and float(feat) == 0 and float(grad) == 0  # identical images
    d = SwishDiscriminator(in_channels=6, widths=TINY_D["widths"])
    g, logs = obj.generator_loss(out, y, x, d)
    assert torch.isfinite(g) and {"l1", "feat", "grad", "rfl", "adv", "total"} <= set(logs)
    assert logs["feat"] > 0 and logs["grad"] > 0
    assert logs["total"] == pytest.approx(logs["l1"] + logs["rfl"] + 1e-4 * logs["adv"], rel=1e-5)
    g.backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()
    dl, dlogs = obj.discriminator_loss(out, y, x, d)
    assert torch.isfinite(dl) and 0 < dlogs["d_real"] < 1
    # L1-only objective needs neither a feature network nor a discriminator
    l1_only = PerceptualObjective(None, feature_weight=0, adversarial_weight=0)
    g1, logs1 = l1_only.generator_loss(out, y, x)
    assert set(logs1) == {"l1", "total"}
    assert float(g1.detach()) == pytest.approx(float((out - y).detach().abs().mean()))
    with pytest.raises(ValueError, match="feature network"):
        PerceptualObjective(None)


def test_bce_with_noisy_labels():
    z = torch.tensor([[-3.0], [0.0], [2.5]])
    t = torch.tensor([[0.1], [0.5], [0.9]])
    torch.testing.assert_close(bce_with_logits(z, t), F.binary_cross_entropy(torch.sigmoid(z), t))
    # labels above 1 (the authors' real ~ U(0.7, 1.2)) are accepted and finite, also saturated
    assert torch.isfinite(bce_with_logits(torch.tensor([[1e4]]), 1.2))
    torch.manual_seed(0)
    real, fake = noisy_labels(1000, (0.7, 1.2)), noisy_labels(1000, (0.0, 0.3))
    assert real.shape == (1000, 1) and 0.7 <= real.min() and real.max() <= 1.2 and real.max() > 1
    assert 0 <= fake.min() and fake.max() <= 0.3


# ------------------------------------------------------------------------------ recipe + loop


def test_batches_are_degraded_pairs_in_signed_range(recipe):
    x, y = recipe.sample_batch(np.random.default_rng(0), 8, 32)
    assert x.shape == y.shape == (8, 3, 32, 32)
    assert -1 <= float(x.min()) and float(x.max()) <= 1 and -1 <= float(y.min()) and float(y.max()) <= 1
    assert float(x.mean()) < float(y.mean())  # Algorithm 1 always darkens (factors < 1)
    gray = (y[:, 0] == y[:, 1]).all(dim=(1, 2))
    assert gray.any() and (~gray).any()
    assert (x[gray, 0] == x[gray, 2]).all()  # gray planes: one noise field, replicated
    x2, _ = recipe.sample_batch(np.random.default_rng(0), 8, 32)
    assert torch.equal(x, x2)


def test_stretched_input_is_what_the_stretch_baseline_outputs(pool):
    r = EnhanceRecipe(pool, config=TINY, loss="l1", val_crop=64, acceptance_samples=0,
                      input_norm="stretch")

    class Identity(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    def psnrs(rows):
        return [round(a["psnr"], 4) for a in rows]

    # The default input stretch is the 0.1 / 99.9 % reference row; weights trained on the
    # 2 / 98 % stretch are scored on their own stretch (their header's input_percentiles).
    baseline = {m: psnrs(b for b in r.baselines() if b["method"] == m)
                for m in ("stretch", WIDE_STRETCH)}
    assert baseline["stretch"] != baseline[WIDE_STRETCH]
    assert psnrs(r.evaluate(Identity())[0]) == baseline[WIDE_STRETCH]
    assert psnrs(r.evaluate(Identity(), input_percentiles=(2, 98))[0]) == baseline["stretch"]
    old = EnhanceRecipe(pool, config=TINY, loss="l1", val_crop=64, acceptance_samples=0,
                        input_norm="stretch", input_percentiles=(2, 98))
    assert psnrs(old.evaluate(Identity())[0]) == baseline["stretch"]
    assert r.describe()["input_percentiles"] == list(INPUT_PERCENTILES) == [0.1, 99.9]
    assert old.describe()["input_percentiles"] == [2.0, 98.0]
    # Training inputs are the whole plane degraded, then stretched by the plane's percentiles:
    # without noise that is the clean patch mapped by them, whatever the contrast and
    # brightness factors (a patch alone could not know where it sits in its image).
    for pct in ((2.0, 98.0), INPUT_PERCENTILES):
        quiet = EnhanceRecipe(pool, config=TINY, loss="l1", val_crop=64, acceptance_samples=0,
                              input_norm="stretch", sigma_max=0.0, input_percentiles=pct)
        x, y = quiet.sample_batch(np.random.default_rng(0), 8, 32)
        assert x.shape == y.shape == (8, 3, 32, 32)
        for xi, yi in zip((x.numpy() + 1) / 2, (y.numpy() + 1) / 2):
            plane = pool.train[0] if np.array_equal(yi[0], yi[1]) else pool.train[1]
            lo, hi = np.percentile(plane.data, pct)
            assert np.abs(xi - np.clip((yi - lo) / (hi - lo), 0, 1)).max() < 0.03
    assert r.describe()["input_norm"] == "stretch"
    with pytest.raises(ValueError, match="input_norm"):
        EnhanceRecipe(pool, config=TINY, loss="l1", input_norm="zscore", acceptance_samples=0)
    with pytest.raises(ValueError, match="input_percentiles"):
        EnhanceRecipe(pool, config=TINY, loss="l1", input_norm="stretch",
                      input_percentiles=(99, 1), acceptance_samples=0)


def test_validation_draws_belong_to_their_plane(pool):
    """Each validation plane is degraded ``val_draws`` times from its own generator: removing
    a plane or reordering the split leaves every other plane's degraded crops as they were,
    and the rows carry the draw so that a modality's mean is over planes and draws."""
    def degraded(recipe):
        return {(i["plane"].name, i["draw"]): i["degraded"] for i in recipe.validation_items()}

    r = EnhanceRecipe(pool, config=TINY, loss="l1", val_crop=64, acceptance_samples=0,
                      val_draws=3)
    full = degraded(r)
    assert sorted(full) == sorted((p.name, d) for p in pool.val for d in range(3))
    # the draws of one plane differ from one another (three different degradations)
    ct = [full[("ct[:, 384:]", d)] for d in range(3)]
    assert not np.allclose(ct[0], ct[1]) and not np.allclose(ct[1], ct[2])
    fewer = Pool(train=pool.train, val=list(reversed(pool.val))[:1])  # colour only, first
    kept = degraded(EnhanceRecipe(fewer, config=TINY, loss="l1", val_crop=64,
                                  acceptance_samples=0, val_draws=3))
    assert sorted(kept) == [("ihc[256:]", d) for d in range(3)]
    for key, value in kept.items():
        np.testing.assert_array_equal(value, full[key])
    rows = [b for b in r.baselines() if b["method"] == "input"]
    assert sorted((b["name"], b["draw"]) for b in rows) == sorted(full)
    assert r.describe()["val_draws"] == 3
    assert r.describe()["val_planes"] == ["CT:ct[:, 384:]", "colour:ihc[256:]"]
    with pytest.raises(ValueError, match="val_draws"):
        EnhanceRecipe(pool, config=TINY, loss="l1", acceptance_samples=0, val_draws=0)


def test_context_crop_stretches_some_patches_by_a_window_around_them():
    # A plane whose values encode their coordinates: a grid's values say where it was cut.
    h, w, patch = 300, 400, 32
    coords = (np.arange(h * w, dtype=np.float64).reshape(h, w) / (h * w)).astype(np.float32)
    plane = Plane("coords", "MR", coords)
    pool = Pool(train=[plane], val=[Plane("v", "MR", coords[:64, :64].copy())])
    r = EnhanceRecipe(pool, config=TINY, loss="l1", val_crop=64, acceptance_samples=0,
                      input_norm="stretch", context_crop=0.5, luminance_check="relative")
    assert r.describe()["context_crop"] == 0.5
    rng = np.random.default_rng(1)
    whole, sides = 0, []
    for _ in range(200):
        y, x = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
        grid = r._stretch_grid(plane, (y, x), patch, rng)
        if grid is r._plane_grid[id(plane)]:
            whole += 1
            continue
        idx = np.rint(grid.astype(np.float64) * h * w).astype(int)
        ys, xs = idx // w, idx % w
        step = max(1, int(ys[1, 0] - ys[0, 0])) if grid.shape[0] > 1 else 1
        # the window holds the patch (to the grid's stride) and lies inside the plane
        assert ys.min() <= y and ys.max() >= y + patch - step
        assert xs.min() <= x and xs.max() >= x + patch - step
        sides.append(ys.max() - ys.min() + 1)
    assert 60 < whole < 140  # about half keep the whole plane
    assert min(sides) < 80 and max(sides) > 200  # windows from about the patch to the plane
    with pytest.raises(ValueError, match="context_crop"):
        EnhanceRecipe(pool, config=TINY, loss="l1", input_norm="stretch", context_crop=1.5,
                      acceptance_samples=0)


def test_tiny_full_objective_run_lowers_validation_loss(recipe, tmp_path):
    assert recipe.build_extras().keys() == {"disc"}
    events, res = _run(train(recipe, steps=20, out_dir=tmp_path, val_every=20, ckpt_every=0, **RUN))
    val = [e for e in events if e.kind == "validation"]
    assert [e.step for e in val] == [0, 20]
    first, last = val[0].metrics, val[-1].metrics
    assert last["loss"] < first["loss"] - 0.05, (first, last)
    assert last["psnr"] > first["psnr"] + 1.0
    assert {"ssim", "lassim", "delta_e"} <= set(last)
    step = [e for e in events if e.kind == "step"][-1]
    assert {"l1", "rfl", "adv", "d_loss", "d_real", "d_fake"} <= set(step.losses)
    assert val[-1].preview.shape == (64, 64) and val[-1].preview.dtype == np.float32
    # the checkpoint holds the discriminator and its optimizer; best.safetensors the generator
    ck = load_checkpoint(tmp_path / "last.safetensors")
    assert ck.extras.keys() == {"disc"} and ck.identity["objective"]["adversarial_weight"] == 1e-4
    names = _tensor_names(tmp_path / "last.safetensors", "extra/disc/optim/")
    assert any(k.endswith("exp_avg") for k in names)
    header = read_header(res.best_path, expected_arch="dpe")
    assert not any(k.startswith("extra") for k in header["tensors"])
    assert header["meta"]["task"] == "enhance"


def _tensor_names(path, prefix):
    with safetensors.safe_open(str(path), framework="pt") as f:
        return [k for k in f.keys() if k.startswith(prefix)]


def test_gan_run_resumes_exactly(recipe, tmp_path):
    """Stop after k steps and resume = an uninterrupted run, bit for bit on CPU: generator,
    discriminator, both Adam states, BatchNorm statistics and the RNGs (noisy labels)."""
    n, k = 4, 2
    run = {**RUN, "batch": 2}
    _run(train(recipe, steps=n, out_dir=tmp_path / "a", val_every=0, ckpt_every=0, **run))
    done = []
    for ev in train(recipe, steps=n, out_dir=tmp_path / "b", val_every=0, ckpt_every=0,
                    cancel=lambda: len(done) >= k, **run):
        if ev.kind == "step":
            done.append(ev.step)
    assert load_checkpoint(tmp_path / "b" / "last.safetensors").step == k
    _run(train(recipe, steps=n, out_dir=tmp_path / "b", val_every=0, ckpt_every=0, **run))
    with safetensors.safe_open(str(tmp_path / "a" / "last.safetensors"), framework="pt") as fa, \
            safetensors.safe_open(str(tmp_path / "b" / "last.safetensors"), framework="pt") as fb:
        assert set(fa.keys()) == set(fb.keys())
        assert any(key.startswith("extra/disc/model/") for key in fa.keys())
        for key in fa.keys():
            assert torch.equal(fa.get_tensor(key), fb.get_tensor(key)), key


def test_checkpoint_of_another_objective_is_refused(pool, recipe, tmp_path):
    _run(train(recipe, steps=1, out_dir=tmp_path, val_every=0, **RUN))
    l1 = EnhanceRecipe(pool, config=TINY, loss="l1", val_crop=64, acceptance_samples=0)
    assert l1.build_extras() == {}
    with pytest.raises(CheckpointError, match="objective.*extra modules"):
        next(train(l1, steps=2, out_dir=tmp_path, **RUN))


def test_l1_ablation_trains_without_extras(pool, tmp_path):
    l1 = EnhanceRecipe(pool, config=TINY, loss="l1", val_crop=64, acceptance_samples=0)
    events, res = _run(train(l1, steps=10, out_dir=tmp_path, val_every=10, ckpt_every=0, **RUN))
    val = [e for e in events if e.kind == "validation"]
    assert val[-1].metrics["loss"] < val[0].metrics["loss"]
    assert load_checkpoint(tmp_path / "last.safetensors").extras == {}
    rows = l1.baselines()
    assert {r["method"] for r in rows} == {"input", "clahe", "stretch", WIDE_STRETCH}
    # the classical baselines beat the degraded input on a darkened, flattened image
    for method in ("clahe", "stretch", WIDE_STRETCH):
        assert l1.summarize(rows, "psnr", method) > l1.summarize(rows, "psnr", "input")


# ------------------------------------------------------------------------------ registry


def test_registry_runs_dpe_in_signed_range(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.MODELS_DIR_ENV, str(tmp_path))
    zoo.clear_cache()
    torch.manual_seed(0)
    net = DPE(**TINY)
    save_weights(tmp_path / "mine.safetensors", net, arch="dpe", config=TINY,
                 meta={"task": "enhance", "name": "mine"})
    model, info = zoo.load_model("mine", task="enhance")
    assert info.channels == 3 and runtime.engine_kwargs(info)["pad_multiple"] == 16
    module = runtime.inference_module(model, info)
    x = torch.rand(1, 3, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(module(x), (model(x * 2 - 1) + 1) / 2)
    img = (load("ihc_rgb")[:37, :45]).copy()
    out = apply(img, module, device="cpu", **runtime.engine_kwargs(info))
    assert out.shape == img.shape and out.dtype == np.uint8
    zoo.clear_cache()


def test_vgg_file_is_not_listed_as_a_model(caplog, tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.MODELS_DIR_ENV, str(tmp_path))  # the real shipped folder, no user files
    assert default_weights_path().parent == zoo.shipped_models_dir()
    assert default_weights_path().is_file()
    with caplog.at_level(logging.WARNING, logger="napari_medenhance.core.zoo"):
        names = [m.name for m in zoo.list_models()]
    assert "vgg16_features" not in names and not caplog.records
    with pytest.raises(ValueError, match="not a restoration model"):
        zoo.get_model("vgg16_features")
