"""A run's record (its row of `runs`) as a typed object: `RunRecord`, with its `RunInfo` and the `FitInfo` of each
fit. One constructor makes a new run's record; one function encodes fields for the database, one decodes a row."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .tables import parse_json

RUNNING = 'running'
ENDED = ('finished', 'failed', 'interrupted')  # the statuses a run ends with
# A run's `state`, as people see it: its status, but `live` while it runs, `interrupted` once a running run's
# heartbeat is stale (its process died), `stale` for a followed run whose publisher stopped publishing.
STATES = ('live', *ENDED, 'stale')
STALE_AFTER = 20.0  # a `running` run whose heartbeat is older than this (s) is reported as interrupted
JSON_FIELDS = ('info', 'config', 'vocab')
RUN_ID = re.compile(r'[A-Za-z0-9_-]{1,64}')  # what a run id may be (new ones are 13 base32 characters)


@dataclass
class FitInfo:
    "One fit of a run (fine_tune makes two): its number, epochs, learning rate, whether the body was frozen."
    fit: int
    n_epoch: int
    lr: Any = None
    frozen: bool = False
    first_epoch: int = 0


@dataclass
class RunInfo:
    "What a run was trained with and on, as the callback found it; fields a store does not have are None."
    host: str | None = None
    python: str | None = None
    fastai: str | None = None
    torch: str | None = None
    fastwatch: str | None = None
    device: str | None = None
    model: str | None = None
    n_params: int | None = None
    batch_size: int | None = None
    n_train: int | None = None
    n_valid: int | None = None
    loss_func: str | None = None
    optimizer: str | None = None
    metric_names: list[str] = field(default_factory=list)
    fits: list[FitInfo] = field(default_factory=list)
    planned_epochs: int | None = None

    def items_per_second(self, duration: float) -> float | None:
        "An epoch's throughput: training items per second of the epoch (its validation included), if known."
        return self.n_train / duration if self.n_train and duration > 0 else None

    @classmethod
    def from_dict(cls, values: dict | None) -> RunInfo:
        "The info a store holds (keys it does not know are left out: a newer fastwatch may add some)."
        values = values if isinstance(values, dict) else {}
        known = {f.name for f in fields(cls)}
        info = cls(**{k: v for k, v in values.items() if k in known})
        info.fits = [FitInfo(**{k: v for k, v in fit.items() if k in FitInfo.__dataclass_fields__})
                     for fit in info.fits if isinstance(fit, dict)]
        return info


@dataclass
class RunRecord:
    """A run: its id and name, `status` as recorded, the derived `state` people see, times (s since the epoch),
    the error it ended with, `info`, the user's `config`, the class names (`vocab`) and rows lost to a failing store.
    `published_age` (s) is set for a run followed from where it is published."""
    id: str
    name: str | None
    status: str
    created_at: float
    updated_at: float
    heartbeat: float
    info: RunInfo = field(default_factory=RunInfo)
    config: dict = field(default_factory=dict)
    vocab: list[str] | None = None
    error: str | None = None
    lost_rows: int = 0
    state: str = 'live'
    published_age: float | None = None

    @classmethod
    def new(cls, run_id: str, name: str | None, info: RunInfo, config: dict, vocab: list[str] | None,
            now: float) -> RunRecord:
        "The record of a run that starts recording now."
        return cls(run_id, name, RUNNING, now, now, now, info, config, vocab)

    @classmethod
    def from_row(cls, row, now: float) -> RunRecord:
        "A `runs` row as read, with its state at time `now`."
        values = dict(row._mapping)
        for key in JSON_FIELDS:
            values[key] = None if values[key] is None else parse_json(values[key], f"the {key} of run {values['id']!r}")
        values['info'] = RunInfo.from_dict(values['info'])
        if not isinstance(values['config'], dict): values['config'] = {}  # as a damaged store may hold
        record = cls(**values)
        stale = record.status == RUNNING and now - record.heartbeat > STALE_AFTER
        record.state = 'interrupted' if stale else 'live' if record.status == RUNNING else record.status
        return record

    def row(self) -> dict:
        "The record as the `runs` table takes it."
        return encode_fields({f.name: getattr(self, f.name) for f in fields(self)
                              if f.name not in ('state', 'published_age')})

    def as_dict(self) -> dict:
        "Every field as plain data (for JSON)."
        return asdict(self)

    @property
    def ended(self) -> bool: return self.status in ENDED


def encode_fields(values: dict) -> dict:
    "Fields of a run as the `runs` table takes them: info, config and vocab as JSON text."
    encoded = dict(values)
    for key in JSON_FIELDS:
        if key in encoded and encoded[key] is not None and not isinstance(encoded[key], str):
            value = asdict(encoded[key]) if key == 'info' and isinstance(encoded[key], RunInfo) else encoded[key]
            encoded[key] = json.dumps(value, default=str)
    return encoded
