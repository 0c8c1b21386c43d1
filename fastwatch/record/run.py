"""The life of a recorded run, as fastai's events drive it: one small state machine for each `WatchCallback`.

    not started / ended ── a fit trains (before_train) ──────────────▶ recording a fit
    recording a fit ──── after_fit ─────────────────────────────────▶ ended: finished
    recording a fit ──── after_fit of fine_tune's first fit ────────▶ between fine_tune's fits
    between fits ─────── fine_tune's second fit trains ─────────────▶ recording a fit
    recording / between ─ its frame returns with no event (error) ──▶ ended: failed / interrupted

fastai fires `before_fit` … `after_fit` around every evaluation too (`validate`, `get_preds`, `predict`, `tta`,
`show_results`). Outside a fit those never train, so they start no run; inside a fit (its frame still on the stack)
they are counted as nested and their events are ignored. An exception raises no event: the writer thread's
probe watches the frame of the running `fit` (or of `fine_tune` between its fits) and ends the run once that frame
has gone; the next `before_fit` and the interpreter's exit notice it too.
"""
from __future__ import annotations

import atexit
import base64
import secrets
import sys
import threading
import time
from collections.abc import Callable

from .writer import exit_outcome

NOT_STARTED, RECORDING, BETWEEN_FITS, ENDED = 'not started', 'recording a fit', "between fine_tune's fits", 'ended'
PROBE_GRACE = 1.0  # seconds the probe waits once a frame has gone: the interpreter then shows the traceback
UNKNOWN_FAILURE = ('failed', 'the fit stopped with an exception')
UNKNOWN_EXIT = ('interrupted', 'the process exited before the fit ended')

# What ends a run in the store: (run id, status, error).
Ending = tuple[str, str, 'str | None']


def new_run_id() -> str:
    "64 random bits from `secrets`, as 13 lowercase base32 characters: URL-safe, unguessable, readable aloud."
    return base64.b32encode(secrets.token_bytes(8)).decode().rstrip('=').lower()


def _caller_frame(name: str, learn):
    "The frame of `learn.<name>(...)` on the current call stack, if any."
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == name and frame.f_locals.get('self') is learn: return frame
        frame = frame.f_back
    return None


def _on_stack(frame, top) -> bool:
    "Whether `frame` is on the call stack that `top` (a thread's current frame) ends."
    while top is not None and top is not frame: top = top.f_back
    return frame is not None and top is not None


class RunLifecycle:
    """Which state a callback's run is in, and what each fastai event does to it.

    `recording` is True exactly while events belong to the recorded fit (no evaluation nested in it); `id` is the
    current or last run's id; `outcome` the (status, error) a run ended with. `end` is called with an `Ending`
    when the run ends at interpreter exit."""

    def __init__(self, end: Callable[[Ending], object]):
        self.state, self.id, self.outcome, self.recording = NOT_STARTED, None, None, False
        self._end = end
        self._nested = 0  # evaluations (or any fit) opened inside the open fit: their events are not the run's
        self._may_record = False  # the open fit is not lr_find / get_preds / another rank's, and has not trained yet
        self._fine_tune, self._fine_tune_fits = None, 0  # the fine_tune call these fits belong to, fits seen in it
        self._fit, self._thread = None, None  # the open fit's frame (None outside a fit or in an evaluation), thread
        self._gone_since = None
        self._error_before = None  # sys.last_value when the fit started: an error from before is not this run's
        self._lock = threading.Lock()

    # --- fastai's events, from the training thread ----------------------------------------------------------
    def before_fit(self, learn, quiet: bool) -> Ending | None:
        "A fit or an evaluation opens. Returns how the previous run ends, when its fit had gone without an event."
        with self._lock:
            if self._fit is not None and _on_stack(self._fit, sys._getframe()):  # an evaluation inside the open fit
                self._nested += 1
                self.recording = False
                return None
            self._thread = threading.get_ident()
            ended = self._abandon() if self.state == RECORDING or (
                self.state == BETWEEN_FITS and not _on_stack(self._fine_tune, sys._getframe())) else None
            self._fit = _caller_frame('fit', learn)  # None for an evaluation outside a fit
            fine_tune = _caller_frame('fine_tune', learn)
            if fine_tune is not None and fine_tune is self._fine_tune: self._fine_tune_fits += 1
            else: self._fine_tune, self._fine_tune_fits = fine_tune, 1
            self._may_record = not quiet
            return ended

    def before_train(self) -> str | None:
        "'start' when this epoch starts a new run, 'continue' when it starts the run's next fit, else None."
        with self._lock:
            if self._nested or not self._may_record: return None
            self._may_record = False
            begun = 'continue' if self.state == BETWEEN_FITS else 'start'
            if begun == 'start': self.id, self.outcome = new_run_id(), None
            self.state, self.recording, self._gone_since = RECORDING, True, None
            self._error_before = getattr(sys, 'last_value', None)
            return begun

    def after_fit(self) -> Ending | None:
        "A fit or an evaluation closes. Returns how the run ends, if it does now."
        with self._lock:
            if self._nested:
                self._nested -= 1
                self.recording = not self._nested and self.state == RECORDING
                return None
            self._may_record, self._fit = False, None
            if self.state != RECORDING: return None
            if self.in_fine_tunes_first_fit:
                self.state, self.recording, self._gone_since = BETWEEN_FITS, False, None
                return None
            return self._close('finished', None)

    def stop(self, error: str) -> Ending | None:
        "Recording stops for good after an error in fastwatch itself: how the open run ends, if one is open."
        with self._lock:
            return self._close('failed', f'fastwatch stopped: {error}') if self.state in (RECORDING, BETWEEN_FITS) \
                else None

    @property
    def in_fine_tunes_first_fit(self) -> bool:
        "Whether the fit being recorded is the first of a `fine_tune`, so that a second fit follows."
        return self._fine_tune is not None and self._fine_tune_fits == 1

    def fine_tune_epochs(self) -> int:
        "The epochs of fine_tune's second fit, while its first is being recorded (0 otherwise)."
        return self._fine_tune.f_locals.get('epochs', 0) if self.in_fine_tunes_first_fit else 0

    # --- where fastai gives no event --------------------------------------------------------------------------
    def probe(self, run_id: str) -> tuple[str, str | None] | None:
        "Called by the writer thread: (status, error) once run `run_id`'s fit (or fine_tune) has gone without an event."
        with self._lock:
            if run_id != self.id or self.state not in (RECORDING, BETWEEN_FITS): return None
            if self._watched_running():
                self._gone_since = None
                return None
            if self._gone_since is None: self._gone_since = time.monotonic()
            if time.monotonic() - self._gone_since < PROBE_GRACE: return None
            return self._abandon()[1:]

    def end_at_exit(self) -> None:
        """Until the run ends, the interpreter's exit ends it. Call it once the run's writer exists: exit handlers run
        last registered first, so this one runs before the writer's, which would blame a stale `sys.last_value`."""
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        "At interpreter exit, end a run still open, labelled by the error that stopped it if it is a fresh one."
        with self._lock: ended = self._abandon(unknown=UNKNOWN_EXIT) if self.state in (RECORDING, BETWEEN_FITS) \
            else None
        if ended: self._end(ended)

    # --- helpers, called with the lock held -------------------------------------------------------------------
    def _watched_running(self) -> bool:
        "Whether the frame that must end with an event (the fit's, or fine_tune's between its fits) still runs."
        return _on_stack(self._fit if self.state == RECORDING else self._fine_tune,
                         sys._current_frames().get(self._thread))

    def _abandon(self, unknown: tuple[str, str] = UNKNOWN_FAILURE) -> Ending:
        "End the run whose fit stopped without after_fit, with the uncaught exception that stopped it if known."
        # A caller that caught the exception leaves no trace of it; an uncaught one sets sys.last_value.
        error = getattr(sys, 'last_value', None)
        return self._close(*exit_outcome(error if error is not self._error_before else None, unknown=unknown))

    def _close(self, status: str, error: str | None) -> Ending:
        self.state, self.outcome, self.recording = ENDED, (status, error), False
        self._nested, self._may_record = 0, False
        self._fine_tune, self._fit, self._error_before = None, None, None  # frames keep their locals alive
        atexit.unregister(self._at_exit)
        return self.id, status, error
