"""Helpers the tests share (fixtures are in conftest.py): a short real training, waiting for a condition, and
synthetic runs written through the real background writer."""
from __future__ import annotations

import time


def train(dls, store, epochs: int = 1, extra_cbs=(), quiet: bool = True, **callback_kwargs):
    """`fine_tune(epochs)` a small CNN on the digits with a `WatchCallback`; returns the learner. `quiet`: with
    fastai's `no_logging()`, which quiets fastwatch's lines too."""
    from contextlib import nullcontext

    from fastwatch import WatchCallback
    from fastwatch.demo.digits import digits_learner
    learn = digits_learner(dls, cbs=[WatchCallback(store=store, **callback_kwargs), *extra_cbs])
    with learn.no_bar(), learn.no_logging() if quiet else nullcontext(): learn.fine_tune(epochs, base_lr=1e-2)
    return learn


def wait_for(condition, timeout: float = 60.0):
    "Poll `condition()` until it returns something truthy and return that; fail after `timeout` seconds."
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f'not true after {timeout} s'
        time.sleep(0.1)
    return found


def start_synthetic_run(writer, run_id: str, name: str | None = None) -> None:
    "Start a run with no training behind it on a `Writer`: tests and benchmarks then add rows as they like."
    from fastwatch.store import RunInfo, RunRecord
    writer.start_run(RunRecord.new(run_id, name, RunInfo(), {}, None, time.time()))


def batch_row(run_id: str, step: int, loss: float = 1.0, epoch: int = 0, smooth_loss: float | None = None,
              lr: float = 1e-3):
    "A batch row of a synthetic run."
    from fastwatch.store.tables import BatchRow
    return BatchRow(run_id, step, epoch, 0, False, loss, loss if smooth_loss is None else smooth_loss, lr, 0.9,
                    time.time(), None)


def add_empty_run(location, run_id: str) -> None:
    "Record a finished run with no rows into the store at `location`, beside what it has."
    from fastwatch import open_store
    from fastwatch.store import RunRecord
    store = open_store(location)
    store.write({'runs': [RunRecord(run_id, None, 'finished', 1.0, 1.0, 1.0)]})
    store.close()


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    "Run `fastwatch ARGV...` in-process: exit status, stdout, stderr."
    from fastwatch.cli import run_command
    status = run_command(argv[0], list(argv[1:]))
    out = capsys.readouterr()
    return status, out.out, out.err


def hashes(folder) -> dict[str, str]:
    "Every file under `folder` (links not followed) and its sha256."
    import hashlib
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file() and not p.is_symlink()}


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Files changed, removed or added, but for SQLite's shared-memory index (`-shm`, rewritten by every reader of
    a WAL-mode database) and the empty `-wal` such a reader makes."""
    import hashlib
    empty = hashlib.sha256(b'').hexdigest()
    return [name for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name) and not (
        name.endswith('-shm') or (name not in before and name.endswith('-wal') and after[name] == empty))]


def send(handler, body: bytes, status: int = 200, **headers: str) -> None:
    "Answer an HTTP request (`BaseHTTPRequestHandler`) with `body`."
    handler.send_response(status)
    for name, value in {'Content-Length': str(len(body)), **headers}.items(): handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def copy_run(source, run_id: str, target, new_id: str, name: str | None = None, tables=None, config=None,
             metrics=None, created_at: float | None = None) -> None:
    """Copy a recorded run from the `Store` `source` into the `Store` `target` as run `new_id`: its record (with
    `name`, `config` and `created_at` if given) and its rows of `tables` (default: every recorded table), each epoch's
    metrics through `metrics(dict) -> dict` if given. Many runs from one real training."""
    import dataclasses

    from fastwatch.store.tables import RUN_TABLES, epochs
    record = source.run(run_id)
    record = dataclasses.replace(record, id=new_id, name=name if name is not None else record.name,
                                 config=config if config is not None else record.config,
                                 created_at=created_at if created_at is not None else record.created_at)
    rows = {entry.name: [row._replace(run_id=new_id) for row in source.rows(entry, run_id)]
            for entry in RUN_TABLES.values() if not entry.derived and (tables is None or entry.name in tables)}
    if metrics and epochs.name in rows:
        rows[epochs.name] = [row._replace(metrics=metrics(row.metrics)) for row in rows[epochs.name]]
    target.write({'runs': [record], **rows})


def assert_map_from_numpy(found, history) -> None:
    """That a `DataMap` is what numpy's NaN-skipping reductions make of every epoch's `ItemValues` (in order), in
    float64: the whole-run formulas, against which the map's running statistics are checked. An epoch of fewer items
    than the longest did not see the others."""
    import warnings

    import numpy as np

    from fastwatch.store.dynamics import UNSEEN
    n = max(len(h) for h in history)
    stack = lambda name, fill: np.stack([np.concatenate([getattr(h, name), np.full(n - len(h), fill)])
                                         for h in history]).astype(np.float64)
    prob, margin, loss = stack('label_prob', np.nan), stack('margin', np.nan), stack('loss', np.nan)
    label, predicted = stack('label', UNSEEN), stack('predicted', UNSEEN)
    seen = label != UNSEEN
    score = np.full(n, np.nan)  # each epoch's margin weighing half the next one's
    for m in margin: score = np.where(np.isnan(m), score, np.where(np.isnan(score), m, (m + score) / 2))
    latest = len(history) - 1 - seen[::-1].argmax(0)  # the latest epoch that saw each item
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # the mean of an item never seen is NaN
        expected = {'confidence': np.nanmean(prob, 0), 'variability': np.nanstd(prob, 0),
                    'correctness': np.nanmean(np.where(seen, predicted == label, np.nan), 0),
                    'aum': np.nanmean(margin, 0), 'score': score}
    for name, values in expected.items():
        np.testing.assert_allclose(getattr(found, name), values, rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(found.last.loss, np.where(seen.any(0), loss[latest, np.arange(n)], np.nan))
    assert len(found.names) == n and len(found.history) == len(history)
