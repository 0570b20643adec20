"""Models trained on contrast-stretched input (``input_percentiles`` in their header, as the
``dpe`` recipe's ``input_norm="stretch"`` writes): the engine, the one-plane preview, block-by-
block volumes and the registry all stretch a user's image by its whole-array percentiles.
Small untrained networks: plumbing, not quality."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

import napari_medenhance as me
from napari_medenhance.core import engine, intensity, lazy, runtime, zoo
from napari_medenhance.core.batch import load_task_model
from napari_medenhance.core.jobs import drive
from napari_medenhance.core.nets.dpe import DPE
from napari_medenhance.core.weights import WeightsError, save_weights

TINY = {"widths": [8, 8, 8]}


class Seen(torch.nn.Module):
    """Identity that keeps what it was given (the engine's input to the network)."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().float().clone())
        return x


def _save(path, meta_extra):
    torch.manual_seed(0)
    save_weights(path, DPE(**TINY), arch="dpe", config=TINY,
                 meta={"task": "enhance", "name": path.stem, **meta_extra})
    return path


def test_engine_feeds_the_stretched_image_and_maps_the_output_back_to_the_input_units(nuclei):
    plane = nuclei[12]
    net = Seen()
    out = engine.apply(plane, net, device="cpu", input_percentiles=(2, 98))
    lo, hi = float(plane.min()), float(plane.max())
    p2, p98 = np.percentile(plane.astype(np.float64), (2, 98))
    expected01 = np.clip((plane - p2) / (p98 - p2), 0, 1)
    seen = net.inputs[0][0, 0].numpy()
    np.testing.assert_allclose(seen, expected01, atol=1e-5)
    # identity on what it saw: the stretched image, in the input's units, dtype and range
    assert out.dtype == np.uint16 and out.min() >= lo and out.max() <= hi
    np.testing.assert_allclose(out, np.rint(lo + expected01 * (hi - lo)), atol=1)
    # without the keyword the network sees the plain min-max mapping
    plain = Seen()
    engine.apply(plane, plain, device="cpu")
    np.testing.assert_allclose(plain.inputs[0][0, 0].numpy(), (plane - lo) / (hi - lo), atol=1e-6)


def test_a_flat_image_is_not_stretched_and_bad_arguments_are_refused():
    flat = np.full((16, 16), 7, np.uint16)
    assert np.array_equal(engine.apply(flat, Seen(), device="cpu", input_percentiles=(2, 98)), flat)
    with pytest.raises(ValueError, match="percentiles"):
        intensity.input_stretch(flat, (98, 2))
    with pytest.raises(ValueError, match="stretch_range needs input_percentiles"):
        engine.apply(flat, Seen(), device="cpu", stretch_range=(0, 1))
    nan = np.ones((8, 8), np.float32) * 3
    nan[2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        intensity.input_stretch(nan, (2, 98))


def test_large_arrays_are_read_on_a_grid(monkeypatch, nuclei):
    monkeypatch.setattr(intensity, "STRETCH_SAMPLES", 4096)
    lo, hi = intensity.input_stretch(nuclei, (2, 98))
    full = np.percentile(nuclei, (2, 98))
    # a grid of every k-th plane, row and column: close to the exact percentiles
    assert abs(lo - full[0]) < 0.05 * (full[1] - full[0])
    assert abs(hi - full[1]) < 0.05 * (full[1] - full[0])


def test_registry_preview_and_full_run_agree_for_a_stretched_model(isolated_models, nuclei):
    _save(isolated_models / "stretchy.safetensors", {"input_percentiles": [2, 98]})
    info = zoo.get_model("stretchy")
    assert runtime.engine_kwargs(info)["input_percentiles"] == (2.0, 98.0)
    stack = nuclei[:4, :64, :64]
    full = me.enhance(stack, "stretchy", device="cpu")
    # a one-plane preview is stretched by the whole stack's percentiles, as the full run is
    preview = drive(me.api.iter_enhance(stack, "stretchy", device="cpu", plane=(2,)))
    np.testing.assert_array_equal(preview, full[2])
    # the same network without the header key sees another input: another result
    _save(isolated_models / "plain.safetensors", {})
    assert not np.array_equal(me.enhance(stack, "plain", device="cpu"), full)


def test_a_runs_weights_file_carries_the_stretch_in_its_training_record(isolated_models):
    _save(isolated_models / "run-best.safetensors",
          {"training": {"input_norm": "stretch", "input_percentiles": [2, 98]}})
    assert runtime.engine_kwargs(zoo.get_model("run-best"))["input_percentiles"] == (2.0, 98.0)


@pytest.mark.parametrize("bad", [[98, 2], [2], "2-98", [2, 101]])
def test_a_bad_header_is_refused_with_what_to_do(isolated_models, bad):
    _save(isolated_models / "broken.safetensors", {"input_percentiles": bad})
    with pytest.raises(WeightsError, match="input_percentiles .* re-save"):
        runtime.engine_kwargs(zoo.get_model("broken"))


def test_block_by_block_volume_uses_the_whole_volumes_stretch(isolated_models, nuclei, tmp_path):
    _save(isolated_models / "stretchy.safetensors", {"input_percentiles": [2, 98]})
    stack = nuclei[:6, :64, :64]
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, stack)
    loaded = load_task_model("enhance", "stretchy", "cpu")
    drive(lazy.iter_process_volume(tifffile.memmap(src, mode="r"), loaded.module, dst,
                                   device="cpu", block_bytes=2 * stack[0].nbytes,
                                   **loaded.engine_kwargs))
    np.testing.assert_array_equal(tifffile.imread(dst), me.enhance(stack, "stretchy", device="cpu"))


def test_what_a_stretched_model_sees_ignores_a_hot_pixel_and_an_offset(nuclei):
    plane = nuclei[12].astype(np.float32)
    hot = plane.copy()
    hot[0, 0] = 1e6  # one hot pixel, far above the data
    shifted = plane * 3.0 + 1000.0  # another gain and offset
    seen = []
    for img in (plane, hot, shifted):
        net = Seen()
        engine.apply(img, net, device="cpu", input_percentiles=(2, 98))
        seen.append(net.inputs[0][0, 0].numpy())
    inside = np.ones(plane.shape, bool)
    inside[0, 0] = False
    np.testing.assert_allclose(seen[1][inside], seen[0][inside], atol=1e-5)
    np.testing.assert_allclose(seen[2], seen[0], atol=1e-5)
    # the plain min-max mapping is squashed by the hot pixel
    plain = Seen()
    engine.apply(hot, plain, device="cpu")
    assert plain.inputs[0][0, 0].numpy()[inside].max() < 0.5 * seen[0].max()
