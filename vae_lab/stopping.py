"""Signals that ask a run to stop: training notes them, saves a checkpoint at the next step, then stops.

Taken over, each only where its current handler would end the run without a checkpoint:
- SIGINT (Ctrl-C) and SIGTERM (what `kill` and a cluster send before preemption): save, then exit.
- SIGUSR2 (what submitit sends a job before its time limit or preemption): save, then call
  submitit's own handler, which requeues the job into the same folder; the job resumes from the
  checkpoint by itself. Without submitit, SIGUSR2 acts as SIGTERM.
A second Ctrl-C stops at once, without waiting for the step to end.
"""

import signal
import threading
from collections.abc import Callable
from typing import Any

from vae_lab.errors import VaeLabError


class RunInterrupted(VaeLabError):
    """A signal stopped the run after its checkpoint was saved."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def _takes_over(signum: int, handler: Any) -> bool:
    if signum == signal.SIGINT:
        return handler is signal.default_int_handler
    if signum == signal.SIGTERM:
        return handler == signal.SIG_DFL
    return handler == signal.SIG_DFL or callable(handler)  # SIGUSR2: unset, or submitit's


class StopSignals:
    """Within `with StopSignals() as stop:`, `stop.requested` turns true when a stop signal arrives."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _note(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only
        names = ["SIGINT", "SIGTERM", "SIGUSR2"]
        for signum in [getattr(signal, name) for name in names if hasattr(signal, name)]:
            handler = signal.getsignal(signum)
            if _takes_over(signum, handler):
                self._previous[signum] = handler
                signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def hand_over(self) -> Callable[[], None] | None:
        """Give back the handler that had the signal before us when it is submitit's, else None."""
        previous = self._previous.get(self.signum)
        if self.signum != signal.SIGINT and callable(previous):
            return lambda: previous(self.signum, None)
        return None
