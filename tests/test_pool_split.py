"""The training pool's split check (training/pool.py): a validation image must not be a training
image, whole, cropped or resized. pydicom's ``examples_rgb_color`` was pydicom-data's
``US1_UNCR`` shrunk 2× and served as validation while ``US1_UNCR`` trained."""

import sys
from pathlib import Path

import numpy as np
import pytest
from skimage import data
from skimage.transform import rescale

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import pool  # noqa: E402

from napari_medenhance.core.training import Plane  # noqa: E402


def _unit(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    return (a - a.min()) / (a.max() - a.min())


@pytest.fixture(scope="module")
def train():
    return [
        Plane("camera", "MR", _unit(data.camera())),
        Plane("astronaut", "colour", _unit(data.astronaut())),
        Plane("flat", "CT", np.zeros((300, 300), np.float32)),
    ]


def test_a_shrunk_copy_of_a_training_image_is_found(train):
    val = [Plane("small", "US", _unit(rescale(data.camera(), 0.5, anti_aliasing=True)))]
    (leak,) = pool.duplicates(val, train)
    assert leak[:3] == ("small", "camera", 0.5)
    assert leak[3] > 0.95


def test_a_crop_of_a_colour_training_image_is_found_in_gray(train):
    val = [Plane("crop", "colour", _unit(data.astronaut())[100:300, 150:400])]
    (leak,) = pool.duplicates(val, train)
    assert leak[:3] == ("crop", "astronaut", 1.0)


def test_different_images_pass_even_next_to_flat_training_planes(train):
    val = [
        Plane("coins", "CT", _unit(data.coins())),
        Plane("phantom", "MR", _unit(data.shepp_logan_phantom())),
        Plane("moon", "CR", _unit(data.moon())),
    ]
    assert pool.duplicates(val, train) == []


def test_the_pool_refuses_to_build_a_split_that_leaks(monkeypatch, tmp_path):
    planes = {
        "train": [("camera", "MR", _unit(data.camera()))],
        "val": [("camera-half", "MR", _unit(rescale(data.camera(), 0.5, anti_aliasing=True)))],
    }
    monkeypatch.setattr(pool, "_planes", lambda split: planes[split])
    monkeypatch.setattr(pool, "_cache_path", lambda: tmp_path / "pool.npz")
    with pytest.raises(ValueError, match="camera-half.*camera"):
        pool.load_pool()
    assert not (tmp_path / "pool.npz").exists()
