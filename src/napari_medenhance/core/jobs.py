"""Running the core's generator jobs to completion (for the CLI, scripts and tests)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

R = TypeVar("R")


def drive(job: Generator[Any, None, R], progress: Callable[[Any], None] | None = None) -> R:
    """Exhaust a job generator, passing each yielded event to ``progress``; return its result.

    Long jobs in the core are generators (they yield progress, napari workers can stop them at a
    yield); this is the one place that runs such a job synchronously.
    """
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(event)
