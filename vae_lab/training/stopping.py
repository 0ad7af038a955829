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
import time
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

    def __init__(self, launcher: "LauncherWatch | None" = None) -> None:
        """launcher: the watch on the launcher that started this process, in a sweep's worker."""
        self.signum: int | None = None
        self.reason = ""
        self._previous: dict[int, Any] = {}
        self._launcher = launcher

    @property
    def requested(self) -> bool:
        if self.signum is None and self._launcher is not None and self._launcher.gone:
            self.signum, self.reason = signal.SIGHUP, "the process that started this job is gone"
        return self.signum is not None

    @property
    def name(self) -> str:
        name = signal.Signals(self.signum).name if self.signum is not None else ""
        return f"{name} ({self.reason})" if self.reason else name

    def note_stop_elsewhere(self) -> None:
        """Another process of the same run was asked to stop: this one stops with it, at the same step."""
        if self.signum is None:
            self.signum, self.reason = signal.SIGTERM, "sent to another process of this run"

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


class LauncherWatch:
    """In a process a launcher started (a joblib worker): notice when that launcher is gone, let the job
    under way stop at its next step (StopSignals reads `gone`), then end this process, so that a killed
    sweep leaves no worker training or waiting. One per process: `watch_launcher()`."""

    def __init__(self, interval_s: float = 2.0, grace_s: float = 120.0):
        self.gone = False
        self.busy = threading.Event()  # set while a job runs in this process
        self._parent = os.getppid()
        self._interval_s, self._grace_s = interval_s, grace_s
        threading.Thread(target=self._watch, daemon=True, name="vae_lab-launcher-watch").start()

    def _watch(self) -> None:
        while os.getppid() == self._parent:
            time.sleep(self._interval_s)
        self.gone = True
        deadline = time.monotonic() + self._grace_s  # a job's checkpoint, or an evaluation, to finish
        while self.busy.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
        os._exit(128 + signal.SIGHUP)  # nothing is left to hand a result to


_launcher_watch: LauncherWatch | None = None


def watch_launcher() -> LauncherWatch:
    """Give back this process's LauncherWatch, started on the first call."""
    global _launcher_watch
    if _launcher_watch is None:
        _launcher_watch = LauncherWatch()
    return _launcher_watch
