"""The task table (``core.tasks``): one place for task and model facts, and a new network in one call.

A toy denoiser defined here (one 3×3 conv predicting the noise, DRAN's convention) is
registered with ONE ``register_architecture`` call, trained from scratch by the library's
fine-tuning on the real nuclei sample, saved as a user model, listed, and run through
``napari_medenhance.denoise`` and ``medenhance denoise``. The fixture unregisters it, so the
other tests see the built-in table only. A toy enhancer of [0, 1] images is trained the same
way by the enhance recipe (which works in DPE's [-1, 1]) and run through ``enhance``, and a
toy ×4 network (one conv and a pixel shuffle) by the SR recipe, run through ``super_resolve``.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

import napari_medenhance as me
from napari_medenhance import cli
from napari_medenhance.core import batch, tasks, zoo
from napari_medenhance.core.nets import ARCHITECTURES
from napari_medenhance.core.training import finetune as ft
from napari_medenhance.core.weights import save_weights

TOY = "toy_residual"


class ToyDenoiser(nn.Module):
    """One conv layer predicting the noise; the clean estimate is ``x − forward(x)``."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.forward(x)


@pytest.fixture
def toy():
    """The toy registered for denoising (one call), removed again afterwards."""
    entry = tasks.register_architecture(TOY, "denoise", ToyDenoiser)
    try:
        yield entry
    finally:
        tasks.unregister_architecture(TOY)
        zoo.clear_cache()
    assert TOY not in ARCHITECTURES and TOY not in tasks.architectures()


def _noisy(clean: np.ndarray, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo, hi = float(clean.min()), float(clean.max())
    noisy = clean + rng.normal(0.0, 25 / 255 * (hi - lo), clean.shape)
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)


def test_the_table_is_what_every_module_reads():
    assert zoo.TASKS == tuple(tasks.TASKS) == ("denoise", "enhance", "sr")
    assert batch.TASKS is tasks.TASKS
    assert zoo.DEFAULT_MODEL == {"denoise": "dran", "enhance": "dpe", "sr": "msgan-x4"}
    assert [tasks.default_model_name("sr", s) for s in (2, 4)] == ["msgan-x2", "msgan-x4"]
    assert tasks.TASKS["sr"].default_models == ("msgan-x2", "msgan-x4")
    assert ft.TASK_MODES == {t: tasks.TASKS[t].modes for t in tasks.TASKS}
    assert ft.TASK_MODES["enhance"] == ("simulated", "paired", "unpaired")
    assert {t: tasks.architectures(t) for t in tasks.TASKS} == {
        "denoise": ("dran",), "enhance": ("dpe",), "sr": ("msgan", "srresnet")}
    # Every task network is buildable, and only the task networks serve a task.
    assert all(ARCHITECTURES[a] is tasks.resolve(tasks.architecture(a).constructor)
               for a in tasks.architectures())
    assert tasks.task_of("patchgan") is None and tasks.task_of("MSGAN") == "sr"
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    assert "(default msgan-x{SCALE};" in " ".join(sub["sr"].format_help().split())


def test_registering_refuses_what_it_cannot_do(toy):
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_architecture("dran", "denoise", ToyDenoiser)
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_architecture("patchgan", "denoise", ToyDenoiser)  # a helper network
    with pytest.raises(ValueError, match="replace=True"):
        tasks.register_architecture(TOY, "denoise", ToyDenoiser)
    with pytest.raises(ValueError, match="unknown task 'deblur'"):
        tasks.register_architecture("other", "deblur", ToyDenoiser)
    with pytest.raises(ValueError, match="built in"):
        tasks.unregister_architecture("dran")
    assert "toy_sr" not in ARCHITECTURES


def test_a_header_without_task_is_filed_by_its_registered_arch(toy, env):
    path = env / "old.safetensors"
    save_weights(path, ToyDenoiser(), arch=TOY, config={}, meta={})  # no 'task' key
    info = zoo.get_model(path)
    assert info.task == "denoise" and info.arch == TOY and info.channels == 3


def test_a_toy_network_trains_saves_lists_and_runs_through_api_and_cli(toy, env, nuclei, tmp_path, capsys):
    assert tasks.architectures("denoise") == ("dran", TOY) and tasks.task_of(TOY) == "denoise"
    assert ARCHITECTURES[TOY] is ToyDenoiser

    # Train a new toy network from scratch on real planes: the task table's recipe for it.
    stack = nuclei[8:18, 64:160, 64:160].copy()
    events = []
    result = ft.finetune("denoise", "simulated", stack, start=None, arch=TOY, steps=30, batch=4,
                         patch=32, lr=1e-2, device="cpu", name="toy-run", val_every=15,
                         recipe_options={"val_crop": 64}, progress=events.append)
    assert result.steps == 30 and not result.cancelled
    record = ft.read_record(ft.run_folder("toy-run"))
    assert record["arch"] == TOY and record["recipe"] == "DenoiseRecipe" and record["config"] == {
        "in_channels": 3}
    vals = [e.metrics for e in events if e.kind == "validation"]
    assert len(vals) >= 2 and vals[-1]["loss"] < vals[0]["loss"]  # it learnt something
    assert vals[-1]["psnr"] > vals[0]["psnr"]

    # Saved as the user's model, filed under denoise with its own architecture.
    info = ft.save_finetuned(ft.run_folder("toy-run"), "toy-denoiser")
    assert (info.name, info.task, info.arch, info.source) == ("toy-denoiser", "denoise", TOY, "user")
    listed = {m.name: m for m in me.list_models("denoise")}
    assert listed["toy-denoiser"].task == "denoise" and listed["toy-denoiser"].arch == TOY
    assert "toy-denoiser" not in {m.name for m in me.list_models("enhance")}

    # The public API runs it.
    clean = nuclei[:3, :96, :96]
    noisy = _noisy(clean)
    out = me.denoise(noisy, model="toy-denoiser", device="cpu")
    assert out.shape == noisy.shape and out.dtype == noisy.dtype
    assert np.abs(out.astype(np.int64) - noisy).mean() > 10  # it changed the image
    err = lambda x: float(np.mean((x.astype(np.float64) - clean) ** 2))  # noqa: E731
    assert err(out) < err(noisy)  # ... towards the clean planes
    with pytest.raises(ValueError, match="is a 'denoise' model, not a 'enhance' model"):
        me.enhance(noisy, model="toy-denoiser", device="cpu")

    # So does the command line, with the same result; `medenhance models` lists it.
    src, dst = tmp_path / "noisy.tif", tmp_path / "out" / "denoised.tif"
    tifffile.imwrite(src, noisy, photometric="minisblack")
    capsys.readouterr()
    assert cli.main(["denoise", str(src), str(dst), "--model", "toy-denoiser", "--device", "cpu"]) == 0
    written = tifffile.imread(dst)
    assert written.shape == noisy.shape and written.dtype == noisy.dtype
    np.testing.assert_array_equal(written, out)
    capsys.readouterr()
    assert cli.main(["models", "--task", "denoise"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["toy-denoiser", "denoise", "user"] == next(r[:3] for r in rows if r[0] == "toy-denoiser")


def test_arch_is_checked_before_anything_is_written(toy, env, nuclei):
    stack = nuclei[8:12, 64:160, 64:160]
    with pytest.raises(ValueError, match="unknown denoise architecture 'dpe'"):
        ft.iter_finetune("denoise", "simulated", stack, start=None, arch="dpe")
    with pytest.raises(ValueError, match="unpaired"):
        ft.iter_finetune("enhance", "unpaired", stack, lq=stack, start=None, arch="dpe")
    assert not (env / "runs").exists()


class ToyEnhancer(nn.Module):
    """One conv layer on [0, 1] images (no ``value_range``): image in, image out."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def test_a_toy_enhancer_trains_with_the_enhance_recipe_and_runs(env, nuclei):
    tasks.register_architecture("toy_enhancer", "enhance", ToyEnhancer)  # the one entry
    try:
        stack = nuclei[8:18, 64:160, 64:160].copy()
        events = []
        ft.finetune("enhance", "simulated", stack, start=None, arch="toy_enhancer", steps=20,
                    batch=4, patch=32, lr=1e-2, device="cpu", name="toy-enh", val_every=10,
                    recipe_options={"loss": "l1", "luminance_check": "relative",
                                    "val_crop": 64, "acceptance_samples": 0},
                    progress=events.append)
        record = ft.read_record(ft.run_folder("toy-enh"))
        assert record["arch"] == "toy_enhancer" and record["recipe"] == "EnhanceRecipe"
        vals = [e.metrics for e in events if e.kind == "validation"]
        # a [0, 1] network trained by the recipe that works in DPE's [-1, 1]: it learns
        assert vals[-1]["loss"] < vals[0]["loss"]
        info = ft.save_finetuned(ft.run_folder("toy-enh"), "toy-enhancer")
        assert (info.task, info.arch) == ("enhance", "toy_enhancer")
        out = me.enhance(stack[:2], model="toy-enhancer", device="cpu")
        assert out.shape == (2, 96, 96) and out.dtype == np.uint16
        assert not np.array_equal(out, stack[:2])
        # the recipe maps its [-1, 1] to the network's [0, 1] and back: a network that answers
        # mid-gray in its own range is scored as mid-gray
        from napari_medenhance.core.training import EnhanceRecipe, Plane, Pool

        planes = [Plane(f"n{z}", "fluorescence", (stack[z] / 65535).astype(np.float32))
                  for z in range(4)]
        recipe = EnhanceRecipe(Pool(train=planes[:3], val=planes[3:]), arch="toy_enhancer",
                               loss="l1", luminance_check="relative", acceptance_samples=0)

        class Gray(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.full_like(x, 0.5)

        _, preview = recipe.evaluate(Gray())
        assert np.allclose(preview, 0.5)
    finally:
        tasks.unregister_architecture("toy_enhancer")
        zoo.clear_cache()


class ToySR(nn.Module):
    """×4 by one conv and a pixel shuffle; says its factor as the SR classes do."""

    def __init__(self, in_channels: int = 3, scale: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    @staticmethod
    def scale_from_config(config: dict) -> int:
        return int(config.get("scale", 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def test_a_toy_sr_network_trains_with_the_sr_recipe_and_runs(env, nuclei):
    from napari_medenhance.core.training import Plane, Pool
    from napari_medenhance.core.training.recipes import SRRecipe

    tasks.register_architecture("toy_sr", "sr", ToySR)  # the one entry
    try:
        planes = [Plane(f"n{z}", "fluorescence", (nuclei[z] / 65535).astype(np.float32))
                  for z in (10, 14)]
        with pytest.raises(ValueError, match="trains ×4 networks; 'toy_sr' .* upscales ×2"):
            SRRecipe(Pool(train=planes[:1], val=planes[1:]), arch="toy_sr", config={"scale": 2})
        stack = nuclei[8:18, 64:192, 64:192].copy()
        events = []
        ft.finetune("sr", "simulated", stack, start=None, arch="toy_sr", steps=20, batch=4,
                    patch=32, lr=1e-2, device="cpu", name="toy-sr", val_every=10,
                    recipe_options={"val_crop": 64}, progress=events.append)
        record = ft.read_record(ft.run_folder("toy-sr"))
        assert record["arch"] == "toy_sr" and record["recipe"] == "SRRecipe"
        vals = [e.metrics for e in events if e.kind == "validation"]
        assert vals[-1]["loss"] < vals[0]["loss"]
        info = ft.save_finetuned(ft.run_folder("toy-sr"), "toy-sr-x4")
        assert (info.task, info.arch, info.scale) == ("sr", "toy_sr", 4)
        out = me.super_resolve(stack[0], 4, "toy-sr-x4", device="cpu")
        assert out.shape == (512, 512) and out.dtype == np.uint16
    finally:
        tasks.unregister_architecture("toy_sr")
        zoo.clear_cache()
