"""The model registry: shipped and user folders, lookup by name or path, loading, saving."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import napari_medenhance
from napari_medenhance.core import runtime, zoo
from napari_medenhance.core.nets.dran import DRAN
from napari_medenhance.core.weights import WeightsError, save_weights

TINY = {"features": 8, "blocks": 1, "layers_per_block": 1, "kernels": 2}


def make_weights(path: Path, *, name: str = "tiny", task: str = "denoise", seed: int = 0,
                 **meta) -> DRAN:
    """A real (small, untrained) DRAN saved as a napari-medenhance weights file."""
    torch.manual_seed(seed)
    net = DRAN(**TINY)
    save_weights(path, net, arch="dran", config=TINY, meta={"task": task, "name": name, **meta})
    return net


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """(shipped, user) model folders in tmp; real shipped weights can't leak into the tests."""
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    shipped.mkdir()
    monkeypatch.setenv(zoo.MODELS_DIR_ENV, str(user))
    monkeypatch.setattr(zoo, "shipped_models_dir", lambda: shipped)
    zoo.clear_cache()
    yield shipped, user
    zoo.clear_cache()


def test_folders_default_and_override(tmp_path, monkeypatch):
    assert zoo.shipped_models_dir() == Path(napari_medenhance.__file__).parent / "models"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(zoo.MODELS_DIR_ENV, raising=False)
    default = zoo.user_models_dir()
    assert default.is_absolute() and default.parts[-2:] == ("napari-medenhance", "models")
    assert tmp_path not in default.parents  # never the working directory
    monkeypatch.setenv(zoo.MODELS_DIR_ENV, "")
    assert zoo.user_models_dir() == default
    monkeypatch.setenv(zoo.MODELS_DIR_ENV, str(tmp_path / "mine"))
    assert zoo.user_models_dir() == tmp_path / "mine"


def test_nothing_installed_lists_nothing(dirs):
    assert zoo.list_models() == [] and zoo.list_models("denoise") == []
    with pytest.raises(ValueError, match="no denoise models are installed.*'dran' weights are not bundled yet"):
        zoo.get_model("dran", task="denoise")


def test_list_get_and_load_by_name_and_path(dirs, tmp_path):
    _, user = dirs
    user.mkdir()
    net = make_weights(user / "tiny-a.safetensors", name="ignored-header-name", note="for tests")
    make_weights(user / "tiny-e.safetensors", task="enhance", seed=1)

    assert [(m.name, m.task, m.source) for m in zoo.list_models()] == [
        ("tiny-a", "denoise", "user"), ("tiny-e", "enhance", "user")]
    assert [m.name for m in zoo.list_models("denoise")] == ["tiny-a"]
    with pytest.raises(ValueError, match="unknown task"):
        zoo.list_models("segment")

    info = zoo.get_model("tiny-a", task="denoise")
    assert info.path == user / "tiny-a.safetensors"
    assert (info.arch, info.config, info.scale, info.channels) == ("dran", TINY, 1, 3)
    assert info.card == {"note": "for tests"}

    outside = tmp_path / "elsewhere.safetensors"
    make_weights(outside, name="from-header")
    for ref in (outside, str(outside)):
        by_path = zoo.get_model(ref)
        assert (by_path.name, by_path.source, by_path.path) == ("from-header", "file", outside)

    loaded, info2 = zoo.load_model("tiny-a")
    assert info2 == info and isinstance(loaded, DRAN) and not loaded.training
    for key, value in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    # cached: a picker or a second run does not reload ...
    assert zoo.load_model("tiny-a")[0] is loaded
    assert zoo.load_model(outside)[0] is not loaded
    # ... but weights replaced on disk are read again
    make_weights(info.path, seed=5)
    reloaded, _ = zoo.load_model("tiny-a")
    assert reloaded is not loaded
    w = "head.0.weight"
    assert not torch.equal(reloaded.state_dict()[w], loaded.state_dict()[w])


def test_wrong_task_and_unknown_name_are_explained(dirs):
    _, user = dirs
    user.mkdir()
    make_weights(user / "tiny-a.safetensors")
    make_weights(user / "tiny-e.safetensors", task="enhance")
    with pytest.raises(ValueError, match=r"'tiny-e'.*is a 'enhance' model, not a 'denoise' model; denoise models: tiny-a"):
        zoo.get_model("tiny-e", task="denoise")
    with pytest.raises(ValueError, match=r"unknown denoise model 'nope'; available denoise models: tiny-a\b.*'dran' weights are not bundled yet"):
        zoo.load_model("nope", task="denoise")


def test_broken_files_are_skipped_by_list_and_refused_by_get(dirs, caplog, tmp_path):
    _, user = dirs
    user.mkdir()
    make_weights(user / "good.safetensors")
    good_bytes = (user / "good.safetensors").read_bytes()
    (user / "truncated.safetensors").write_bytes(good_bytes[: len(good_bytes) // 2])
    (user / "garbage.safetensors").write_bytes(np.random.default_rng(0).bytes(300))
    torch.save(DRAN(**TINY).state_dict(), user / "zipped.safetensors")  # torch.save ZIP pickle
    (user / "legacy.safetensors").write_bytes(pickle.dumps({"w": [1.0]}, protocol=2))
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(user / "foreign.safetensors"))
    save_weights(user / "alien.safetensors", {"w": torch.zeros(2)}, arch="unet", config={},
                 meta={"task": "denoise"})
    torch.save(DRAN(**TINY).state_dict(), user / "checkpoint.pt")
    (user / "notes.txt").write_text("not a model")

    with caplog.at_level(logging.WARNING, logger=zoo.__name__):
        assert [m.name for m in zoo.list_models()] == ["good"]
    logged = caplog.text
    for name in ("truncated", "garbage", "zipped", "legacy", "foreign", "alien", "checkpoint.pt"):
        assert name in logged, name

    expected = {
        "truncated": "not a valid safetensors file",
        "garbage": "not a valid safetensors file",
        "zipped": "pickled PyTorch checkpoints are refused",
        "legacy": "pickled PyTorch checkpoints are refused",
        "foreign": "without napari-medenhance metadata",
        "alien": "architecture 'unet'.*does not know",
    }
    for name, message in expected.items():
        with pytest.raises(WeightsError, match=message):
            zoo.get_model(name)
        with pytest.raises(WeightsError, match=message):
            zoo.load_model(name, task="denoise")
    with pytest.raises(WeightsError, match="pickled PyTorch checkpoints are refused"):
        zoo.get_model(user / "checkpoint.pt")
    with pytest.raises(WeightsError, match="no such weights file"):
        zoo.get_model(tmp_path / "missing.safetensors")


def test_save_user_model_copies_validates_and_refuses_overwrite(dirs, tmp_path):
    shipped, user = dirs
    src = tmp_path / "trained.safetensors"
    make_weights(src, name="trained")
    info = zoo.save_user_model(src, "my-dran_1.0", card={"data": "nuclei", "steps": 10})
    dst = user / "my-dran_1.0.safetensors"
    assert (info.name, info.source, info.path, info.task) == ("my-dran_1.0", "user", dst, "denoise")
    assert dst.read_bytes() == src.read_bytes()
    assert json.loads(dst.with_suffix(".json").read_text()) == {"data": "nuclei", "steps": 10}
    assert info.card == {"data": "nuclei", "steps": 10}

    with pytest.raises(ValueError, match="already exists"):
        zoo.save_user_model(src, "my-dran_1.0")
    other = tmp_path / "other.safetensors"
    make_weights(other, seed=3)
    again = zoo.save_user_model(other, "my-dran_1.0", overwrite=True)
    assert dst.read_bytes() == other.read_bytes()
    assert again.card == {} and not dst.with_suffix(".json").exists()  # stale card removed

    for bad in ("", "../escape", "a/b", "with space", ".hidden", "-dash", "CON", "x.safetensors",
                "é", "a" * 65):
        with pytest.raises(ValueError, match="invalid model name"):
            zoo.save_user_model(src, bad)
    pickled = tmp_path / "model.pt"
    torch.save(DRAN(**TINY).state_dict(), pickled)
    with pytest.raises(WeightsError, match="pickled"):
        zoo.save_user_model(pickled, "from-pickle")
    with pytest.raises(ValueError, match="JSON-serialisable"):
        zoo.save_user_model(src, "bad-card", card={"x": object()})
    make_weights(shipped / "dran.safetensors")
    with pytest.raises(ValueError, match="name of a shipped model"):
        zoo.save_user_model(src, "dran")
    assert sorted(p.name for p in user.iterdir()) == ["my-dran_1.0.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.pt", "other.safetensors", "shipped", "trained.safetensors", "user"]


def test_saved_models_persist_across_sessions(dirs, tmp_path):
    _, user = dirs
    src = tmp_path / "trained.safetensors"
    make_weights(src)
    zoo.save_user_model(src, "kept")
    zoo.clear_cache()
    assert [m.name for m in zoo.list_models("denoise")] == ["kept"]
    # a new Python process (a new napari session) with the same user folder finds it too
    code = "import napari_medenhance as me; print([(m.name, m.source) for m in me.list_models()])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, zoo.MODELS_DIR_ENV: str(user)})
    assert "('kept', 'user')" in out.stdout


def test_shipped_models_come_first_and_win_name_clashes(dirs):
    shipped, user = dirs
    user.mkdir()
    make_weights(shipped / "dran.safetensors", seed=0)
    (shipped / "dran.md").write_text("# DRAN\n")
    make_weights(user / "dran.safetensors", seed=1)
    make_weights(user / "mine.safetensors", seed=2)
    assert [(m.name, m.source) for m in zoo.list_models()] == [("dran", "shipped"), ("mine", "user")]
    info = zoo.get_model("dran")
    assert info.source == "shipped" and info.card["card_file"] == str(shipped / "dran.md")
    with pytest.raises(ValueError) as err:
        zoo.get_model("nope", task="denoise")
    assert "available denoise models: dran, mine" in str(err.value)
    assert "not bundled" not in str(err.value)


def test_inference_module_returns_the_clean_estimate(dirs):
    _, user = dirs
    user.mkdir()
    make_weights(user / "tiny.safetensors")
    make_weights(user / "tiny-e.safetensors", task="enhance")
    net, info = zoo.load_model("tiny")
    x = torch.rand(1, 1, 16, 20, generator=torch.Generator().manual_seed(0)).expand(1, 3, -1, -1)
    module = runtime.inference_module(net, info)
    with torch.no_grad():
        # a gray plane (replicated): DRAN.forward predicts the noise
        torch.testing.assert_close(module(x), x - net(x))
        colour = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(module(colour), net.denoise(colour))  # with its chroma path
    # DRAN's edges: the engine mirrors 16 pixels around every plane (DRAN.reflect_border)
    assert runtime.engine_kwargs(info) == {"scale": 1, "net_channels": 3, "pad_multiple": 1,
                                           "border": 16}
    enet, einfo = zoo.load_model("tiny-e")
    # not a denoiser: the network itself, as the copy its for_inference() gives (BN folded)
    emodule = runtime.inference_module(enet, einfo)
    assert type(emodule) is type(enet) and emodule is not enet
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in emodule.modules())
    with torch.no_grad():
        torch.testing.assert_close(emodule(x), enet(x))


def test_model_info_repr_is_one_line_without_the_card(dirs):
    _, user = dirs
    user.mkdir()
    make_weights(user / "tiny.safetensors")
    info = zoo.get_model("tiny")
    assert isinstance(info.card, dict)
    text = repr(info)
    assert "\n" not in text and len(text) < 250
    assert text.startswith("ModelInfo(name='tiny', task='denoise', arch='dran'")
    assert "source='user'" in text and "tiny.safetensors" in text


def test_device_picker_offers_only_what_this_machine_has():
    from napari_medenhance.core.engine import device_choices

    values = [v for _, v in device_choices()]
    assert values[:2] == ["auto", "cpu"]
    assert ("cuda" in " ".join(values)) == torch.cuda.is_available()
    assert "mps" not in values or torch.backends.mps.is_available()
    label = dict((v, k) for k, v in device_choices())["auto"]
    assert str(zoo.resolve_device("auto").type).upper() in label.upper()
