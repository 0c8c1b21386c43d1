"""Alerts about a run, sent through apprise (ntfy, Slack, Discord, Telegram, email, JSON webhooks, …) and kept in the
run's `alerts` table.

Triggers: the run finished (with its final metrics), failed or was interrupted (with the error), a non-finite loss,
and, from `alert_on={'metric': 'condition'}`, a metric crossing a threshold (`'<0.05'`, `'>=0.9'`) or not improving
(`'no improvement for 3 epochs'`; `'no decrease …'` / `'no increase …'` say which way is better). `Alerts` is a
writer hook: it sees each tick's rows in the writer thread before they are written, sends what they trigger, and
adds the alerts to the same write. The same alert is not sent again within `window` seconds.
"""
from __future__ import annotations

import json
import math
import operator
import re
import time
import warnings
from dataclasses import dataclass, field

WINDOW = 1800.0  # seconds within which the same alert is not repeated
FINAL = ('finished', 'failed', 'interrupted')
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
    """The alerts of one run: `before_write` is the writer's hook. `urls`: apprise notification URLs; `conditions`:
    from `parse_alert_on`; `link`: where the run can be watched, in every alert."""

    def __init__(self, run_id: str, name: str | None, link: str, urls: list[str], conditions: list[Condition],
                 window: float = WINDOW):
        self.run_id, self.name, self.link, self.conditions, self.window = run_id, name, link, conditions, window
        self.notifiers = notifiers(urls)
        self.seq, self.done, self.failing = 0, False, False
        self._sent: dict[tuple, float] = {}
        self._step, self._epoch, self._metrics = -1, -1, {}

    def before_write(self, rows: dict, updates: dict) -> None:
        "Send the alerts this tick's rows trigger, and add them to the rows being written."
        if self.done: return
        for row in rows.get('batches', ()):
            run_id, step, loss = row[0], row[1], row[5]
            if run_id != self.run_id or step <= self._step: continue
            self._step = step
            if loss is not None and not math.isfinite(loss):
                self._alert(rows, 'non_finite', None, f'the loss is {loss} at step {step} (epoch {row[2]})')
        for row in rows.get('epochs', ()):
            if row['run_id'] != self.run_id or row['epoch'] <= self._epoch: continue
            self._epoch = row['epoch']
            values = {'train_loss': row['train_loss'], 'valid_loss': row['valid_loss'], **json.loads(row['metrics'])}
            self._metrics = values
            for condition in self.conditions:
                value = values.get(condition.metric)
                if not isinstance(value, (int, float)) or not math.isfinite(value): continue
                text = condition.check(float(value))
                if text: self._alert(rows, condition.trigger, condition.metric, f'{text} after epoch {row["epoch"]}')
        status = updates.get(self.run_id, {}).get('status')
        if status in FINAL:
            if status == 'finished':
                shown = ', '.join(f'{k} {_number(v)}' for k, v in self._metrics.items() if isinstance(v, (int, float))
                                  or v is None)
                self._alert(rows, 'finished', None, f'finished after {self._epoch + 1} epochs'
                            + (f': {shown}' if shown else ''))
            else:
                error = updates[self.run_id].get('error') or 'no error recorded'
                self._alert(rows, 'failed', None, f'{status}: {error}')
            self.done = True

    def _alert(self, rows: dict, trigger: str, metric: str | None, text: str) -> None:
        "Send one alert unless the same was sent within the window, and add it to the rows."
        now, key = time.time(), (trigger, metric)
        if now - self._sent.get(key, float('-inf')) < self.window: return
        self._sent[key] = now
        name = f'{self.name} ({self.run_id})' if self.name else self.run_id
        title = f'fastwatch: run {name} {trigger.replace("_", " ")}'
        message = f'Run {name}: {text}\n{self.link}'
        delivered = self._send(title, message)
        rows.setdefault('alerts', []).append({'run_id': self.run_id, 'seq': self.seq, 'time': now, 'trigger': trigger,
                               'message': message, 'delivered': delivered})
        self.seq += 1

    def _send(self, title: str, body: str) -> bool:
        "True when at least one notifier took the alert; the first failure is one warning."
        results = []
        for notifier in self.notifiers:
            try: results.append(bool(notifier.notify(body=body, title=title)))
            except Exception: results.append(False)
        if not all(results) and not self.failing:
            self.failing = True
            warnings.warn(f'fastwatch: could not send an alert about run {self.run_id} through '
                          f'{results.count(False)} of {len(results)} notifiers; training goes on.', RuntimeWarning)
        return any(results)
