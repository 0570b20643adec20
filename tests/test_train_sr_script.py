"""The CPU training script for the shipped `msgan-x2` / `msgan-x4`.

``training/train_sr.py`` on a tiny generator and a small pool of the shipped sample images (the
real pool is fetched from package registries and too large for a test): a PSNR stage, then the
adversarial stage from its best weights; the export runs the ship gate of ``sr_gate.py`` (every
LR kernel, windows and whole planes, ×2 and ×4), goes to ``training/checkpoints`` below it, and
the card and weights header record both stages.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

import recipe_script  # noqa: E402
import sr_gate  # noqa: E402
import train_sr  # noqa: E402

from napari_medenhance.core import zoo  # noqa: E402
from napari_medenhance.core.weights import read_header  # noqa: E402
from _images import script_pool  # noqa: E402

TINY = json.dumps({"features": 8, "blocks": 1, "blocks_x2": 1})
TINY_C = json.dumps({"widths": [8, 8, 16, 16]})


@pytest.fixture
def setup(tmp_path, monkeypatch):
    pool = script_pool()
    monkeypatch.setattr(train_sr, "load_pool", lambda: pool)
    monkeypatch.setattr(train_sr, "INTERIM_DIR", tmp_path / "checkpoints")
    monkeypatch.setattr(train_sr, "ROOT", tmp_path)  # committed weights: ROOT/models
    models = tmp_path / "models"
    models.mkdir()

    def run(out: str, *extra: str) -> int:
        return train_sr.main([
            "--steps", "6", "--batch", "2", "--patch", "32", "--lr", "1e-3",
            "--val-every", "3", "--ckpt-every", "3", "--config", TINY, "--critic-config", TINY_C,
            "--val-crop", "48", "--device", "cpu", "--out", str(tmp_path / out),
            "--models-dir", str(models), *extra,
        ])

    return tmp_path, models, pool, run


def test_psnr_stage_then_gan_stage_export_interim_below_the_gate(setup, capsys):
    tmp, models, pool, run = setup
    assert run("psnr", "--stage", "psnr") == 0
    x4 = tmp / "checkpoints" / "msgan-x4.safetensors"
    x2 = tmp / "checkpoints" / "msgan-x2.safetensors"
    assert x4.is_file() and x2.is_file() and not list(models.glob("msgan*"))  # 6 steps < gate
    h4, h2 = read_header(x4, expected_arch="msgan"), read_header(x2, expected_arch="msgan")
    assert (h4["config"]["output_scale"], h2["config"]["output_scale"]) == (4, 2)
    assert set(h2["tensors"]) < set(h4["tensors"])  # the ×2 file is the ×2 head of the same net
    assert [s["objective"] for s in h4["meta"]["stages"]] == ["MSE×4 + 1·MSE×2"]
    card = (tmp / "checkpoints" / "msgan-x4.md").read_text()
    assert "Interim, not shipped" in card and "### ×4, planes" in card and "### ×2, windows" in card
    for k in ("bicubic PSNR", "gaussian PSNR", "blur3 PSNR", "lanczos", "Ship gate", "Target"):
        assert k in card, k
    assert "✘" in card and "msgan-curve.png" in card and (tmp / "checkpoints" / "msgan-curve.png").is_file()
    assert "the HR's own noise" in card and "HR noise σ" in card and "**microscopy** |" in card
    out = capsys.readouterr().out
    assert "interim (below the ship gate, not shipped)" in out and "gate not passed" in out

    # The gate's numbers are the gate's: re-evaluating the exported file gives the same verdict.
    rec = sr_gate.make_recipe(h4["config"], pool, val_crop=48)
    res = sr_gate.run(rec, x4)
    assert not res["passed"] and len(res["gate"]) == 2 * 2 * 2  # scales·groups·regions
    assert {(e["scale"], e["region"]) for e in res["gate"]} == {
        (f, g) for f in (2, 4) for g in ("window", "plane")}
    for e in res["gate"]:
        assert set(e["kernel_margins"]) == {"bicubic", "gaussian", "blur3"}
        assert e["margin"] == pytest.approx(np.mean(list(e["kernel_margins"].values())), abs=0.05)
        assert e["pass"] == (e["margin"] >= 0.5 and min(e["kernel_margins"].values()) > 0)
    # one ceiling per validation item, scale and kernel, above what the model reached
    assert len(res["ceiling"]) == len(rec.validation_items(True)) * 2 * 3
    mine = {(r["name"], r["region"], r["scale"], r["kernel"]): r["psnr"]
            for r in res["rows"] if r["method"] == "msgan"}
    assert all(c["psnr"] > mine[(c["name"], c["region"], c["scale"], c["kernel"])]
               for c in res["ceiling"])
    # the ×2 model runs through the registry at ×2
    net, info = zoo.load_model(str(x2), task="sr")
    assert info.scale == 2

    # The adversarial stage starts from the PSNR stage's best; its export records both stages.
    best = tmp / "psnr" / "best.safetensors"
    assert run("gan", "--init-weights", str(best), "--force") == 0
    assert json.loads((tmp / "gan" / "run.json").read_text())["init_weights"] == str(best.resolve())
    st = read_header(x4, expected_arch="msgan")["meta"]["stages"]
    assert [Path(s["run"]).name for s in st] == ["psnr", "gan"] and st[1]["from"] == "best.safetensors"
    assert st[1]["objective"] == "MSE×4 + 1·MSE×2 + 5e-07·VGG16 pool4 + 0.001·WGAN-GP"
    assert st[0]["sessions"] and st[0]["sessions"][0]["last_step"] == 6
    card = (tmp / "checkpoints" / "msgan-x2.md").read_text()
    assert "| `psnr` | MSE×4 + 1·MSE×2 |" in card and "| `gan` | MSE×4" in card
    # each stage carries its validations, so the curve outlives the run folders
    for s, run_dir in zip(st, ("psnr", "gan")):
        hist = recipe_script.read_history(tmp / run_dir)
        assert [h["step"] for h in s["history"]] == [h["step"] for h in hist] == [0, 3, 6]
        assert s["history"][-1]["metrics"]["psnr_both"] == pytest.approx(
            hist[-1]["metrics"]["psnr_both"], abs=1e-4)

    # --curve draws both stages (12 steps trained) and prints the last-third gain
    capsys.readouterr()
    png = tmp / "curve.png"
    assert run("gan", "--curve", str(png)) == 0
    out = capsys.readouterr().out
    assert png.is_file() and png.stat().st_size > 10_000
    assert "over the last third; 12 steps trained in all" in out


def test_a_run_whose_folder_is_gone_starts_from_the_committed_weights(setup, capsys):
    tmp, models, pool, run = setup
    assert run("a", "--stage", "psnr", "--ship-anyway") == 0
    shipped = models / "msgan-x4.safetensors"
    assert shipped.is_file() and (models / "msgan-x2.safetensors").is_file()
    assert run("b", "--stage", "psnr", "--no-export") == 0
    assert "starting from the committed" in capsys.readouterr().out
    hist = recipe_script.read_history(tmp / "b")
    first = read_header(shipped, expected_arch="msgan")["meta"]
    # step 0 of the new run validates the committed (fp16-stored) weights, not a fresh net
    rec = sr_gate.make_recipe(read_header(shipped)["config"], pool, val_crop=48)
    net, _ = zoo.load_model(str(shipped), task="sr")
    m, _ = rec.validate(net.float())
    assert hist[0]["step"] == 0 and hist[0]["metrics"]["psnr"] == pytest.approx(m["psnr"], abs=1e-4)
    assert first["storage"] in ("fp16", "fp32")


def test_shipping_retires_the_interim_weights(setup):
    """Once a model ships, its interim files are removed: new runs start from the shipped one."""
    tmp, models, pool, run = setup
    assert run("a", "--stage", "psnr") == 0
    assert (tmp / "checkpoints" / "msgan-x4.safetensors").is_file()
    assert run("a", "--stage", "psnr", "--export", "--ship-anyway", "--select", "last") == 0
    assert (models / "msgan-x4.safetensors").is_file()
    assert not (tmp / "checkpoints" / "msgan-x4.safetensors").exists()
    assert not (tmp / "checkpoints" / "msgan-x2.md").exists()
    assert not (tmp / "checkpoints" / "msgan-curve.png").exists()
    meta = read_header(models / "msgan-x4.safetensors", expected_arch="msgan")["meta"]
    assert meta["step"] == 6 and "its last checkpoint" in (models / "msgan-x4.md").read_text()
    assert recipe_script.committed_weights("msgan-x4", root=tmp, interim=tmp / "checkpoints") == \
        models / "msgan-x4.safetensors"


def test_gate_needs_the_mean_margin_and_every_kernel_above_bicubic():
    """The gate's rule on made-up rows: +0.5 dB on the mean over kernels is not enough when one
    kernel is below bicubic; a kernel below +0.5 passes when the mean holds and it is above."""
    from pool import GROUPS

    def rows(margins: dict[str, float]) -> list[dict]:
        out = []
        for mods in GROUPS.values():
            for mod in mods:
                for f in (2, 4):
                    for region in ("window", "plane"):
                        for k, d in margins.items():
                            base = {"modality": mod, "scale": f, "region": region, "kernel": k,
                                    "ssim": 0.8, "lassim": 0.99}
                            out += [{**base, "method": "bicubic", "psnr": 30.0},
                                    {**base, "method": "msgan", "psnr": 30.0 + d}]
        return out

    ok = sr_gate.verdict(rows({"bicubic": 0.2, "gaussian": 0.8, "blur3": 0.7}))
    assert sr_gate.passed(ok) and ok[0]["margin"] == pytest.approx(0.5667, abs=1e-3)
    worse = sr_gate.verdict(rows({"bicubic": -0.1, "gaussian": 1.0, "blur3": 1.0}))
    assert not sr_gate.passed(worse) and worse[0]["margin"] > 0.5
    low = sr_gate.verdict(rows({"bicubic": 0.3, "gaussian": 0.4, "blur3": 0.5}))
    assert not sr_gate.passed(low)
    # the target also wants SSIM and LaSSIM above bicubic on every kernel
    assert not sr_gate.passed(sr_gate.verdict(rows({"bicubic": 2.0, "gaussian": 2.0, "blur3": 2.0}),
                                              margin=1.0, structure=True))


def test_noise_ceiling_of_a_plane_with_known_white_noise():
    """σ is found, and the ceiling sits between what a perfect denoising enlargement scores
    (the clean plane: MSE σ²) and what copying all the noise would (unbounded)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:256, 0:256] / 256.0
    clean = 0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy)
    sigma = 0.02
    hr = (clean + rng.normal(0, sigma, clean.shape)).astype(np.float32)
    for f in (2, 4):
        est, ceil = sr_gate.noise_ceiling(hr, f)
        assert est == pytest.approx(sigma, rel=0.1)
        assert ceil == pytest.approx(-10 * np.log10(sigma**2 * (1 - 1 / f**2)), abs=0.5)
        perfect = 10 * np.log10(1 / np.mean((clean - hr) ** 2))
        # above the clean plane by −10·log10(1 − 1/f²): ×2 1.25 dB, ×4 0.28 dB (σ estimated)
        assert perfect < ceil == pytest.approx(perfect - 10 * np.log10(1 - 1 / f**2), abs=0.5)
    rgb = np.repeat(hr[..., None], 3, -1)
    assert sr_gate.noise_ceiling(rgb, 4, rgb=True)[0] == pytest.approx(sigma, rel=0.1)
    assert sr_gate.noise_ceiling(np.full((64, 64), 0.5, np.float32), 4)[1] > 100  # noiseless


def test_stage_curves_put_stages_in_training_order_and_measure_the_last_third(tmp_path):
    """Three stages: the first's run folder was reused by the second (only its selected step's
    PSNR is known), the third continues from the second's step 3 (not its last)."""
    def hist(*pairs):
        return [{"step": s, "metrics": {"psnr_both": v}} for s, v in pairs]

    reused = tmp_path / "psnr"
    reused.mkdir()
    (reused / "history.jsonl").write_text("\n".join(
        json.dumps(h) for h in hist((0, 30.0), (3, 30.5), (6, 30.2))))
    stages = [
        {"run": str(reused), "steps": 9, "selected_step": 9, "psnr": 29.0},  # folder reused later
        {"run": str(reused), "steps": 6, "selected_step": 3, "psnr": 29.5},  # its own folder
        {"run": str(tmp_path / "gone"), "steps": 6, "selected_step": 0, "psnr": 29.6,
         "history": hist((0, 30.5), (3, 30.52), (6, 30.54)),
         "sessions": [{"first_step": 1, "last_step": 6}]},
    ]
    curves = recipe_script.stage_curves(stages)
    assert [off for off, _, _ in curves] == [0, 9, 15]  # every step trained, in order
    assert curves[0][2] == [{"step": 9, "metrics": {"psnr": 29.0}}]  # not the second's history
    assert [h["step"] for h in curves[1][2]] == [0, 3, 6]
    g = recipe_script.gain_over_last_third(stages, "psnr_both")
    assert g["total_steps"] == 21 and g["end"] == 21 and g["from_step"] == 14
    assert g["before"] == 30.5 and g["after"] == 30.54 and g["gain"] == pytest.approx(0.04)
