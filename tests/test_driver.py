"""The run driver every training front end shares (``core.training.driver``): the clean stop on
Ctrl-C / SIGTERM, and the hardware line of run records and cards."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch

from napari_medenhance.core.training.driver import GracefulStop, hardware


def test_first_signal_asks_to_stop_second_aborts_and_handlers_come_back():
    said = []
    before_int, before_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with GracefulStop(said.append, term=True) as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)  # a machine shutting down
        assert stop.requested and said == [GracefulStop.MESSAGE]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again: abort at once
    assert signal.getsignal(signal.SIGINT) is before_int
    assert signal.getsignal(signal.SIGTERM) is before_term


def test_off_the_main_thread_nothing_is_installed():
    seen = {}

    def worker() -> None:
        with GracefulStop() as stop:
            seen["handler"] = signal.getsignal(signal.SIGINT)
            stop.requested = True  # the caller can still stop the run
            seen["requested"] = stop.requested

    before = signal.getsignal(signal.SIGINT)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"handler": before, "requested": True}


def test_hardware_line_names_the_cpu_and_its_threads():
    line = hardware(torch.device("cpu"))
    assert line.startswith("CPU only: ") and f"{torch.get_num_threads()} torch threads" in line
