"""`fastwatch ls` and `fastwatch show`: the store's runs on the command line (read-only, no torch)."""
from __future__ import annotations

import math
from json import dumps

from ..formats import format_number, format_when, printable
from ..store import open_store


def _json_safe(value):
    "`value` with NaN and infinities as the strings `nan`, `inf`, `-inf` (as `format_number` writes them): valid JSON."
    if isinstance(value, float) and not math.isfinite(value): return format_number(value)
    if isinstance(value, dict): return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)): return [_json_safe(v) for v in value]
    return value


def say(text: str) -> None:
    "Print text that holds names from the store (runs, metrics, errors) with its control characters escaped."
    print(printable(text))


def ls(store: str = None,  # Store path or SQLAlchemy URL (default: $FASTWATCH_STORE, then ./fastwatch.db)
       json: bool = False):  # Print JSON instead of a table
    "List the runs in a store, newest first."
    runs = open_store(store, readonly=True).runs()
    if json:
        print(dumps([{k: getattr(run, k) for k in ('id', 'name', 'state', 'status', 'created_at', 'updated_at',
                                                   'heartbeat', 'error')} for run in runs], indent=1))
        return
    if not runs:
        print('no runs yet')
        return
    print(f"{'run':<14} {'state':<12} {'created':<20} name")
    for run in runs:
        say(f'{run.id:<14} {run.state:<12} {format_when(run.created_at):<20} {run.name or ""}')


def show(run: str,  # The run id
         store: str = None,  # Store path or SQLAlchemy URL (default: $FASTWATCH_STORE, then ./fastwatch.db)
         json: bool = False):  # Print JSON instead of text
    "Show one run: status, epochs table, final metrics and the number of recorded rows."
    db = open_store(store, readonly=True)
    record = db.run(run)
    epochs, counts = db.epochs(run), db.counts(run)
    if json:
        shown = {'run': record.as_dict(), 'epochs': [epoch._asdict() for epoch in epochs], 'counts': counts}
        print(dumps(_json_safe(shown), indent=1, default=str))
        return
    info = record.info
    say(f'run {record.id}  {record.name or ""}'.rstrip())
    say(f'state: {record.state}' + (f'  ({record.error})' if record.error else ''))
    print(f'created {format_when(record.created_at)}, last update {format_when(record.updated_at)}')
    say(f'model {info.model} ({info.n_params} parameters), loss {info.loss_func}, '
        f'{info.n_train} train / {info.n_valid} valid items')
    metric_names = sorted({name for epoch in epochs for name in epoch.metrics})
    columns = ['epoch', 'fit', 'frozen', 'train_loss', 'valid_loss', *metric_names, 'duration']
    rows = [[e.epoch, e.fit, e.frozen, e.train_loss, e.valid_loss, *[e.metrics.get(m) for m in metric_names],
             e.duration] for e in epochs]
    if rows:
        print()
        say('  '.join(f'{c:>10}' for c in columns))
        for row in rows: print('  '.join(f'{format_number(v):>10}' for v in row))
        say('\nfinal: ' + ', '.join(f'{c} {format_number(v)}' for c, v in zip(columns[3:-1], rows[-1][3:-1])))
    print('\nrecorded: ' + ', '.join(f'{n} {table}' for table, n in counts.items())
          + (f', {record.lost_rows} batch rows lost' if record.lost_rows else ''))
