"""What every front end of a training run shares: a clean stop on Ctrl-C (and on the SIGTERM of
a machine shutting down) and the one-line description of the hardware that goes into run
records and model cards.

Used by ``medenhance train`` (:mod:`napari_medenhance._cli.train`), fine-tuning
(:mod:`.finetune`, whose records the Train widget shows) and the project's training scripts
(``training/recipe_script.py``), so a run stopped or described from any of them reads the same.
"""

from __future__ import annotations

import platform
import signal
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch

__all__ = ["GracefulStop", "hardware"]


def hardware(device: torch.device) -> str:
    """A one-line description of the machine torch runs on (GPU name and memory, CPU, threads)."""
    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}; CPU {cpu}"
    if device.type == "mps":
        return f"Apple MPS; CPU {cpu}"
    return f"CPU only: {cpu}"


class GracefulStop:
    """``with GracefulStop(say) as stop:`` — the first Ctrl-C (or SIGTERM, with ``term=True``)
    sets ``stop.requested`` (pass ``cancel=lambda: stop.requested`` to the training loop, which
    then stops after the current step with a checkpoint) and calls ``say`` with a message; a
    second one raises :class:`KeyboardInterrupt` at once. The previous handlers come back on
    exit. Off the main thread signals cannot be caught: nothing is installed and only
    ``requested`` (settable by the caller) stops the run.
    """

    MESSAGE = "stopping after this step (Ctrl-C again to abort at once) ..."

    def __init__(self, say: Callable[[str], None] = print, *, term: bool = False) -> None:
        self.say = say
        self.term = term
        self.requested = False
        self._old: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.say(self.MESSAGE)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            signals = [signal.SIGINT] + ([signal.SIGTERM] if self.term else [])
            for sig in signals:
                self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
