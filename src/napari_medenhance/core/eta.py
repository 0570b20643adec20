"""How long a training run takes: steps per second and the time left while it runs, and a
timing of a few real steps before it starts (Qt-free; the Train widget renders these).

Estimates are measurements on this machine, never promises: the rate of a run changes with what
else the machine does, and validations (every ``val_every`` steps) come on top of the steps.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Generator
from typing import Any

__all__ = ["StepRate", "format_duration", "iter_time_steps"]


class StepRate:
    """Steps per second of a running job, and the time its remaining steps will take.

    The clock starts at the first step seen (data loading and the step-0 validation before it
    are not steps); validations between steps are counted in, so the time left includes them
    on average.
    """

    def __init__(self) -> None:
        self._first: tuple[int, float] | None = None
        self._last: tuple[int, float] | None = None

    def update(self, step: int, now: float | None = None) -> None:
        """Record that ``step`` has finished (``now``: a ``time.monotonic()`` value)."""
        now = time.monotonic() if now is None else now
        if self._first is None:
            self._first = (step, now)
        self._last = (step, now)

    @property
    def steps_per_second(self) -> float | None:
        """Steps per second since the first recorded step; None until two steps are seen."""
        if self._first is None or self._last is None:
            return None
        (s0, t0), (s1, t1) = self._first, self._last
        if s1 <= s0 or t1 <= t0:
            return None
        return (s1 - s0) / (t1 - t0)

    def seconds_left(self, total: int) -> float | None:
        """Seconds until step ``total`` at the rate so far; None while the rate is unknown."""
        rate = self.steps_per_second
        if rate is None or self._last is None:
            return None
        return max(0, total - self._last[0]) / rate


def format_duration(seconds: float) -> str:
    """``'under a minute'``, ``'12 min'``, ``'3 h 05 min'`` or ``'2.5 days'``: coarse on
    purpose, an estimate has no more precision than that."""
    if not math.isfinite(seconds):
        return "an unknown time"
    if seconds < 60:
        return "under a minute"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    if seconds < 48 * 3600:
        h, m = divmod(minutes, 60)
        return f"{h} h {m:02d} min"
    return f"{seconds / 86400:.1f} days"


def iter_time_steps(task: str, mode: str, data: Any, *, n_steps: int = 4, warmup: int = 2,
                    cancel: Callable[[], bool] | None = None,
                    **finetune_kwargs: Any) -> Generator[Any, None, float | None]:
    """Time a few real training steps with exactly the run's settings; return seconds per step.

    Runs :func:`~napari_medenhance.core.training.finetune.iter_finetune` (same task, mode,
    data, starting model, batch, patch, device...) in a temporary run folder, deleted
    afterwards, and stops it after ``warmup + n_steps`` steps: the first ``warmup`` steps
    (memory allocation, kernel selection: several times slower than the rest) are not timed,
    nor are data loading and the step-0 validation before them. Yields the run's events (for a
    progress display); returns None when fewer than two steps ran (``cancel()``, or a run of one
    step).

    Raises:
        ValueError: whatever ``iter_finetune`` refuses (bad data, settings or model).
    """
    from napari_medenhance.core.training import finetune as ft

    kwargs = {k: v for k, v in finetune_kwargs.items() if k not in ("out_dir", "name", "cancel")}
    kwargs["val_every"] = 0  # no validation between the timed steps (only step 0, before them)
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="medenhance-timing-") as tmp:
        job = ft.iter_finetune(
            task, mode, data, out_dir=tmp, name="timing",
            cancel=lambda: len(times) >= warmup + n_steps or bool(cancel and cancel()), **kwargs)
        try:
            for ev in job:
                if ev.kind == "step":
                    times.append(time.monotonic())
                yield ev
        finally:
            job.close()  # before the folder goes: the loop writes its checkpoint on close
    if len(times) < 2:  # cancelled, or a run of one step: nothing to time
        return None
    # times[k] is when step k + 1 ended: the clock starts when the last warm-up step ended
    # (earlier when the run is shorter than warmup + 2 steps).
    start = max(0, min(warmup - 1, len(times) - 2))
    return (times[-1] - times[start]) / (len(times) - 1 - start)
