"""The training engine: loop, checkpoints (safetensors, resumable), patches, denoise recipe.

Tiny CPU runs on real planes from the shipped sample data (a small DRAN: 16 features, one DRAB
of one layer; 32-pixel patches; batch 4).
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import safetensors
import torch

from napari_medenhance.core.nets.dran import DRAN
from napari_medenhance.core.training import (
    CheckpointError,
    CosineSchedule,
    DenoiseRecipe,
    PatchSampler,
    Plane,
    Pool,
    load_checkpoint,
    train,
)
from napari_medenhance.core.training import checkpoint as ckpt_mod
from napari_medenhance.core.weights import WeightsError, load_into, read_header, save_weights
from napari_medenhance.sample_data import load

TINY = {"features": 16, "blocks": 1, "layers_per_block": 1}
RUN = {"batch": 4, "patch": 32, "lr": 3e-3, "device": "cpu"}


def _norm(a: np.ndarray) -> np.ndarray:
    """Robust percentile normalisation to [0, 1], as training/pool.py does for 16-bit data."""
    a = a.astype(np.float32)
    lo, hi = np.percentile(a, (0.1, 99.9))
    return np.clip((a - lo) / (hi - lo), 0, 1)


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    return _norm(load("ct_slice"))


@pytest.fixture(scope="module")
def pool(ct) -> Pool:
    """Real CT, fluorescence and IHC colour planes; validation = disjoint regions / planes."""
    nuc = _norm(load("nuclei_stack"))
    ihc = load("ihc_rgb").astype(np.float32) / 255
    return Pool(
        train=[
            Plane("ct[:, :384]", "CT", ct[:, :384]),
            Plane("nuclei[z=10]", "fluorescence", nuc[10]),
            Plane("ihc[:256]", "colour", ihc[:256]),
        ],
        val=[
            Plane("ct[:, 384:]", "CT", ct[:, 384:]),
            Plane("nuclei[z=20]", "fluorescence", nuc[20]),
            Plane("ihc[256:]", "colour", ihc[256:]),
        ],
    )


@pytest.fixture(scope="module")
def recipe(pool) -> DenoiseRecipe:
    return DenoiseRecipe(pool, config=TINY, val_crop=64)


def _run(gen, stop_after: int | None = None):
    """Drive a train() generator: (events, TrainResult or None if closed after ``stop_after``
    step events)."""
    events = []
    n = 0
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return events, stop.value
        events.append(ev)
        if ev.kind == "step":
            n += 1
            if stop_after is not None and n == stop_after:
                gen.close()
                return events, None


def _tensors(path) -> dict[str, torch.Tensor]:
    with safetensors.safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# ---------------------------------------------------------------------------------- learning


def test_tiny_run_improves_validation(recipe, tmp_path):
    events, res = _run(train(recipe, steps=40, out_dir=tmp_path, val_every=40, ckpt_every=0, **RUN))
    val = [e for e in events if e.kind == "validation"]
    assert [e.step for e in val] == [0, 40]
    first, last = val[0].metrics, val[-1].metrics
    assert last["psnr"] > first["psnr"] + 1.0, (first, last)
    assert last["loss"] < first["loss"]
    for s in ("15", "25", "50"):
        assert f"psnr_s{s}" in last and f"ssim_s{s}" in last
    # preview: the denoised first validation plane (gray CT crop), float32 in [0, 1]
    assert val[-1].preview.shape == (64, 64) and val[-1].preview.dtype == np.float32
    assert 0 <= val[-1].preview.min() and val[-1].preview.max() <= 1
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(1, 41))
    assert steps[0].lr == pytest.approx(3e-3) and steps[-1].lr < steps[0].lr  # cosine decay
    assert "l1" in steps[-1].losses
    assert events[-1].kind == "done" and res.steps == 40 and not res.cancelled
    assert res.best_metric == pytest.approx(last["psnr"]) and res.best_step == 40


# ------------------------------------------------------------------------- resume / cancel


def test_cancel_then_resume_equals_uninterrupted_run(recipe, tmp_path):
    n, k = 12, 5
    full, _ = _run(train(recipe, steps=n, out_dir=tmp_path / "a", val_every=4, ckpt_every=0, **RUN))

    done: list[int] = []
    gen = train(recipe, steps=n, out_dir=tmp_path / "b", val_every=4, ckpt_every=0,
                cancel=lambda: len(done) >= k, **RUN)
    events = []
    for ev in gen:
        events.append(ev)
        if ev.kind == "step":
            done.append(ev.step)
    assert events[-1].kind == "cancelled" and events[-1].step == k and done[-1] == k
    assert load_checkpoint(tmp_path / "b" / "last.safetensors").step == k

    resumed, res = _run(train(recipe, steps=n, out_dir=tmp_path / "b", val_every=4, ckpt_every=0, **RUN))
    steps = [e for e in resumed if e.kind == "step"]
    assert steps[0].step == k + 1 and steps[-1].step == n and res.steps == n
    full_lr = {e.step: e.lr for e in full if e.kind == "step"}
    assert steps[0].lr == full_lr[k + 1]
    # Bit-exact on CPU: model, BatchNorm statistics, Adam moments and step counts, RNG streams.
    a = _tensors(tmp_path / "a" / "last.safetensors")
    b = _tensors(tmp_path / "b" / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert load_checkpoint(tmp_path / "b" / "last.safetensors").numpy_rng == load_checkpoint(
        tmp_path / "a" / "last.safetensors"
    ).numpy_rng


def test_a_run_resumed_across_a_validation_change_measures_its_best_again(pool, tmp_path):
    """The best value a checkpoint (and best.safetensors) recorded under an older validation
    is measured again by the new one before new validations are compared with it."""
    old = DenoiseRecipe(pool, config=TINY, val_crop=64)
    old.validation_version = 0
    _, first = _run(train(old, steps=4, out_dir=tmp_path, val_every=4, ckpt_every=0, **RUN))
    assert read_header(tmp_path / "best.safetensors")["meta"]["validation_version"] == 0

    new = DenoiseRecipe(pool, config=TINY, val_crop=64)
    assert new.validation_version == 1
    measure = new.validate

    def stricter(net, device="cpu"):  # the same network now scores 5 dB lower
        metrics, preview = measure(net, device)
        return {**metrics, "psnr": metrics["psnr"] - 5.0}, preview

    new.validate = stricter
    events, res = _run(train(new, steps=5, out_dir=tmp_path, val_every=0, ckpt_every=0, **RUN))
    latest = [e.metrics["psnr"] for e in events if e.kind == "validation"]
    assert len(latest) == 1
    # Not the stale value: the best file measured again (deterministic validation), or the
    # step-5 model where that is better.
    assert res.best_metric == pytest.approx(max(first.best_metric - 5.0, latest[0]), abs=1e-9)
    loop = load_checkpoint(tmp_path / "last.safetensors").loop
    assert loop["validation_version"] == 1 and loop["best"] == pytest.approx(res.best_metric)


def test_closing_the_generator_leaves_a_resumable_checkpoint(recipe, tmp_path):
    # napari's worker.quit() closes the generator at a yield (GeneratorExit there).
    events, res = _run(
        train(recipe, steps=10, out_dir=tmp_path, val_every=0, ckpt_every=4, **RUN), stop_after=6
    )
    assert res is None and events[-1].kind == "step" and events[-1].step == 6
    ck = load_checkpoint(tmp_path / "last.safetensors")
    assert ck.step == 6 and ck.identity["task"] == "denoise"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    resumed, res = _run(train(recipe, steps=10, out_dir=tmp_path, val_every=0, ckpt_every=4, **RUN))
    assert [e.step for e in resumed if e.kind == "step"] == [7, 8, 9, 10]


def test_closing_an_abandoned_run_never_overwrites_a_newer_one(recipe, tmp_path):
    # quit() abandons the generator; Python closes it only when it is garbage-collected, which
    # can be after the user started training again in the same folder.
    old = train(recipe, steps=10, out_dir=tmp_path, val_every=0, ckpt_every=0, **RUN)
    for _ in range(3):
        next(old)
    _, res = _run(train(recipe, steps=5, out_dir=tmp_path, val_every=0, ckpt_every=0, **RUN))
    assert res.steps == 5
    newer = (tmp_path / "last.safetensors").read_bytes()
    old.close()
    assert (tmp_path / "last.safetensors").read_bytes() == newer


def test_failed_write_keeps_the_previous_checkpoint(recipe, tmp_path, monkeypatch):
    _run(train(recipe, steps=3, out_dir=tmp_path, val_every=0, ckpt_every=3, **RUN))
    before = (tmp_path / "last.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        _run(train(recipe, steps=6, out_dir=tmp_path, val_every=0, ckpt_every=3, **RUN))
    monkeypatch.undo()
    assert (tmp_path / "last.safetensors").read_bytes() == before
    assert load_checkpoint(tmp_path / "last.safetensors").step == 3
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_truncated_checkpoint_is_refused_not_restarted(recipe, tmp_path):
    _run(train(recipe, steps=2, out_dir=tmp_path, val_every=0, ckpt_every=2, **RUN))
    path = tmp_path / "last.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot resume.*truncated.*resume=False"):
        next(train(recipe, steps=4, out_dir=tmp_path, **RUN))
    assert path.read_bytes() == data[: len(data) // 2]  # left for the user to inspect
    # resume=False starts afresh and replaces it
    _, res = _run(train(recipe, steps=2, out_dir=tmp_path, val_every=0, resume=False, **RUN))
    assert load_checkpoint(path).step == 2 and res.steps == 2


def test_checkpoint_of_another_network_is_refused(recipe, pool, tmp_path):
    _run(train(recipe, steps=1, out_dir=tmp_path, val_every=0, **RUN))
    other = DenoiseRecipe(pool, config={**TINY, "features": 8}, val_crop=64)
    with pytest.raises(CheckpointError, match="config"):
        next(train(other, steps=2, out_dir=tmp_path, **RUN))
    # a plain weights file is not a checkpoint either
    (tmp_path / "w").mkdir()
    save_weights(tmp_path / "w" / "last.safetensors", recipe.build(), arch="dran",
                 config=recipe.config)
    with pytest.raises(CheckpointError, match="not a training checkpoint.*init_weights"):
        next(train(recipe, steps=2, out_dir=tmp_path / "w", **RUN))


# -------------------------------------------------------------------------- weights files


def test_best_weights_load_into_a_fresh_network(recipe, tmp_path):
    _, res = _run(train(recipe, steps=6, out_dir=tmp_path, val_every=3, ckpt_every=0, **RUN))
    header = read_header(res.best_path, expected_arch="dran")
    meta = header["meta"]
    assert meta["task"] == "denoise" and meta["step"] == res.best_step
    assert meta["metrics"]["psnr"] == pytest.approx(res.best_metric)
    assert {"psnr_s25", "ssim", "loss"} <= set(meta["metrics"])
    net = DRAN(**header["config"])
    load_into(net, res.best_path, expected_arch="dran")  # strict
    net.eval()
    metrics, _ = recipe.validate(net, torch.device("cpu"))
    assert metrics["psnr"] == pytest.approx(res.best_metric, abs=1e-6)


def test_weight_average_is_what_validation_and_best_weights_see(recipe, tmp_path):
    n, decay = 8, 0.5
    events, res = _run(train(recipe, steps=n, out_dir=tmp_path / "avg", val_every=n,
                             ckpt_every=0, average=decay, **RUN))
    ck = load_checkpoint(tmp_path / "avg" / "last.safetensors")
    assert ck.loop["average"] == {"decay": decay, "updates": n}
    names = [name for name, _ in recipe.build().named_parameters()]
    assert sorted(ck.average) == sorted(names)

    # The same run without averaging trains the same weights; average them by hand from the
    # starting weights (seeded as train() seeds them) and each step's checkpoint.
    torch.manual_seed(0)
    expect = {k: p.detach().clone() for k, p in recipe.build().named_parameters()}
    gen = train(recipe, steps=n, out_dir=tmp_path / "plain", val_every=0, ckpt_every=1, **RUN)
    i = 0
    for ev in gen:
        if ev.kind == "checkpoint":
            i += 1
            w = load_checkpoint(ev.path).model
            d = min(decay, (1 + i) / (10 + i))
            expect = {k: d * expect[k] + (1 - d) * w[k] for k in names}
    assert i == n
    for k in names:
        assert torch.allclose(ck.average[k], expect[k], atol=1e-6), k
    # The trained weights are the plain run's own: averaging does not change training.
    assert all(torch.equal(ck.model[k], w[k]) for k in names)
    assert any(not torch.allclose(ck.average[k], w[k]) for k in names)

    # best.safetensors holds the averaged parameters (buffers: the trained network's), and
    # the validation event scored exactly those.
    best = _tensors(res.best_path)
    for k in names:
        assert torch.equal(best[k], ck.average[k]), k
    header = read_header(res.best_path, expected_arch="dran")
    assert header["meta"]["averaged"] == {"decay": decay, "updates": n}
    net = DRAN(**header["config"])
    load_into(net, res.best_path, expected_arch="dran")
    net.eval()
    metrics, _ = recipe.validate(net, torch.device("cpu"))
    last_val = [e for e in events if e.kind == "validation"][-1]
    assert last_val.step == n
    assert metrics["psnr"] == pytest.approx(last_val.metrics["psnr"], abs=1e-6)


def test_a_checkpoint_gives_its_trained_or_its_averaged_weights_as_a_weights_file(recipe, tmp_path):
    # training/checkpoint_weights.py: how a session measures what averaging adds at a step.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    import checkpoint_weights

    n = 6
    events, res = _run(train(recipe, steps=n, out_dir=tmp_path / "r", val_every=n, ckpt_every=0,
                             average=0.5, **RUN))
    last = tmp_path / "r" / "last.safetensors"
    ck = load_checkpoint(last)
    avg = checkpoint_weights.write(last, tmp_path / "avg.safetensors", averaged=True)
    live = checkpoint_weights.write(last, tmp_path / "live.safetensors")
    names = [k for k, _ in recipe.build().named_parameters()]
    a, t = _tensors(avg), _tensors(live)
    assert all(torch.equal(a[k], ck.average[k]) and torch.equal(t[k], ck.model[k]) for k in names)
    assert any(not torch.equal(a[k], t[k]) for k in names)
    assert read_header(avg, expected_arch="dran")["meta"]["weights"] == "averaged"
    assert read_header(live, expected_arch="dran")["meta"]["step"] == n
    # The averaged file scores what the run's own validation scored at that step.
    net = DRAN(**read_header(avg)["config"])
    load_into(net, avg, expected_arch="dran")
    net.eval()
    metrics, _ = recipe.validate(net, torch.device("cpu"))
    last_val = [e for e in events if e.kind == "validation"][-1]
    assert metrics["psnr"] == pytest.approx(last_val.metrics["psnr"], abs=1e-6)
    # A run without averaging has nothing to give: a clear error, no file.
    _run(train(recipe, steps=1, out_dir=tmp_path / "plain", val_every=0, ckpt_every=0, **RUN))
    with pytest.raises(SystemExit, match="no averaged weights"):
        checkpoint_weights.write(tmp_path / "plain" / "last.safetensors",
                                 tmp_path / "x.safetensors", averaged=True)
    assert not (tmp_path / "x.safetensors").exists()


def test_weight_average_resumes_exactly_and_starts_on_an_old_checkpoint(recipe, tmp_path):
    n, k = 10, 4
    run = dict(val_every=0, ckpt_every=0, average=0.9, **RUN)
    _run(train(recipe, steps=n, out_dir=tmp_path / "a", **run))
    _run(train(recipe, steps=n, out_dir=tmp_path / "b", **run), stop_after=k)
    _run(train(recipe, steps=n, out_dir=tmp_path / "b", **run))
    a = load_checkpoint(tmp_path / "a" / "last.safetensors")
    b = load_checkpoint(tmp_path / "b" / "last.safetensors")
    assert b.loop["average"]["updates"] == n
    for name in a.average:
        assert torch.equal(a.average[name], b.average[name]), name
    # A checkpoint written without averaging: the resumed run averages from its weights on.
    _run(train(recipe, steps=k, out_dir=tmp_path / "c", val_every=0, ckpt_every=0, **RUN))
    old = load_checkpoint(tmp_path / "c" / "last.safetensors")
    assert old.average == {} and "average" not in old.loop
    _run(train(recipe, steps=k + 1, out_dir=tmp_path / "c", **run))
    c = load_checkpoint(tmp_path / "c" / "last.safetensors")
    assert c.loop["average"]["updates"] == 1
    d = min(0.9, 2 / 11)
    for name in c.average:
        assert torch.allclose(c.average[name], d * old.model[name] + (1 - d) * c.model[name],
                              atol=1e-6), name
    with pytest.raises(ValueError, match="average must be a decay"):
        next(train(recipe, steps=1, out_dir=tmp_path / "d", average=1.0, **RUN))


def test_fine_tune_starts_from_init_weights(recipe, tmp_path):
    _, res = _run(train(recipe, steps=20, out_dir=tmp_path / "a", val_every=20, **RUN))
    events, _ = _run(train(recipe, steps=1, out_dir=tmp_path / "b", val_every=1,
                           init_weights=res.best_path, **RUN))
    baseline = next(e for e in events if e.kind == "validation")
    assert baseline.step == 0 and baseline.metrics["psnr"] == pytest.approx(res.best_metric, abs=1e-6)
    # weights for another configuration do not fit: strict load refuses them
    save_weights(tmp_path / "small.safetensors", DRAN(features=8, blocks=1, layers_per_block=1),
                 arch="dran", config={"features": 8})
    with pytest.raises(WeightsError, match="do not fit"):
        next(train(recipe, steps=1, out_dir=tmp_path / "c", init_weights=tmp_path / "small.safetensors", **RUN))


def test_checkpoints_are_safetensors_without_pickle(recipe, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle-based loading must never be used")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    _run(train(recipe, steps=2, out_dir=tmp_path, val_every=2, ckpt_every=1, **RUN))
    _run(train(recipe, steps=4, out_dir=tmp_path, val_every=2, ckpt_every=1, **RUN))  # resumes
    for name in ("last.safetensors", "best.safetensors"):
        raw = (tmp_path / name).read_bytes()
        # safetensors: an 8-byte little-endian header length, then that many bytes of JSON
        # (not a torch.save ZIP, not a pickle stream)
        assert raw[:2] != b"PK"
        n = int.from_bytes(raw[:8], "little")
        assert 8 + n <= len(raw) and isinstance(json.loads(raw[8 : 8 + n]), dict)
        t = _tensors(tmp_path / name)
        assert all(isinstance(v, torch.Tensor) for v in t.values())
    t = _tensors(tmp_path / "last.safetensors")
    assert t["rng/torch"].dtype == torch.uint8
    assert any(k.startswith("optim/") and k.endswith("/exp_avg_sq") for k in t)
    assert load_checkpoint(tmp_path / "last.safetensors").step == 4


# ------------------------------------------------------------------ patches and schedule


def test_patch_sampler_avoids_ct_padding(ct):
    # The CT slice is -3024 HU outside the reconstruction circle: 0 after normalisation.
    assert (ct == 0).mean() > 0.15
    rng = np.random.default_rng(0)
    plane = [Plane("ct", "CT", ct)]
    patches, gray = PatchSampler(plane, 32).sample(rng, 400)
    assert gray.all() and patches.shape == (400, 3, 32, 32)
    assert (patches[:, 0] == patches[:, 1]).all() and (patches[:, 0] == patches[:, 2]).all()
    std = patches[:, 0].std(axis=(1, 2))
    padding = (patches[:, 0] == 0).mean(axis=(1, 2))
    assert std.min() >= 0.005 and padding.max() <= 0.75
    # without the rejection a good share of the patches would be pure padding
    raw, _ = PatchSampler(plane, 32, min_std=0.0, max_empty=1.0).sample(np.random.default_rng(0), 400)
    assert ((raw[:, 0] == 0).mean(axis=(1, 2)) == 1).mean() > 0.05


def test_modality_weights_draw_a_modality_more_often():
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float32)
    texture = 0.5 + 0.2 * np.sin(yy / 3.0) * np.cos(xx / 5.0)
    planes = [Plane("ct", "CT", texture), Plane("mr", "MR", texture.T.copy()),
              Plane("big mr", "MR", np.tile(texture, (2, 2))), Plane("fl", "fluorescence", texture)]

    def shares(sampler, n=3000):
        rng = np.random.default_rng(0)
        mods = [sampler.sample_with_plane(rng)[1].modality for _ in range(n)]
        return {m: mods.count(m) / n for m in ("CT", "MR", "fluorescence")}

    even = shares(PatchSampler(planes, 32))
    assert all(abs(v - 1 / 3) < 0.04 for v in even.values())  # a large MR plane does not count twice
    more = shares(PatchSampler(planes, 32, modality_weights={"CT": 2.0, "fluorescence": 0.0}))
    assert abs(more["CT"] - 2 / 3) < 0.04 and abs(more["MR"] - 1 / 3) < 0.04
    assert more["fluorescence"] == 0
    # no weights: the random stream of a sampler without the option
    a = PatchSampler(planes, 32).sample(np.random.default_rng(4), 8)[0]
    b = PatchSampler(planes, 32, modality_weights={}).sample(np.random.default_rng(4), 8)[0]
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="'XR', which no plane has; modalities: CT, MR"):
        PatchSampler(planes, 32, modality_weights={"XR": 2.0})
    with pytest.raises(ValueError, match="finite and >= 0"):
        PatchSampler(planes, 32, modality_weights={"CT": -1.0})
    with pytest.raises(ValueError, match="all weights 0"):
        PatchSampler(planes, 32, modality_weights={"CT": 0, "MR": 0, "fluorescence": 0})
    # the recipe passes them on, and a typo fails when the recipe is made, not at its first batch
    pool = Pool(train=planes, val=[Plane("v", "MR", texture[:64, :64])])
    recipe = DenoiseRecipe(pool, config=TINY, val_crop=64, modality_weights={"CT": 2.0})
    assert abs(shares(recipe.sampler(32))["CT"] - 2 / 4) < 0.04  # CT 2, MR 1, fluorescence 1
    assert recipe.describe()["modality_weights"] == {"CT": 2.0}
    assert "modality_weights" not in DenoiseRecipe(pool, config=TINY, val_crop=64).describe()
    with pytest.raises(ValueError, match="which no plane has"):
        DenoiseRecipe(pool, config=TINY, val_crop=64, modality_weights={"ct": 2.0})


def test_gray_noise_is_identical_across_channels_rgb_is_not(recipe):
    x, y = recipe.sample_batch(np.random.default_rng(3), 32, 32)
    noise = (x - y).numpy()
    gray = (y[:, 0] == y[:, 1]).all(dim=(1, 2)).numpy() & (y[:, 0] == y[:, 2]).all(dim=(1, 2)).numpy()
    assert gray.any() and (~gray).any()
    assert np.allclose(noise[gray, 0], noise[gray, 1]) and np.allclose(noise[gray, 0], noise[gray, 2])
    assert not np.allclose(noise[~gray, 0], noise[~gray, 1])
    assert np.abs(noise).max() > 0  # not clipped to [0, 1]: inputs may leave the range
    assert (x.numpy().min() < 0) or (x.numpy().max() > 1)


def test_cosine_schedule():
    s = CosineSchedule(1e-4, 100)
    assert s.lr(0) == 1e-4 and s.lr(100) == pytest.approx(1e-6)
    assert s.lr(50) == pytest.approx(0.5 * (1e-4 + 1e-6))
    assert all(s.lr(i) >= s.lr(i + 1) for i in range(100))


def test_patch_sampler_balances_modalities():
    rng = np.random.default_rng(1)
    big = Plane("big", "CR", 0.2 + 0.1 * rng.random((256, 256), dtype=np.float32))
    small = Plane("small", "CT", 0.7 + 0.1 * rng.random((64, 64), dtype=np.float32))
    for balance, expected in (("modality", 0.5), ("area", 64**2 / (256**2 + 64**2))):
        p, _ = PatchSampler([big, small], 32, balance=balance).sample(np.random.default_rng(0), 2000)
        share = (p[:, 0].mean(axis=(1, 2)) > 0.5).mean()
        assert abs(share - expected) < 0.04, (balance, share)


# ------------------------------------------------------------- clipped noise, bf16 autocast


def test_clip_fraction_clips_that_share_of_inputs_and_keeps_the_residual_target(pool):
    r = DenoiseRecipe(pool, config=TINY, val_crop=64, clip_fraction=0.5)
    x, y = r.sample_batch(np.random.default_rng(5), 200, 32)
    x, y = x.numpy(), y.numpy()
    clipped = (x.min(axis=(1, 2, 3)) >= 0) & (x.max(axis=(1, 2, 3)) <= 1)
    # about half the samples lie in [0, 1]; unclipped samples with noise leave it (real planes
    # touch 0 or 1 somewhere in most 32² patches, so almost every one does)
    assert 0.35 < clipped.mean() < 0.75
    # clipping happened (values pile up at the ends of the range), and the target stays what
    # the network must remove: the recipe returns the clean patch, so input − clean is exact
    assert ((x[clipped] == 0) | (x[clipped] == 1)).mean() > 0.001
    assert not ((x[~clipped] == 0) | (x[~clipped] == 1)).any()
    with pytest.raises(ValueError, match="clip_fraction"):
        DenoiseRecipe(pool, config=TINY, clip_fraction=1.5)


def test_clipped_validation_reports_both_ways(pool):
    net = DRAN(**TINY).eval()
    r = DenoiseRecipe(pool, config=TINY, val_crop=64, val_clipped=True)
    metrics, _ = r.validate(net)
    for s in ("15", "25", "50"):
        assert f"psnr_s{s}" in metrics and f"psnr_c{s}" in metrics
    both = [metrics[f"psnr_{t}{s}"] for t in "sc" for s in ("15", "25", "50")]
    assert metrics["psnr"] == pytest.approx(np.mean(both))
    rows, _ = r.evaluate(net)
    clipped_inputs = [x["noisy"] for x in r.validation_items() if x["clipped"]]
    assert clipped_inputs and all(a.min() >= 0 and a.max() <= 1 for a in clipped_inputs)
    # the unclipped rows are the ones a recipe without val_clipped reports
    plain = DenoiseRecipe(pool, config=TINY, val_crop=64)
    assert r.summarize(rows, "psnr", 25.0) == pytest.approx(
        plain.summarize(plain.evaluate(net)[0], "psnr", 25.0))


def test_validation_runs_dran_with_the_engines_mirrored_border(recipe):
    """The numbers that select and describe a model are those of the engine, which grows every
    plane by DRAN's ``reflect_border`` mirrored pixels: validation does the same."""
    torch.manual_seed(0)
    net = DRAN(**TINY).eval()
    b = DRAN.reflect_border
    assert b > 0

    class Mirrored(torch.nn.Module):  # the border by hand, on a net that asks for none
        def denoise(self, x):
            y = net.denoise(torch.nn.functional.pad(x, (b, b, b, b), mode="reflect"))
            return y[..., b:-b, b:-b]

    with_border, _ = recipe.evaluate(net)
    by_hand, _ = recipe.evaluate(Mirrored())
    assert [r["psnr"] for r in with_border] == pytest.approx([r["psnr"] for r in by_hand], abs=1e-6)
    net.reflect_border = 0  # the instance opts out: the edges now differ
    without, _ = recipe.evaluate(net)
    assert max(abs(a["psnr"] - c["psnr"]) for a, c in zip(with_border, without)) > 1e-3


def test_bf16_training_step_learns_and_keeps_fp32_weights(recipe, tmp_path):
    gen = train(recipe, steps=40, out_dir=tmp_path, val_every=40, ckpt_every=0,
                precision="bf16", **RUN)
    events, res = _run(gen)
    val = [e for e in events if e.kind == "validation"]
    assert val[-1].metrics["psnr"] > val[0].metrics["psnr"] + 1.0
    assert all(t.dtype == torch.float32 for t in _tensors(res.last_path).values()
               if t.is_floating_point())
    with pytest.raises(ValueError, match="precision"):
        next(train(recipe, steps=1, out_dir=tmp_path / "x", precision="fp16", **RUN))


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    from napari_medenhance.core.training import loop

    cpu = torch.device("cpu")
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: True)
    assert loop.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: False)
    assert loop.resolve_precision("auto", cpu) == "fp32"
    assert loop.resolve_precision("fp32", cpu) == "fp32"
    # emulated bf16 is many times slower: honoured when asked for, but never silently
    with pytest.warns(RuntimeWarning, match="emulated"):
        assert loop.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        loop.resolve_precision("fp16", cpu)


def test_intensity_aug_moves_clean_patches_across_the_range_and_keeps_the_noise(pool):
    plain = DenoiseRecipe(pool, config=TINY, val_crop=64)
    moved = DenoiseRecipe(pool, config=TINY, val_crop=64, intensity_aug=1.0)
    _, y0 = plain.sample_batch(np.random.default_rng(4), 256, 32)
    x1, y1 = moved.sample_batch(np.random.default_rng(4), 256, 32)
    # the same patches (drawn first from the same seed), each mapped by a·y + b, inverted or not
    a0, a1 = y0.numpy().reshape(256, -1), y1.numpy().reshape(256, -1)
    slopes = []
    for u, v in zip(a0, a1):
        if u.std() < 1e-3:
            continue
        k, c = np.polyfit(u, v, 1)
        assert np.allclose(v, k * u + c, atol=1e-5)
        slopes.append(k)
    slopes = np.array(slopes)
    assert np.all((np.abs(slopes) >= 0.25 - 1e-4) & (np.abs(slopes) <= 1 + 1e-4))
    assert 0.3 < (slopes < 0).mean() < 0.7  # about half inverted
    assert y1.min() >= 0 and y1.max() <= 1
    # noise is added after the move: its σ is still the drawn one (≤ 50/255 per sample)
    assert (x1 - y1).std(dim=(1, 2, 3)).max() < 60 / 255
    with pytest.raises(ValueError, match="intensity_aug"):
        DenoiseRecipe(pool, config=TINY, intensity_aug=-0.1)


def test_sigma_weighted_loss_counts_every_noise_level_by_its_relative_error(pool, tmp_path):
    """Plain L1 is dominated by the noisiest samples; the σ-weighted loss gives each sample's
    error the weight (25/255)/σ, so a network that predicts no noise at all (error = |noise|,
    proportional to σ) costs the same on a σ 10 sample as on a σ 40 one."""
    plain = DenoiseRecipe(pool, config=TINY, val_crop=64)
    weighted = DenoiseRecipe(pool, config=TINY, val_crop=64, sigma_weighted=True)

    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros_like(x)

    gen = torch.Generator().manual_seed(0)
    clean = torch.full((2, 3, 64, 64), 0.5)
    sigma = torch.tensor([10.0, 40.0]) / 255
    noisy = clean + torch.randn(clean.shape, generator=gen) * sigma[:, None, None, None]
    per_sample = [weighted.loss(Zero(), noisy[i:i + 1], clean[i:i + 1])[0].item() for i in range(2)]
    plain_each = [plain.loss(Zero(), noisy[i:i + 1], clean[i:i + 1])[0].item() for i in range(2)]
    assert plain_each[1] / plain_each[0] == pytest.approx(4.0, rel=0.05)
    assert per_sample[1] / per_sample[0] == pytest.approx(1.0, rel=0.05)
    # The scale is the plain L1's at σ 25: E|n| = σ·√(2/π).
    assert per_sample[0] == pytest.approx(25 / 255 * (2 / np.pi) ** 0.5, rel=0.05)
    loss, logs = weighted.loss(Zero(), noisy, clean)
    assert logs["l1"] == pytest.approx(plain.loss(Zero(), noisy, clean)[0].item())
    assert logs["l1_weighted"] == pytest.approx(loss.item())
    # Near-clean samples are not weighted without bound.
    still = weighted.loss(Zero(), clean + 1e-4, clean)[0].item()
    assert still == pytest.approx(1e-4 * 25 / 5, rel=0.05)

    # Off, the identity is what runs made before the switch wrote; on, it joins the identity,
    # so a plain-L1 checkpoint is not resumed under the weighted loss (nor the reverse).
    assert plain.objective is None and weighted.objective is not None
    assert "weighted" not in plain.describe()["loss"] and "noise std" in weighted.describe()["loss"]
    _run(train(plain, steps=1, out_dir=tmp_path, ckpt_every=1, val_every=0, **RUN))
    with pytest.raises(CheckpointError, match="objective"):
        next(train(weighted, steps=2, out_dir=tmp_path, **RUN))


def test_scale_aug_cuts_larger_windows_and_shrinks_them_before_the_noise():
    # ramps: a window shrunk by f has f times the slope per pixel, so each patch tells its factor
    yy, xx = np.mgrid[0:400, 0:400].astype(np.float32)
    ramp = (yy + xx) / 800.0
    rgb = np.stack([ramp, 1.0 - ramp, 0.5 * ramp + 0.25], axis=-1)
    ramps = Pool(train=[Plane("ramp", "MR", ramp), Plane("rgb ramp", "colour", rgb)],
                 val=[Plane("v", "MR", ramp[:64, :64])])
    plain = DenoiseRecipe(ramps, config=TINY, val_crop=64, intensity_aug=0.0)
    shrunk = DenoiseRecipe(ramps, config=TINY, val_crop=64, intensity_aug=0.0, scale_aug=1.0)
    off = DenoiseRecipe(ramps, config=TINY, val_crop=64, intensity_aug=0.0, scale_aug=0.0)
    x0, y0 = plain.sample_batch(np.random.default_rng(5), 64, 32)
    # off: the very batch of a recipe without the option (runs made before it resume alike)
    x_off, y_off = off.sample_batch(np.random.default_rng(5), 64, 32)
    assert torch.equal(x0, x_off) and torch.equal(y0, y_off)
    x1, y1 = shrunk.sample_batch(np.random.default_rng(5), 64, 32)
    assert y1.shape == y0.shape and y1.min() >= 0 and y1.max() <= 1

    def slope(y):  # per patch: |slope| of the first channel per pixel along the two axes
        g = y[:, 0, 8:-8, 8:-8].double()  # away from the anti-aliasing filter's border
        return (g.diff(dim=1).mean(dim=(1, 2)).abs() + g.diff(dim=2).mean(dim=(1, 2)).abs()) * 400

    assert torch.allclose(slope(y0), torch.ones(64, dtype=torch.float64), atol=1e-3)
    # window edge / patch edge: multiples of 8/32 up to 3 (1: a factor that rounds to the patch)
    factors = slope(y1)
    assert factors.min() > 1 - 1e-3 and factors.max() < 3.05 and (factors > 1.2).double().mean() > 0.6
    assert torch.allclose(factors * 4, (factors * 4).round(), atol=5e-2)
    assert len(set((factors * 4).round().tolist())) >= 4  # many factors, not one
    # gray patches stay gray with one noise in their channels; colour ones keep their colours
    gray = (y1[:, 0] == y1[:, 1]).flatten(1).all(dim=1)
    assert 0 < int(gray.sum()) < len(y1)
    assert torch.equal(x1[gray, 0], x1[gray, 1]) and torch.equal(x1[gray, 0], x1[gray, 2])
    assert torch.allclose(y1[~gray, 0] + y1[~gray, 1], torch.ones_like(y1[~gray, 0]), atol=1e-5)
    # the noise is added after shrinking: white at the patch size
    n = x1 - y1
    lag = (n[..., 1:] * n[..., :-1]).mean() / (n * n).mean()
    assert abs(float(lag)) < 0.05
    with pytest.raises(ValueError, match="scale_aug"):
        DenoiseRecipe(ramps, config=TINY, scale_aug=1.5)
