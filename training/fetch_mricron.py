"""Fetch the Colin27 T1 MRI templates (Debian ``mricron-data``, BSD-3) into the data cache.

    python training/fetch_mricron.py            # prints the path of ch2.nii.gz
    python training/fetch_mricron.py ch2better  # 0.5 mm version (301×370×316)

Real NIfTI volumes for trying the readers/writers, benchmarks and SR pairs at scale. The .deb is
fetched with ``apt-get download`` (no root needed) and unpacked with ``dpkg-deb`` into
``$MEDENHANCE_DATA/mricron-data`` (default ``~/.cache/medenhance-data``), never into the
repository (``data_pool.ensure_deb``, shared with the training pool).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from data_pool import ensure_deb  # noqa: E402


def ensure_mricron() -> Path:
    """The unpacked templates folder, downloading and unpacking ``mricron-data`` when missing."""
    return ensure_deb("mricron-data")


def template(name: str = "ch2") -> Path:
    """Path of one template, e.g. ``template("ch2")`` (181×217×181 uint8, 1 mm)."""
    path = ensure_mricron() / f"{name}.nii.gz"
    if not path.is_file():
        raise SystemExit(f"no template {name!r}; have: "
                         + ", ".join(sorted(p.name for p in path.parent.glob("*.nii.gz"))))
    return path


if __name__ == "__main__":
    print(template(sys.argv[1] if len(sys.argv) > 1 else "ch2"))
