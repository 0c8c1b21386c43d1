"""Alerts about a run, sent through apprise (ntfy, Slack, Discord, Telegram, email, JSON webhooks, …) and kept in the
run's `alerts` table.

Triggers: the run finished (with its final metrics), failed or was interrupted (with the error), a non-finite loss,
and, from `alert_on={'metric': 'condition'}`, a metric crossing a threshold (`'<0.05'`, `'>=0.9'`) or not improving
(`'no improvement for 3 epochs'`; `'no decrease …'` / `'no increase …'` say which way is better). `Alerts` is a
writer listener: it sees each commit's rows in the writer's thread, and a thread of its own sends what they trigger
and hands the alerts' rows back to the writer. The same alert is not sent again within `window` seconds.
"""
from __future__ import annotations

import math
import operator
import re
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..store.records import ENDED
from ..store.tables import AlertRow, alerts, batches, epochs
from .network import NetworkThread

WINDOW = 1800.0  # seconds within which the same alert is not repeated
OPERATORS = {'<': operator.lt, '<=': operator.le, '>': operator.gt, '>=': operator.ge}
THRESHOLD = re.compile(r'^\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$')
PLATEAU = re.compile(r'^\s*no\s+(improvement|decrease|increase)\s+(?:for|in)\s+(\d+)\s+epochs?\s*$', re.IGNORECASE)
CONDITION_HELP = "a threshold such as '<0.05' or '>=0.9', or 'no improvement for N epochs'"


def lower_is_better(metric: str) -> bool:
    "Whether a metric improves by going down: losses, error rates, perplexity."
    return any(word in metric.lower() for word in ('loss', 'error', 'perplexity', 'mse', 'mae', 'rmse'))


@dataclass
class Condition:
    "One `alert_on` entry: a threshold (`op`, `value`) or a plateau (`epochs` without improvement)."
    metric: str
    text: str
    op: str | None = None
    value: float | None = None
    epochs: int | None = None
    lower_better: bool = True
    _satisfied: bool = False
    _best: float | None = None
    _since_best: int = 0
    _values: list = field(default_factory=list)

    @classmethod
    def parse(cls, metric: str, text: str) -> Condition:
        "The condition `text` on `metric`; ValueError with a one-line message when it is not one."
        if not isinstance(text, str): raise ValueError(f'alert_on[{metric!r}] takes {CONDITION_HELP}, not {text!r}')
        if m := THRESHOLD.match(text): return cls(metric, text.strip(), op=m[1], value=float(m[2]))
        if m := PLATEAU.match(text):
            if int(m[2]) < 1: raise ValueError(f'alert_on[{metric!r}]: the number of epochs must be at least 1')
            way = m[1].lower()
            return cls(metric, text.strip(), epochs=int(m[2]),
                       lower_better=lower_is_better(metric) if way == 'improvement' else way == 'decrease')
        raise ValueError(f'alert_on[{metric!r}] takes {CONDITION_HELP}, not {text!r}')

    def check(self, value: float) -> str | None:
        "The alert's text if this epoch's `value` triggers it: the threshold newly crossed, or the plateau reached."
        if self.op is not None:
            satisfied = OPERATORS[self.op](value, self.value)
            crossed, self._satisfied = satisfied and not self._satisfied, satisfied
            return f'{self.metric} is {value:.4g}, {self.op} {self.value:g}' if crossed else None
        if self._best is None or (value < self._best if self.lower_better else value > self._best):
            self._best, self._since_best = value, 0
            return None
        self._since_best += 1
        if self._since_best < self.epochs: return None
        self._since_best = 0  # the next alert needs another N epochs without improvement
        return f'{self.metric} has not improved for {self.epochs} epochs (best {self._best:.4g}, now {value:.4g})'

    @property
    def trigger(self) -> str: return 'threshold' if self.op is not None else 'plateau'


def parse_alert_on(alert_on: dict | None) -> list[Condition]:
    "The conditions of `alert_on={'metric': 'condition'}`; ValueError for anything else."
    if alert_on is None: return []
    if not isinstance(alert_on, dict):
        raise ValueError(f'alert_on must be a dict {{metric: condition}}, not {alert_on!r}')
    return [Condition.parse(str(metric), text) for metric, text in alert_on.items()]


def notify_urls(alerts: str | list[str] | tuple[str, ...] | None) -> list[str]:
    "Notification URLs from `alerts=` (one URL, several separated by commas or spaces, or a list)."
    if not alerts: return []
    if isinstance(alerts, str): alerts = re.split(r'[\s,]+', alerts)
    return [url for url in alerts if url]


def notifiers(urls: list[str]) -> list:
    "An apprise notifier for each URL; ValueError naming the URL's scheme (never its secrets) for one it cannot use."
    if not urls: return []
    import apprise
    found = []
    for url in urls:
        notifier = apprise.Apprise.instantiate(url)
        if notifier is None:
            raise ValueError(f"alerts: apprise cannot send to {url.split('://')[0]}://… "
                             '(see https://github.com/caronc/apprise/wiki for the URL forms)')
        found.append(notifier)
    return found


def _number(value) -> str: return 'nan' if value is None else f'{value:.4g}'


class Alerts:
    """The alerts of one run, a writer listener. `committed` (the writer's thread) checks each commit's rows
    against the triggers and queues what they trigger; a thread of its own sends it through `urls` (apprise) and
    hands each alert's row, with whether it was delivered, to `add_rows` (the writer's). `conditions`: from
    `parse_alert_on`; `link`: where the run can be watched, in every alert."""

    def __init__(self, run_id: str, name: str | None, link: str, urls: list[str], conditions: list[Condition],
                 add_rows: Callable[[str, list], None], window: float = WINDOW):
        self.run_id, self.link, self.conditions, self.window = run_id, link, conditions, window
        self.shown = f'{name} ({run_id})' if name else run_id  # how alerts name the run
        self.notifiers, self._add_rows = notifiers(urls), add_rows
        self.done, self._ended = False, False  # done: every alert of the run is sent and written
        # The writer's thread only:
        self._seq, self._written, self._sent, self._step, self._epoch, self._metrics = 0, 0, {}, -1, -1, {}
        self._outbox: deque[AlertRow] = deque()  # from the writer's thread to the sending thread
        self._failing = False  # the sending thread only
        self.thread = NetworkThread(f'alerts-{run_id}', self._send_outbox, interval=1.0)

    def committed(self, rows: dict, updates: dict) -> None:
        "Queue the alerts this commit's rows trigger; note those of its rows that are alerts sent."
        self._written += sum(row.run_id == self.run_id for row in rows.get(alerts.name, ()))
        self.done = self._ended and self._written == self._seq
        if self._ended: return
        for row in rows.get(batches.name, ()):
            if row.run_id != self.run_id or row.step <= self._step: continue
            self._step = row.step
            if row.loss is not None and not math.isfinite(row.loss):
                self._alert('non_finite', None, f'the loss is {row.loss} at step {row.step} (epoch {row.epoch})')
        for row in rows.get(epochs.name, ()):
            if row.run_id != self.run_id or row.epoch <= self._epoch: continue
            self._epoch = row.epoch
            values = {'train_loss': row.train_loss, 'valid_loss': row.valid_loss, **row.metrics}
            self._metrics = values
            for condition in self.conditions:
                value = values.get(condition.metric)
                if not isinstance(value, (int, float)) or not math.isfinite(value): continue
                text = condition.check(float(value))
                if text: self._alert(condition.trigger, condition.metric, f'{text} after epoch {row.epoch}')
        status = updates.get(self.run_id, {}).get('status')
        if status in ENDED:
            if status == 'finished':
                shown = ', '.join(f'{k} {_number(v)}' for k, v in self._metrics.items() if isinstance(v, (int, float))
                                  or v is None)
                self._alert('finished', None, f'finished after {self._epoch + 1} epochs'
                            + (f': {shown}' if shown else ''))
            else:
                error = updates[self.run_id].get('error') or 'no error recorded'
                self._alert('failed', None, f'{status}: {error}')
            self._ended = True
        if self._outbox or self._ended: self.thread.wake()

    def _alert(self, trigger: str, metric: str | None, text: str) -> None:
        "Queue one alert unless the same was sent within the window."
        now, key = time.time(), (trigger, metric)
        if now - self._sent.get(key, float('-inf')) < self.window: return
        self._sent[key] = now
        self._outbox.append(AlertRow(run_id=self.run_id, seq=self._seq, time=now, trigger=trigger,
                                     message=f'Run {self.shown}: {text}\n{self.link}', delivered=None))
        self._seq += 1

    def _send_outbox(self, final: bool) -> bool:
        "Send what is queued (the sending thread); True once the run's end is sent."
        ended, sent = self._ended, []
        while self._outbox:
            alert = self._outbox.popleft()
            title = f'fastwatch: run {self.shown} {alert.trigger.replace("_", " ")}'
            sent.append(alert._replace(delivered=self._send(title, alert.message)))
        if sent: self._add_rows(alerts.name, sent)
        return ended and not self._outbox

    def _send(self, title: str, body: str) -> bool:
        "True when at least one notifier took the alert; the first failure is one warning."
        results = []
        for notifier in self.notifiers:
            try: results.append(bool(notifier.notify(body=body, title=title)))
            except Exception: results.append(False)
        if not all(results) and not self._failing:
            self._failing = True
            warnings.warn(f'fastwatch: could not send an alert about run {self.run_id} through '
                          f'{results.count(False)} of {len(results)} notifiers; training goes on.', RuntimeWarning)
        return any(results)

    def finish(self, timeout: float) -> bool:
        return self.thread.finish(timeout)
