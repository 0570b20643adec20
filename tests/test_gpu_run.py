"""The GPU command (``training/gpu_run.py``), its pool pack and the loop's wall-clock budget.

The command is run as it will run on the borrowed GPU machine, only on the CPU with tiny
networks: in a subprocess where napari, Qt, magicgui, dask, pydicom and nibabel cannot be
imported (that machine has none of them), from a pack made by ``training/pack_pool.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medenhance.core import zoo
from napari_medenhance.core.nets.dran import DRAN, set_temperature
from napari_medenhance.core.training import (
    CosineSchedule,
    DenoiseRecipe,
    Plane,
    Pool,
    load_checkpoint,
    recipe_identity,
    train,
)
from napari_medenhance.core.weights import read_header, save_weights
from napari_medenhance.sample_data import load

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
import gpu_run  # noqa: E402
from pack_pool import load_pack, pack_pool  # noqa: E402

#: What the GPU machine lacks; importing any of them must not be needed.
ABSENT = ("napari", "qtpy", "magicgui", "dask", "pydicom", "nibabel")
BLOCKER = f'''
import sys
ABSENT = {ABSENT!r}

class _Absent:
    """Imports of the packages the GPU machine lacks fail, as they would there."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ImportError(f"{{name}} is not installed on the GPU machine")
        return None

sys.meta_path.insert(0, _Absent())
'''


def _norm(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = np.percentile(a, (0.1, 99.9))
    return np.clip((a - lo) / (hi - lo), 0, 1)


@pytest.fixture(scope="module")
def pool() -> Pool:
    """Real CT, fluorescence (two planes of one volume) and IHC colour planes; small val crops."""
    ct, nuc = _norm(load("ct_slice")), _norm(load("nuclei_stack"))
    ihc = load("ihc_rgb").astype(np.float32) / 255
    return Pool(
        train=[Plane("ct[:, :384]", "CT", ct[:, :384]), Plane("nuclei[10]", "fluorescence", nuc[10]),
               Plane("nuclei[12]", "fluorescence", nuc[12]), Plane("ihc[:256]", "colour", ihc[:256])],
        val=[Plane("ct[:128, 384:]", "CT", ct[:128, 384:]),
             Plane("nuclei[20]", "fluorescence", nuc[20][:128, :128]),
             Plane("ihc[256:384, :128]", "colour", ihc[256:384, :128])],
    )


# --------------------------------------------------------------------------------- pack


def test_pack_fits_its_limit_keeps_every_modality_and_reads_back(pool, tmp_path):
    report = pack_pool(pool, tmp_path / "p.npz", max_bytes=300_000, min_side=64)
    assert report.bytes <= 300_000 and (tmp_path / "p.npz").stat().st_size == report.bytes
    back = load_pack(tmp_path / "p.npz")
    # Validation planes: all, whole, within half a level of the 8- or 16-bit grid.
    assert [(p.name, p.modality, p.shape_yx) for p in back.val] == \
        [(p.name, p.modality, p.shape_yx) for p in pool.val]
    for a, b in zip(pool.val, back.val):
        assert b.data.dtype == np.float32 and float(np.abs(a.data - b.data).max()) <= 0.5 / 255 + 1e-6
    assert float(np.abs(pool.val[2].data - back.val[2].data).max()) < 1e-6  # 8-bit: exact
    # Training: every modality, cut to windows named after their plane, at least min_side.
    assert {p.modality for p in back.train} == {p.modality for p in pool.train}
    for p in back.train:
        assert min(p.shape_yx) >= 64 and p.data.min() >= 0 and p.data.max() <= 1
        assert p.name.split("[", 1)[0] in {"ct", "nuclei", "ihc"}
    assert sum(p.shape_yx[0] * p.shape_yx[1] for p in back.train) < \
        sum(p.shape_yx[0] * p.shape_yx[1] for p in pool.train)
    # Plenty of room: nothing is cut.
    big = pack_pool(pool, tmp_path / "q.npz", max_bytes=8_000_000)
    assert set(big.kept.values()) == {"all"}
    assert [p.shape_yx for p in load_pack(tmp_path / "q.npz").train] == [p.shape_yx for p in pool.train]


# ------------------------------------------------------------------------ budget loop


def test_a_budget_run_ends_in_time_with_its_schedule_on_the_clock(pool, tmp_path):
    assert CosineSchedule(1.0, 100).lr(50) == CosineSchedule(1.0, 100).at(0.5)
    recipe = DenoiseRecipe(pool, config={"features": 8, "blocks": 1, "layers_per_block": 1},
                           val_crop=64)
    t0 = time.perf_counter()
    events, stamps = [], [t0]
    for e in train(recipe, steps=10**6, out_dir=tmp_path, batch=2, patch=32, lr=1e-3,
                   device="cpu", val_every=10**9, ckpt_every=0, budget_s=6.0, every_s=1.0):
        events.append(e)
        stamps.append(time.perf_counter())
    wall = stamps[-1] - t0
    steps = [e for e in events if e.kind == "step"]
    shown = [(e.kind, e.step, e.total, e.lr) for e in events]
    # The run may overrun its budget by at most the final validation and checkpoint it plans
    # for, plus one event's misestimate (on a machine other work slows down, one step can take
    # seconds): the longest gap between two events bounds both.
    longest = max(b - a for a, b in zip(stamps, stamps[1:]))
    assert wall < 6.0 + 2.0 + 2 * longest and len(steps) >= 3, (wall, longest, shown)
    assert events[-1].kind == "done" and events[-1].total == steps[-1].step
    # The rate falls with the clock from its base at the first step; the checkpoint records
    # the clock: the rate at the end of the run is below the last step's.
    lrs = [e.lr for e in steps]
    assert lrs[0] == pytest.approx(1e-3, rel=0.02) and lrs == sorted(lrs, reverse=True), shown
    loop = load_checkpoint(tmp_path / "last.safetensors").loop
    assert loop["budget_s"] == 6.0 and 0 < loop["train_start_s"] < loop["elapsed_s"] < 6.0 + 2.0
    end = (loop["elapsed_s"] - loop["train_start_s"]) / (6.0 - loop["train_start_s"])
    assert CosineSchedule(1e-3, 1).at(end) <= lrs[-1] < 0.9e-3, (end, shown)
    # Baseline, clock-driven (every second) and final validations.
    assert sum(e.kind == "validation" for e in events) >= 3, shown
    # Resuming goes on with the clock of the checkpoint, whose budget is nearly spent: a step
    # or a few at the end of the cosine, then the final validation.
    t0 = time.perf_counter()
    more = [e for e in train(recipe, steps=10**6, out_dir=tmp_path, batch=2, patch=32, lr=1e-3,
                             device="cpu", val_every=10**9, ckpt_every=0, budget_s=6.0)
            if e.kind == "step"]
    assert time.perf_counter() - t0 < 6.0 - loop["elapsed_s"] + 3.0
    assert more[0].step == steps[-1].step + 1 and more[0].lr < lrs[-1]
    with pytest.raises(ValueError, match="budget_s"):
        next(train(recipe, steps=1, out_dir=tmp_path / "x", budget_s=0))


# --------------------------------------------------------------------- recipe parity


def test_the_gpu_recipes_are_the_cpu_scripts_recipes(pool):
    import train_dpe
    import train_dran
    import train_sr

    spec = gpu_run.MODELS
    a = train_dran.parse_args([])
    assert (spec["dran"].batch, spec["dran"].patch, spec["dran"].lr) == (a.batch, a.patch, a.lr)
    for from_weights in (False, True):
        dran = gpu_run.make_recipe("dran", pool, spec["dran"].tiny, tiny=True,
                                   from_weights=from_weights)
        # train_dran.py: --anneal-fraction defaults to 0.1 from scratch, 0 from trained weights.
        anneal = a.anneal_fraction if a.anneal_fraction is not None else (0.0 if from_weights else 0.1)
        assert (dran.clip_fraction, dran.anneal_fraction, dran.val_clipped) == \
            (a.clip_fraction, anneal, True)
    a = train_dpe.parse_args(["--disc-config", json.dumps(spec["dpe"].tiny_extra)])
    ours = gpu_run.make_recipe("dpe", pool, spec["dpe"].tiny, tiny=True)
    theirs = train_dpe.make_recipe(a, pool, spec["dpe"].tiny)
    assert recipe_identity(ours) == recipe_identity(theirs)
    assert ours.disc_config == theirs.disc_config
    assert (ours.luminance_check, ours.relative_luminance) == \
        (theirs.luminance_check, theirs.relative_luminance) == ("relative", a.relative_luminance)
    assert (ours.input_norm, ours.input_percentiles, ours.context_crop) == \
        (theirs.input_norm, theirs.input_percentiles, theirs.context_crop) == \
        ("stretch", tuple(a.input_percentiles), a.context_crop)
    assert (spec["dpe"].batch, spec["dpe"].patch, spec["dpe"].lr) == (a.batch, a.patch, a.lr)
    a = train_sr.parse_args(["--critic-config", json.dumps(spec["msgan"].tiny_extra)])
    ours = gpu_run.make_recipe("msgan", pool, {**spec["msgan"].tiny, "output_scale": 4}, tiny=True)
    theirs = train_sr.make_recipe(a, pool, spec["msgan"].tiny)
    assert recipe_identity(ours) == recipe_identity(theirs)
    assert (spec["msgan"].batch, spec["msgan"].patch, spec["msgan"].lr) == (a.batch, a.patch, a.lr)


# ----------------------------------------------------------------------- the command


def test_gpu_run_trains_every_model_without_gui_or_dicom_packages(pool, tmp_path):
    pack = tmp_path / "pack.npz"
    pack_pool(pool, pack, max_bytes=400_000, min_side=64)
    # DRAN starts from "committed" weights half-way through its temperature anneal.
    torch.manual_seed(0)
    net = DRAN(**gpu_run.MODELS["dran"].tiny)
    set_temperature(net, 10.0)
    init = tmp_path / "dran-init.safetensors"
    save_weights(init, net, arch="dran", config=gpu_run.MODELS["dran"].tiny,
                 meta={"task": "denoise", "step": 1234})
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCKER)
    env = {"PYTHONPATH": str(block), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for name in ABSENT:  # the blocker works (nothing imported them before it)
        r = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True)
        assert r.returncode != 0 and b"not installed on the GPU machine" in r.stderr

    out = tmp_path / "out"
    budget = 20
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, str(ROOT / "training" / "gpu_run.py"), "--device", "cpu", "--budget",
         str(budget), "--tiny", "--out", str(out), "--pack", str(pack), "--work",
         str(tmp_path / "work"), "--workers", "1", "--every", "5", "--init", f"dran={init}"],
        env=env, capture_output=True, text=True, timeout=budget + 60, cwd=tmp_path,
    )
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert wall < budget + 15

    files = {p.name: p.stat().st_size for p in out.iterdir()}
    assert set(files) == {"dran.safetensors", "msgan-x4.safetensors", "dpe.safetensors",
                          "gpu_run.json", "gpu_run.log"}
    assert len(files) <= gpu_run.MAX_FILES and max(files.values()) < gpu_run.MAX_FILE_BYTES
    report = json.loads((out / "gpu_run.json").read_text())
    assert report["budget_s"] == budget and set(report["files"]) == set(files)
    for name, spec in gpu_run.MODELS.items():
        m = report["models"][name]
        assert m["outcome"] == "completed" and m["returncode"] == 0, m
        assert m["steps"] >= 1 and m["steps_per_s"] > 0
        for key in ("start", "best", "last"):
            assert np.isfinite(m[key]["metrics"]["psnr"])
        assert m["start"]["step"] == 0 and m["last"]["step"] == m["steps"]
        path = out / f"{spec.file}.safetensors"
        header = read_header(path, expected_arch=spec.arch)
        floats = {t["dtype"] for t in header["tensors"].values() if t["dtype"][0] in "FB"}
        assert floats == {"F16"}  # integer buffers (BN step counters) stay as they are
        assert header["meta"]["step"] == m["best"]["step"]
        assert header["meta"]["training"]["gpu_run"]["batch"] == gpu_run.TINY_BATCH
        net, info = zoo.load_model(path)  # the zoo builds it from the header and loads it
        assert info.task == {"dran": "denoise", "msgan": "sr", "dpe": "enhance"}[name]
    assert report["models"]["dran"]["init"]["step"] == 1234
    assert report["models"]["dran"]["init"]["temperature"] == 10.0
    assert report["models"]["msgan"]["channels_last"] and not report["models"]["dran"]["channels_last"]
    log = (out / "gpu_run.log").read_text()
    assert "OK after" in log and all(f" {name}" in log for name in gpu_run.MODELS)


def test_a_failing_model_is_reported_and_the_others_still_deliver(pool, tmp_path):
    pack = tmp_path / "pack.npz"
    pack_pool(pool, pack, max_bytes=400_000, min_side=64)
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, str(ROOT / "training" / "gpu_run.py"), "--device", "cpu", "--budget", "30",
         "--tiny", "--out", str(out), "--pack", str(pack), "--work", str(tmp_path / "work"),
         "--workers", "0", "--models", "dran,dpe", "--max-steps", "1",
         "--init", f"dpe={tmp_path / 'missing.safetensors'}"],
        capture_output=True, text=True, timeout=90,
    )
    assert r.returncode == 1
    report = json.loads((out / "gpu_run.json").read_text())
    assert report["models"]["dpe"]["outcome"] == "failed"
    assert "missing.safetensors" in report["models"]["dpe"]["error"]
    assert report["models"]["dran"]["outcome"] == "completed"
    assert report["models"]["dran"]["steps"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["dran.safetensors", "gpu_run.json", "gpu_run.log"]
    assert "FAILED" in (out / "gpu_run.log").read_text()


def test_dran_anneals_on_from_the_temperature_of_its_starting_weights(pool):
    from napari_medenhance.core.nets.dran import DynamicConv2d

    recipe = gpu_run.make_recipe("dran", pool, gpu_run.MODELS["dran"].tiny, tiny=True)
    net = recipe.build()

    def temperature_at(step: int, total: int = 1000) -> float:
        recipe.on_step(net, step, total)
        return float(next(m for m in net.modules() if isinstance(m, DynamicConv2d)).temperature)

    assert temperature_at(0) == 30.0 and temperature_at(50) < 30.0  # fresh: the recipe's own
    gpu_run.continue_anneal(recipe, 10.0)  # over 10 % × 9/29 of the run: 32 of 1000 steps
    assert temperature_at(0) == 10.0 and 1.0 < temperature_at(16) < 10.0
    assert temperature_at(32) == temperature_at(500) == 1.0
    gpu_run.continue_anneal(recipe, 1.0)  # already annealed: stays at 1
    assert temperature_at(0) == 1.0
