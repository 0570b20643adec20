"""The inference engine on the real sample images, with small exact torch modules as networks."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
from torch import nn

from napari_medenhance.core.engine import (
    Cancelled,
    Progress,
    apply,
    iter_apply,
    resolve_device,
)
from napari_medenhance.sample_data import load

CPU = {"device": "cpu"}


# --------------------------------------------------------------------------------------------
# small real networks


def identity_net(channels: int = 3) -> nn.Module:
    """1x1 convolution with identity weights and no bias: output == input."""
    net = nn.Conv2d(channels, channels, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(channels)[:, :, None, None])
    return net


def random_net(seed: int = 0) -> nn.Module:
    """Seeded 3-layer 3x3 conv net: receptive-field radius 3 px, nonlinear, with biases."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
        nn.Tanh(),
        nn.Conv2d(8, 3, 3, padding=1, padding_mode="reflect"),
    )
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(2.0)  # strong enough that tile-edge errors would be visible
    return net


class ChannelScale(nn.Module):
    """Multiplies channel c by (c + 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factors = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device)
        return x * factors[None, :, None, None]


class Mul(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def nearest_x2(channels: int = 3) -> nn.Module:
    """x2 nearest-neighbour upsampler built as 1x1 conv (each channel copied 4x) + pixel shuffle."""
    conv = nn.Conv2d(channels, channels * 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(channels):
            conv.weight[c * 4 : c * 4 + 4, c] = 1.0
    return nn.Sequential(conv, nn.PixelShuffle(2))


def gaussian_blur_net() -> nn.Module:
    """Fixed 3x3 Gaussian blur per channel, reflect padding."""
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :]) / 16
    conv = nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect", groups=3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(k.expand(3, 1, 3, 3))
    return conv


class NeedsMultiple(nn.Module):
    """Identity that refuses inputs whose size is not a multiple of ``m`` (like a U-Net)."""

    def __init__(self, m: int):
        super().__init__()
        self.m = m
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2] % self.m == 0 and x.shape[-1] % self.m == 0, tuple(x.shape)
        self.seen.append(x.clone())
        return x


def reference(net: nn.Module, image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Independent whole-plane computation for a grayscale 2-D plane, float64 result."""
    x = (image.astype(np.float64) - lo) / (hi - lo)
    t = torch.from_numpy(x.astype(np.float32))[None, None].expand(1, 3, -1, -1)
    with torch.no_grad():
        y = net(t)[0].double().mean(0).numpy()
    return np.clip(y * (hi - lo) + lo, lo, hi)


# --------------------------------------------------------------------------------------------
# real images


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    return load("ct_slice")  # (512, 512) int16 HU


@pytest.fixture(scope="module")
def mr() -> np.ndarray:
    return load("mr_slice")  # (1024, 1024) uint16, 12-bit


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    return load("ihc_rgb")  # (512, 512, 3) uint8


@pytest.fixture(scope="module")
def nuclei() -> np.ndarray:
    return load("nuclei_stack")  # (24, 256, 256) uint16


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only copy: any attempt of the engine to write into its input raises."""
    a = a.copy()
    a.flags.writeable = False
    return a


# --------------------------------------------------------------------------------------------
# dtype and intensity round trip


@pytest.mark.parametrize(
    "name",
    ["uint8", "uint16_mr_12bit", "int16_ct_hu", "float32_outside_01", "float64_in_01", "rgb_uint8"],
)
def test_identity_round_trip_is_exact(name, ct, mr, ihc):
    image = {
        "uint8": lambda: ihc[..., 1],
        "uint16_mr_12bit": lambda: mr,
        "int16_ct_hu": lambda: ct,
        "float32_outside_01": lambda: ct.astype(np.float32) * 0.37 + 5.1,
        "float64_in_01": lambda: mr[:512, :512] / 4095.0,
        "rgb_uint8": lambda: ihc,
    }[name]()
    if name == "int16_ct_hu":
        assert image.min() < 0  # real HU, air is negative
    if name == "uint16_mr_12bit":
        assert image.max() < 4096
    frozen = _frozen(image)
    out = apply(frozen, identity_net(), **CPU)
    assert out.shape == image.shape and out.dtype == image.dtype
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(frozen, image)  # input untouched


def test_rgba_alpha_passes_through(ihc):
    alpha = np.random.default_rng(0).integers(0, 256, ihc.shape[:2], dtype=np.uint8)
    rgba = _frozen(np.concatenate([ihc, alpha[..., None]], axis=-1))
    out = apply(rgba, gaussian_blur_net(), **CPU)
    assert out.shape == rgba.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 3], alpha)
    assert np.abs(out[..., :3].astype(int) - ihc).max() > 0  # colour really was processed
    # the alpha channel does not enter the intensity statistics: colour equals plain RGB run
    np.testing.assert_array_equal(out[..., :3], apply(ihc, gaussian_blur_net(), **CPU))


def test_mapping_matches_independent_computation(ct):
    net = gaussian_blur_net()
    out = apply(ct, net, **CPU)
    ref = np.rint(reference(net, ct, float(ct.min()), float(ct.max())))
    assert np.abs(out.astype(np.int64) - ref).max() <= 1
    assert np.abs(out.astype(np.int64) - ct).max() > 100  # the blur changed edges


def test_stack_is_mapped_with_whole_array_range(ct):
    # plane 1 has a narrower range; a per-plane mapping would give a different result for it
    stack = np.stack([ct, (ct // 4).astype(np.int16)])
    lo, hi = float(stack.min()), float(stack.max())
    out = apply(stack, Mul(0.5), **CPU)  # in [0, 1] space: x -> x / 2
    expected = np.clip(np.rint((stack.astype(np.float64) + lo) / 2), lo, hi)
    assert np.abs(out - expected).max() <= 1
    # the same through data_range: one plane alone, mapped with the stack's range
    alone = apply(stack[1], Mul(0.5), data_range=(lo, hi), **CPU)
    np.testing.assert_array_equal(alone, out[1])


def test_data_range_and_clipping(mr):
    img = mr[:256, :256]
    out = apply(img, Mul(2.0), data_range=(0, 4095), **CPU)
    expected = np.clip(img.astype(np.float64) * 2, 0, 4095)
    np.testing.assert_array_equal(out, expected.astype(np.uint16))


def test_constant_image_does_not_divide_by_zero():
    img = np.full((40, 50), 1234, dtype=np.uint16)
    with np.errstate(all="raise"):
        out = apply(img, random_net(), **CPU)
    np.testing.assert_array_equal(out, img)
    f = np.full((40, 50), 7.5, dtype=np.float32)
    np.testing.assert_array_equal(apply(f, random_net(), **CPU), f)


# --------------------------------------------------------------------------------------------
# tiling


def _border_lines(size: int, tile: int, overlap: int) -> list[int]:
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    lines = {s for s in starts if s > 0} | {s + tile for s in starts if s + tile < size}
    return sorted(lines)


def test_tiled_equals_untiled_float(ct):
    img = ct.astype(np.float32)  # HU as float: outside [0, 1], mapped
    rng = float(img.max() - img.min())
    net = random_net()
    whole = apply(img, net, **CPU)
    tiled = apply(img, net, tile=128, overlap=32, **CPU)
    diff = np.abs(whole.astype(np.float64) - tiled)
    assert diff.max() < 1e-4 * rng, diff.max() / rng
    # seams: look exactly along (and next to) the tile borders
    lines = _border_lines(512, 128, 32)
    near = sorted({v + d for v in lines for d in range(-2, 3)})
    assert diff[near, :].max() < 1e-4 * rng and diff[:, near].max() < 1e-4 * rng
    # the check can see seams: abutting tiles without overlap do leave them
    naive = apply(img, net, tile=128, overlap=0, **CPU)
    assert np.abs(whole.astype(np.float64) - naive)[:, [128, 256, 384]].max() > 1e-3 * rng


def test_tiled_equals_untiled_integer(ct):
    net = random_net(1)
    whole = apply(ct, net, **CPU)
    tiled = apply(ct, net, tile=128, overlap=32, **CPU)
    assert tiled.dtype == np.int16
    assert np.abs(whole.astype(np.int32) - tiled).max() <= 1


def test_auto_tile_uses_whole_planes_up_to_1024_squared(mr):
    events: list[Progress] = []
    apply(mr, identity_net(), progress=events.append, **CPU)
    assert len(events) == 1  # 1024² plane: one tile
    events.clear()
    big = np.zeros((1100, 1000), np.uint8)  # 1.1 Mpx > 1024²
    big[::7] = 200
    out = apply(big, identity_net(), progress=events.append, **CPU)
    np.testing.assert_array_equal(out, big)
    assert len(events) == 3 * 3  # 512-px tiles, stride 480: starts 0, 480, 588 / 0, 480, 488


# --------------------------------------------------------------------------------------------
# leading axes, dask


def test_leading_axes_equal_per_plane(nuclei):
    stack = _frozen(nuclei[:6, 64:128, 96:160].reshape(2, 3, 64, 64))
    net = random_net(2)
    out = apply(stack, net, **CPU)
    assert out.shape == stack.shape and out.dtype == stack.dtype
    rng = (float(stack.min()), float(stack.max()))
    for i in range(2):
        for j in range(3):
            alone = apply(stack[i, j], net, data_range=rng, **CPU)
            np.testing.assert_array_equal(out[i, j], alone)


class CountingArray:
    """Array-like that records every read, to check how dask is consumed."""

    def __init__(self, data: np.ndarray):
        self.data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads: list[tuple[slice, ...]] = []

    def __getitem__(self, key):
        out = self.data[key]
        if out.size:
            self.reads.append(key)
        return out.copy()


def test_dask_is_read_plane_by_plane(nuclei):
    nuclei = nuclei[:8]
    src = CountingArray(nuclei)
    lazy = da.from_array(src, chunks=(1, 128, 128), meta=np.empty((0, 0, 0), nuclei.dtype))
    n_chunks = 8 * 2 * 2
    net = random_net(3)
    gen = iter_apply(lazy, net, **CPU)
    next(gen)  # statistics pass (all chunks once) + the first plane
    assert len(src.reads) == n_chunks + 4
    # only plane 0 so far (dask may fuse the integer index into the read)
    assert all(r[0] in (0, slice(0, 1)) for r in src.reads[n_chunks:]), src.reads[n_chunks:]
    for _ in gen:
        pass
    assert len(src.reads) == 2 * n_chunks  # one stats pass, then every plane once
    out = apply(lazy, net, **CPU)
    np.testing.assert_array_equal(out, apply(nuclei, net, **CPU))
    assert isinstance(out, np.ndarray)


# --------------------------------------------------------------------------------------------
# channels


def test_gray_replicated_then_averaged(mr):
    img = (mr[:256, :256] / 4095.0 * 0.4).astype(np.float32)  # in [0, 0.4]: no clipping at 2x
    out = apply(img, ChannelScale(), **CPU)
    # channels scaled by 1, 2, 3 -> mean 2.0
    np.testing.assert_allclose(out, 2.0 * img, rtol=1e-6, atol=0)


def test_rgb_channels_go_through_as_is(ihc):
    img = (ihc / 255.0 * 0.3).astype(np.float32)
    out = apply(img, ChannelScale(), **CPU)
    for c in range(3):
        np.testing.assert_allclose(out[..., c], (c + 1) * img[..., c], rtol=1e-6, atol=0)


def test_single_channel_net(ihc, ct):
    img = (ihc / 255.0 * 0.4).astype(np.float32)
    out = apply(img, Mul(2.0), net_channels=1, **CPU)
    np.testing.assert_allclose(out, 2 * img, rtol=1e-6)
    np.testing.assert_array_equal(apply(ct, identity_net(1), net_channels=1, **CPU), ct)


def test_rgb_false_treats_last_axis_as_x(ihc):
    out = apply(ihc[:16, :16], identity_net(), rgb=False, **CPU)  # planes (16, 3)
    np.testing.assert_array_equal(out, ihc[:16, :16])


# --------------------------------------------------------------------------------------------
# scale > 1


def test_scale2_pixel_shuffle(mr, ihc):
    img = mr[:200, :150]
    out = apply(img, nearest_x2(), scale=2, **CPU)
    assert out.shape == (400, 300) and out.dtype == np.uint16
    np.testing.assert_array_equal(out, img.repeat(2, 0).repeat(2, 1))
    tiled = apply(img, nearest_x2(), scale=2, tile=64, overlap=16, **CPU)
    np.testing.assert_array_equal(tiled, out)
    rgb = apply(ihc[:64, :80], nearest_x2(), scale=2, **CPU)
    assert rgb.shape == (128, 160, 3)
    np.testing.assert_array_equal(rgb, ihc[:64, :80].repeat(2, 0).repeat(2, 1))


def test_scale_mismatch_is_explained(ct):
    with pytest.raises(ValueError, match="scale=2"):
        apply(ct[:64, :64], identity_net(), scale=2, **CPU)


# --------------------------------------------------------------------------------------------
# padding


def test_pad_multiple_odd_sizes(mr):
    img = mr[:37, :45]
    net = NeedsMultiple(16)
    out = apply(img, net, pad_multiple=16, **CPU)
    assert out.shape == (37, 45)
    np.testing.assert_array_equal(out, img)
    seen = net.seen[0][0, 0].numpy()
    assert seen.shape == (48, 48)
    # reflect padding at bottom / right
    np.testing.assert_array_equal(seen[37:, :45], seen[35 : 35 - 11 : -1, :45])
    with pytest.raises(AssertionError):
        apply(img, NeedsMultiple(16), **CPU)
    tiled = apply(img, NeedsMultiple(16), pad_multiple=16, tile=24, overlap=8, **CPU)
    np.testing.assert_array_equal(tiled, img)


# --------------------------------------------------------------------------------------------
# self-ensemble


def _views_average(net: nn.Module, x: np.ndarray, scale: int = 1) -> np.ndarray:
    """Independent 8-view self-ensemble of a gray [0, 1] plane with numpy's rotations and flips."""
    outs = []
    for k in range(4):
        for flip in (False, True):
            v = np.rot90(x, k)
            v = v[:, ::-1] if flip else v
            t = torch.from_numpy(np.ascontiguousarray(v, np.float32))[None, None].expand(1, 3, -1, -1)
            with torch.no_grad():
                y = net(t)[0].double().mean(0).numpy()
            y = y[:, ::-1] if flip else y
            outs.append(np.rot90(y, -k))
    return np.mean(outs, axis=0)


def test_ensemble_averages_the_eight_views_turned_back(ct):
    img = ct[100:260, 60:290].astype(np.float32)  # not square: rotations swap the tile's sides
    lo, hi = float(img.min()), float(img.max())
    net = random_net(2)  # not rotation-invariant: each view gives another output
    expected = np.clip(_views_average(net, (img - lo) / (hi - lo)) * (hi - lo) + lo, lo, hi)
    out = apply(img, net, ensemble=True, **CPU)
    plain = apply(img, net, **CPU)
    rng = hi - lo
    assert np.abs(out - expected).max() < 1e-4 * rng
    assert np.abs(plain - expected).max() > 1e-2 * rng  # the views do differ
    tiled = apply(img, net, ensemble=True, tile=96, overlap=32, **CPU)
    assert np.abs(tiled - out).max() < 1e-4 * rng


def test_ensemble_leaves_a_symmetric_network_unchanged(mr, ihc):
    img = mr[:150, :200]
    np.testing.assert_array_equal(
        apply(img, nearest_x2(), scale=2, ensemble=True, tile=64, overlap=16, **CPU),
        img.repeat(2, 0).repeat(2, 1))
    rgb = ihc[:90, :70].astype(np.float32) / 255  # floats: no rounding to hide a difference
    blur = apply(rgb, gaussian_blur_net(), **CPU)
    np.testing.assert_allclose(apply(rgb, gaussian_blur_net(), ensemble=True, **CPU), blur, atol=1e-6)
    net = NeedsMultiple(16)  # padding to the multiple happens before the views
    np.testing.assert_array_equal(apply(img[:37, :45], net, pad_multiple=16, ensemble=True, **CPU),
                                  img[:37, :45])
    assert {tuple(t.shape[-2:]) for t in net.seen} == {(48, 48)}


def test_ensemble_progress_and_cancel_come_after_every_view(nuclei):
    events: list[Progress] = []
    apply(nuclei[:2], identity_net(), tile=128, overlap=32, ensemble=True,
          progress=events.append, **CPU)
    assert [e.done for e in events] == list(range(1, 2 * 9 * 8 + 1))
    assert {e.total for e in events} == {144}
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    events.clear()
    with pytest.raises(Cancelled, match="after 3 of 8 views"):
        apply(nuclei[0], identity_net(), ensemble=True, cancel=cancel, progress=events.append, **CPU)
    assert len(events) == 3  # inside the first (whole-plane) tile


def test_border_mirrors_the_plane_for_the_network_and_crops_it_off(ct, ihc):
    img = ct[50:130, 70:170].astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    net = random_net(3)
    x = np.pad((img - lo) / (hi - lo), 16, mode="reflect")
    expected = reference(net, x, 0.0, 1.0)[16:-16, 16:-16] * (hi - lo) + lo
    out = apply(img, net, border=16, **CPU)
    assert np.abs(out - expected).max() < 1e-4 * (hi - lo)
    assert np.abs(apply(img, net, **CPU) - expected).max() > 1e-2 * (hi - lo)  # it matters
    # tiles cover the grown plane: same result, and progress counts them
    events: list[Progress] = []
    tiled = apply(img, net, border=16, tile=64, overlap=32, progress=events.append, **CPU)
    assert np.abs(tiled - out).max() < 1e-4 * (hi - lo)
    assert events[-1].total == 3 * 4  # 112 × 132 px in 64-px tiles with stride 32
    # a 2-pixel plane mirrors further than itself; scale 2 and RGB keep their shapes
    assert apply(img[:2, :3], net, border=16, **CPU).shape == (2, 3)
    up = apply(ihc[:20, :30], nearest_x2(), scale=2, border=8, **CPU)
    np.testing.assert_array_equal(up, ihc[:20, :30].repeat(2, 0).repeat(2, 1))
    with pytest.raises(ValueError, match="border"):
        apply(img, net, border=-1, **CPU)


# --------------------------------------------------------------------------------------------
# progress, cancel, state


def test_progress_counts_tiles_over_planes(nuclei):
    stack = nuclei[:3]
    events: list[Progress] = []
    apply(stack, identity_net(), tile=128, overlap=32, progress=events.append, **CPU)
    per_plane = 3 * 3  # 256 px, tile 128, stride 96: starts 0, 96, 128
    assert len(events) == 3 * per_plane
    assert [e.done for e in events] == list(range(1, 28))
    assert all(e.total == 27 for e in events)
    assert events[0].stage == "plane 1/3" and events[-1].stage == "plane 3/3"


def test_cancel_after_k_tiles(ct):
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    events: list[Progress] = []
    with pytest.raises(Cancelled):
        apply(
            ct, identity_net(), tile=128, overlap=32, cancel=cancel, progress=events.append, **CPU
        )
    assert len(events) == 5


def test_closed_generator_leaves_no_state(ct):
    net = random_net()
    net.train()
    net[1].eval()  # mixed modes must come back as they were
    modes = [m.training for m in net.modules()]
    gen = iter_apply(ct, net, tile=128, overlap=32, **CPU)
    for _ in range(3):
        p = next(gen)
        # the consumer runs between yields: no inference mode or autocast leaks into it
        assert not torch.is_inference_mode_enabled()
        assert torch.is_grad_enabled()
        assert not torch.is_autocast_enabled("cpu")
        assert p.done <= 3
    gen.close()  # what napari's worker.quit() amounts to
    assert [m.training for m in net.modules()] == modes
    # after a normal run too
    apply(ct, net, **CPU)
    assert [m.training for m in net.modules()] == modes


def test_half_precision_switch(ct):
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(torch.is_autocast_enabled("cpu"))
            return x

    apply(ct[:32, :32], Probe(), **CPU)
    apply(ct[:32, :32], Probe(), half=True, **CPU)
    assert seen == [False, True]  # half=None: fp32 on CPU


def test_cpu_inference_runs_channels_last(ct):
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x.is_contiguous(memory_format=torch.channels_last))
            return x

    out = apply(ct, Probe(), device="cpu", tile=None)
    assert seen == [True]
    np.testing.assert_array_equal(out, ct)  # the layout does not reach the result


def test_out_of_memory_advises_smaller_tile(ct):
    class Oom(nn.Module):
        def forward(self, x):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    with pytest.raises(RuntimeError, match="smaller tile"):
        apply(ct, Oom(), **CPU)


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda ct: np.where(np.arange(ct.size).reshape(ct.shape) % 100000 == 7, np.nan, ct),
         r"3 NaN and 0 infinite"),
        (
            lambda ct: np.where(ct == ct.max(), np.inf, ct.astype(np.float32)),
            r"0 NaN and \d+ infinite",
        ),
        (lambda ct: ct > 0, "boolean"),
        (lambda ct: ct[:0], "empty"),
        (lambda ct: ct[:1, :1], "at least 2x2"),
        (lambda ct: np.stack([ct[:5, :1]] * 3), "at least 2x2"),
        (lambda ct: ct[0], "at least 2 dimensions"),
        (lambda ct: ct.astype(np.complex64), "unsupported dtype"),
    ],
)
def test_bad_input_is_refused(ct, make, message):
    with pytest.raises(ValueError, match=message):
        apply(make(ct), identity_net(), **CPU)


def test_nan_in_dask_is_counted(ct):
    img = ct.astype(np.float32)
    img[10, 10:14] = np.nan
    with pytest.raises(ValueError, match="4 NaN"):
        apply(da.from_array(img, chunks=128), identity_net(), **CPU)


def test_bad_arguments(ct):
    with pytest.raises(ValueError, match="rgb=True"):
        apply(ct, identity_net(), rgb=True, **CPU)
    with pytest.raises(ValueError, match="larger than overlap"):
        apply(ct, identity_net(), tile=32, overlap=32, **CPU)
    with pytest.raises(ValueError, match="data_range"):
        apply(ct, identity_net(), data_range=(5, 5), **CPU)
    with pytest.raises(ValueError, match="net_channels"):
        apply(ct, identity_net(), net_channels=2, **CPU)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cuda", "mps", "cpu"}
    with pytest.raises(ValueError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")
    with pytest.raises(ValueError, match="unknown device"):
        apply(np.zeros((8, 8), np.uint8), identity_net(), device="gpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
