"""Network work of a recording process (uploads to a bucket, notifications), each destination on a thread of its
own, so that one that is slow or hangs holds back only its own work: never the store writer's commits, the
training, or another destination.

A destination is a writer listener (`writer.Listener`): the writer tells it, in the writer's thread, what each
commit wrote; it only takes note and wakes its thread, which does the network work.
"""
from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

from ..remote.protocol import Publisher
from ..store.records import ENDED
from ..store.tables import epochs

RETRY_SECONDS = 0.5  # how often a thread looks again while it has work it could not do yet


class NetworkThread:
    """A daemon thread that calls `step(final)` when woken, and every `interval` s, until `step` returns True (its
    work is done for good). `finish` asks for the last work (`final` True) and waits for it, at most a timeout."""

    def __init__(self, name: str, step: Callable[[bool], bool], interval: float):
        self._step, self._interval = step, interval
        self._wake, self._final = threading.Event(), False
        self._thread = threading.Thread(target=self._loop, name=f'fastwatch-{name}', daemon=True)
        self._thread.start()

    def wake(self) -> None:
        "Do the work now rather than at the next interval."
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(RETRY_SECONDS if self._final else self._interval)
            self._wake.clear()
            try:
                if self._step(self._final): return
            except Exception as e:  # a bug in a destination's work must not end its thread quietly
                warnings.warn(f'fastwatch: {self._thread.name} failed: {type(e).__name__}: {e}', RuntimeWarning)
                return

    def finish(self, timeout: float) -> bool:
        "Do the last work now and wait for it, at most `timeout` s: True when it is done."
        self._final = True
        self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()


class PublishListener:
    """Publishes a run as it is written: every `publisher.every` s, soon after an epoch's end, and a last time once
    the run has ended and the listeners in `after` (the run's alerts) are done, so that the published run holds
    their rows too; at exit, when time runs out, without waiting for them. On a thread of its own; `Publisher`
    says when each upload is due and retries a failed one."""

    def __init__(self, publisher: Publisher, after: tuple = ()):
        self.publisher, self.after = publisher, after
        self._urgent = self._ended = False
        self.thread = NetworkThread(f'publish-{publisher.run_id}', self._step,
                                    interval=min(1.0, publisher.min_every))

    @property
    def done(self) -> bool: return self.publisher.done

    def committed(self, rows: dict[str, list], updates: dict[str, dict]) -> None:
        run_id = self.publisher.run_id
        self._ended = self._ended or updates.get(run_id, {}).get('status') in ENDED
        self._urgent = self._urgent or any(row.run_id == run_id for row in rows.get(epochs.name, ()))
        if self._ended or self._urgent: self.thread.wake()

    def _step(self, final: bool) -> bool:
        last = self._ended and (final or all(listener.done for listener in self.after))
        urgent, self._urgent = self._urgent, False
        if not self.publisher.tick(urgent=urgent, last=last) and urgent:
            self._urgent = True  # not due yet, or failing: still soon
        if self.publisher.done: self.publisher.close()
        return self.publisher.done

    def finish(self, timeout: float) -> bool:
        return self.thread.finish(timeout)
