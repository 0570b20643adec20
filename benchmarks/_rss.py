"""Peak memory of the current process's own work, for the benchmarks' child processes.

``ru_maxrss`` is not used: on Linux a child's ``ru_maxrss`` starts from its PARENT's high-water
mark (it is carried across fork + exec), so a benchmark whose parent once held a large array
reports that array as the child's peak. ``VmHWM`` in ``/proc/self/status`` belongs to the
process's own address space, and writing ``5`` to ``/proc/self/clear_refs`` resets it, so the
peak of one call can be measured after warm-up.
"""

from __future__ import annotations

import resource
import sys


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak() -> int:
    """Reset this process's peak-RSS mark (Linux); return its RSS now, in bytes."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass
    rss = _status_bytes("VmRSS")
    return rss if rss is not None else peak_rss()


def peak_rss() -> int:
    """Peak RSS of this process (bytes) since the last :func:`reset_peak` (Linux); elsewhere
    ``ru_maxrss``, which may include the parent's peak."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024
