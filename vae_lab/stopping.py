"""Signals that ask a run to stop: training notes them, saves a checkpoint at the next step, then stops.

Taken over, each only where its current handler would end the run without a checkpoint:
- SIGINT (Ctrl-C) and SIGTERM (what `kill` and a cluster send before preemption): save, then exit.
- SIGUSR2 (what submitit sends a job before its time limit or preemption): save, then call
  submitit's own handler, which requeues the job into the same folder; the job resumes from the
  checkpoint by itself. Without submitit, SIGUSR2 acts as SIGTERM.
A second Ctrl-C stops at once, without waiting for the step to end.

A job also stops, as on SIGHUP, when the process that started it is gone: a killed launcher (a joblib
sweep's parent after SIGKILL, a closed terminal) leaves no worker training on.
"""

import os
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

    def __init__(self, watch_parent_s: float = 0.0) -> None:
        """watch_parent_s > 0: check this often whether the parent process is gone, and stop if it is."""
        self.signum: int | None = None
        self.reason = ""
        self._previous: dict[int, Any] = {}
        self._watch_parent_s = watch_parent_s
        self._closed = threading.Event()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        name = signal.Signals(self.signum).name if self.signum is not None else ""
        return f"{name} ({self.reason})" if self.reason else name

    def _watch_parent(self, parent: int) -> None:
        """Ask for a stop once this process's parent is gone (the process is handed to another parent)."""
        while not self._closed.wait(self._watch_parent_s):
            if os.getppid() != parent:
                self.reason = f"the process that started this job, {parent}, is gone"
                self.signum = signal.SIGHUP
                return

    def _note(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if self._watch_parent_s:
            parent = os.getppid()
            threading.Thread(target=self._watch_parent, args=(parent,), daemon=True).start()
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
        self._closed.set()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def hand_over(self) -> Callable[[], None] | None:
        """Give back the handler that had the signal before us when it is submitit's, else None."""
        previous = self._previous.get(self.signum)
        if self.signum != signal.SIGINT and callable(previous):
            return lambda: previous(self.signum, None)
        return None
