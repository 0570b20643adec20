"""Fine-tuning on the user's own data: user-data pools, the paired recipe wrapper, runs (learn,
cancel, resume, refuse), saving with a model card, and ``medenhance train``.

Tiny CPU runs on the shipped sample images (a DRAN of 8 features and one single-layer block,
32-pixel patches, batch 4).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

import napari_medenhance as me
from napari_medenhance._cli import train as _cli_train
from napari_medenhance.core import runtime, zoo
from napari_medenhance.core.nets.dran import DRAN
from napari_medenhance.core.training import finetune as ft
from napari_medenhance.core.training import load_checkpoint
from napari_medenhance.core.training.loop import BEST, LAST, CosineSchedule
from napari_medenhance.core.training.paired_data import (
    PairedPatchSampler,
    PlanePair,
    load_paired_data,
)
from napari_medenhance.core.training.user_data import load_user_data
from napari_medenhance.core.training.recipes.enhance import percentile_stretch
from napari_medenhance.core.weights import WeightsError, read_header, save_weights
from napari_medenhance.sample_data import load

TINY = {"features": 8, "blocks": 1, "layers_per_block": 1, "kernels": 2}
RUN = {"batch": 4, "patch": 32, "lr": 3e-3, "device": "cpu", "start": None, "config": TINY,
       "recipe_options": {"val_crop": 64}}



@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    """Real 16-bit fluorescence, 10 planes of 96×96 (uint16)."""
    return load("nuclei_stack")[8:18, 64:160, 64:160].copy()


def _events(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


# ------------------------------------------------------------------------------ user data


def test_pool_from_a_3d_uint16_stack(stack):
    data = np.concatenate([stack, np.zeros((1, 96, 96), np.uint16)])  # a blank last plane
    u = load_user_data(data, name="nuclei", val_fraction=0.2)
    train, val = u.pool.train, u.pool.val
    assert len(val) == 2 and len(train) >= 4
    names = [p.name for p in train + val]
    assert "nuclei[10]" not in names and u.split["unused_constant"] == 1  # the blank plane
    assert not {p.name for p in train} & {p.name for p in val}
    # No training plane is a direct neighbour of a validation plane (near-copies in a z-stack).
    z = lambda p: int(p.name.split("[")[1][:-1])  # noqa: E731
    assert min(abs(z(t) - z(v)) for t in train for v in val) >= 2
    for p in train + val:
        assert p.data.dtype == np.float32 and p.data.shape == (96, 96)
        assert 0.0 <= p.data.min() and p.data.max() <= 1.0
    # One mapping for the whole stack (percentiles of all planes), so relative brightness stays.
    src = u.sources[0]
    assert src["dtype"] == "uint16" and src["shape"] == [11, 96, 96]
    assert "percentiles 0.1" in src["normalisation"]
    lo, hi = np.percentile(data, (0.1, 99.9))
    np.testing.assert_allclose(val[0].data, np.clip((data[z(val[0])] - lo) / (hi - lo), 0, 1),
                               atol=1e-6)
    again = load_user_data(data, name="nuclei", val_fraction=0.2)
    assert again.split["val"] == u.split["val"] and again.fingerprint == u.fingerprint
    import dask.array as da  # napari layer data may be lazy

    lazy = load_user_data(da.from_array(data, chunks=(1, 96, 96)), name="nuclei", val_fraction=0.2)
    assert lazy.split == u.split and lazy.fingerprint == u.fingerprint


def test_pool_from_one_rgb_image_is_split_into_disjoint_regions():
    ihc = load("ihc_rgb")  # 512×512×3 uint8
    rgba = np.concatenate([ihc, np.full(ihc.shape[:2] + (1,), 255, np.uint8)], axis=2)
    u = load_user_data(rgba, name="ihc")
    (train,), (val,) = u.pool.train, u.pool.val
    assert train.rgb and val.rgb and train.data.shape[2] == 3  # alpha dropped
    assert train.data.shape[0] + val.data.shape[0] == 512  # rows split, nothing shared
    assert val.data.shape[0] == round(0.2 * 512) and train.data.shape[1] == val.data.shape[1] == 512
    np.testing.assert_array_equal(np.concatenate([train.data, val.data]), ihc / np.float32(255))
    assert "/ 255" in u.sources[0]["normalisation"] and "spatially" in u.split["how"]
    with pytest.raises(ValueError, match="too small to split"):
        load_user_data(ihc[:40, :40])
    with pytest.raises(ValueError, match="constant"):
        load_user_data(np.full((3, 64, 64), 7, np.uint16))
    with pytest.raises(ValueError, match="NaN"):
        load_user_data(np.array([[0.5, np.nan]] * 64, np.float32))


def test_pool_from_a_folder_of_tiffs(stack, tmp_path):
    import tifffile

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"img{i}.tif", stack[i])
    u = load_user_data(folder)
    assert [s["name"] for s in u.sources] == ["img0.tif", "img1.tif", "img2.tif"]
    assert len(u.pool.val) == 1 and len(u.pool.train) == 2  # different files: no gap needed
    with pytest.raises(ValueError, match="no such file"):
        load_user_data(tmp_path / "missing")


# ------------------------------------------------------------------------------ paired data


def test_paired_shapes_are_checked_and_named(stack):
    with pytest.raises(ValueError, match=r"\(10, 90, 96\).*\(10, 96, 96\)"):
        load_paired_data(stack[:, :90], stack)
    with pytest.raises(ValueError, match=r"4× the LQ.*expected HQ \(10, 384, 384\)"):
        load_paired_data(stack, stack, scale=4)
    with pytest.raises(ValueError, match="RGB"):
        load_paired_data(load("ihc_rgb")[:96, :96], stack[0])
    gen = ft.iter_finetune("denoise", "paired", stack, lq=stack[:, :, :90], steps=2, **RUN)
    with pytest.raises(ValueError, match=r"\(10, 96, 90\) and HQ 'data' has shape \(10, 96, 96\)"):
        next(gen)
    with pytest.raises(ValueError, match="needs the low-quality data"):
        ft.iter_finetune("denoise", "paired", stack, steps=2, **RUN)
    with pytest.raises(ValueError, match="cannot be trained in 'unpaired'"):
        ft.iter_finetune("sr", "unpaired", stack, lq=stack, steps=2, **RUN)


def test_paired_patches_come_from_the_same_window():
    rng = np.random.default_rng(1)
    hq = rng.random((80, 120), dtype=np.float32)
    pair = PlanePair("p", "user", hq[2::4, 1::4], hq, scale=4)  # LQ pixel = one HQ pixel of 4²
    sampler = PairedPatchSampler([pair], 32)
    lq_b, hq_b = sampler.sample(np.random.default_rng(0), 16)  # with flips / rotations
    assert lq_b.shape == (16, 3, 8, 8) and hq_b.shape == (16, 3, 32, 32)
    for lq_p, hq_p in zip(lq_b, hq_b):
        # Wherever the window was and however it was flipped, the LQ stays the HQ's subsample.
        assert any(np.array_equal(lq_p, hq_p[:, a::4, b::4]) for a in range(4) for b in range(4))
    with pytest.raises(ValueError, match="multiple of the scale"):
        PairedPatchSampler([pair], 30)


# ------------------------------------------------------------------------------ runs


def test_tiny_run_learns_and_the_saved_model_fine_tunes_exactly(env, stack):
    events, res = _events(ft.iter_finetune("denoise", "simulated", stack, steps=40, name="r1",
                                           val_every=20, **RUN))
    val = [e for e in events if e.kind == "validation"]
    assert [e.step for e in val] == [0, 20, 40]
    assert val[-1].metrics["loss"] < val[0].metrics["loss"]
    assert val[-1].metrics["psnr"] > val[0].metrics["psnr"]
    assert val[0].preview.shape == (64, 64) and val[0].preview.dtype == np.float32
    run_dir = env / "runs" / "r1"
    assert res.steps == 40 and res.best_path == run_dir / BEST
    record = ft.read_record(run_dir)
    assert record["before"]["metrics"]["psnr"] == pytest.approx(val[0].metrics["psnr"])
    assert record["status"] == "done" and record["start"] is None

    info = ft.save_finetuned(run_dir, "mine")
    assert (info.name, info.task, info.source) == ("mine", "denoise", "user")
    assert [m.name for m in zoo.list_models("denoise")] == ["mine"]
    card = (env / "models" / "mine.md").read_text()
    assert "| psnr | " in card and f"{val[0].metrics['psnr']:.4f}" in card
    assert f"{res.best_metric:.4f}" in card and "scratch" in card and "(10, 96, 96)" in card
    assert info.card["validation"]["before"]["metrics"]["psnr"] == pytest.approx(val[0].metrics["psnr"])
    out = me.denoise(stack[:2], "mine", device="cpu")
    assert out.shape == (2, 96, 96) and out.dtype == np.uint16

    # Fine-tuning from it (by name, strict load) starts exactly where it ended: its step-0
    # validation on the same held-out planes is the saved model's best.
    events, _ = _events(ft.iter_finetune("denoise", "simulated", stack, steps=1, name="r2",
                                         **{**RUN, "start": "mine", "config": None}))
    first = next(e for e in events if e.kind == "validation")
    assert first.step == 0 and first.metrics["psnr"] == pytest.approx(res.best_metric, abs=1e-6)
    assert ft.read_record(env / "runs" / "r2")["start"]["name"] == "mine"
    with pytest.raises(ValueError, match="already exists"):
        ft.save_finetuned(run_dir, "mine")


def test_cancel_keeps_the_best_and_resume_continues_the_schedule(env, stack):
    n, k = 12, 5
    done: list[int] = []
    kw = {**RUN, "steps": n, "name": "c", "val_every": 4}
    events = []
    for ev in ft.iter_finetune("denoise", "simulated", stack, cancel=lambda: len(done) >= k, **kw):
        events.append(ev)
        if ev.kind == "step":
            done.append(ev.step)
    run_dir = env / "runs" / "c"
    assert events[-1].kind == "cancelled" and events[-1].step == k
    assert load_checkpoint(run_dir / LAST).step == k  # a valid, resumable checkpoint
    best = read_header(run_dir / BEST)["meta"]
    vals = {e.step: e.metrics["psnr"] for e in events if e.kind == "validation"}
    assert best["step"] == max(vals, key=vals.get) and best["step"] in (0, 4)
    assert ft.read_record(run_dir)["status"] == "cancelled"
    assert ft.save_finetuned(run_dir, "partial").name == "partial"  # Stop, then Save works

    events, res = _events(ft.iter_finetune("denoise", "simulated", stack, **kw))
    steps = [e for e in events if e.kind == "step"]
    assert steps[0].step == k + 1 and steps[-1].step == n and res.steps == n
    assert steps[0].lr == pytest.approx(CosineSchedule(RUN["lr"], n).lr(k))
    record = ft.read_record(run_dir)
    assert [s["first_step"] for s in record["sessions"]] == [1, k + 1]
    assert record["before"]["metrics"]["psnr"] == pytest.approx(vals[0])  # kept from session 1
    # The same name on other data is refused rather than mixed in.
    with pytest.raises(ValueError, match="other data"):
        next(ft.iter_finetune("denoise", "simulated", stack[:, ::-1], **{**kw, "steps": n + 2}))


def test_unusable_starting_models_are_refused_and_leave_nothing(env, stack):
    bad = env / "corrupt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    pickled = env / "pickled.safetensors"
    torch.save(DRAN(**TINY).state_dict(), pickled)
    import safetensors.torch

    foreign = env / "foreign.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(foreign))
    dpe = env / "dpe.safetensors"
    from napari_medenhance.core.nets.dpe import DPE

    save_weights(dpe, DPE(widths=[8, 8, 8]), arch="dpe", config={"widths": [8, 8, 8]},
                 meta={"task": "enhance"})
    kw = {**RUN, "config": None, "steps": 2, "name": "x"}
    for path, match in [(bad, "corrupt"), (pickled, "pickled PyTorch checkpoints are refused"),
                        (foreign, "without napari-medenhance metadata"),
                        (dpe, "'enhance' model, not a 'denoise' model")]:
        with pytest.raises(ValueError, match=match):
            ft.iter_finetune("denoise", "simulated", stack, **{**kw, "start": path})
    with pytest.raises(ValueError, match="not bundled yet"):
        ft.iter_finetune("denoise", "simulated", stack, **{**kw, "start": "shipped"})
    # A header that lies about its tensors: refused at the strict load, before any folder.
    lying = env / "lying.safetensors"
    save_weights(lying, DRAN(**{**TINY, "features": 16}), arch="dran", config=TINY,
                 meta={"task": "denoise"})
    gen = ft.iter_finetune("denoise", "simulated", stack, **{**kw, "start": lying})
    with pytest.raises(WeightsError, match="do not fit"):
        next(gen)
    # A run that fails after its step-0 validation, before any checkpoint, leaves no folder.
    with pytest.raises(ValueError, match="use a smaller patch"):
        _events(ft.iter_finetune("denoise", "simulated", stack, **{**RUN, "steps": 2,
                                                                   "name": "y", "patch": 128}))
    assert not (env / "runs").exists() or not any((env / "runs").iterdir())


def test_paired_sr_and_unpaired_runs(env, stack):
    import torch.nn.functional as F

    hr = stack.astype(np.float32)
    lr = F.interpolate(torch.from_numpy(hr)[None], scale_factor=0.25, mode="bicubic",
                       antialias=True)[0].numpy()
    events, _ = _events(ft.iter_finetune(
        "sr", "paired", stack, lq=lr, steps=2, name="sr", val_every=2,
        **{**RUN, "config": {"features": 8, "blocks": 1},
           "recipe_options": {"mode": "srresnet", "val_crop": 64}}))
    val = [e for e in events if e.kind == "validation"]
    assert val[0].preview.shape == (64, 64) and math.isfinite(val[0].metrics["psnr"])
    assert ft.read_record(env / "runs" / "sr")["data"]["paired"]["scale"] == 4

    ihc = load("ihc_rgb")
    events, _ = _events(ft.iter_finetune(
        "enhance", "unpaired", ihc[:, :256], lq=(ihc[:, 256:] * 0.4).astype(np.uint8), steps=2,
        name="un", val_every=2, batch=2, patch=48, lr=2e-4, device="cpu", start=None,
        config={"widths": [8, 12, 16, 20, 24]},
        recipe_options={"disc_config": {"widths": [8, 16, 16, 16]}, "structure_weight": 0.0,
                        "val_crop": 64}))
    val = [e for e in events if e.kind == "validation"]
    assert "lassim" in val[0].metrics and val[0].preview.ndim == 3
    info = ft.save_finetuned(env / "runs" / "un", "unpaired-g")
    assert (info.task, info.arch) == ("enhance", "dpe")  # LaMEGAN's G alone, an enhance model
    assert me.enhance(ihc[:32, :32], "unpaired-g", device="cpu").shape == (32, 32, 3)


def test_fine_tuning_a_stretched_enhancer_keeps_its_stretch(env, stack):
    from napari_medenhance.core.nets.dpe import DPE

    cfg = {"widths": [8, 8, 8]}
    (env / "models").mkdir(exist_ok=True)
    torch.manual_seed(0)
    save_weights(env / "models" / "st.safetensors", DPE(**cfg), arch="dpe", config=cfg,
                 meta={"task": "enhance", "name": "st", "input_percentiles": [2, 98]})
    zoo.clear_cache()
    dim = (stack // 3).astype(np.uint16)
    for mode, lq in (("simulated", None), ("paired", dim)):
        _events(ft.iter_finetune(
            "enhance", mode, stack, lq=lq, steps=2, name=f"st-{mode}", val_every=2, batch=2,
            patch=32, lr=1e-4, device="cpu", start="st",
            recipe_options={"loss": "l1", "val_crop": 64, "luminance_check": "relative"}))
        info = ft.save_finetuned(env / "runs" / f"st-{mode}", f"st2-{mode}")
        # the fine-tuned model is run on stretched input, as it was trained
        assert runtime.engine_kwargs(info)["input_percentiles"] == (2.0, 98.0)
    # paired: the network is trained on the LQ planes stretched by their own percentiles,
    # the recipe's default (0.1, 99.9) or those of the model it starts from
    raw = ft.build_recipe("enhance", "paired", load_paired_data(dim, stack),
                          options={"loss": "l1", "val_crop": 64}).pairs
    seen = []
    for pct in (None, (2.0, 98.0)):
        pairs = ft.build_recipe("enhance", "paired", load_paired_data(dim, stack), options={
            "loss": "l1", "input_norm": "stretch", "val_crop": 64,
            **({"input_percentiles": pct} if pct else {})}).pairs
        for p, r in zip(pairs.train + pairs.val, raw.train + raw.val, strict=True):
            np.testing.assert_allclose(p.lq, percentile_stretch(r.lq, *(pct or (0.1, 99.9))))
        seen.append(pairs.train[0].lq)
    assert not np.allclose(*seen)


def test_models_changed_listeners(env, stack):
    calls = []

    class Listener:
        def on_change(self):
            calls.append("method")

    obj = Listener()
    unsubscribe = zoo.on_models_changed(lambda: calls.append("lambda"))
    zoo.on_models_changed(obj.on_change)
    path = env / "m.safetensors"
    save_weights(path, DRAN(**TINY), arch="dran", config=TINY, meta={"task": "denoise"})
    zoo.save_user_model(path, "a")
    assert sorted(calls) == ["lambda", "method"]
    del obj  # held weakly: a closed widget is not kept alive
    unsubscribe()
    zoo.save_user_model(path, "b")
    assert sorted(calls) == ["lambda", "method"]


# ------------------------------------------------------------------------------ CLI


def _cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medenhance")
    _cli_train.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["train", *argv])


def test_cli_trains_saves_and_resumes(env, stack, capsys):
    import tifffile

    tifffile.imwrite(env / "stack.tif", stack)
    argv = ["--task", "denoise", "--data", str(env / "stack.tif"), "--from", "scratch",
            "--steps", "4", "--batch", "2", "--patch", "32", "--lr", "3e-3", "--device", "cpu",
            "--val-every", "2", "--name", "cli-model", "--config", json.dumps(TINY),
            "--recipe-options", '{"val_crop": 48}']
    args = _cli(*argv)
    assert args.func is _cli_train.run
    assert _cli_train.run(args) == 0
    out = capsys.readouterr()
    assert "saved model 'cli-model'" in out.out and "before (starting model)" in out.out
    assert [m.name for m in zoo.list_models("denoise")] == ["cli-model"]
    assert (env / "models" / "cli-model.md").is_file()
    # The same name again: refused up front (no training) unless --overwrite; with it, the
    # complete run is resumed (nothing to do) and saved again.
    assert _cli_train.run(_cli(*argv)) == 2
    assert "already exists" in capsys.readouterr().err
    assert _cli_train.run(_cli(*argv, "--overwrite")) == 0
    assert "done: 4 steps" in capsys.readouterr().out
    assert _cli_train.run(_cli(*argv[:-4], "--from", "nope", "--no-save")) == 2
    assert "unknown denoise model 'nope'" in capsys.readouterr().err
