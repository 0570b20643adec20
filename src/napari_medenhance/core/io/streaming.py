"""Writing arrays larger than memory: blocks of planes in C order, and atomic files."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: Blocks of planes read/written at once when streaming: big enough to amortise a dask compute
#: or a gzip flush, small enough to stay far below memory.
BLOCK_BYTES = 32 * 2**20


def iter_blocks(shape: tuple[int, ...], itemsize: int, plane_ndim: int) -> Iterator[tuple]:
    """Index tuples covering ``shape`` in C order, each at most ``BLOCK_BYTES`` (or one plane).

    A plane is the last ``plane_ndim`` axes (2, or 3 with a colour axis). Concatenating the
    C-order bytes of the blocks gives the C-order bytes of the whole array, so they can be
    streamed into a file one after the other.
    """
    if len(shape) <= plane_ndim or math.prod(shape) * itemsize <= BLOCK_BYTES:
        yield ()
        return
    sub = math.prod(shape[1:]) * itemsize
    if sub <= BLOCK_BYTES:
        k = max(1, BLOCK_BYTES // max(sub, 1))
        for start in range(0, shape[0], k):
            yield (slice(start, min(start + k, shape[0])),)
    else:
        for i in range(shape[0]):
            for rest in iter_blocks(shape[1:], itemsize, plane_ndim):
                yield (i, *rest)


def read_block(data: Any, index: tuple) -> np.ndarray:
    """``data[index]`` as numpy (computes a dask block)."""
    block = data[index] if index else data
    if hasattr(block, "compute") and not isinstance(block, np.ndarray):
        block = block.compute()
    return np.asarray(block)


def atomic_file(p: Path) -> tuple[Path, Any]:
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    return Path(tmp), os.fdopen(fd, "wb")
