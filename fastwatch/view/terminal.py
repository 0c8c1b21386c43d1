"""`fastwatch ls` and `fastwatch show`: the store's runs on the command line (read-only, no torch)."""
from __future__ import annotations

import math
from json import dumps

from ..errors import StoreError, UsageError
from ..formats import format_column, format_number, format_when, printable
from ..store import open_store
from ..store.decisions import current, decision_text
from ..store.dynamics import SPLITS, read_data_map
from ..store.runs_table import run_summaries, sort_rows
from .feed import metric_order
from .html import class_label


def _json_safe(value):
    "`value` with NaN and infinities as the strings `nan`, `inf`, `-inf` (as `format_number` writes them): valid JSON."
    if isinstance(value, float) and not math.isfinite(value): return format_number(value)
    if isinstance(value, dict): return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)): return [_json_safe(v) for v in value]
    return value


def say(text: str) -> None:
    "Print text that holds names from the store (runs, metrics, errors) with its control characters escaped."
    print(printable(text))


METRICS = 'metrics'  # in --columns: every metric's final value
DEFAULT_COLUMNS = ('run', 'state', 'started', 'duration', 'epochs', 'valid_loss', METRICS, 'name')


def ls(store: str = None,  # Store path or SQLAlchemy URL (default: $FASTWATCH_STORE, then ./fastwatch.db)
       columns: str = None,  # Columns to print, comma-separated (`metrics`: every metric's final value); see --json
       sort: str = None,  # A column to sort by; `--sort=-column` sorts descending (default: newest first)
       json: bool = False):  # Print every field and column of every run as JSON
    "List the runs in a store: state, duration, epochs, final loss and metrics, best values, settings."
    summaries = run_summaries(open_store(store, readonly=True))
    columns_of = [summary.columns() for summary in summaries]
    rows = [{**summary.run.as_dict(), **row} for summary, row in zip(summaries, columns_of)]
    every = list(dict.fromkeys(column for row in columns_of for column in row))
    if sort:
        key = sort.lstrip('-')
        if rows and not any(key in row for row in rows):
            raise UsageError(f'--sort takes a column of the runs ({", ".join(every[:12])}, …), not {key!r}')
        rows = sort_rows(rows, key, descending=sort.startswith('-'))
    if json:
        print(dumps(_json_safe(rows), indent=1, default=str))
        return
    if not rows:
        print('no runs yet')
        return
    metrics = list(dict.fromkeys(name for summary in summaries for name in summary.metric_names))
    chosen = [c.strip() for c in columns.split(',')] if columns else DEFAULT_COLUMNS
    shown = [name for c in chosen for name in (metrics if c == METRICS else [c])]
    unknown = [c for c in shown if c not in every]
    if columns and unknown:
        raise UsageError(f'no column {unknown[0]!r}: the runs have {", ".join(every[:20])}')
    shown = [c for c in shown if c not in unknown]
    cells = [[format_column(c, row.get(c)) for c in shown] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(shown)]
    say('  '.join(c.ljust(w) for c, w in zip(shown, widths)).rstrip())
    for line in cells: say('  '.join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


def show(run: str,  # The run id
         store: str = None,  # Store path or SQLAlchemy URL (default: $FASTWATCH_STORE, then ./fastwatch.db)
         json: bool = False):  # Print JSON instead of text
    "Show one run: status, epochs table, final metrics and the number of recorded rows."
    db = open_store(store, readonly=True)
    record = db.run(run)
    epochs, counts = db.epochs(run), db.counts(run)
    if json:
        shown = {'run': record.as_dict(), 'counts': counts,
                 'epochs': [{**epoch._asdict(), 'items_per_second': record.info.items_per_second(epoch.duration)}
                            for epoch in epochs]}
        print(dumps(_json_safe(shown), indent=1, default=str))
        return
    info = record.info
    say(f'run {record.id}  {record.name or ""}'.rstrip())
    say(f'state: {record.state}' + (f'  ({record.error})' if record.error else ''))
    print(f'created {format_when(record.created_at)}, last update {format_when(record.updated_at)}')
    say(f'model {info.model} ({info.n_params} parameters), loss {info.loss_func}, '
        f'{info.n_train} train / {info.n_valid} valid items')
    metric_names = metric_order(info.metric_names, epochs)
    columns = ['epoch', 'fit', 'frozen', 'train_loss', 'valid_loss', *metric_names, 'duration', 'items/s']
    rows = [[e.epoch, e.fit, e.frozen, e.train_loss, e.valid_loss, *[e.metrics.get(m) for m in metric_names],
             e.duration, info.items_per_second(e.duration)] for e in epochs]
    if rows:
        print()
        say('  '.join(f'{c:>10}' for c in columns))
        for row in rows: print('  '.join(f'{format_number(v):>10}' for v in row))
        say('\nfinal: ' + ', '.join(f'{c} {format_number(v)}' for c, v in zip(columns[3:-2], rows[-1][3:-2])))
    print('\nrecorded: ' + ', '.join(f'{n} {table}' for table, n in counts.items())
          + (f', {record.lost_rows} batch rows lost' if record.lost_rows else ''))


def suspects(run: str,  # The run id
             store: str = None,  # Store path or SQLAlchemy URL (default: $FASTWATCH_STORE, then ./fastwatch.db)
             split: str = 'train',  # The items ranked: train or valid
             top: int = 20,  # How many items
             json: bool = False):  # Print JSON instead of a table
    "Rank a run's items by how consistently the model disagreed with their label: likely mislabeled ones first."
    if split not in SPLITS: raise UsageError(f"--split takes {' or '.join(SPLITS)}, not {split!r}")
    if top < 1: raise UsageError(f'--top takes a number of items, 1 or more, not {top}')
    db = open_store(store, readonly=True)
    record = db.run(run)
    found = read_data_map(db, run, split)
    if found is None:
        raise StoreError(f'run {run} recorded no per-item values for its {split} items (recorded for single-label '
                         'classification, with WatchCallback(dynamics=True))')
    vocab = [str(v) for v in record.vocab or []]
    decided = current(db.rows('decisions', run))
    last = found.last
    ranked = [{'rank': rank, 'item': found.name(i), 'index': int(i), 'label': class_label(vocab, int(last.label[i])),
               'predicted': class_label(vocab, int(last.predicted[i])), 'label_probability': float(last.label_prob[i]),
               'loss': float(last.loss[i]), 'score': float(found.score[i]), 'aum': float(found.aum[i]),
               'confidence': float(found.confidence[i]),
               'variability': float(found.variability[i]), 'correctness': float(found.correctness[i]),
               'decision': decision_text(decided.get((split, found.name(i))))}
              for rank, i in enumerate(found.suspects()[:top], 1)]
    if json:
        print(dumps(_json_safe({'run': run, 'split': split, 'epochs': found.epochs, 'items': len(found.names),
                                'ranking': 'score: the margin of the label averaged over the epochs, each weighing '
                                           'half as much as the next; lowest first',
                                'suspects': ranked}), indent=1))
        return
    say(f'run {run}: {split} items most likely mislabeled, by the margin of their label over epochs '
        f'{found.epochs[0]}-{found.epochs[-1]}, recent epochs weighing most (of {len(found.names)} items)')
    print(f"{'rank':>4}  {'score':>7}  {'aum':>7}  {'conf':>5}  {'var':>5}  {'right':>5}  {'label':<10} "
          f"{'predicted':<10} {'p(label)':>8}  {'loss':>7}  item")
    for r in ranked:
        say(f"{r['rank']:>4}  {r['score']:>7.3f}  {r['aum']:>7.3f}  {r['confidence']:>5.2f}  {r['variability']:>5.2f}  "
            f"{r['correctness']:>5.2f}  {r['label']:<10.10} {r['predicted']:<10.10} {r['label_probability']:>8.3f}  "
            f"{format_number(r['loss']):>7}  {r['item']}" + (f"  [{r['decision']}]" if r['decision'] else ''))
