"""Shared fixtures: real images from the shipped sample data."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medenhance.sample_data import load


@pytest.fixture(scope="session")
def nuclei() -> np.ndarray:
    """Real 16-bit fluorescence stack, (24, 256, 256) uint16."""
    return load("nuclei_stack")


@pytest.fixture(scope="session")
def nuclei_smoothed(nuclei) -> np.ndarray:
    """The nuclei stack Gaussian-smoothed per plane (σ = 1 px), same dtype: a stand-in 'output'."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(nuclei.astype(np.float32), sigma=(0, 1, 1)).round().astype(nuclei.dtype)


@pytest.fixture
def isolated_models(tmp_path, monkeypatch):
    """An empty user models folder (returned), and no shipped models: tests see only what they add."""
    from napari_medenhance.core import zoo

    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.setenv(zoo.MODELS_DIR_ENV, str(user))
    monkeypatch.setattr(zoo, "shipped_models_dir", lambda: tmp_path / "shipped")
    zoo.clear_cache()
    yield user
    zoo.clear_cache()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Empty user models and runs folders under ``tmp_path`` (returned), no shipped models."""
    from napari_medenhance.core import zoo
    from napari_medenhance.core.training import finetune as ft

    monkeypatch.setenv(zoo.MODELS_DIR_ENV, str(tmp_path / "models"))
    monkeypatch.setenv(ft.RUNS_DIR_ENV, str(tmp_path / "runs"))
    monkeypatch.setattr(zoo, "shipped_models_dir", lambda: tmp_path / "shipped")
    zoo.clear_cache()
    yield tmp_path
    zoo.clear_cache()
