"""SIGTERM and SIGHUP as Ctrl-C while a run trains, whichever engine trains it (standard library only).

`kill PID`, a closed SSH session or a job scheduler's stop should end a training the way
Ctrl-C does: the epochs already written stay listed, run.json says `interrupted`, partial
files are renamed into place or removed, and `train --resume` continues. Without this, the
default SIGTERM action ends the process on the spot, with none of that.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP raise KeyboardInterrupt (named after the signal) like Ctrl-C.

    Signals someone chose to ignore (nohup) stay ignored; outside the main thread nothing changes
    (Python delivers signals to the main thread only).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    saved = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            saved[sig] = signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
