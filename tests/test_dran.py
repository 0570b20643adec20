"""DRAN denoiser and its dynamic convolution (CPU, tiny inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_medenhance.core.nets import ARCHITECTURES, build
from napari_medenhance.core.nets.dran import (
    DRAN,
    chroma_planes,
    from_luma_chroma,
    set_temperature,
    temperature_schedule,
)
from napari_medenhance.core.nets.dynamic_conv import DynamicConv2d


def _small_dran(**kw) -> DRAN:
    cfg = dict(features=8, blocks=3, layers_per_block=2, kernels=4)
    cfg.update(kw)
    return DRAN(**cfg)


# --- architecture -----------------------------------------------------------


def test_parameter_count_matches_paper():
    model = build("dran")
    assert sum(p.numel() for p in model.parameters()) == 2_458_944


def test_registry():
    assert ARCHITECTURES["dran"] is DRAN
    assert isinstance(build("DRAN", features=8, layers_per_block=1), DRAN)
    with pytest.raises(KeyError, match="dran"):
        build("no-such-net")


def test_three_distinct_blocks_with_independent_parameters():
    torch.manual_seed(0)
    model = DRAN()
    assert len(model.blocks) == 3
    b0, b1, b2 = model.blocks
    assert b0 is not b1 and b1 is not b2 and b0 is not b2
    ids = [{id(p) for p in b.parameters()} for b in model.blocks]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
    before = [[p.detach().clone() for p in b.parameters()] for b in (b1, b2)]
    with torch.no_grad():
        for p in b0.parameters():
            p.add_(1.0)
    for b, ref in zip((b1, b2), before):
        for p, r in zip(b.parameters(), ref):
            assert torch.equal(p, r)
    # Independently initialised, not copies of one another.
    assert not torch.equal(b1.body[0].weight, b2.body[0].weight)


@pytest.mark.parametrize("shape", [(1, 3, 17, 23), (2, 3, 32, 31), (1, 3, 1, 5)])
def test_any_size_shape_range_and_denoise(shape):
    torch.manual_seed(0)
    model = _small_dran().eval()
    x = torch.rand(shape[0], 1, *shape[2:]).expand(shape)  # gray, replicated as callers do
    with torch.no_grad():
        n = model(x)
        clean = model.denoise(x)
    assert n.shape == x.shape and clean.shape == x.shape
    assert torch.all(n > -1) and torch.all(n < 1)
    assert torch.equal(clean, x - n)


def test_opponent_chroma_planes_are_orthonormal_and_invert_exactly():
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    chroma = chroma_planes(rgb)
    assert chroma.shape == (2, 2, 16, 16)
    torch.testing.assert_close(from_luma_chroma(rgb.mean(1, keepdim=True), chroma), rgb)
    # Gray pixels have no chroma: both planes sit at the offset.
    torch.testing.assert_close(chroma_planes(rgb[:, :1].expand(-1, 3, -1, -1)),
                               torch.full_like(chroma, 0.5))
    # Independent noise of std 1 per channel keeps std 1 in each chroma plane.
    noise = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64)
    std = (chroma_planes(noise) - 0.5).flatten(2).std(dim=2)
    torch.testing.assert_close(std, torch.ones_like(std), atol=0.01, rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_colour_denoise_keeps_luminance_and_takes_chroma_from_the_gray_path():
    """A colour sample: the channel mean of ``x - forward(x)``, and the chroma of the network
    run on each chroma plane as a gray image; a gray sample in the same batch is untouched."""
    torch.manual_seed(0)
    model = _small_dran().eval()
    colour = torch.rand(1, 3, 20, 24)
    gray = torch.rand(1, 1, 20, 24).expand(1, 3, -1, -1)
    x = torch.cat([colour, gray])
    with torch.no_grad():
        out = model.denoise(x)
        native = x - model(x)
        planes = chroma_planes(colour)
        done = torch.cat([(g - model(g)).mean(1, keepdim=True) for g in
                          (planes[:, k:k + 1].expand(-1, 3, -1, -1) for k in range(2))], dim=1)
    torch.testing.assert_close(out[1:], native[1:], rtol=0, atol=0)
    torch.testing.assert_close(out[:1].mean(1), native[:1].mean(1))
    torch.testing.assert_close(chroma_planes(out[:1]), done)
    assert not torch.allclose(out[:1], native[:1], atol=1e-4)  # the colour path did something
    # The BioImage.IO package's TorchScript runs the same colour path.
    from napari_medenhance.core._bioimageio_model import _Denoise

    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(_Denoise(model))(x), out)


def test_full_size_model_odd_input():
    torch.manual_seed(0)
    model = DRAN().eval()
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        n = model(x)
    assert n.shape == x.shape and torch.all(n.abs() < 1)


def test_eval_is_deterministic():
    torch.manual_seed(0)
    model = _small_dran()
    x = torch.rand(2, 3, 16, 12)
    model.train()
    with torch.no_grad():
        model(x)  # move BN running stats off their defaults
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)


# --- dynamic convolution ----------------------------------------------------


def test_dynamic_conv_batch_equals_per_sample():
    torch.manual_seed(0)
    conv = DynamicConv2d(6, 5, 3, padding=1, kernels=4, temperature=1.0)
    x = torch.randn(3, 6, 11, 9) * torch.tensor([0.2, 1.0, 3.0]).view(3, 1, 1, 1)
    with torch.no_grad():
        batched = conv(x)
        single = torch.cat([conv(x[i : i + 1]) for i in range(3)])
        pi = conv.attention_weights(x)
    # Samples must get different kernels, or the test would not exercise grouping.
    assert (pi[0] - pi[2]).abs().max() > 1e-3
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_dynamic_conv_matches_hand_aggregated_kernel():
    torch.manual_seed(1)
    conv = DynamicConv2d(4, 3, 3, stride=2, padding=1, kernels=3, temperature=2.0)
    x = torch.randn(1, 4, 10, 13)
    with torch.no_grad():
        pooled = x.mean(dim=(2, 3))  # 1×C
        z = F.relu(pooled @ conv.attention[1].weight.flatten(1).T) @ conv.attention[3].weight.flatten(1).T
        pi = torch.softmax(z / 2.0, dim=1)[0]  # K
        w = sum(pi[k] * conv.weight[k] for k in range(3))
        b = sum(pi[k] * conv.bias[k] for k in range(3))
        expected = F.conv2d(x, w, b, stride=2, padding=1)
        got = conv(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_dynamic_conv_keeps_channels_last_with_the_same_result():
    # The engine feeds CPU inference channels-last (oneDNN's fast layout); one sample must
    # stay in it through the dynamic convs, with the result of the NCHW path.
    torch.manual_seed(2)
    net = DRAN(features=8, blocks=2, layers_per_block=2, kernels=3).for_inference()
    x = torch.rand(1, 3, 20, 17)
    with torch.no_grad():
        ref = net(x)
        h = x.contiguous(memory_format=torch.channels_last)
        layer = net.blocks[0].body[0]
        inner = net.head(h)
        assert layer(inner).is_contiguous(memory_format=torch.channels_last)
        got = net(h)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_dynamic_conv_init():
    torch.manual_seed(0)
    conv = DynamicConv2d(8, 8, 3, kernels=4)
    assert torch.isfinite(conv.bias).all() and conv.bias.abs().max() > 0
    bound = 1 / np.sqrt(8 * 9)
    assert conv.bias.abs().max() <= bound
    # Banks are initialised independently (not one kernel copied K times).
    assert not torch.equal(conv.weight[0], conv.weight[1])
    assert conv.weight.abs().max() <= bound + 1e-6  # nn.Conv2d's kaiming-uniform(a=√5) bound


def test_attention_temperature_uniform_and_peaked():
    torch.manual_seed(0)
    conv = DynamicConv2d(8, 8, 3, padding=1, kernels=4)
    # With only 2 hidden units a random init can leave both dead after the ReLU
    # (all logits 0 → uniform at every T); positive first-layer weights on a
    # positive input keep them alive, and scaled second-layer weights separate the logits.
    with torch.no_grad():
        conv.attention[1].weight.abs_()
        conv.attention[3].weight.mul_(10.0)
    x = torch.rand(2, 8, 6, 6)
    conv.set_temperature(1e6)
    with torch.no_grad():
        hot = conv.attention_weights(x)
    torch.testing.assert_close(hot, torch.full_like(hot, 0.25), rtol=0, atol=1e-4)
    conv.set_temperature(1e-3)
    with torch.no_grad():
        cold = conv.attention_weights(x)
    assert torch.all(cold.max(dim=1).values > 0.99)
    torch.testing.assert_close(cold.sum(dim=1), torch.ones(2))
    with pytest.raises(ValueError):
        conv.set_temperature(0.0)


# --- temperature schedule ---------------------------------------------------


def test_temperature_schedule():
    assert temperature_schedule(0, anneal_steps=100) == pytest.approx(30.0)
    assert temperature_schedule(50, anneal_steps=100) == pytest.approx(15.5)
    assert temperature_schedule(100, anneal_steps=100) == pytest.approx(1.0)
    assert temperature_schedule(10_000, anneal_steps=100) == pytest.approx(1.0)
    ts = [temperature_schedule(s, anneal_steps=100) for s in range(0, 150)]
    assert all(a >= b for a, b in zip(ts, ts[1:]))  # monotone non-increasing
    assert temperature_schedule(10**9) == 1.0  # default window ends early


def test_set_temperature_reaches_every_dynamic_conv():
    model = _small_dran()
    dyn = [m for m in model.modules() if isinstance(m, DynamicConv2d)]
    assert len(dyn) == 3 * 2
    assert all(float(m.temperature) == 30.0 for m in dyn)
    assert set_temperature(model, 1.0) == len(dyn)
    assert all(float(m.temperature) == 1.0 for m in dyn)
    # Saved with the weights so inference after loading uses the trained T.
    state = model.state_dict()
    fresh = _small_dran()
    fresh.load_state_dict(state)
    assert all(float(m.temperature) == 1.0 for m in fresh.modules() if isinstance(m, DynamicConv2d))


# --- learning ---------------------------------------------------------------


def test_overfits_one_real_patch():
    from skimage.data import cell

    torch.manual_seed(0)
    crop = cell()[400:432, 460:492]  # a textured region (std ≈ 0.28).astype(np.float32) / 255.0
    clean = torch.from_numpy(crop)[None, None].repeat(1, 3, 1, 1)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(clean.shape, generator=g) * (25.0 / 255.0)
    noisy = clean + noise

    model = DRAN(features=16)
    set_temperature(model, 1.0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.no_grad():
        initial = F.l1_loss(model(noisy), noise).item()
    for _ in range(30):
        opt.zero_grad()
        loss = F.l1_loss(model(noisy), noise)
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = F.l1_loss(model(noisy), noise).item()
    assert final <= 0.7 * initial, (initial, final)


def test_for_inference_folds_batchnorm_exactly_and_leaves_the_model_alone():
    torch.manual_seed(0)
    net = DRAN(features=16, blocks=2, layers_per_block=2)
    net.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics away from their (0, 1) start
            net(torch.rand(4, 3, 32, 32) * 2)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.2, 0.2)
    set_temperature(net, 1.0)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = net.for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 4
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
