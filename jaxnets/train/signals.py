"""Preemption and Ctrl-C: SIGTERM and SIGINT ask the training loop to finish its step, save and return."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("jaxnets")


class StopSignals:
    """SIGTERM (preemption) and SIGINT (Ctrl-C) ask the loop to finish its step, save and return.

    A second SIGINT interrupts at once. Outside the main thread (where Python cannot install handlers)
    this does nothing. This only records the request; on a pod the loop makes every host agree on the
    step to stop at (`jaxnets.train.trainer.agree_on_stopping`).
    """

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("%s received: finishing this step, then saving", name)
        self.requested = name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False
