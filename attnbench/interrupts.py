"""The signals a person or a scheduler sends to stop a run, all treated as Ctrl-C.

``timeout``, a CI cancel, ``kill``, a closed terminal and torchrun stopping its other ranks
send SIGTERM or SIGHUP, not SIGINT. Inside ``signals_interrupt()`` each of them raises
``Interrupted`` (a KeyboardInterrupt), so the sweep does what Ctrl-C does: the case in hand is
marked abandoned (a resume measures it again), the tables of what was recorded are written,
and the command says how to continue. A second signal while that is being done is ignored,
so the clean-up finishes; SIGKILL cannot be caught, and the journal's started marker covers it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # SIGINT is Python's KeyboardInterrupt already


class Interrupted(KeyboardInterrupt):
    """A signal that asks the run to stop (``signum``: which one)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(exc: KeyboardInterrupt) -> int:
    """The shell's code for a run stopped by ``exc``: 128 + the signal (Ctrl-C: 130)."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def signal_name(exc: KeyboardInterrupt) -> str:
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block SIGTERM and SIGHUP raise ``Interrupted`` once (then are ignored until
    the block ends); the handlers before it are restored after. Outside the main thread, where
    Python cannot set handlers, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
