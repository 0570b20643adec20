"""The CPU training script for the shipped `dran`: runs survive interruptions and sessions.

``training/train_dran.py`` on a tiny DRAN and a small pool of the shipped sample images (the
real pool is fetched from package registries and too large for a test): the export goes to
``training/checkpoints`` below the ship gate and to ``models/`` above it, a new run whose folder
is gone starts from the committed weights, the card and the run record say what happened, and
the adaptive thread count picks the faster setting.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

import recipe_script  # noqa: E402
import train_dran  # noqa: E402

from napari_medenhance.core.engine import cpu_has_bf16  # noqa: E402
from napari_medenhance.core.weights import load_state_dict, read_header  # noqa: E402
from _images import script_pool  # noqa: E402

TINY = json.dumps({"features": 8, "blocks": 1, "layers_per_block": 1})


@pytest.fixture
def setup(tmp_path, monkeypatch):
    pool = script_pool()
    monkeypatch.setattr(train_dran, "load_pool", lambda: pool)
    monkeypatch.setattr(train_dran, "INTERIM_DIR", tmp_path / "checkpoints")
    monkeypatch.setenv("MEDENHANCE_DATA", str(tmp_path / "cache"))
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setattr(train_dran, "ROOT", tmp_path)  # committed_weights() looks in ROOT/models

    def run(out: str, *extra: str) -> int:
        return train_dran.main([
            "--steps", "12", "--batch", "2", "--patch", "32", "--lr", "1e-3",
            "--val-every", "6", "--ckpt-every", "6", "--config", TINY, "--device", "cpu",
            "--out", str(tmp_path / out), "--models-dir", str(models), "--gate-methods", "nlm",
            *extra,
        ])

    return tmp_path, models, run


def test_below_the_gate_the_export_is_interim_and_the_next_run_starts_from_it(setup, capsys):
    tmp, models, run = setup
    assert run("run1") == 0
    interim = tmp / "checkpoints" / "dran.safetensors"
    assert interim.is_file() and not (models / "dran.safetensors").exists()  # 12 steps < NLM
    card = (tmp / "checkpoints" / "dran.md").read_text()
    assert "Interim, not shipped" in card and "Ship gate" in card and "nlm" in card
    assert "clipped" in card.lower() and "| started | hardware |" in card
    meta = read_header(interim, expected_arch="dran")["meta"]
    assert meta["storage"] in ("fp16", "fp32") and isinstance(meta["cpu_bf16"], bool)
    assert {"psnr_s25", "psnr_c25", "psnr"} <= set(meta["metrics"])
    # the run left its curve and its stretch on record while it ran
    hist = recipe_script.read_history(tmp / "run1")
    assert [h["step"] for h in hist] == [0, 6, 12]
    sessions = json.loads((tmp / "run1" / "run.json").read_text())["sessions"]
    # the default precision 'auto' is recorded as what it resolved to on this CPU
    expected = "bf16" if cpu_has_bf16() else "fp32"
    assert sessions[-1]["last_step"] == 12 and sessions[-1]["precision"] == expected
    assert (tmp / "checkpoints" / "dran-curve.png").is_file()

    # a new session on a fresh machine: the run folder is gone, the committed weights are not
    capsys.readouterr()
    assert run("run2", "--no-export") == 0
    assert f"starting from the committed {interim}" in capsys.readouterr().out
    args = json.loads((tmp / "run2" / "run.json").read_text())["args"]
    assert args["init_weights"] == str(interim) and args["anneal_fraction"] == 0.0
    first = recipe_script.read_history(tmp / "run2")[0]["metrics"]["psnr"]
    assert first == pytest.approx(meta["metrics"]["psnr"], abs=0.05)  # continues, not scratch

    # Resumed with a longer schedule and weight averaging: the run keeps the anneal fraction it
    # started with, and each stretch records its planned length and averaging for the card.
    assert run("run2", "--no-export", "--steps", "14", "--average", "0.9") == 0
    info = json.loads((tmp / "run2" / "run.json").read_text())
    assert info["args"]["anneal_fraction"] == 0.0
    first_s, last_s = info["sessions"][0], info["sessions"][-1]
    assert (first_s["planned"], first_s["average"]) == (12, None)
    assert (last_s["first_step"], last_s["last_step"]) == (13, 14)
    assert (last_s["planned"], last_s["average"]) == (14, 0.9)
    assert recipe_script.stretch_steps(last_s) == "13–14 of 14, averaged (0.9)"
    assert "| 1–12 of 12 |" in card
    # The card of the resumed run lists both stages (the second from the weights its first
    # session started from) and every stretch of both.
    assert run("run2", "--export", "--force") == 0
    card2 = (tmp / "checkpoints" / "dran.md").read_text()
    assert f"| 2 | {train_dran.OBJECTIVE} | dran.safetensors | 2 × 32, 0.001 | 14 | " in card2
    assert "| 1 | " in card2 and "| 1–12 of 12 |" in card2
    assert "| 13–14 of 14, averaged (0.9) |" in card2 and "26 steps trained in all" in card2
    # Its validation table holds every check of the run, from history.jsonl, and marks the
    # averaged one: the numbers behind the curve, not a hand-written summary of them.
    hist2 = {h["step"]: h for h in recipe_script.read_history(tmp / "run2")}
    rows = {line.split(" | ")[0].strip("| "): line for line in card2.splitlines()
            if line.startswith("| ") and line.count(" | ") == 9}
    assert set(hist2) == {0, 6, 12, 14} and {str(s) for s in hist2} <= set(rows)
    assert [rows[str(s)].split(" | ")[1] for s in (0, 6, 12, 14)] == ["no", "no", "no", "yes"]
    assert rows["14"].split(" | ")[2] == f"{hist2[14]['metrics']['psnr']:.2f}"
    # The header records both stages with their validations, so their curve outlives the runs.
    st = read_header(interim, expected_arch="dran")["meta"]["stages"]
    assert [Path(x["run"]).name for x in st] == ["run1", "run2"] and st[1]["from"] == "dran.safetensors"
    assert [h["step"] for h in st[0]["history"]] == [0, 6, 12]
    assert [h["step"] for h in st[1]["history"]] == [0, 6, 12, 14]
    # --curve: run2 started from weights its own export has since replaced (run.json keeps
    # their sha256), so the stage before it comes from the header, not from run2 itself
    capsys.readouterr()
    png = tmp / "curve.png"
    assert run("run2", "--curve", str(png)) == 0
    assert png.is_file() and "; 26 steps trained in all" in capsys.readouterr().out


def test_export_never_replaces_better_committed_weights(setup, capsys):
    tmp, models, run = setup
    assert run("good", "--steps", "30") == 0
    interim = tmp / "checkpoints" / "dran.safetensors"
    before = interim.read_bytes()
    capsys.readouterr()
    assert run("worse", "--steps", "1", "--scratch") == 0  # one step from random weights
    assert "not exported" in capsys.readouterr().out
    assert interim.read_bytes() == before


def test_ship_anyway_writes_the_models_folder(setup):
    tmp, models, run = setup
    assert run("r", "--ship-anyway") == 0
    assert (models / "dran.safetensors").is_file() and (models / "dran.md").is_file()


def test_export_average_with_ships_the_tensor_mean_and_names_its_ingredients(setup, capsys):
    tmp, models, run = setup
    assert run("a", "--steps", "6", "--ship-anyway", "--scratch") == 0
    first = tmp / "first.safetensors"
    first.write_bytes((models / "dran.safetensors").read_bytes())
    assert run("b", "--steps", "6", "--ship-anyway", "--scratch", "--seed", "7") == 0
    best_b, _ = load_state_dict(tmp / "b" / "best.safetensors")
    mine, _ = load_state_dict(first)
    assert run("b", "--export", "--average-with", str(first), "--ship-anyway", "--force") == 0
    shipped, header = load_state_dict(models / "dran.safetensors")
    floats = [k for k, v in mine.items() if v.is_floating_point()]
    assert floats and any(not torch.equal(mine[k], best_b[k]) for k in floats)
    for k in floats:  # the mean, up to the fp16 storage of the exported file
        assert torch.allclose(shipped[k], (mine[k] + best_b[k]) / 2, rtol=2e-3, atol=2e-3), k
    rec = header["meta"]["averaged_with"]
    assert [r["file"] for r in rec] == ["first.safetensors"] and len(rec[0]["sha256"]) == 64
    assert rec[0]["step"] == 6
    card = (models / "dran.md").read_text()
    assert "**These weights are a mean.**" in card and "`first.safetensors` (sha256" in card
    # another network's weights cannot be averaged in: refused before anything is written
    other = tmp / "other"
    before = (models / "dran.safetensors").read_bytes()
    assert train_dran.main(["--steps", "2", "--batch", "2", "--patch", "32", "--val-every", "2",
                            "--config", json.dumps({"features": 4, "blocks": 1,
                                                    "layers_per_block": 1}),
                            "--device", "cpu", "--out", str(other), "--no-export",
                            "--scratch"]) == 0
    with pytest.raises(SystemExit, match="another DRAN"):
        run("b", "--export", "--average-with", str(other / "best.safetensors"), "--ship-anyway",
            "--force")
    assert (models / "dran.safetensors").read_bytes() == before


def test_adaptive_threads_keeps_the_faster_count():
    torch_threads = torch.get_num_threads()
    try:
        pick = recipe_script.AdaptiveThreads([2, 1], period=4, window=3)
        for _ in range(40):
            time.sleep(0.002 if torch.get_num_threads() == 1 else 0.01)
            pick.step()
        assert pick.current == 1  # one thread was faster here
        pick = recipe_script.AdaptiveThreads([2, 1], period=4, window=3)
        for _ in range(40):
            time.sleep(0.01 if torch.get_num_threads() == 1 else 0.002)
            pick.step()
        assert pick.current == 2
        # Another process starts: 2 threads become 10x slower. The next trial does not wait
        # for `period` steps, and 1 thread is kept.
        pick = recipe_script.AdaptiveThreads([2, 1], period=1000, window=20, recent=5)
        slow = {"on": False}
        for i in range(60):
            if i == 20:
                slow["on"] = True
            two = 0.02 if slow["on"] else 0.002
            time.sleep(two if torch.get_num_threads() == 2 else 0.004)
            pick.step()
        assert pick.current == 1
        # ... and a trial of the slower count ends early: 1 thread is 10x slower here, so it is
        # tried for `recent` steps, not for the whole window.
        pick = recipe_script.AdaptiveThreads([2, 1], period=10, window=50, recent=5)
        counts = []
        for _ in range(40):
            time.sleep(0.002 if torch.get_num_threads() == 2 else 0.02)
            pick.step()
            counts.append(pick.threads)
        runs = "".join(map(str, counts)).replace("2", " ").split()
        done = runs[:-1] if counts[-1] == 1 else runs  # a trial still under way at the end
        assert pick.current == 2 and done and all(4 <= len(r) <= 7 for r in done), counts
    finally:
        torch.set_num_threads(torch_threads)


def test_two_sessions_started_in_the_same_second_are_both_on_record(tmp_path):
    # A short resume can start within the second its predecessor started: the card must still
    # list both stretches (they were once keyed by the start time alone, and the second
    # replaced the first).
    args = train_dran.parse_args(["--out", str(tmp_path)])
    first = {"started": "2026-12-06 10:00:00", "id": "a", "first_step": 1, "last_step": 12}
    second = {"started": "2026-12-06 10:00:00", "id": "b", "first_step": 13, "last_step": 14}
    recipe_script.upsert_session(args, first)
    recipe_script.upsert_session(args, second)
    recipe_script.upsert_session(args, {**second, "last_step": 15})  # the same session, later
    sessions = json.loads((tmp_path / "run.json").read_text())["sessions"]
    assert [(s["first_step"], s["last_step"]) for s in sessions] == [(1, 12), (13, 15)]


def test_a_sigma_weighted_stage_is_on_record_in_the_card_and_the_stages(setup, capsys):
    tmp, models, run = setup
    assert run("plain", "--ship-anyway") == 0
    shipped = models / "dran.safetensors"
    # the next stage starts from the shipped weights with the σ-weighted loss (and shrunk windows)
    assert run("weighted", "--sigma-weighted", "--scale-aug", "0.5", "--steps", "6",
               "--modality-weight", "CT=2", "--ship-anyway", "--force") == 0
    card = (models / "dran.md").read_text()
    assert "--modality-weight 'CT=2'" in card and "in proportion to CT 2 (every other" in card
    assert "--sigma-weighted" in card and "weighted by (25/255) / max(its noise std" in card
    assert "--scale-aug 0.5" in card and "50% of the clean patches were a window" in card
    # the recipe trials measured on this CPU travel with the model
    assert train_dran.TRIALS.read_text(encoding="utf-8").strip() in card
    st = read_header(shipped, expected_arch="dran")["meta"]["stages"]
    assert [Path(x["run"]).name for x in st] == ["plain", "weighted"]
    assert st[0]["objective"] == train_dran.OBJECTIVE and not st[0]["args"].get("sigma_weighted")
    assert st[1]["objective"] == train_dran.OBJECTIVE_SIGMA_WEIGHTED + "; patches drawn CT ×2"
    assert st[1]["args"]["sigma_weighted"] is True and st[1]["args"]["modality_weights"] == {"CT": 2}
    assert st[1]["args"]["scale_aug"] == 0.5 and not st[0]["args"].get("scale_aug")
    # weights from before the header had the flag are read by their loss text
    old = {"training": {"loss": "L1(predicted noise, true noise), per sample x (25/255) / "
                                "max(its noise std, 5/255)"}}
    assert train_dran.objective_of(old) == train_dran.OBJECTIVE_SIGMA_WEIGHTED
    assert train_dran.objective_of({}) == train_dran.OBJECTIVE
    # resuming the weighted run without the switch would change its loss: refused, not mixed
    capsys.readouterr()
    assert run("weighted", "--steps", "8", "--no-export") != 0
    err = capsys.readouterr().err
    assert "different training setup (objective" in err and "sigma_weighted" in err


def test_stages_of_weights_exported_before_headers_had_them_come_from_the_record(setup, monkeypatch):
    tmp, models, run = setup
    assert run("first", "--ship-anyway") == 0
    shipped = models / "dran.safetensors"
    # weights exported before headers carried their stages: the same file without "stages"
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(shipped), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = dict(f.metadata())
    first = json.loads(metadata.pop("stages"))
    metadata["json_keys"] = json.dumps([k for k in json.loads(metadata["json_keys"]) if k != "stages"])
    save_file(tensors, str(shipped), metadata=metadata)
    assert "stages" not in read_header(shipped, expected_arch="dran")["meta"]
    old = {"objective": train_dran.OBJECTIVE, "run": str(tmp / "gone"), "from": None,
           "steps": 7000, "selected_step": 7000, "psnr": 20.5,
           "sessions": [{"started": "2026-11-29 21:14:46", "hardware": "CPU only: old machine",
                         "torch": "2.13.0+cpu", "first_step": 0, "last_step": 7000,
                         "steps_per_s": 0.7, "note": "estimated", "batch": 8, "patch": 64,
                         "precision": "bf16"}],
           "args": {"batch": 8, "patch": 64, "lr": 5e-4},
           "history": [{"step": 7000, "metrics": {"psnr": 20.5}}]}
    record = tmp / "recorded_stages.json"
    # the record holds every stage that led to the file: here an older one, then "first"
    record.write_text(json.dumps({recipe_script.sha256(shipped): {"model": "dran",
                                                                  "stages": [old, *first]}}))
    monkeypatch.setattr(recipe_script, "RECORDED_STAGES", record)
    assert recipe_script.committed_stages(shipped, "dran") == [old, *first]

    assert run("next", "--steps", "6", "--ship-anyway", "--force") == 0
    st = read_header(shipped, expected_arch="dran")["meta"]["stages"]
    assert st[0] == old and [Path(x["run"]).name for x in st[1:]] == ["first", "next"]
    card = (models / "dran.md").read_text()
    assert "| 1 | 2026-11-29 21:14:46 | CPU only: old machine |" in card
    assert "0.7 (estimated)" in card and "## Stages" in card
    assert f"{7000 + 12 + 6:,} steps trained in all" in card
    # a file the record does not know has no stages from it
    other = tmp / "other.safetensors"
    save_file(tensors, str(other), metadata={**metadata, "name": "other"})
    assert recipe_script.committed_stages(other, "dran") == []


def test_modality_weights_on_the_command_line():
    args = train_dran.parse_args(["--modality-weight", "CT=2", "--modality-weight",
                                  "phase contrast=0.5"])
    assert args.modality_weights == {"CT": 2.0, "phase contrast": 0.5}
    assert train_dran.parse_args([]).modality_weights == {}
    for bad in ("CT", "CT=", "=2", "CT=-1", "CT=inf", "CT=two"):
        with pytest.raises(SystemExit):
            train_dran.parse_args(["--modality-weight", bad])
