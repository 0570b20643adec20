"""The shipped sample images are real, carry physical scale and licences, and open in napari."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medenhance import sample_data

EXPECTED = {
    "ct_slice": ((512, 512), np.int16),
    "mr_slice": ((1024, 1024), np.uint16),
    "nuclei_stack": ((24, 256, 256), np.uint16),
    "ihc_rgb": ((512, 512, 3), np.uint8),
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_sample_file_is_real_data_with_provenance(key):
    shape, dtype = EXPECTED[key]
    data = sample_data.load(key)
    assert data.shape == shape and data.dtype == dtype
    assert np.unique(data).size > 100  # a real image, not a constant or synthetic placeholder
    meta = sample_data.index()[key]
    assert meta["licence"] and meta["source"]
    assert meta["file"] in (sample_data.HERE / "NOTICE.md").read_text(encoding="utf-8")


def test_ct_is_in_hounsfield_units():
    ct = sample_data.load("ct_slice")
    # air around the patient is about -1000 HU, soft tissue about 0..100 HU
    body = ct[ct > -2000]
    assert np.percentile(body, 5) < -900
    assert -100 < np.median(ct[(ct > -200) & (ct < 200)]) < 150


def test_samples_open_in_napari_with_scale(make_napari_viewer):
    viewer = make_napari_viewer()
    for key in ("ct", "mr", "nuclei", "ihc"):
        viewer.open_sample("napari-medenhance", key)
    names = [layer.name for layer in viewer.layers]
    assert names == ["CT slice (HU)", "MR slice", "nuclei (fluorescence)", "IHC (colour)"]
    ct, _, nuclei, ihc = viewer.layers
    np.testing.assert_allclose(ct.scale, [0.478516, 0.478516])
    np.testing.assert_allclose(nuclei.scale, [0.29, 0.26, 0.26])
    assert str(nuclei.units[0]) == "micrometer"
    assert ihc.rgb and ihc.data.shape[-1] == 3
