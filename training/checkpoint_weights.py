"""Write the trained or the averaged weights of a training checkpoint as a weights file.

    python training/checkpoint_weights.py runs/dran-cont/last.safetensors /tmp/live.safetensors
    python training/checkpoint_weights.py runs/dran-cont/last.safetensors /tmp/avg.safetensors --averaged
    python training/denoise_gate.py /tmp/live.safetensors   # validate it (baselines cached)

A run with weight averaging (``--average``) validates and exports the average; its checkpoint
(``last.safetensors``) holds both. This writes either one as an ordinary weights file, so the
gates (``denoise_gate.py``, ``sr_gate.py``, ``enhance_gate.py``) can say how much the average
adds at that step. Buffers (BatchNorm statistics) are the trained network's in both files, as
in the run's own validation. Reads the checkpoint without unpickling anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_medenhance.core.training.checkpoint import load_checkpoint
from napari_medenhance.core.weights import save_weights


def write(checkpoint: Path, out: Path, *, averaged: bool = False) -> Path:
    """Write ``checkpoint``'s trained (or, with ``averaged``, averaged) weights to ``out``."""
    ck = load_checkpoint(checkpoint)
    state = dict(ck.model)
    if averaged:
        if not ck.average:
            raise SystemExit(f"{checkpoint} holds no averaged weights (the run did not average)")
        state.update(ck.average)
    meta = {"task": ck.identity["task"], "recipe": ck.identity["recipe"], "step": ck.step,
            "total": ck.total, "weights": "averaged" if averaged else "trained",
            "checkpoint": str(checkpoint)}
    if averaged:
        meta["averaged"] = ck.loop.get("average", {})
    return save_weights(out, state, arch=ck.identity["arch"], config=ck.identity["config"],
                        meta=meta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="a run's last.safetensors")
    ap.add_argument("out", type=Path, help="weights file to write")
    ap.add_argument("--averaged", action="store_true",
                    help="the averaged weights (default: the trained ones)")
    a = ap.parse_args(argv)
    path = write(a.checkpoint, a.out, averaged=a.averaged)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
