"""Running independent jobs on dask.distributed: a local cluster or a running scheduler.

Two pieces, both unaware of what the jobs do (:mod:`.batch` gives them files to restore):

* :func:`open_client` — ``"local"`` starts a :class:`distributed.LocalCluster` of worker
  *processes* (one thread each, so a worker runs one job at a time and its memory limit is one
  job's budget) and closes it afterwards; an address such as ``"tcp://10.0.0.5:8786"``
  connects to a running scheduler (which is left running); a ``distributed.Client`` is used as
  it is.
* :func:`iter_on_cluster` — submits one task per job and yields ``(job, result, error)`` in
  completion order (``distributed.as_completed``). A job's function receives a ``cancel``
  callable backed by a :class:`distributed.Event`, so cancelling reaches jobs already running
  on the workers (at their next tile), not just the queued ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

__all__ = ["cluster_label", "iter_on_cluster", "open_client"]

# How often a running job asks the scheduler whether the batch was cancelled (seconds): often
# enough to stop promptly, rarely enough to cost nothing next to a tile.
_CANCEL_POLL_S = 0.5


def cluster_label(scheduler: Any) -> str:
    """A short description of a ``scheduler`` argument, for messages."""
    if scheduler is None:
        return "in-process"
    if isinstance(scheduler, str):
        return "a local cluster" if scheduler == "local" else f"the scheduler at {scheduler}"
    return "the given dask client"


@contextlib.contextmanager
def open_client(
    scheduler: Any,
    *,
    n_workers: int | None = None,
    memory_limit: str | int | float | None = "auto",
    threads_per_worker: int = 1,
) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler``, closed (with its local cluster) on exit.

    Args:
        scheduler: ``"local"`` (start a ``LocalCluster`` of processes), an address
            (``"tcp://host:8786"``, ``"host:8786"``...; the cluster is left running), or an
            existing ``distributed.Client`` (used as it is, not closed).
        n_workers: worker processes of a local cluster (default: the CPU count).
        memory_limit: per local worker (``"2GB"``, bytes, a fraction of system memory, or
            ``"auto"`` = system memory / workers; None = no limit). A worker that exceeds it
            is restarted by its nanny and its job reported as failed.
        threads_per_worker: threads per local worker; 1 runs one job at a time per worker.

    Raises:
        ValueError: bad ``n_workers`` / ``scheduler``, or no scheduler answers at the address.
    """
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        yield scheduler
        return
    if not isinstance(scheduler, str) or not scheduler.strip():
        raise ValueError(
            f"scheduler must be None (in-process), 'local' or an address such as "
            f"'tcp://host:8786'; got {scheduler!r}"
        )
    if scheduler == "local":
        if n_workers is not None and int(n_workers) < 1:
            raise ValueError(f"n_workers must be >= 1; got {n_workers}")
        n = int(n_workers) if n_workers is not None else (os.cpu_count() or 1)
        mem = 0 if memory_limit is None else memory_limit
        with LocalCluster(
            n_workers=n, threads_per_worker=threads_per_worker, processes=True,
            memory_limit=mem, dashboard_address=None, silence_logs=logging.ERROR,
        ) as cluster, Client(cluster, set_as_default=False) as client:
            yield client
        return
    try:
        client = Client(scheduler, set_as_default=False, timeout="10s")
    except (OSError, TimeoutError) as e:
        raise ValueError(
            f"no dask scheduler answered at {scheduler!r} ({e}); start one with "
            "`dask scheduler` and workers with `dask worker ADDRESS`, or use --scheduler local"
        ) from e
    with client:
        yield client


def _with_cancel_event(fn: Callable[..., Any], job: Any, event_name: str) -> Any:
    """Run ``fn(job, cancel=...)`` on a worker; ``cancel`` reads the batch's Event, throttled."""
    from distributed import Event

    event = Event(event_name)
    state = {"at": 0.0, "set": False}

    def cancel() -> bool:
        now = time.monotonic()
        if not state["set"] and now - state["at"] >= _CANCEL_POLL_S:
            state["at"] = now
            with contextlib.suppress(Exception):  # scheduler unreachable: keep working
                state["set"] = bool(event.is_set())
        return state["set"]

    return fn(job, cancel=cancel)


def iter_on_cluster(
    client: Any,
    fn: Callable[..., Any],
    jobs: Sequence[Any],
    *,
    cancel: Callable[[], bool] | None = None,
    name: str = "medenhance",
    drain_timeout_s: float = 30.0,
) -> Generator[tuple[Any, Any, BaseException | None], None, None]:
    """Run ``fn(job, cancel=...)`` for every job on the cluster; yield as they complete.

    Yields:
        ``(job, result, None)`` for a job whose function returned, ``(job, None, error)`` for
        one whose task failed (an exception, or its worker died, e.g. over its memory limit).

    Raises:
        napari_medenhance.core.engine.Cancelled: ``cancel()`` returned True (checked while
            waiting). The batch's Event is set; every job still running or queued sees it at
            its next check (a job's function polls ``cancel``, e.g. before each tile), stops and
            removes its partial output; they are waited for up to ``drain_timeout_s``.
    """
    from distributed import Event, as_completed

    from .engine import Cancelled

    if not jobs:
        return
    event_name = f"{name}-cancel-{uuid.uuid4().hex}"
    event = Event(event_name, client=client)
    futures = [
        client.submit(_with_cancel_event, fn, job, event_name, pure=False,
                      key=f"{name}-{i}-{uuid.uuid4().hex[:8]}")
        for i, job in enumerate(jobs)
    ]
    job_of = {f.key: job for f, job in zip(futures, jobs)}
    pending = set(futures)
    ac = as_completed(futures, loop=client.loop)
    try:
        while pending:
            ready = ac.next_batch(block=cancel is None)
            if not ready:
                if cancel():
                    # Running and queued jobs see the Event at their next poll and return
                    # early after removing their partial output; give them a moment to do so.
                    event.set()
                    deadline = time.monotonic() + drain_timeout_s
                    while time.monotonic() < deadline and any(f.status == "pending" for f in pending):
                        time.sleep(0.05)
                    raise Cancelled(
                        f"cancelled with {len(pending)} of {len(jobs)} jobs not finished"
                    )
                time.sleep(0.05)
                continue
            for fut in ready:
                pending.discard(fut)
                job = job_of[fut.key]
                try:
                    result = fut.result()
                except Exception as e:  # the task raised, or its worker died (KilledWorker)
                    yield job, None, e
                else:
                    yield job, result, None
                finally:
                    fut.release()
    finally:
        if pending:  # cancelled, or the caller stopped iterating
            with contextlib.suppress(Exception):
                event.set()
                client.cancel(list(pending))
