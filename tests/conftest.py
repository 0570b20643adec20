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
