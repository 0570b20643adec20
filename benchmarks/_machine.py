"""One line naming the machine a benchmark ran on (CPU model, cores, memory, GPU, library versions)."""

from __future__ import annotations

import os
import platform


def describe() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages * size / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
        # Which vector units torch uses, and whether bf16 is native: speeds differ by that.
        from napari_medenhance.core.device import cpu_has_bf16

        isa = torch.backends.cpu.get_cpu_capability()
        cpu += f" ({isa}, {'native' if cpu_has_bf16() else 'no native'} bf16)"
        ver = f", torch {torch.__version__}"
    except ImportError:
        ver = ""
    import numpy
    import skimage

    return (f"{cpu}, {os.cpu_count()} logical cores{mem}, {gpu}; Python {platform.python_version()}, "
            f"numpy {numpy.__version__}, scikit-image {skimage.__version__}{ver}")
