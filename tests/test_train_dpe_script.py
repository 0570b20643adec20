"""Training `dpe` on the CPU: the luminance check that lets dark modalities in, the ship gate,
and the export of ``training/train_dpe.py`` (interim below the gate, shipped above it, never over
better committed weights, two stages on one card).

Tiny DPE and discriminator on a small pool of the shipped sample images; the real pool is too
large for a test. The sample MR slice and nuclei stack are dark (mean non-zero 8-bit Lab L
≈ 30–50, below the paper's B_T = 100), like the pool's clinical MR and fluorescence.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

import enhance_gate  # noqa: E402
import train_dpe  # noqa: E402

from napari_medenhance.core.degrade import mean_luminance  # noqa: E402
from napari_medenhance.core.training import EnhanceRecipe, Plane, Pool  # noqa: E402
from napari_medenhance.core.weights import read_header  # noqa: E402
from napari_medenhance.sample_data import load  # noqa: E402
from _images import percentile_norm as _norm  # noqa: E402

TINY = {"widths": [8, 12, 16, 20, 24]}
TINY_D = {"widths": [8, 8, 16, 16, 16, 16, 16, 16]}


@pytest.fixture(scope="module")
def pool() -> Pool:
    ct, mr, nuc = _norm(load("ct_slice")), _norm(load("mr_slice")), _norm(load("nuclei_stack"))
    ihc = load("ihc_rgb").astype(np.float32) / 255
    return Pool(
        train=[Plane("ct", "CT", ct[:, :384]), Plane("mr", "MR", mr[:600]),
               *(Plane(f"nuc[{z}]", "fluorescence", nuc[z]) for z in (5, 10, 15)),
               Plane("ihc", "colour", ihc[:256])],
        val=[Plane("ct-v", "CT", ct[100:164, 384:448]),
             Plane("mr-v", "MR", mr[::16, ::16]),  # the whole head, air included: L ≈ 48
             Plane("nuc-v", "fluorescence", nuc[20][96:160, 96:160]),
             Plane("ihc-v", "colour", ihc[256:320, :64])],
    )


# ------------------------------------------------------------------------ luminance check


def test_relative_luminance_check_lets_dark_modalities_train_and_validate(pool):
    opts = {"config": TINY, "loss": "l1", "val_crop": 64, "acceptance_samples": 150}
    paper = EnhanceRecipe(pool, **opts)
    rel = EnhanceRecipe(pool, luminance_check="relative", **opts)
    # the paper's fixed B_T = 100: fluorescence never enters, MR rarely; both are not validated
    assert paper.acceptance["fluorescence"] == 0.0 and paper.acceptance["MR"] < 0.3
    assert {s.split(":")[0] for s in paper.val_skipped} == {"MR", "fluorescence"}
    # relative to each image's own luminance: both train at a reasonable rate, all validate
    assert rel.acceptance["fluorescence"] > 0.8 and rel.acceptance["MR"] > 0.5
    assert rel.acceptance["CT"] > 0.9 and rel.acceptance["colour"] > 0.9
    assert rel.val_skipped == [] and len(rel.describe()["val_planes"]) == 4
    # the check still rejects near-empty patches: the noisy air around the MR head
    mr_plane = pool.train[1]
    assert 10 < rel.threshold(mr_plane) < 100
    air = mr_plane.data[:32, :32]
    assert mean_luminance(air) <= rel.threshold(mr_plane)
    sampler = next(s for s in rel.modality_samplers(32) if s.planes[0].modality == "MR")
    rng = np.random.default_rng(0)
    lums = [mean_luminance(sampler.sample_one(rng)) for _ in range(200)]
    rejected = [v for v in lums if v <= rel.threshold(mr_plane)]
    assert rejected and np.mean(rejected) < 0.5 * np.median(lums)
    # a bright image is checked exactly as in the paper (B_T caps the threshold)
    assert rel.threshold(pool.train[-1]) == pytest.approx(min(100.0, 0.5 * mean_luminance(
        pool.train[-1].data)))
    # training batches: every modality has its share, every clean patch passed the check
    x, y = rel.sample_batch(np.random.default_rng(1), 64, 32)
    clean = ((y.numpy() + 1) / 2).transpose(0, 2, 3, 1)
    lum = np.array([mean_luminance(np.ascontiguousarray(c)) for c in clean])
    low = min(rel.threshold(p) for p in pool.train)
    assert (lum > low).all()
    colour = ~(y[:, 0] == y[:, 1]).all(dim=(1, 2)).numpy()
    assert 6 <= colour.sum() <= 26  # one modality in four
    desc = rel.describe()
    assert desc["luminance_check"] == "relative" and "whole image" in desc["degradation"]
    with pytest.raises(ValueError, match="luminance_check"):
        EnhanceRecipe(pool, luminance_check="modality", **opts)


# ---------------------------------------------------------------------------------- gate


def _rows(mod: str, **psnr) -> list[dict]:
    return [{"modality": mod, "method": m, "psnr": v, "lassim": 0.5} for m, v in psnr.items()]


def test_gate_needs_two_db_over_the_better_classical_on_each_group_and_de_on_colour():
    # the three: radiology (mean of its modalities), microscopy without colour, colour
    rows = (_rows("CT", input=6.0, clahe=23.0, stretch=35.0, dpe=36.0)
            + _rows("MR", input=13.0, clahe=17.0, stretch=21.0, dpe=24.2)
            + _rows("fluorescence", input=21.0, clahe=13.0, stretch=12.0, dpe=25.0)
            + _rows("phase contrast", input=23.0, clahe=7.0, stretch=6.0, dpe=5.0))
    v = enhance_gate.verdict(rows)
    assert [(e["modality"], e["members"], e["best"], e["pass"]) for e in v] == [
        ("radiology", ["CT", "MR"], "stretch", True),  # 30.1 vs 28.0
        ("microscopy", ["fluorescence", "phase contrast"], "clahe", True)]  # 15.0 vs 10.0
    assert v[0]["margin"] == pytest.approx(2.1) and v[1]["margin"] == pytest.approx(5.0)
    assert enhance_gate.passed(v) and not enhance_gate.passed(enhance_gate.verdict(rows, 5.0))
    # per modality (printed, not gated): CT +1.0 and phase contrast -2.0 fail
    per = enhance_gate.verdict(rows, by="modality")
    assert [(e["modality"], e["pass"]) for e in per] == [
        ("CT", False), ("MR", True), ("fluorescence", True), ("phase contrast", False)]
    rows[7]["psnr"] = 23.8  # MR: radiology +1.9 dB
    assert not enhance_gate.passed(enhance_gate.verdict(rows))
    rows[7]["psnr"] = 30.0
    colour = [{"modality": "colour", "method": m, "psnr": p, "delta_e": d}
              for m, p, d in (("input", 8, 30.0), ("clahe", 21, 12.0), ("stretch", 20, 9.0),
                              ("dpe", 25, 5.5))]
    v = enhance_gate.verdict(rows + colour)
    de = [e for e in v if e["metric"] == "delta_e"]
    assert len(de) == 1 and de[0]["best"] == "stretch" and not de[0]["pass"]  # 3.5 < 4
    colour[-1]["delta_e"] = 4.9
    assert enhance_gate.passed(enhance_gate.verdict(rows + colour))
    lines = enhance_gate.table(rows + colour)
    assert any("**radiology**" in ln and "**dpe**" in ln for ln in lines)
    assert any("colour" in ln and "4.90" in ln for ln in lines)
    verdicts = enhance_gate.verdict_lines(enhance_gate.verdict(rows + colour))
    assert all("✔" in ln for ln in verdicts)
    assert verdicts[0].startswith("- radiology (CT, MR), PSNR:")
    with pytest.raises(ValueError, match="by must be"):
        enhance_gate.verdict(rows, by="plane")


def test_margin_carries_its_standard_error_over_the_draws():
    # CT margins over the stretch per draw: +1, +3, +2, +6 -> mean +3, sd 2.16, se 1.08;
    # with one draw there is no spread to estimate, and no "±" is printed
    rows = [r | {"draw": d} for d, (s, p) in enumerate(((30, 31), (30, 33), (32, 34), (30, 36)))
            for r in _rows("CT", input=6.0, clahe=20.0, stretch=s, dpe=p)]
    (e,) = enhance_gate.verdict(rows)
    assert e["margin"] == pytest.approx(3.0)
    assert e["se"] == pytest.approx(np.std([1, 3, 2, 6], ddof=1) / 2)
    line = enhance_gate.verdict_lines([e])[0]
    assert f"+3.00 ± {e['se']:.2f} dB" in line
    assert "4 Algorithm-1 draws" in enhance_gate.report(rows)[0]
    (one,) = enhance_gate.verdict([r for r in rows if r["draw"] == 0])
    assert np.isnan(one["se"]) and "±" not in enhance_gate.verdict_lines([one])[0]


# -------------------------------------------------------------------------------- script


@pytest.fixture
def setup(tmp_path, monkeypatch, pool):
    monkeypatch.setattr(train_dpe, "load_pool", lambda: pool)
    monkeypatch.setattr(train_dpe, "INTERIM_DIR", tmp_path / "checkpoints")
    monkeypatch.setattr(train_dpe, "ROOT", tmp_path)  # committed_weights() looks in ROOT/models
    monkeypatch.setattr(train_dpe, "TRIALS", tmp_path / "trials.md")
    (tmp_path / "trials.md").write_text("## Schedule trials\n\nmeasured here\n")
    models = tmp_path / "models"
    models.mkdir()

    def run(out: str, *extra: str) -> int:
        return train_dpe.main([
            "--steps", "4", "--batch", "2", "--patch", "32", "--lr", "3e-3",
            "--val-every", "2", "--ckpt-every", "2", "--config", json.dumps(TINY),
            "--disc-config", json.dumps(TINY_D), "--device", "cpu",
            "--out", str(tmp_path / out), "--models-dir", str(models),
            "--ablation-out", str(tmp_path / "l1"), *extra,
        ])

    return tmp_path, models, run


def test_two_stages_export_interim_below_the_gate_with_one_card(setup, capsys):
    tmp, models, run = setup
    # stage 1: L1 only; never shipped, committed as the first stage
    assert run("l1", "--ablation", "l1") == 0
    l1 = tmp / "checkpoints" / "dpe-l1.safetensors"
    assert l1.is_file() and not list(models.iterdir())
    assert "Not shipped" in (tmp / "checkpoints" / "dpe-l1.md").read_text()
    # stage 2: the full objective from stage 1's best
    capsys.readouterr()
    assert run("full", "--init-weights", str(tmp / "l1" / "best.safetensors")) == 0
    out = tmp / "checkpoints" / "dpe.safetensors"
    assert out.is_file() and not (models / "dpe.safetensors").exists()  # 4 steps: below the gate
    assert "ship gate not passed" in capsys.readouterr().out
    meta = read_header(out, expected_arch="dpe")["meta"]
    assert [s["objective"] for s in meta["stages"]] == ["l1", "full"]
    assert meta["stages"][1]["from"] == "best.safetensors" and meta["gate_passed"] is False
    assert meta["training"]["luminance_check"] == "relative"
    card = (tmp / "checkpoints" / "dpe.md").read_text()
    assert "Interim, not shipped" in card and "## Stages" in card
    assert "| 1 | l1 | stretched 0.1–99.9 % | random | 2 × 32, 0.003 |" in card
    assert "| 2 | full | stretched 0.1–99.9 % | best.safetensors | 2 × 32, 0.003 |" in card
    assert "## Ship gate" in card and "## Target" in card and "stretch 2–98 %" in card
    assert "## Per modality (not gated" in card and "stretch 0.1–99.9 % (reference" in card
    assert "DPE, L1 only" in card and "**microscopy**" in card and "measured here" in card
    assert "every plane is validated" in card and "relative to each image" in card
    assert (tmp / "checkpoints" / "dpe-curve.png").is_file() and "dpe-curve.png" in card

    # a run that does worse does not replace the committed weights
    before = out.read_bytes()
    capsys.readouterr()
    assert run("worse", "--steps", "1", "--scratch") == 0
    assert "not exported" in capsys.readouterr().out
    assert out.read_bytes() == before

    # a fresh session whose run folder is gone starts from the committed interim weights
    assert run("next", "--steps", "1", "--no-export") == 0
    info = json.loads((tmp / "next" / "run.json").read_text())
    assert info["args"]["init_weights"] == str(out)


def test_a_new_run_in_a_reused_folder_is_a_new_stage_not_the_old_one(setup):
    tmp, models, run = setup
    assert run("l1", "--ablation", "l1") == 0
    l1 = tmp / "checkpoints" / "dpe-l1.safetensors"
    first = read_header(l1, expected_arch="dpe")["meta"]["stages"]
    assert len(first) == 1 and first[0]["from"] is None
    # a fresh machine: the run folder is gone, and the next stage uses the same folder name
    import shutil

    shutil.rmtree(tmp / "l1")
    assert run("l1", "--ablation", "l1", "--init-weights", str(l1), "--force") == 0
    stages = read_header(l1, expected_arch="dpe")["meta"]["stages"]
    assert [s["from"] for s in stages] == [None, "dpe-l1.safetensors"]
    assert stages[0]["sessions"] == first[0]["sessions"]
    card = (tmp / "checkpoints" / "dpe-l1.md").read_text()
    assert "| 1 | l1 |" in card and "| 2 | l1 |" in card
    # exporting that run again keeps both stages (its starting file is now its own export)
    assert run("l1", "--ablation", "l1", "--export", "--force") == 0
    again = read_header(l1, expected_arch="dpe")["meta"]["stages"]
    assert [s["from"] for s in again] == [None, "dpe-l1.safetensors"]


def test_passing_the_gate_ships_to_the_models_folder(setup, monkeypatch):
    tmp, models, run = setup
    monkeypatch.setattr(enhance_gate, "GATE_DB", -1000.0)
    monkeypatch.setattr(enhance_gate, "GATE_DE", -1000.0)
    assert run("a", "--ablation", "l1") == 0  # an interim first stage
    assert run("r", "--init-weights", str(tmp / "checkpoints" / "dpe-l1.safetensors")) == 0
    assert (models / "dpe.safetensors").is_file()
    card = (models / "dpe.md").read_text()
    assert "**Shipped**" in card and "## Ship gate" in card and ": passed" in card
    assert read_header(models / "dpe.safetensors", expected_arch="dpe")["meta"]["gate_passed"]
    stages = read_header(models / "dpe.safetensors", expected_arch="dpe")["meta"]["stages"]
    assert [s["objective"] for s in stages] == ["l1", "full"]
    # exporting the run again once its starting weights are gone (as a retired interim file)
    # keeps the stage before it
    (tmp / "checkpoints" / "dpe-l1.safetensors").unlink()
    assert run("r", "--export", "--force") == 0
    again = read_header(models / "dpe.safetensors", expected_arch="dpe")["meta"]["stages"]
    assert [s["objective"] for s in again] == ["l1", "full"] and again[0] == stages[0]


def test_a_stretched_input_run_exports_a_model_the_engine_stretches_for(setup):
    tmp, models, run = setup
    # an L1 stage on the paper's raw input, then a stage on stretched input (the default)
    assert run("l1", "--ablation", "l1", "--input-norm", "none") == 0
    assert run("st", "--init-weights",
               str(tmp / "l1" / "best.safetensors"), "--ablation", "l1",
               "--name", "dpe-st") == 0
    out = tmp / "checkpoints" / "dpe-st.safetensors"
    meta = read_header(out, expected_arch="dpe")["meta"]
    assert meta["input_percentiles"] == [0.1, 99.9] and meta["training"]["input_norm"] == "stretch"
    card = (tmp / "checkpoints" / "dpe-st.md").read_text()
    assert "--input-norm stretch --input-percentiles 0.1 99.9" in card
    assert "contrast-stretched first**: the engine maps the 0.1 and 99.9 % percentiles" in card
    assert "0.1 / 99.9 % percentiles" in card
    # exporting again without the flag still scores it on stretched input (its header says so)
    rows_flagless = enhance_gate.model_rows(
        enhance_gate.make_recipe(TINY, pool=train_dpe.load_pool(), val_crop=64), out)
    stretched = enhance_gate.make_recipe(TINY, pool=train_dpe.load_pool(), val_crop=64,
                                         input_norm="stretch")
    rows_stretched = enhance_gate.model_rows(stretched, out)
    assert [r["psnr"] for r in rows_flagless] == [r["psnr"] for r in rows_stretched]
    assert enhance_gate.input_norm(read_header(tmp / "l1" / "best.safetensors")) == "none"
