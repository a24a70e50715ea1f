"""Ctrl-C while torch's C++ extension is importing aborts the process ("terminate called after
throwing an instance of 'pybind11::error_already_set'", exit -6): pybind11 cannot carry a
KeyboardInterrupt out of its module init. The CLI imports torch inside `deferred_interrupt()`,
which holds the Ctrl-C until the import is done and then raises it, so it ends as every other
interrupt does: one line, exit 130."""

from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def deferred_interrupt():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
