"""SIGTERM / SIGINT: ask the training loop to save a checkpoint and stop at the next step boundary."""
from __future__ import annotations

import signal
import threading


class StopRequest:
    """Installs handlers for SIGTERM and SIGINT that set ``requested`` (restored by ``close``).

    A second SIGINT while stopping raises KeyboardInterrupt as usual.
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.requested: str | None = None
        self._old = {}
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be installed from the main thread
        for sig in signals:
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def close(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
